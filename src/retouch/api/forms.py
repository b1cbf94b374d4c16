"""Reading the request body into an ``EditForm``, with every cap enforced while it streams in.

multipart/form-data goes through python-multipart's push parser (Starlette's ``request.form()``
caps neither file parts nor the total). Image spellings ``image``, repeated ``image``,
``image[]``, ``image[N]``, ``image.N`` and ``image.N.items`` all become one ordered list: wire
order, except that indexed spellings are sorted by N. Mixing indexed with unindexed spellings
is a 400, since the intended order would be a guess. ``mask`` and ``mask[]`` name the mask.
Errors name a file the way OpenAI does: ``image`` when one bare ``image`` part was sent,
``image[i]`` for an element of an array (``image[N]`` keeps the client's own N).

``application/json`` bodies (OpenAI's JSON edit variant) carry ``images: [{image_url}]`` with
``data:`` URLs or http(s) URLs, which are fetched SSRF-safe (``retouch.net.fetch``) unless the
``fetch.image_urls`` setting is off; ``file_id`` gets a clear 400. Errors about a URL name
``images[N].image_url`` (or ``mask.image_url``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
from python_multipart.multipart import MultipartParser, parse_options_header

from retouch.config import FetchSettings, Limits
from retouch.errors import (
    InvalidRequest,
    InvalidValue,
    PayloadTooLarge,
    RetouchError,
    UnknownParameter,
)
from retouch.net.fetch import ByteBudget, Fetcher, FetchFailed, FetchPolicy
from retouch.service.admission import Admission
from retouch.service.form import EditForm
from retouch.service.params import KNOWN_FIELDS
from retouch.types import Upload

_IMAGE = re.compile(r"^image(?:\[\]|\[([0-9]{1,3})\]|\.([0-9]{1,3})(?:\.items)?)?$")
_MASK = {"mask", "mask[]"}
_TEXT_FIELDS = KNOWN_FIELDS
_MARKUP = {"markup", "markup[]"}


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
        self.ended = False
        """The closing boundary was seen (python-multipart's ``finalize`` does not check it)."""

    # python-multipart callbacks -----------------------------------------------------------
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_end(self) -> None:
        self.ended = True

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
        if self.refused:  # refused within this chunk: the rest is not kept
            return
        part = self.part
        part.chunks.append(memoryview(data)[start:end])  # one copy, at the end of the part
        part.size += end - start
        if part.filename is None:
            cap, param, code = self.limits.max_field_bytes, part.name, "field_too_large"
        elif part.name in _MASK or part.name in _MARKUP:
            cap, param, code = self.limits.max_mask_bytes, part.name.rstrip("[]"), "file_too_large"
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
        if _IMAGE.match(part.name) or part.name in _MASK or part.name in _MARKUP:
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
        if part.name in _MARKUP:
            if self.form.markup is not None:
                raise InvalidValue("Only one markup file may be sent.", param="markup")
            self.form.markup = Upload("markup", part.filename or "", part.content_type, data)
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


_FIRST_UNDECIDED_STEP = 1024
_MAX_UNDECIDED_STEP = 256 * 1024


def _feed(parser: MultipartParser, data: bytes) -> None:
    try:
        parser.write(data)
    except (InvalidRequest, PayloadTooLarge):
        raise
    except Exception:
        raise InvalidRequest("The multipart body is malformed.") from None


async def read_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str,
    limits: Limits,
    admission: Admission | None = None,
) -> EditForm:
    """Parse the body as it streams in. With an ``admission``, the request's queue ticket is
    taken when the ``model`` field arrives and buffered bytes count against the upload budget;
    a refusal (429, 400, 503) is raised at once, the rest of the body unread (the server's
    lingering close discards it: ``api.server``)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary.")
    builder = _FormBuilder(limits, admission)
    callbacks = {
        name: getattr(builder, name)
        for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end", "on_end",
        )
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    except Exception:
        raise InvalidRequest("Invalid multipart boundary.") from None
    total = 0
    step = _FIRST_UNDECIDED_STEP
    async for chunk in chunks:
        total += len(chunk)
        if total > limits.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is larger than the {limits.max_body_bytes:,} bytes allowed."
            )
        if admission is not None:
            admission.take_bytes(len(chunk))
        pos = 0
        while pos < len(chunk):
            # Until the ticket is taken, parse in growing steps (1 KiB, 2 KiB, ...): a refusal
            # at the model field (the first part, usually) then costs no scan of the file
            # bytes sent with it, and a body whose model comes last costs a few more writes.
            if admission is not None and admission.ticket is None:
                end, step = pos + step, min(2 * step, _MAX_UNDECIDED_STEP)
            else:
                end = len(chunk)
            _feed(parser, chunk[pos:end] if pos or end < len(chunk) else chunk)
            pos = end
            if admission is not None and admission.refusal is not None:
                raise admission.refusal  # the model was refused: the rest is not needed
    parser.finalize()
    if not builder.ended:
        # A cut-off body would otherwise lose its last part (say output_format=webp) silently.
        raise InvalidRequest(
            "The multipart body ended before its closing boundary: the request was truncated "
            "and is not a complete multipart/form-data message.",
            code="truncated_body",
        )
    return builder.finish()


async def read_body(
    chunks: AsyncIterator[bytes], limits: Limits, admission: Admission | None = None
) -> bytes:
    """A JSON body, capped while it streams in; with an ``admission``, its bytes count
    against the upload budget (over it, the refusal is raised at once)."""
    body = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limits.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is larger than the {limits.max_body_bytes:,} bytes allowed."
            )
        if admission is not None:
            admission.take_bytes(len(chunk))
        body += chunk
    return bytes(body)


@dataclass(frozen=True)
class UrlInputs:
    """How http(s) ``image_url`` values are fetched; ``None`` in their place turns them off."""

    fetcher: Fetcher
    fetch: FetchSettings


@dataclass(frozen=True)
class _Remote:
    """An ``image_url`` still to be fetched."""

    param: str
    url: str
    cap: int


async def parse_json(
    body: bytes, limits: Limits, admission: Admission | None, urls: UrlInputs | None
) -> EditForm:
    """OpenAI's JSON edit body -> ``EditForm``. Parsing and base64 decoding (megabytes of data
    URLs) run in a thread, off the event loop, and the queue ticket is taken in between, before
    any image is decoded; http(s) URLs are then fetched concurrently, SSRF-safe, each within
    its file cap and all together within what is left of the request's byte budget (and the
    server's upload budget)."""
    doc = await asyncio.to_thread(_load_json, body)
    model = doc.get("model")
    if admission is not None and (model is None or isinstance(model, str)):
        admission.on_model(model or None)
    form, remote = await asyncio.to_thread(_parse_json, doc, limits, urls is not None)
    if remote:
        assert urls is not None
        budget = ByteBudget(limits.max_body_bytes - len(body))
        uploads = await _fetch_all(remote, urls, budget, limits.max_body_bytes)
        if admission is not None:
            admission.take_bytes(sum(len(u.data) for u in uploads))
        by_param = {u.param: u for u in uploads}
        form.images = [by_param.get(u.param, u) for u in form.images]
        if form.mask is not None:
            form.mask = by_param.get(form.mask.param, form.mask)
        if form.markup is not None:
            form.markup = by_param.get(form.markup.param, form.markup)
    return form


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    return doc


