"""JoyAI-Image-Edit (``jdopensource/JoyAI-Image-Edit-Diffusers``, Apache-2.0): instruction edits
of one image, and text to image, with a Qwen3-VL encoder and a Wan VAE.

* an edit -> ``JoyImageEditPipeline(image=image 1)``: the input, resized to the generation size
  (the output's aspect), is the reference; the pipeline then renders at its own resolution
  bucket nearest that aspect (~1 megapixel, ``joyimage/image_processor.py``: only the 1024
  bucket list exists, whatever ``height``/``width`` say) and center-crops the reference to it;
  retouch resizes the result to the requested size;
* a generation -> the same pipeline without ``image``;
* a mask: the pipeline has no inpaint variant, so the edit runs on the whole image and the
  result is composited outside the mask exactly, like every engine.

The pipeline samples the reference's VAE latents from torch's global generator (``latent_dist
.sample()`` without a generator); retouch seeds a forked global generator with the request
seed around the call, so a seed gives the same image every time.

One input image (``JoyImageEditPipeline`` pairs one reference with each prompt; the multi-image
``JoyImageEditPlusPipeline`` is not served). 40 steps at ``quality=high`` and CFG 4.0 with the
empty negative prompt, as on the model card; ``complexity`` scales the CFG.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from retouch.engine.diffusers_common import (
    DiffusersEngine,
    FamilyDefaults,
    cpu_generators,
    image_only_processor,
    pil_rgb,
    request_seed,
    to_pixels,
)
from retouch.engine.previews import DenoiseTap, joy_decoder
from retouch.engine.types import EditJob, EditOutput, Progress

JOY_DEFAULTS = FamilyDefaults(
    description="JoyAI-Image-Edit: instruction edits of one image and text to image (diffusers).",
    steps={"low": 20, "medium": 30, "high": 40},
    guidance_scale=4.0,
    high_fidelity_strength=1.0,  # unused: the pipeline has no strength
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=1,
)
_GLOBAL_RNG = threading.Lock()
"""The pipeline samples the reference latents from torch's global generator, which the call
seeds (forked): two JoyImage engines of one process must not do that at the same time."""
MAX_SEQUENCE_LENGTH = 4096
"""The pipeline's default prompt length (tokens, image tokens included)."""


class JoyImageEditEngine(DiffusersEngine):
    defaults = JOY_DEFAULTS
    family = "joyimage-edit"
    markup_use = "hint"  # an instruction model reads the strokes drawn on the image
    complexity_scales_guidance = True
    text_to_image = "natively: the edit pipeline without a reference image"

    pipe: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import JoyImageEditPipeline

        processor = image_only_processor(folder, "qwen3-vl")
        self.pipe = self._load_one(JoyImageEditPipeline, folder, processor=processor)

    def _release_pipelines(self) -> None:
        self.pipe = None

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o, pipe = self.options, self.pipe

        # 1. OpenAI parameters -> steps, CFG and the generation aspect.
        plan = self.plan(job)
        width, height = plan.size
        extra: dict[str, Any] = {}
        if o.negative_prompt is not None:
            extra["negative_prompt"] = o.negative_prompt

        # 2. The hooks: cancellation before every transformer pass, step count, partials.
        tap = DenoiseTap(
            progress=progress,
            steps=plan.steps,
            partial_images=job.partial_images,
            decode=joy_decoder(pipe, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
        )

        # 3. Denoise (the pipeline picks its resolution bucket from height/width).
        seed = request_seed(job.seed, o.seed)
        devices = [self.device] if self.device.type == "cuda" else []
        with _GLOBAL_RNG, tap.watching(pipe.transformer), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the reference latents' unseeded sample
            result = pipe(
                prompt=job.prompt,
                image=None if job.generate else pil_rgb(job.images[0], plan.size),
                height=height,
                width=width,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                num_images_per_prompt=job.n,
                generator=cpu_generators(seed, job.n),
                output_type="np",
                callback_on_step_end=tap,
                callback_on_step_end_tensor_inputs=["latents"],
                max_sequence_length=o.max_sequence_length or MAX_SEQUENCE_LENGTH,
                **extra,
            )

        # 4. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)
