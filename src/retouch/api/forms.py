"""Reading the request body into an ``EditForm``, with every cap enforced while it streams in.

multipart/form-data goes through python-multipart's push parser (Starlette's ``request.form()``
caps neither file parts nor the total). Image spellings ``image``, repeated ``image``,
``image[]``, ``image[N]``, ``image.N`` and ``image.N.items`` all become one ordered list: wire
order, except that indexed spellings are sorted by N. Mixing indexed with unindexed spellings
is a 400, since the intended order would be a guess. ``mask`` and ``mask[]`` name the mask.
Errors name a file the way OpenAI does: ``image`` when one bare ``image`` part was sent,
``image[i]`` for an element of an array (``image[N]`` keeps the client's own N).

``application/json`` bodies (OpenAI's JSON edit variant) carry ``images: [{image_url}]`` with
``data:`` URLs; ``file_id`` and remote URLs get a clear 400.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pybase64
from python_multipart.multipart import MultipartParser, parse_options_header

from retouch.config import Limits
from retouch.errors import (
    InvalidRequest,
    InvalidValue,
    PayloadTooLarge,
    RetouchError,
    UnknownParameter,
)
from retouch.service.admission import Admission
from retouch.service.form import EditForm, Upload
from retouch.service.params import ALLOWED_FIELDS

_IMAGE = re.compile(r"^image(?:\[\]|\[(\d{1,3})\]|\.(\d{1,3})(?:\.items)?)?$")
_MASK = {"mask", "mask[]"}
_TEXT_FIELDS = frozenset().union(*ALLOWED_FIELDS.values(), {"response_format"})


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    chunks: list[memoryview] = field(default_factory=list)
    size: int = 0
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)


class _FormBuilder:
    """Collects parts; enforces per-part, count and total caps as bytes arrive."""

    def __init__(self, limits: Limits, admission: Admission | None = None) -> None:
        self.limits = limits
        self.admission = admission
        self.form = EditForm()
        self.part = _Part()
        self.files = 0
        self.text_parts = 0
        self.indexed: list[tuple[int, Upload]] = []
        self.bare_image_parts = 0

    # python-multipart callbacks -----------------------------------------------------------
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        name = bytes(self.part.header_field).lower()
        value = bytes(self.part.header_value)
        if name == b"content-disposition":
            _, options = parse_options_header(value)
            self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            self.part.filename = None if filename is None else filename.decode("utf-8", "replace")
        elif name == b"content-type":
            self.part.content_type = value.decode("latin-1").strip()
        self.part.header_field.clear()
        self.part.header_value.clear()

    @property
    def refused(self) -> bool:
        return self.admission is not None and self.admission.refusal is not None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.refused:  # the rest of the body is read and dropped
            return
        part = self.part
        part.chunks.append(memoryview(data)[start:end])  # one copy, at the end of the part
        part.size += end - start
        if part.filename is None:
            cap, param, code = self.limits.max_field_bytes, part.name, "field_too_large"
        elif part.name in _MASK:
            cap, param, code = self.limits.max_mask_bytes, "mask", "file_too_large"
        else:
            cap, param, code = self.limits.max_image_bytes, self._file_param(part), "file_too_large"
        if part.size > cap:
            raise PayloadTooLarge(
                f"Invalid '{param}': it is larger than the {cap:,} bytes allowed.",
                param=param or None,
                code=code,
            )

    def _file_param(self, part: _Part) -> str:
        """How errors name the image being received (before the whole list is known)."""
        match = _IMAGE.match(part.name)
        if match is None:
            return part.name
        index = match[1] or match[2]
        if index is not None:
            return f"image[{int(index)}]"
        seen = len(self.form.images)
        return "image" if part.name == "image" and seen == 0 else f"image[{seen}]"

    def on_part_end(self) -> None:
        part = self.part
        data = b"".join(part.chunks)
        part.chunks.clear()
        if self.refused:
            return
        if part.filename is None:
            self._text(part, data)
            if part.name == "model" and self.admission is not None:
                self._admit(self.form.fields.get("model"))
        else:
            self._file(part, data)

    def _admit(self, model: str | None) -> None:
        """Take the queue ticket as soon as the model is known (before the files, usually)."""
        assert self.admission is not None
        try:
            self.admission.on_model(model)
        except RetouchError as exc:
            self.admission.refusal = exc

    # --------------------------------------------------------------------------------------
    def _text(self, part: _Part, data: bytes) -> None:
        if _IMAGE.match(part.name) or part.name in _MASK:
            raise InvalidValue(
                f"Invalid type for '{part.name}': expected a file, but got a string instead.",
                param=part.name,
                code="invalid_type",
            )
        self.text_parts += 1  # empty ones too: each still costs a parse
        if self.text_parts > self.limits.max_fields:
            raise InvalidRequest(
                f"Too many form fields (at most {self.limits.max_fields}).",
                code="too_many_fields",
            )
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidValue(
                f"Invalid '{part.name}': not valid UTF-8.", param=part.name
            ) from None
        if value == "":
            return
        if part.name in self.form.fields:
            raise InvalidValue(
                f"Invalid '{part.name}': the parameter was sent more than once.", param=part.name
            )
        self.form.fields[part.name] = value

    def _file(self, part: _Part, data: bytes) -> None:
        if not data and not part.filename:
            return  # a browser form with nothing selected
        self.files += 1
        if self.files > self.limits.max_images + 1:
            raise InvalidValue(
                f"Too many files: at most {self.limits.max_images} images and one mask.",
                param="image",
                code="too_many_images",
            )
        if part.name in _MASK:
            if self.form.mask is not None:
                raise InvalidValue("Only one mask file may be sent.", param="mask")
            self.form.mask = Upload("mask", part.filename or "", part.content_type, data)
            return
        match = _IMAGE.match(part.name)
        if not match:
            if part.name.split("[", 1)[0] not in _TEXT_FIELDS:
                raise UnknownParameter(part.name)
            raise InvalidValue(
                f"Invalid type for '{part.name}': expected a string, but got a file instead.",
                param=part.name,
                code="invalid_type",
            )
        index = match[1] or match[2]
        if index is not None:
            n = int(index)
            if any(n == seen for seen, _ in self.indexed):
                raise InvalidValue(
                    f"Invalid 'image[{n}]': the index was sent more than once.",
                    param=f"image[{n}]",
                )
            upload = Upload(f"image[{n}]", part.filename or "", part.content_type, data)
            self.indexed.append((n, upload))
        else:
            self.bare_image_parts += part.name == "image"
            upload = Upload("image", part.filename or "", part.content_type, data)
            self.form.images.append(upload)

    def finish(self) -> EditForm:
        images = self.form.images
        if self.indexed and images:
            raise InvalidValue(
                "Invalid 'image': indexed spellings (image[0], image.0) and unindexed ones "
                "(image, image[]) cannot be mixed in one request.",
                param="image",
            )
        if self.indexed:
            # keep the client's own indices in error messages: they name the parts it sent
            self.form.images = [u for _, u in sorted(self.indexed, key=lambda t: t[0])]
        elif not (len(images) == 1 and self.bare_image_parts == 1):
            self.form.images = [
                Upload(f"image[{i}]", u.filename, u.content_type, u.data)
                for i, u in enumerate(images)
            ]
        return self.form


async def read_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str,
    limits: Limits,
    admission: Admission | None = None,
) -> EditForm:
    """Parse the body as it streams in. With an ``admission``, the request's queue ticket is
    taken when the ``model`` field arrives and buffered bytes count against the upload budget;
    a refusal (429, 400, 503) is raised once the body is in, its remaining bytes dropped."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary.")
    builder = _FormBuilder(limits, admission)
    callbacks = {
        name: getattr(builder, name)
        for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end",
        )
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    except Exception:
        raise InvalidRequest("Invalid multipart boundary.") from None
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limits.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is larger than the {limits.max_body_bytes:,} bytes allowed."
            )
        if admission is not None and admission.refusal is None:
            try:
                admission.take_bytes(len(chunk))
            except RetouchError as exc:
                admission.refusal = exc
        if admission is not None and admission.refusal is not None:
            continue  # refused: the rest is drained, neither parsed nor kept
        try:
            parser.write(chunk)
        except (InvalidRequest, PayloadTooLarge):
            raise
        except Exception:
            raise InvalidRequest("The multipart body is malformed.") from None
    if admission is not None and admission.refusal is not None:
        raise admission.refusal
    try:
        parser.finalize()
    except Exception:
        raise InvalidRequest("The multipart body is malformed or truncated.") from None
    return builder.finish()