def _parse_json(
    doc: dict[str, Any], limits: Limits, fetch_urls: bool
) -> tuple[EditForm, list[_Remote]]:
    form = EditForm(json_body=True)
    remote: list[_Remote] = []
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
            _image_ref(ref, f"images[{i}]", limits.max_image_bytes, fetch_urls, remote)
            for i, ref in enumerate(images)
        ]
    mask = doc.pop("mask", None)
    if mask is not None:
        form.mask = _image_ref(mask, "mask", limits.max_mask_bytes, fetch_urls, remote)
    markup = doc.pop("markup", None)
    if markup is not None:
        form.markup = _image_ref(markup, "markup", limits.max_mask_bytes, fetch_urls, remote)
    _flatten_svg(doc)
    _json_fields(doc, form)
    return form, remote


async def read_generation_json(
    chunks: AsyncIterator[bytes], limits: Limits, admission: Admission | None = None
) -> EditForm:
    """``POST /v1/images/generations``: OpenAI's JSON body, text fields only (``null`` values,
    which both SDKs send for an explicit ``None``, are absent). With an ``admission``, the
    queue ticket is taken as soon as the body is parsed."""
    body = await read_body(chunks, limits, admission)
    doc = await asyncio.to_thread(_load_json, body)
    model = doc.get("model")
    if admission is not None and (model is None or isinstance(model, str)):
        admission.on_model(model or None)
    for name in ("image", "images", "mask", "markup"):
        if name in doc:
            raise UnknownParameter(
                name, "Generations take no input images; send them to /v1/images/edits."
            )
    _flatten_svg(doc)
    form = EditForm(json_body=True)
    _json_fields(doc, form)
    return form



