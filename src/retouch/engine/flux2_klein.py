"""FLUX.2-klein (``black-forest-labs/FLUX.2-klein-4B``, Apache-2.0): the default generative engine.

One resident set of weights serves every mode:

* no mask -> ``Flux2KleinPipeline(image=[image 1, image 2, ...])``: instruction edit with every
  input image as a reference (klein has no strength knob on this path);
* a mask, or ``input_fidelity=high`` -> ``Flux2KleinInpaintPipeline`` built with ``from_pipe``
  (same modules, no second copy): image 1 is the start image, the mask (all of it without an
  OpenAI mask) marks what may change, images 2.. are ``image_reference``. ``strength`` 1.0 fully
  regenerates the edit area; ``input_fidelity=high`` starts from the noised input instead
  (``high_fidelity_strength``, default 0.75: with 4 steps, the last 3 run).

The distilled 4B model is made for 4 steps at guidance 1.0 (no CFG pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retouch.engine.diffusers_common import (
    DiffusersEngine,
    FamilyDefaults,
    accelerate,
    cpu_generators,
    diffusers_mask,
    pil_rgb,
    place,
    request_seed,
    steps_run,
    to_pixels,
)
from retouch.engine.previews import DenoiseTap, klein_decoder
from retouch.engine.types import EditJob, EditOutput, Progress
from retouch.errors import InvalidValue

KLEIN_DEFAULTS = FamilyDefaults(
    description="FLUX.2-klein: instruction edits, several references and masked edits (diffusers).",
    steps={"low": 2, "medium": 4, "high": 4},
    guidance_scale=1.0,
    high_fidelity_strength=0.75,
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=4,
)
REFERENCE_MIN_SIDE = 64
REFERENCE_MAX_ASPECT = 8
"""klein's image processor refuses references under 64 px a side or beyond 8:1."""
TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)
"""Qwen3-4B hidden states that form klein's prompt embedding (the pipeline's default)."""


class Flux2KleinEngine(DiffusersEngine):
    defaults = KLEIN_DEFAULTS
    family = "flux2-klein"
    markup_use = "hint"  # an instruction model reads the strokes drawn on the image
    text_to_image = "natively: the edit pipeline without reference images"

    pipe: Any = None
    inpaint: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import Flux2KleinPipeline

        loader: Any = Flux2KleinPipeline
        pipe = loader.from_pretrained(folder, dtype=self.dtype, local_files_only=True)
        place(pipe, self.model, self.device)
        self.adopt(pipe)

    def adopt(self, pipe: Any) -> None:
        """Serve an already placed ``Flux2KleinPipeline`` (``load`` and the GPU benchmark, which
        builds its weights in memory): applies the options' accelerations, builds the
        inpaint pipeline."""
        from diffusers import Flux2KleinInpaintPipeline

        accelerate(pipe.transformer, self.options, self.model.name)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        # Shares every module with the edit pipeline: masks cost no memory. NOTE: from_pipe
        # casts the shared modules to its dtype argument, float32 by default (diffusers
        # 0.42): without it the bf16 transformer silently ran in float32, 6.9x slower.
        self.inpaint = Flux2KleinInpaintPipeline.from_pipe(pipe, dtype=pipe.transformer.dtype)
        self.inpaint.set_progress_bar_config(disable=True)

    def _release_pipelines(self) -> None:
        self.pipe = self.inpaint = None

    def check(self, job: EditJob) -> None:
        if job.generate:  # the blank canvas is never used as a reference
            return
        for index, pixels in enumerate(job.images):
            h, w = pixels.shape[:2]
            if max(w, h) > REFERENCE_MAX_ASPECT * min(w, h):
                raise InvalidValue(
                    f"Invalid 'image': image {index + 1} is {w}x{h}; the model "
                    f"'{self.model.name}' takes images with an aspect ratio up to "
                    f"{REFERENCE_MAX_ASPECT}:1.",
                    param="image",
                )

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o = self.options
        # a generation's blank canvas and full mask are ignored: klein generates from text alone
        masked = not job.generate and (job.mask is not None or job.input_fidelity == "high")

        # 1. OpenAI parameters -> steps, guidance, strength and a size klein renders well.
        plan = self.plan(job)
        strength = plan.strength
        width, height = plan.size

        # 2. Inputs: the start image at the generation size (masked path); references keep
        #    their aspect, shrunk to their pixel budget.
        references = (
            []
            if job.generate
            else self.references(job, start=1 if masked else 0, min_side=REFERENCE_MIN_SIDE)
        )

        # 3. The hooks: cancellation before every step, step count, partial images.
        pipe = self.inpaint if masked else self.pipe
        tap = DenoiseTap(
            progress=progress,
            steps=steps_run(plan.steps, strength) if masked else plan.steps,
            partial_images=job.partial_images,
            decode=klein_decoder(pipe, plan.size, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
        )
        common: dict[str, Any] = {
            "prompt": job.prompt,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "num_images_per_prompt": job.n,
            "generator": cpu_generators(request_seed(job.seed, self.options.seed), job.n),
            "output_type": "np",
            "callback_on_step_end": tap,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "max_sequence_length": o.max_sequence_length or 512,
            "text_encoder_out_layers": tuple(o.text_encoder_out_layers or TEXT_ENCODER_OUT_LAYERS),
        }

        # 4. Denoise: the inpaint pipeline takes its size from the start image.
        with tap.watching(pipe.transformer):
            if masked:
                result = pipe(
                    image=pil_rgb(job.images[0], plan.size),
                    mask_image=diffusers_mask(job.mask, plan.size),
                    image_reference=references or None,
                    strength=strength,
                    **common,
                )
            else:
                result = pipe(image=references or None, height=height, width=width, **common)

        # 5. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)
