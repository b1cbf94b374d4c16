"""Stages of an edit that need no state: uploads -> ``EditJob``, output pixels -> bytes."""

from __future__ import annotations

import numpy as np
import pybase64

from retouch.config import Limits
from retouch.engine.types import EditJob, EngineInfo, MarkupUse, Pixels
from retouch.errors import InvalidImage, InvalidValue, PayloadTooLarge
from retouch.imaging import decode
from retouch.imaging.encode import encode, fit, flatten
from retouch.service.capabilities import Served, check_engine_options
from retouch.service.form import EditForm, Upload
from retouch.service.markup import check_markup, markup_edit_area, markup_hint
from retouch.service.params import EditParams, resolve_size


def check_capabilities(
    params: EditParams, form: EditForm, info: EngineInfo, limits: Limits,
    served: dict[str, Served],
) -> None:  # fmt: skip
    """What the model can take, checked before anything is decoded. ``served``: every
    configured model (errors name the ones that could serve the request)."""
    if params.mode == "generate" and info.text_to_image is None:
        raise InvalidValue(
            f"The model '{params.model}' runs the '{served[params.served_model].engine}' engine, "
            "which cannot generate images from text: it edits existing images only "
            f"(POST /v1/images/edits). {generation_hint(served)}",
            param="model",
        )
    limit = 1 if params.family == "dall-e-2" else min(info.max_images, limits.max_images)
    if len(form.images) > limit:
        raise InvalidValue(
            f"Invalid 'image': {len(form.images)} images were sent but the model "
            f"'{params.model}' takes at most {limit}.",
            param="image",
            code="too_many_images",
        )
    if form.mask is not None and not info.supports_mask:
        raise InvalidValue(
            f"The model '{params.model}' does not support masks.", param="mask"
        )
    if params.background == "transparent" and not info.supports_transparency:
        raise InvalidValue(
            "Transparent background is not supported for this model.", param="background"
        )
    check_engine_options(params, params.served_model, served)


def generation_hint(served: dict[str, Served]) -> str:
    """Where generations can go instead: served models whose engine generates, or how to
    serve one."""
    able = [f"'{name}' ({s.engine})" for name, s in served.items() if s.info.text_to_image]
    if able:
        return f"Models on this server that can: {', '.join(able)}; send one as 'model'."
    return (
        "To serve generations, serve a generative model and make it the default, e.g. "
        "`retouch serve --model klein=flux2-klein:black-forest-labs/FLUX.2-klein-4B` with "
        'default_model = "klein" (FLUX.2-klein generates natively; sd-inpaint repaints a '
        "blank canvas). See the README."
    )


def decode_job(
    form: EditForm, params: EditParams, limits: Limits, markup_use: MarkupUse = "mask"
) -> tuple[EditJob, list[tuple[int, int]]]:
    """Decode the uploads into an ``EditJob`` (blocking: run it off the event loop). Returns
    the job and the input sizes (for usage). A generation (no uploads) gets its blank canvas.
    ``markup_use``: how the serving engine takes a ``markup`` (``EngineInfo.markup``)."""
    if params.mode == "generate":
        return canvas_job(params, limits), []
    dalle = params.family == "dall-e-2"
    opened, mask_opened = open_inputs(form, params, limits)
    first = opened[0]
    images = tuple(_load(o) for o in opened)
    mask = None
    if form.markup is not None:
        images, mask = _apply_markup(form.markup, images, limits, markup_use)
    if mask_opened is not None:
        mask = decode.mask_pixels(mask_opened, (first.width, first.height))
    elif dalle:
        if images[0].shape[2] != 4:
            raise InvalidImage(
                "Invalid input image - without a mask, dall-e-2 edits the transparent "
                "area of the image, and this image has no alpha channel.",
                param=first.upload.param,
            )
        mask = decode.alpha_to_mask(images[0])
    size = resolve_size(params, (first.width, first.height), limits)
    job = EditJob(
        prompt=params.prompt,
        images=images,
        mask=mask,
        size=size,
        n=params.n,
        quality=params.quality,
        input_fidelity=params.input_fidelity,
        background=params.background,
        partial_images=params.partial_images,
        complexity=params.complexity,
    )
    return job, [(o.width, o.height) for o in opened]