def _json_fields(doc: dict[str, Any], form: EditForm) -> None:
    """The text fields of a JSON body, as multipart would carry them."""
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


def _flatten_svg(doc: dict[str, object]) -> None:
    """The SDKs' nested ``svg`` object, flattened to the multipart spelling in place."""
    svg = doc.pop("svg", None)
    if isinstance(svg, dict):
        doc.update(_flatten("svg", svg))
    elif svg is not None:
        doc["svg"] = svg


def _flatten(prefix: str, value: dict[str, object]) -> dict[str, object]:
    """``{"model": "m", "reasoning": {"effort": "low"}}`` -> ``svg[model]``,
    ``svg[reasoning][effort]`` (the multipart spelling)."""
    flat: dict[str, object] = {}
    for key, item in value.items():
        name = f"{prefix}[{key}]"
        if isinstance(item, dict):
            flat.update(_flatten(name, item))
        else:
            flat[name] = item
    return flat


def _image_ref(
    ref: object, param: str, cap: int, fetch_urls: bool, remote: list[_Remote]
) -> Upload:
    if not isinstance(ref, dict):
        raise InvalidValue(f"Invalid '{param}': expected an object.", param=param)
    if "file_id" in ref:
        raise InvalidValue(
            f"Invalid '{param}': file_id references are not supported: retouch has no Files "
            "API. Send the image in 'image_url' (a data URL or an http(s) URL).",
            param=param,
            code="unsupported_file_id",
        )
    url = ref.get("image_url")
    if set(ref) != {"image_url"} or not isinstance(url, str):
        raise InvalidValue(
            f"Invalid '{param}': expected exactly one of 'image_url' or 'file_id'.", param=param
        )
    where = f"{param}.image_url"
    if not url.startswith("data:"):
        if not fetch_urls:
            raise InvalidValue(
                f"Invalid '{where}': only data: URLs (base64) are accepted; this server does "
                "not fetch remote URLs.",
                param=where,
                code="unsupported_image_url",
            )
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidValue(
                f"Invalid '{where}': expected a data: URL or an http(s) URL.",
                param=where,
                code="invalid_image_url",
            )
        remote.append(_Remote(param, url, cap))
        return Upload(param, "", None, b"")  # filled in once fetched
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise InvalidValue(f"Invalid '{where}': expected a base64 data URL.", param=where)
    if len(payload) * 3 // 4 > cap:
        raise PayloadTooLarge(
            f"Invalid '{param}': it is larger than the {cap:,} bytes allowed.",
            param=param,
            code="file_too_large",
        )
    try:
        data = pybase64.b64decode(payload, validate=True)
    except ValueError:
        raise InvalidValue(f"Invalid '{where}': bad base64 data.", param=where) from None
    content_type = header[5:].split(";", 1)[0] or None
    return Upload(param, "", content_type, data)


async def _fetch_all(
    remote: list[_Remote], urls: UrlInputs, budget: ByteBudget, limit: int
) -> list[Upload]:
    tasks = [asyncio.ensure_future(_fetch(r, urls, budget, limit)) for r in remote]
    try:
        return await asyncio.gather(*tasks)
    finally:  # the first failure decides; the other downloads stop
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _fetch(ref: _Remote, urls: UrlInputs, budget: ByteBudget, limit: int) -> Upload:
    policy = FetchPolicy.from_settings(urls.fetch, max_bytes=ref.cap)
    where = f"{ref.param}.image_url"
    try:
        fetched = await urls.fetcher.get(ref.url, policy, budget=budget)
    except FetchFailed as exc:
        if exc.kind == "too_large":
            raise PayloadTooLarge(
                f"Invalid '{where}': the image is larger than the {ref.cap:,} bytes allowed.",
                param=where,
                code="file_too_large",
            ) from None
        if exc.kind == "over_budget":
            raise PayloadTooLarge(
                f"Invalid '{where}': the request and its fetched images are larger than the "
                f"{limit:,} bytes allowed together.",
                param=where,
                code="request_too_large",
            ) from None
        code = "image_url_timeout" if exc.kind == "timeout" else "invalid_image_url"
        raise InvalidValue(
            f"Invalid '{where}': the image could not be fetched: {exc.message}.",
            param=where,
            code=code,
        ) from None
    content_type = (fetched.content_type or "").split(";", 1)[0].strip() or None
    return Upload(ref.param, "", content_type, fetched.data)