async def read_json(
    chunks: AsyncIterator[bytes], limits: Limits, admission: Admission | None = None
) -> EditForm:
    """Parse a JSON edit body; with an ``admission``, its bytes count against the upload
    budget and the queue ticket is taken before any data URL is decoded."""
    body = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limits.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is larger than the {limits.max_body_bytes:,} bytes allowed."
            )
        if admission is not None and admission.refusal is None:
            try:
                admission.take_bytes(len(chunk))
            except RetouchError as exc:
                admission.refusal = exc
                body.clear()
        if admission is None or admission.refusal is None:
            body += chunk
    if admission is not None and admission.refusal is not None:
        raise admission.refusal
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    model = doc.get("model")
    if admission is not None and (model is None or isinstance(model, str)):
        admission.on_model(model or None)
    form = EditForm(json_body=True)
    images = doc.pop("images", None)
    if "image" in doc:
        raise InvalidValue(
            "Unknown parameter: 'image'. JSON bodies use 'images': [{\"image_url\": ...}].",
            param="image",
            code="unknown_parameter",
        )
    if images is not None:
        if not isinstance(images, list) or not images:
            raise InvalidValue("Invalid 'images': expected a non-empty array.", param="images")
        if len(images) > limits.max_images:
            raise InvalidValue(
                f"Invalid 'images': at most {limits.max_images} images.",
                param="images",
                code="too_many_images",
            )
        form.images = [
            _image_ref(ref, f"images[{i}]", limits.max_image_bytes) for i, ref in enumerate(images)
        ]
    mask = doc.pop("mask", None)
    if mask is not None:
        form.mask = _image_ref(mask, "mask", limits.max_mask_bytes)
    for key, value in doc.items():
        if value is None:
            continue
        if isinstance(value, bool):
            form.fields[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            if isinstance(value, str) and value == "":
                continue
            form.fields[key] = str(value)
        elif key not in _TEXT_FIELDS:
            raise UnknownParameter(key)
        else:
            raise InvalidValue(
                f"Invalid type for '{key}': expected a string, number or boolean.",
                param=key,
                code="invalid_type",
            )
    return form


def _image_ref(ref: object, param: str, cap: int) -> Upload:
    if not isinstance(ref, dict):
        raise InvalidValue(f"Invalid '{param}': expected an object.", param=param)
    if "file_id" in ref:
        raise InvalidValue(
            f"Invalid '{param}': file_id references are not supported: retouch has no Files "
            "API. Send the image inline as a data URL in 'image_url'.",
            param=param,
            code="unsupported_file_id",
        )
    url = ref.get("image_url")
    if set(ref) != {"image_url"} or not isinstance(url, str):
        raise InvalidValue(
            f"Invalid '{param}': expected exactly one of 'image_url' or 'file_id'.", param=param
        )
    if not url.startswith("data:"):
        raise InvalidValue(
            f"Invalid '{param}.image_url': only data: URLs (base64) are accepted; retouch does "
            "not fetch remote URLs.",
            param=param,
            code="unsupported_image_url",
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise InvalidValue(
            f"Invalid '{param}.image_url': expected a base64 data URL.", param=param
        )
    if len(payload) * 3 // 4 > cap:
        raise PayloadTooLarge(
            f"Invalid '{param}': it is larger than the {cap:,} bytes allowed.",
            param=param,
            code="file_too_large",
        )
    try:
        data = pybase64.b64decode(payload, validate=True)
    except ValueError:
        raise InvalidValue(f"Invalid '{param}.image_url': bad base64 data.", param=param) from None
    content_type = header[5:].split(";", 1)[0] or None
    return Upload(param, "", content_type, data)