def open_inputs(
    form: EditForm, params: EditParams, limits: Limits
) -> tuple[list[decode.OpenedImage], decode.OpenedImage | None]:
    """The byte-cheap checks of the uploads, from image headers only (no pixels decoded):
    formats, per-image and per-request pixel caps, dall-e-2's square PNG. Local engines decode
    what this opens; a relay only checks (it passes the bytes on)."""
    dalle = params.family == "dall-e-2"
    opened = [
        decode.open_upload(u, max_pixels=limits.max_image_pixels, png_only=dalle)
        for u in form.images
    ]
    mask_opened = (
        decode.open_upload(form.mask, max_pixels=limits.max_image_pixels, png_only=True)
        if form.mask is not None
        else None
    )
    total = sum(o.width * o.height for o in opened)
    if total > limits.max_request_pixels:
        raise PayloadTooLarge(
            f"The input images have {total:,} pixels together; at most "
            f"{limits.max_request_pixels:,} are allowed per request.",
            param="image",
            code="image_too_large",
        )
    first = opened[0]
    if dalle and first.width != first.height:
        raise InvalidImage(
            f"Invalid file '{first.upload.param}': dall-e-2 needs a square image, got "
            f"{first.width}x{first.height}.",
            param=first.upload.param,
        )
    return opened, mask_opened

def _load(opened: decode.OpenedImage) -> Pixels:
    """The pixels, with Pillow's own decoded copy freed at once: otherwise a 16-image request
    holds every image twice until the last one is decoded."""
    try:
        return decode.load_pixels(opened)
    finally:
        opened.image.close()


CANVAS_GREY = 127
"""A generation's blank canvas (mid grey: inpainting at strength 1.0 noises it away)."""


def canvas_job(params: EditParams, limits: Limits) -> EditJob:
    """A generation's job: one blank canvas of the output size, all of it the edit area.
    Engines that generate natively ignore both; inpainting engines repaint all of it."""
    w, h = resolve_size(params, None, limits)
    return EditJob(
        prompt=params.prompt,
        images=(np.full((h, w, 3), CANVAS_GREY, np.uint8),),
        mask=np.full((h, w), 255, np.uint8),
        size=(w, h),
        n=params.n,
        quality=params.quality,
        input_fidelity="low",
        background=params.background,
        partial_images=params.partial_images,
        complexity=params.complexity,
        generate=True,
    )


def _apply_markup(
    upload: Upload, images: tuple[Pixels, ...], limits: Limits, use: MarkupUse
) -> tuple[tuple[Pixels, ...], Pixels | None]:
    """``markup`` -> the edit mask, or the first image with the strokes drawn on it."""
    opened = decode.open_upload(upload, max_pixels=limits.max_image_pixels, png_only=True)
    pixels = _load(opened)
    first = images[0]
    check_markup(pixels, (first.shape[1], first.shape[0]))
    if use == "mask":
        return images, markup_edit_area(pixels)
    return (markup_hint(first, pixels), *images[1:]), None


def encode_output(pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
    pixels = fit(pixels, size)
    if params.background == "opaque" or params.output_format == "jpeg":
        pixels = flatten(pixels)
    return encode(pixels, params.output_format, params.output_compression)


def encode_b64(pixels: Pixels, params: EditParams, size: tuple[int, int]) -> bytes:
    return pybase64.b64encode(encode_output(pixels, params, size))


def background_of(images: list[Pixels], params: EditParams) -> str:
    """What the encoded images really carry: alpha survives only in png/webp."""
    if params.output_format == "jpeg" or params.background == "opaque":
        return "opaque"
    return "transparent" if any(i.shape[2] == 4 for i in images) else "opaque"
