"""Validation: wire form -> frozen ``EditParams``, once. Downstream code never re-checks.

Which parameters and values a request may carry follows its model's family; the rules are the
table in ``retouch/families.py`` (see there for what each family takes). Edits
(``to_edit_params``) and generations (``to_generation_params``) share every rule except the
input files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, cast

from retouch.config import Limits
from retouch.engine.types import Background, Complexity, Fidelity, Quality
from retouch.errors import InvalidValue, MissingParameter, UnknownParameter
from retouch.families import FAMILIES, ApiFamily, Family
from retouch.integers import ascii_int
from retouch.service.form import EditForm

OutputFormat = Literal["png", "jpeg", "webp", "gif", "svg"]
ResponseFormat = Literal["b64_json", "url"]
Mode = Literal["edit", "generate"]

FIXED_SIZES = ((1024, 1024), (1536, 1024), (1024, 1536))
DALL_E_2_SIZES = ((256, 256), (512, 512), (1024, 1024))
GPT2_MIN_PIXELS, GPT2_MAX_PIXELS, GPT2_MAX_EDGE = 655_360, 8_294_400, 3840
DALL_E_2_MAX_IMAGE_BYTES = 4 * 1024 * 1024
GENERATION_AUTO_SIZE = (1024, 1024)
"""``size=auto`` of a generation (there is no input image to take an aspect from)."""
GIF_FRAMES = (2, 16, 9)
"""``frame_count`` minimum, maximum, default (PY357)."""
GIF_MAX_FRAME_MS = 655_350

_COMMON = frozenset({"prompt", "model", "n", "size", "user", "safety_identifier",
                     "response_format", "quality"})  # fmt: skip
_GPT_OPTIONS = frozenset({"output_format", "output_compression", "background", "stream",
                          "partial_images", "moderation"})  # fmt: skip
_GIF = frozenset({"frame_count", "frame_duration_ms"})
KNOWN_FIELDS = _COMMON | _GPT_OPTIONS | _GIF | {"input_fidelity", "complexity", "svg", "style"}
"""Every text field any family or endpoint takes (the form readers name the others unknown)."""


def allowed_fields(family: Family, mode: Mode) -> frozenset[str]:
    """The text fields a request to ``family`` may carry (``svg[...]`` counts as ``svg``)."""
    fields = set(_COMMON)
    if family.gpt_options:
        fields |= _GPT_OPTIONS
    if family.input_fidelity and mode == "edit":
        fields.add("input_fidelity")
    if family.complexity:
        fields.add("complexity")
    if "gif" in family.output_formats:
        fields |= _GIF
    if "svg" in family.output_formats:
        fields.add("svg")
    return frozenset(fields)


_WHY_NOT = {
    "complexity": "It is supported from gpt-image-2.6 on (and by retouch's own model names).",
    "frame_count": "GIF output is supported from gpt-image-2.5 on.",
    "frame_duration_ms": "GIF output is supported from gpt-image-2.5 on.",
    "svg": "SVG output is supported from gpt-image-2.5 on.",
    "style": "It belongs to dall-e-3, which retouch does not serve.",
    "input_fidelity": "Models from gpt-image-2 on always keep inputs at high fidelity; omit it.",
}
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


@dataclass(frozen=True)
class EditParams:
    """A validated edit or generation request (everything but the pixels)."""

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
    complexity: Complexity | None = None
    frame_count: int | None = None
    """GIF frames (``output_format=gif`` only)."""
    frame_duration_ms: int | None = None
    mode: Mode = "edit"

    @property
    def end_user(self) -> str | None:
        """The effective end-user id: ``safety_identifier``, else the deprecated ``user``
        (what the newest SDKs read back as ``safety_identifier``)."""
        return self.safety_identifier or self.user


def _enum(fields: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = fields.get(name, default)
    if value not in allowed:
        listed = (
            f"'{allowed[0]}'"
            if len(allowed) == 1
            else ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
        )
        raise InvalidValue(
            f"Invalid value: '{value[:40]}'. Supported values are: {listed}.", param=name
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


def _size(raw: str | None, family: Family, limits: Limits) -> tuple[int, int] | None:
    rule = family.sizes
    if rule == "dall-e-2":
        raw = raw or "1024x1024"
        allowed: tuple[tuple[int, int], ...] = DALL_E_2_SIZES
    else:
        allowed = FIXED_SIZES
    if raw is None or (raw == "auto" and rule != "dall-e-2"):
        return None
    names = tuple(f"{w}x{h}" for w, h in allowed)
    if rule in ("dall-e-2", "fixed"):
        _enum({"size": raw}, "size", names + (("auto",) if rule == "fixed" else ()), "")
        return allowed[names.index(raw)]
    match = _SIZE.match(raw)
    if not match:
        raise InvalidValue(
            f"Invalid value: '{raw[:40]}'. Size must be 'auto' or 'WIDTHxHEIGHT'.", param="size"
        )
    w, h = int(match[1]), int(match[2])
    if rule == "free":
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
    """What is wrong with ``w`` x ``h`` as a free size (gpt-image-2 and later; empty when
    it is valid)."""
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


def check_fields(form: EditForm, family: ApiFamily, *, mode: Mode = "edit") -> None:
    """Unknown parameters, and parameters the family does not take, are 400 unknown_parameter.

    OpenAI's JSON edit variant serves GPT-image models only."""
    rules = FAMILIES[family]
    if form.json_body and family == "dall-e-2" and mode == "edit":
        raise InvalidValue(
            "Invalid value: 'dall-e-2'. JSON edit bodies support GPT image models only; "
            "send dall-e-2 edits as multipart/form-data.",
            param="model",
        )
    allowed = allowed_fields(rules, mode)
    for name in form.fields:
        base = name.split("[", 1)[0]
        if base not in allowed:
            detail = _WHY_NOT.get(base, "")
            if not detail and base in KNOWN_FIELDS:
                detail = f"It is not supported by the {family} model family."
            raise UnknownParameter(name, detail)
    if form.markup is not None and not rules.markup:
        raise UnknownParameter(
            "markup", "markup images are supported from gpt-image-2.5 on; use 'mask'."
        )


