"""FLUX.1-Kontext (``black-forest-labs/FLUX.1-Kontext-dev``, FLUX.1 [dev] **non-commercial**
licence): in-context instruction edits of one image.

* no mask -> ``FluxKontextPipeline(image=image 1)``: the input, resized to the generation size,
  is the context; ``max_area`` = the generation size and ``_auto_resize=False``, because
  without them Kontext silently renders at 1024² and snaps the input to its preferred
  resolutions (``engines.md`` §4) — retouch chooses the size from OpenAI's ``size`` instead;
* a mask, or ``input_fidelity=high`` -> ``FluxKontextInpaintPipeline`` built with ``from_pipe``
  (same modules): image 1 is the start image, the mask (all of it without an OpenAI mask) marks
  what may change; ``strength`` 1.0, or ``high_fidelity_strength`` (0.8) for high fidelity.

One input image (the dev model is trained on one context image); guidance 2.5 and 28 steps at
``quality=high`` as on the model card. The weights' licence forbids commercial use: the model
only starts with ``accept_license = "non-commercial"`` in its settings.
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
from retouch.engine.previews import DenoiseTap, kontext_decoder
from retouch.engine.types import EditJob, EditOutput, Progress

KONTEXT_DEFAULTS = FamilyDefaults(
    description="FLUX.1-Kontext: in-context instruction edits of one image (diffusers; "
    "non-commercial licence).",
    steps={"low": 14, "medium": 20, "high": 28},
    guidance_scale=2.5,
    high_fidelity_strength=0.8,
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=1,
)


class FluxKontextEngine(DiffusersEngine):
    defaults = KONTEXT_DEFAULTS
    family = "flux-kontext"

    pipe: Any = None
    inpaint: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import FluxKontextInpaintPipeline, FluxKontextPipeline

        loader: Any = FluxKontextPipeline
        self.pipe = loader.from_pretrained(folder, dtype=self.dtype, local_files_only=True)
        place(self.pipe, self.model, self.device)
        accelerate(self.pipe.transformer, self.options, self.model.name)
        # dtype: from_pipe would otherwise cast the shared modules to float32.
        self.inpaint = FluxKontextInpaintPipeline.from_pipe(self.pipe, dtype=self.pipe.transformer.dtype)
        self.inpaint.set_progress_bar_config(disable=True)

    def _release_pipelines(self) -> None:
        self.pipe = self.inpaint = None

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o = self.options
        masked = job.mask is not None or job.input_fidelity == "high"

        # 1. OpenAI parameters -> steps, guidance, strength and a size within the budget.
        plan = self.plan(job)
        width, height = plan.size

        # 2. The hooks: cancellation before every transformer pass, step count, partials.
        pipe = self.inpaint if masked else self.pipe
        tap = DenoiseTap(
            progress=progress,
            steps=steps_run(plan.steps, plan.strength) if masked else plan.steps,
            partial_images=job.partial_images,
            decode=kontext_decoder(pipe, plan.size, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
        )
        common: dict[str, Any] = {
            "prompt": job.prompt,
            "image": pil_rgb(job.images[0], plan.size),
            "height": height,
            "width": width,
            "max_area": width * height,  # else Kontext renders at 1024² whatever height/width say
            "_auto_resize": False,  # keep retouch's size, not Kontext's preferred list
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "num_images_per_prompt": job.n,
            "generator": cpu_generators(request_seed(job.seed, o.seed), job.n),
            "output_type": "np",
            "callback_on_step_end": tap,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "max_sequence_length": o.max_sequence_length or 512,
        }

        # 3. Denoise.
        with tap.watching(pipe.transformer, cache_context=True):  # Kontext sets none itself
            if masked:
                result = pipe(mask_image=diffusers_mask(job.mask, plan.size), strength=plan.strength, **common)
            else:
                result = pipe(**common)

        # 4. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)
