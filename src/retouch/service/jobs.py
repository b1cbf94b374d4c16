"""Stages of an edit that need no state: uploads -> ``EditJob``, output pixels -> bytes."""

from __future__ import annotations

import pybase64

from retouch.config import Limits
from retouch.engine.types import EditJob, EngineInfo, Pixels
from retouch.errors import InvalidImage, InvalidValue, PayloadTooLarge
from retouch.imaging import decode
from retouch.imaging.encode import encode, fit, flatten
from retouch.service.form import EditForm
from retouch.service.params import EditParams, resolve_size


def check_capabilities(
    params: EditParams, form: EditForm, info: EngineInfo, limits: Limits
) -> None:
    """What the model can take, checked before anything is decoded."""
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


def decode_job(
    form: EditForm, params: EditParams, limits: Limits
) -> tuple[EditJob, list[tuple[int, int]]]:
    """Decode the uploads into an ``EditJob`` (blocking: run it off the event loop). Returns
    the job and the input sizes (for usage)."""
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
    images = tuple(_load(o) for o in opened)
    mask = None
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
    )
    return job, [(o.width, o.height) for o in opened]


def _load(opened: decode.OpenedImage) -> Pixels:
    """The pixels, with Pillow's own decoded copy freed at once: otherwise a 16-image request
    holds every image twice until the last one is decoded."""
    try:
        return decode.load_pixels(opened)
    finally:
        opened.image.close()


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