def _response_format(fields: dict[str, str], rules: Family, allow_url: bool) -> ResponseFormat:
    """``b64_json`` is what retouch always returns, so every family takes it (Open WebUI sends
    it for every model whose name does not start with ``gpt-image``). ``url`` is the default of
    dall-e-2, allowed for retouch's own names, and for GPT families only where the operator
    allows it (OpenAI answers ``unknown_parameter``)."""
    value = _enum(fields, "response_format", ("url", "b64_json"),
                  "url" if rules.url == "default" else "b64_json")  # fmt: skip
    if value == "url" and rules.url == "setting" and not allow_url:
        raise UnknownParameter(
            "response_format",
            "GPT image models always return b64_json; 'url' is not supported for them here "
            "(the operator can allow it with storage.allow_url_for_gpt_models).",
        )
    return cast(ResponseFormat, value)


def to_edit_params(
    form: EditForm,
    *,
    model: str,
    served_model: str,
    family: ApiFamily,
    limits: Limits,
    allow_url: bool,
    mode: Mode = "edit",
) -> EditParams:
    """Validate every text field of ``form`` against ``family`` (files are checked later).
    ``allow_url``: the operator allows ``response_format=url`` for GPT families."""
    check_fields(form, family, mode=mode)
    rules = FAMILIES[family]
    fields = form.fields
    prompt = fields.get("prompt")
    if not prompt:
        raise MissingParameter("prompt")
    if len(prompt) > rules.max_prompt:
        raise InvalidValue(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{rules.max_prompt}, but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    if mode == "edit" and not form.images:
        raise MissingParameter("image")
    if form.markup is not None and form.mask is not None:
        raise InvalidValue(
            "Invalid 'markup': it cannot be combined with 'mask'; send one of them.",
            param="markup",
        )
    n = _int(fields, "n", 1, 1, 10)
    size = _size(fields.get("size"), rules, limits)
    response_format = _response_format(fields, rules, allow_url)
    user, safety_identifier = fields.get("user"), fields.get("safety_identifier")

    if not rules.gpt_options:  # dall-e-2
        for upload in form.images:
            if len(upload.data) >= DALL_E_2_MAX_IMAGE_BYTES:
                raise InvalidValue(
                    f"Invalid file '{upload.param}': dall-e-2 takes images under 4 MB.",
                    param=upload.param,
                    code="image_too_large",
                )
        quality_req = _enum(fields, "quality", ("standard", "auto"), "auto")
        return EditParams(
            model=model, served_model=served_model, family=family, prompt=prompt, n=n,
            size=size, quality="high", quality_requested=quality_req, input_fidelity="low",
            output_format="png", output_compression=100, background="auto",
            response_format=response_format, stream=False, partial_images=0, user=user,
            safety_identifier=safety_identifier, moderation="auto", mode=mode,
        )  # fmt: skip

    quality_req = _enum(fields, "quality", (*rules.qualities, "auto"), "auto")
    fidelity = _enum(fields, "input_fidelity", ("high", "low"), "low")
    if model.startswith("gpt-image-1-mini") and fidelity == "high":
        raise InvalidValue(
            "Invalid value: 'high'. gpt-image-1-mini supports only 'low'.", param="input_fidelity"
        )
    if not rules.input_fidelity:
        fidelity = "high"  # always high fidelity; the parameter itself is refused above
    output_format = _enum(fields, "output_format", rules.output_formats, "png")
    compression = _int(fields, "output_compression", 100, 0, 100)
    if output_format not in ("jpeg", "webp") and compression != 100:
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
    if stream and response_format == "url":
        raise InvalidValue(
            "Invalid 'response_format': streaming always returns b64_json.",
            param="response_format",
        )
    frame_count, frame_ms = _gif_options(fields, output_format, stream=stream, form=form)
    if output_format != "svg" and any(k.startswith("svg[") or k == "svg" for k in fields):
        raise InvalidValue(
            "Invalid 'svg': SVG options apply only to output_format 'svg'.", param="svg"
        )
    complexity = fields.get("complexity")
    if complexity is not None:
        _enum(fields, "complexity", ("low", "medium", "high"), "")
    moderation = _enum(fields, "moderation", ("low", "auto"), "auto")
    quality: Quality = "high" if quality_req == "auto" else cast(Quality, quality_req)
    return EditParams(
        model=model, served_model=served_model, family=family, prompt=prompt, n=n, size=size,
        quality=quality, quality_requested=quality_req, input_fidelity=cast(Fidelity, fidelity),
        output_format=cast(OutputFormat, output_format), output_compression=compression,
        background=cast(Background, background), response_format=response_format,
        stream=stream, partial_images=partial_images if stream else 0, user=user,
        safety_identifier=safety_identifier, moderation=moderation,
        complexity=cast(Complexity | None, complexity), frame_count=frame_count,
        frame_duration_ms=frame_ms, mode=mode,
    )  # fmt: skip


def _gif_options(
    fields: dict[str, str], output_format: str, *, stream: bool, form: EditForm
) -> tuple[int | None, int | None]:
    """``frame_count`` / ``frame_duration_ms``: GIF only; GIF forbids streaming and masks."""
    if output_format != "gif":
        for name in ("frame_count", "frame_duration_ms"):
            if name in fields:
                raise InvalidValue(
                    f"Invalid '{name}': it applies only to output_format 'gif'.", param=name
                )
        return None, None
    low, high, default = GIF_FRAMES
    frames = _int(fields, "frame_count", default, low, high)
    duration = _int(fields, "frame_duration_ms", 200, 10, GIF_MAX_FRAME_MS)
    if stream:
        raise InvalidValue("Invalid 'stream': GIF output cannot be streamed.", param="stream")
    if form.mask is not None:
        raise InvalidValue("Invalid 'mask': GIF output takes no mask.", param="mask")
    return frames, int(round(duration / 10) * 10)


def resolve_size(
    params: EditParams, first_image: tuple[int, int] | None, limits: Limits
) -> tuple[int, int]:
    """The concrete output size: the requested one, or ``auto`` resolved from image 1 (from
    ``GENERATION_AUTO_SIZE`` for a generation, which has no image)."""
    if params.size is not None:
        return params.size
    rule = FAMILIES[params.family].sizes
    if first_image is None:
        w, h = GENERATION_AUTO_SIZE
        scale = min(1.0, math.sqrt(limits.max_output_pixels / (w * h)))
        return max(1, int(w * scale)), max(1, int(h * scale))
    w, h = first_image
    if rule == "fixed":
        aspect = math.log(w / h)
        return min(FIXED_SIZES, key=lambda s: abs(math.log(s[0] / s[1]) - aspect))
    if rule == "free":
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
