"""Qwen-Image-2.1 (``Qwen/Qwen-Image-2.1``, Qwen **research licence, non-commercial**): text to
image, single- and multi-reference edits, native RGBA.

* edits -> ``QwenImage21Pipeline(image=[image 1, ..., image k])``: up to 10 condition images
  (``max_images``), each shown to the Qwen3-VL encoder and VAE-encoded; the pipeline resizes
  them itself to ``output_resolution``² pixels in their own aspect, and retouch sets
  ``output_resolution`` to the square root of the reference budget (1024 by default, the
  pipeline's own default). ``height``/``width`` are the generation size (multiples of 32);
* generations -> the same pipeline without ``image``;
* a mask: the pipeline has no inpaint variant, so the edit runs on image 1 (+ references)
  and the result is composited outside the mask exactly, like every engine;
* ``background=transparent``: the model's VAE decodes RGBA, so the alpha channel is the
  model's own (no matting). Other backgrounds flatten it onto white. Inputs with an alpha
  channel are handed over as RGBA, which the pipeline reads natively (its VAE takes 4 channels).
* ``markup``: the pipeline takes no separate annotation input (its ``__call__`` has ``image``
  only), so markup is drawn onto image 1 (``hint``) and the model reads the strokes.

No CFG by default (``true_cfg_scale`` 1.0, the pipeline's default); set the ``true_cfg_scale``
option (> 1) to run the negative pass with ``negative_prompt`` (default " "). A checkpoint whose
scheduler grid (``sample_sigmas``) has as many steps as planned keeps that grid; another step
count uses the pipeline's own fallback grid ``linspace(1, 1/steps, steps)``.

The weights' licence forbids commercial use: the model only starts with
``accept_license = "non-commercial"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retouch.engine.diffusers_common import (
    DiffusersEngine,
    FamilyDefaults,
    composite,
    cpu_generators,
    image_only_processor,
    request_seed,
    to_pixels,
)
from retouch.engine.previews import DenoiseTap, qwen21_decoder
from retouch.engine.types import EditJob, EditOutput, Pixels, Progress
from retouch.imaging.encode import fit, flatten

QWEN21_DEFAULTS = FamilyDefaults(
    description="Qwen-Image-2.1: edits with up to 10 references, text to image, native RGBA "
    "(diffusers; non-commercial research licence).",
    steps={"low": 20, "medium": 30, "high": 40},
    guidance_scale=1.0,  # unused: true_cfg_scale does the guiding
    high_fidelity_strength=1.0,  # unused: the pipeline has no strength
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=10,
)
NEGATIVE_PROMPT = " "


def _pil(pixels: Pixels) -> Image.Image:
    """An input image as the pipeline reads it: RGBA kept (native), RGB as it is."""
    return Image.fromarray(np.ascontiguousarray(pixels))


def _rgba(pixels: Pixels) -> Pixels:
    if pixels.shape[2] == 4:
        return pixels
    alpha = np.full((*pixels.shape[:2], 1), 255, np.uint8)
    return np.concatenate([pixels, alpha], axis=2)


class QwenImage21Engine(DiffusersEngine):
    defaults = QWEN21_DEFAULTS
    family = "qwen-image-2.1"
    markup_use = "hint"  # no annotation input: the model reads the strokes drawn on image 1
    text_to_image = "natively: the pipeline without condition images"
    size_multiple = 32  # a 16x VAE read as unpatched 2x2 groups: the pipeline floors to 32

    pipe: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import QwenImage21Pipeline

        processor = image_only_processor(folder, "qwen3-vl")
        self.pipe = self._load_one(QwenImage21Pipeline, folder, processor=processor)

    def _release_pipelines(self) -> None:
        self.pipe = None

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o, pipe = self.options, self.pipe

        # 1. OpenAI parameters -> steps, CFG, the generation size and the reference size.
        plan = self.plan(job)
        width, height = plan.size
        cfg = 1.0 if o.true_cfg_scale is None else o.true_cfg_scale
        guided: dict[str, Any] = {"true_cfg_scale": cfg}
        if cfg > 1:
            guided["negative_prompt"] = NEGATIVE_PROMPT if o.negative_prompt is None else o.negative_prompt
        grid = pipe.config.get("sample_sigmas")
        if grid is not None and len(grid) != plan.steps:
            guided["sigmas"] = np.linspace(1.0, 1 / plan.steps, plan.steps).tolist()
        budget = o.reference_max_pixels or o.max_pixels or self.defaults.max_pixels
        images = None if job.generate else [_pil(p) for p in job.images]

        # 2. The hooks: cancellation before every transformer pass, step count, partials.
        tap = DenoiseTap(
            progress=progress,
            steps=plan.steps,
            partial_images=job.partial_images,
            decode=qwen21_decoder(pipe, plan.size, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
        )

        # 3. Denoise.
        with tap.watching(pipe.transformer):
            result = pipe(
                prompt=job.prompt,
                image=images,
                height=height,
                width=width,
                num_inference_steps=plan.steps,
                num_images_per_prompt=job.n,
                generator=cpu_generators(request_seed(job.seed, o.seed), job.n),
                output_type="np",
                callback_on_step_end=tap,
                callback_on_step_end_tensor_inputs=["latents"],
                output_resolution=round(math.sqrt(budget)),
                **guided,
            )

        # 4. Back to the requested size, alpha kept or flattened; outside the mask the input.
        return self.rgba_output(job, to_pixels(result.images), tap.steps_done)

    def rgba_output(self, job: EditJob, generated: list[Pixels], steps: int) -> EditOutput:
        transparent = job.background == "transparent"
        images = [fit(g if transparent else flatten(g), job.size) for g in generated]
        if job.mask is not None and not job.generate:
            first = job.images[0]
            original = fit(_rgba(first) if transparent else flatten(first), job.size)
            mask = job.mask
            if (mask.shape[1], mask.shape[0]) != job.size:
                mask = np.asarray(Image.fromarray(mask).resize(job.size, Image.Resampling.BILINEAR))
            images = [composite(g, original, mask) for g in images]
        notes = ["transparent background: the model's own alpha channel"] if transparent else []
        return EditOutput(images=images, steps=steps, notes=notes)
