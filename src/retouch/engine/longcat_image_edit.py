"""LongCat-Image-Edit (``meituan-longcat/LongCat-Image-Edit``, Apache-2.0): instruction edits of
one image.

* an edit -> ``LongCatImageEditPipeline(image=image 1)``: the input, resized to the generation
  size (the output's aspect), is the reference. The pipeline renders at ~1 megapixel in the
  input's aspect whatever retouch asks (a module function, ``calculate_dimensions(1024 * 1024,
  ratio)``; ``__call__`` takes no ``height``/``width``); retouch resizes the result;
* a mask: no inpaint variant, so the edit runs on the whole image and the result is
  composited outside the mask exactly, like every engine.

``LongCatImageEditPipeline.__call__`` takes no ``callback_on_step_end``: the step count, the
partial images and the cancellation check all come from a forward pre-hook on the transformer
(``DenoiseTap(hook_only=pipe)``): the input of step k+1 carries step k's latents. A cancelled
job stops before the next step's compute; one cancelled during the last step still decodes.

50 steps at ``quality=high`` and CFG 4.5 with the empty negative prompt, as on the model card;
``complexity`` scales the CFG. No text to image (the pipeline needs an input image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retouch.engine.diffusers_common import (
    DiffusersEngine,
    FamilyDefaults,
    cpu_generators,
    image_only_processor,
    pil_rgb,
    request_seed,
    to_pixels,
)
from retouch.engine.previews import DenoiseTap, kontext_decoder
from retouch.engine.types import EditJob, EditOutput, Progress

LONGCAT_DEFAULTS = FamilyDefaults(
    description="LongCat-Image-Edit: instruction edits of one image (diffusers).",
    steps={"low": 20, "medium": 35, "high": 50},
    guidance_scale=4.5,
    high_fidelity_strength=1.0,  # unused: the pipeline has no strength
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=1,
)


def render_size(pipe: Any, size: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) the pipeline renders for an input of ``size`` (read at call time,
    so it follows the pipeline module)."""
    import diffusers.pipelines.longcat_image.pipeline_longcat_image_edit as module

    width, height = size
    w, h = module.calculate_dimensions(1024 * 1024, width / height)  # type: ignore[no-untyped-call]
    return int(w), int(h)


class LongCatImageEditEngine(DiffusersEngine):
    defaults = LONGCAT_DEFAULTS
    family = "longcat-image-edit"
    markup_use = "hint"  # an instruction model reads the strokes drawn on the image
    complexity_scales_guidance = True

    pipe: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import LongCatImageEditPipeline

        processor = image_only_processor(folder, "qwen2-vl", subfolder="text_processor")
        self.pipe = self._load_one(LongCatImageEditPipeline, folder, text_processor=processor)

    def _release_pipelines(self) -> None:
        self.pipe = None

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o, pipe = self.options, self.pipe

        # 1. OpenAI parameters -> steps, CFG and the generation aspect.
        plan = self.plan(job)
        extra: dict[str, Any] = {}
        if o.negative_prompt is not None:
            extra["negative_prompt"] = o.negative_prompt
        rendered = render_size(pipe, plan.size)
        side = pipe.vae_scale_factor * 2
        tokens = (rendered[0] // side) * (rendered[1] // side)

        # 2. The hooks, on the transformer alone (no step callback in this pipeline).
        tap = DenoiseTap(
            progress=progress,
            steps=plan.steps,
            partial_images=job.partial_images,
            decode=kontext_decoder(pipe, rendered, o.preview_downscale),  # FLUX.1-style latents
            flow=True,
            on_step=self.count_step,
            hook_only=pipe,
            target_tokens=tokens,
        )

        # 3. Denoise.
        with tap.watching(pipe.transformer):
            result = pipe(
                image=pil_rgb(job.images[0], plan.size),
                prompt=job.prompt,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                num_images_per_prompt=job.n,
                generator=cpu_generators(request_seed(job.seed, o.seed), job.n),
                output_type="np",
                **extra,
            )

        # 4. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)
