"""Validation: wire form -> frozen ``EditParams``, once. Downstream code never re-checks.

Rules follow the requested model's family (see ``openai-images-edit-contract.md`` §3):

* ``dall-e-2``: one square PNG, sizes 256/512/1024, prompt <= 1000, ``response_format``;
* ``gpt-image``: <= 16 png/webp/jpeg, fixed sizes + ``auto``, prompt <= 32000, output options,
  ``stream`` and ``partial_images``;
* ``gpt-image-2``: like ``gpt-image`` with free ``WxH`` sizes (multiples of 16, aspect <= 3:1,
  655,360-8,294,400 px, edge <= 3840) and no ``input_fidelity``;
* ``native``: retouch's own model names: ``gpt-image`` options with any ``WxH`` up to the output
  pixel cap; ``auto`` keeps the first image's size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, cast

from retouch.config import ApiFamily, Limits
from retouch.engine.types import Background, Fidelity, Quality
from retouch.errors import InvalidValue, MissingParameter, UnknownParameter
from retouch.integers import ascii_int
from retouch.service.form import EditForm

OutputFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["b64_json", "url"]

FIXED_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))
DALL_E_2_SIZES = ((256, 256), (512, 512), (1024, 1024))
GPT2_MIN_PIXELS, GPT2_MAX_PIXELS, GPT2_MAX_EDGE = 655_360, 8_294_400, 3840
DALL_E_2_MAX_IMAGE_BYTES = 4 * 1024 * 1024

_COMMON = {"prompt", "model", "n", "size", "user", "safety_identifier"}
_GPT = _COMMON | {
    "quality", "output_format", "output_compression", "background", "stream",
    "partial_images", "input_fidelity", "moderation",
}  # fmt: skip
ALLOWED_FIELDS: dict[ApiFamily, frozenset[str]] = {
    "dall-e-2": frozenset(_COMMON | {"response_format", "quality"}),
    "gpt-image": frozenset(_GPT),
    "gpt-image-2": frozenset(_GPT - {"input_fidelity"}),
    "native": frozenset(_GPT),
}
NOT_IMPLEMENTED = {
    "complexity": "retouch has no separate planning budget; use 'quality'.",
    "frame_count": "GIF output is not supported.",
    "frame_duration_ms": "GIF output is not supported.",
    "markup": "markup images are not supported; use 'mask'.",
    "svg": "SVG output is not supported.",
}
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


@dataclass(frozen=True)
class EditParams:
    """A validated edit request (everything but the pixels)."""

    model: str
    """The name the client asked for (echoed in logs and usage)."""
    served_model: str
    """The configured model that serves it."""
    family: ApiFamily
    prompt: str
    n: int
    size: tuple[int, int] | None
    """Requested (width, height); ``None`` = auto, resolved from the first image."""
    quality: Quality
    quality_requested: str
    input_fidelity: Fidelity
    output_format: OutputFormat
    output_compression: int
    background: Background
    response_format: ResponseFormat
    stream: bool
    partial_images: int
    user: str | None
    safety_identifier: str | None
    moderation: str


def _enum(fields: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(name, default)
    if value not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
        raise InvalidValue(
            f"Invalid value: '{value}'. Supported values are: {listed}.", param=name
        )
    return value


def _int(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = fields.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, signed=True)
    if value is None:
        raise InvalidValue(
            f"Invalid type for '{name}': expected an integer, but got '{raw[:40]}' instead.",
            param=name,
            code="invalid_type",
        )
    if not low <= value <= high:
        raise InvalidValue(
            f"Invalid '{name}': {value} is out of range; it must be between {low} and {high}.",
            param=name,
        )
    return value


def _bool(fields: dict[str, str], name: str) -> bool:
    raw = fields.get(name)
    if raw is None:
        return False
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise InvalidValue(
            f"Invalid type for '{name}': expected a boolean ('true' or 'false'), "
            f"but got '{raw[:40]}' instead.",
            param=name,
            code="invalid_type",
        )
    return lowered == "true"


def _size(raw: str | None, family: ApiFamily, limits: Limits) -> tuple[int, int] | None:
    if family == "dall-e-2":
        raw = raw or "1024x1024"
        allowed: tuple[tuple[int, int], ...] = DALL_E_2_SIZES
    else:
        allowed = FIXED_SIZES
    if raw is None or (raw == "auto" and family != "dall-e-2"):
        return None
    names = tuple(f"{w}x{h}" for w, h in allowed)
    if family in ("dall-e-2", "gpt-image"):
        _enum({"size": raw}, "size", names + (("auto",) if family == "gpt-image" else ()), "")
        return allowed[names.index(raw)]
    match = _SIZE.match(raw)
    if not match:
        raise InvalidValue(
            f"Invalid value: '{raw[:40]}'. Size must be 'auto' or 'WIDTHxHEIGHT'.", param="size"
        )
    w, h = int(match[1]), int(match[2])
    if family == "gpt-image-2":
        problems = gpt_image_2_size_problems(w, h)
        if problems:
            raise InvalidValue(
                f"Invalid value: '{raw}': " + "; ".join(problems) + ".", param="size"
            )
    elif w * h > limits.max_output_pixels or max(w, h) > 16384:
        raise InvalidValue(
            f"Invalid value: '{raw}': at most {limits.max_output_pixels:,} output pixels.",
            param="size",
        )
    return w, h


def gpt_image_2_size_problems(w: int, h: int) -> list[str]:
    """What is wrong with ``w`` x ``h`` as a gpt-image-2 size (empty when it is valid)."""
    problems = []
    if w % 16 or h % 16:
        problems.append("both sides must be multiples of 16")
    if max(w, h) > 3 * min(w, h):
        problems.append("the aspect ratio must be within 1:3 and 3:1")
    if not GPT2_MIN_PIXELS <= w * h <= GPT2_MAX_PIXELS or max(w, h) > GPT2_MAX_EDGE:
        problems.append(
            f"the image must have {GPT2_MIN_PIXELS:,} to {GPT2_MAX_PIXELS:,} pixels "
            f"and edges of at most {GPT2_MAX_EDGE}"
        )
    return problems


def check_fields(
    form: EditForm, family: ApiFamily, *, allow_url: bool = False, relay: bool = False
) -> None:
    """Unknown parameters, and parameters the family does not take, are 400 unknown_parameter.

    OpenAI's JSON body variant serves GPT-image models only and has no ``response_format``
    (unless the operator allows URLs for GPT models, an extension). A relay passes on the
    newest parameters that local engines do not implement (``NOT_IMPLEMENTED``): the
    upstream may."""
    if form.json_body and family == "dall-e-2":
        raise InvalidValue(
            "Invalid value: 'dall-e-2'. JSON edit bodies support GPT image models only; "
            "send dall-e-2 edits as multipart/form-data.",
            param="model",
        )
    allowed = ALLOWED_FIELDS[family] | ({"response_format"} if allow_url else set())
    for name in form.fields:
        base = name.split("[", 1)[0]
        if base in NOT_IMPLEMENTED:
            if relay:
                continue
            raise UnknownParameter(name, NOT_IMPLEMENTED[base])
        if name not in allowed:
            detail = ""
            if name in ALLOWED_FIELDS["native"] | {"response_format"}:
                detail = f"It is not supported by the {family} model family."
            raise UnknownParameter(name, detail)


def to_edit_params(
    form: EditForm,
    *,
    model: str,
    served_model: str,
    family: ApiFamily,
    limits: Limits,
    allow_url: bool,
    relay: bool = False,
) -> EditParams:
    """Validate every text field of ``form`` against ``family`` (files are checked later)."""
    check_fields(form, family, allow_url=allow_url, relay=relay)
    fields = form.fields
    prompt = fields.get("prompt")
    if not prompt:
        raise MissingParameter("prompt")
    max_prompt = 1000 if family == "dall-e-2" else 32000
    if len(prompt) > max_prompt:
        raise InvalidValue(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{max_prompt}, but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    if not form.images:
        raise MissingParameter("image")
    n = _int(fields, "n", 1, 1, 10)
    size = _size(fields.get("size"), family, limits)

    if family == "dall-e-2":
        for upload in form.images:
            if len(upload.data) >= DALL_E_2_MAX_IMAGE_BYTES:
                raise InvalidValue(
                    f"Invalid file '{upload.param}': dall-e-2 takes images under 4 MB.",
                    param=upload.param,
                    code="image_too_large",
                )
        quality_req = _enum(fields, "quality", ("standard", "auto"), "auto")
        response_format = _enum(fields, "response_format", ("url", "b64_json"), "url")
        return EditParams(
            model=model, served_model=served_model, family=family, prompt=prompt, n=n,
            size=size, quality="high", quality_requested=quality_req, input_fidelity="low",
            output_format="png", output_compression=100, background="auto",
            response_format=cast(ResponseFormat, response_format), stream=False,
            partial_images=0, user=fields.get("user"),
            safety_identifier=fields.get("safety_identifier"), moderation="auto",
        )  # fmt: skip

    quality_req = _enum(fields, "quality", ("low", "medium", "high", "auto"), "auto")
    fidelity = _enum(fields, "input_fidelity", ("high", "low"), "low")
    if model == "gpt-image-1-mini" and fidelity == "high":
        raise InvalidValue(
            "Invalid value: 'high'. gpt-image-1-mini supports only 'low'.", param="input_fidelity"
        )
    if family == "gpt-image-2":
        fidelity = "high"  # always high fidelity; the parameter itself is refused above
    output_format = _enum(fields, "output_format", ("png", "jpeg", "webp"), "png")
    compression = _int(fields, "output_compression", 100, 0, 100)
    if output_format == "png" and compression != 100:
        raise InvalidValue(
            "Invalid 'output_compression': it applies only to output_format 'jpeg' or 'webp'.",
            param="output_compression",
        )
    background = _enum(fields, "background", ("transparent", "opaque", "auto"), "auto")
    if background == "transparent" and output_format == "jpeg":
        raise InvalidValue(
            "Invalid value: 'transparent'. Transparent backgrounds need output_format "
            "'png' or 'webp'.",
            param="background",
        )
    stream = _bool(fields, "stream")
    partial_images = _int(fields, "partial_images", 0, 0, 3)
    if partial_images and not stream:  # 0 asks for nothing, so it is harmless without a stream
        raise InvalidValue(
            "Invalid 'partial_images': it needs stream=true.", param="partial_images"
        )
    # check_fields let response_format through only where the operator allows URLs
    response_format = _enum(fields, "response_format", ("url", "b64_json"), "b64_json")
    if stream and response_format == "url":
        raise InvalidValue(
            "Invalid 'response_format': streaming always returns b64_json.",
            param="response_format",
        )
    moderation = _enum(fields, "moderation", ("low", "auto"), "auto")
    quality: Quality = "high" if quality_req == "auto" else cast(Quality, quality_req)
    return EditParams(
        model=model, served_model=served_model, family=family, prompt=prompt, n=n, size=size,
        quality=quality, quality_requested=quality_req, input_fidelity=cast(Fidelity, fidelity),
        output_format=cast(OutputFormat, output_format), output_compression=compression,
        background=cast(Background, background),
        response_format=cast(ResponseFormat, response_format), stream=stream,
        partial_images=partial_images if stream else 0, user=fields.get("user"),
        safety_identifier=fields.get("safety_identifier"), moderation=moderation,
    )  # fmt: skip


def resolve_size(
    params: EditParams, first_image: tuple[int, int], limits: Limits
) -> tuple[int, int]:
    """The concrete output size: the requested one, or ``auto`` resolved from image 1."""
    if params.size is not None:
        return params.size
    w, h = first_image
    if params.family == "gpt-image":
        aspect = math.log(w / h)
        return min(FIXED_SIZES, key=lambda s: abs(math.log(s[0] / s[1]) - aspect))
    if params.family == "gpt-image-2":
        return gpt_image_2_auto_size(w, h)
    scale = min(1.0, math.sqrt(limits.max_output_pixels / (w * h)))
    return max(1, int(w * scale)), max(1, int(h * scale))


def gpt_image_2_auto_size(w: int, h: int) -> tuple[int, int]:
    """The valid gpt-image-2 size closest to the input's aspect ratio, with about as many pixels
    as the input (clamped to the family's bounds).

    Rounding both sides to multiples of 16 can step outside the pixel or aspect bounds, so the
    valid sizes around the ideal one are compared instead of rounding blindly."""
    ratio = min(max(w / h, 1 / 3), 3.0)
    pixels = min(max(w * h, GPT2_MIN_PIXELS), GPT2_MAX_PIXELS)
    ideal_w, ideal_h = math.sqrt(pixels * ratio), math.sqrt(pixels / ratio)
    k = min(1.0, GPT2_MAX_EDGE / max(ideal_w, ideal_h))
    ideal_w, ideal_h = ideal_w * k, ideal_h * k
    near_w = [16 * (int(ideal_w) // 16 + d) for d in range(-2, 4)]
    near_h = [16 * (int(ideal_h) // 16 + d) for d in range(-2, 4)]
    candidates = [
        (cw, ch) for cw in near_w for ch in near_h
        if cw > 0 and ch > 0 and not gpt_image_2_size_problems(cw, ch)
    ]  # fmt: skip
    target = math.log(ratio)
    return min(
        candidates,
        key=lambda s: (round(abs(math.log(s[0] / s[1]) - target), 2), abs(s[0] * s[1] - pixels)),
    )
