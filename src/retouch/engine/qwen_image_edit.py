"""Qwen-Image-Edit (``Qwen/Qwen-Image-Edit-2511`` or -2509, Apache-2.0): the quality tier.

* no mask -> ``QwenImageEditPlusPipeline(image=[image 1, image 2, ...])``: every input image is
  a reference (the 2509 card recommends 1-3); output ``height``/``width`` are honoured;
* a mask, or ``input_fidelity=high`` with one image -> ``QwenImageEditInpaintPipeline`` built
  with ``from_pipe`` (same modules): one image only, and it renders at ~1 megapixel in the
  input's aspect whatever the requested size (a diffusers constant); the result is resized to
  the output size and composited outside the mask. Masked edits with several images are
  refused with a 400 that names the limit.

Both pipelines use true CFG (a second transformer pass with the negative prompt), 40 steps at
``quality=high`` by default: plan for tens of seconds per image even on an H100, or load a
Lightning LoRA and set ``steps`` (e.g. 8) and ``true_cfg_scale`` 1.0 in the options.

The Qwen2-VL processor is rebuilt from the weights' ``processor/`` folder for images only:
transformers cannot load its (unused) video processor without torchvision, which the CPU
torch wheel this project pins has no working build of.
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
from retouch.engine.diffusers_common import (
    image_only_processor as common_image_only_processor,
)
from retouch.engine.previews import DenoiseTap, qwen_decoder
from retouch.engine.types import EditJob, EditOutput, Progress
from retouch.errors import InvalidValue

QWEN_DEFAULTS = FamilyDefaults(
    description="Qwen-Image-Edit: high-quality instruction and multi-image edits (diffusers).",
    steps={"low": 20, "medium": 30, "high": 40},
    guidance_scale=1.0,  # not guidance-distilled: true_cfg_scale does the guiding
    high_fidelity_strength=0.8,
    max_pixels=1024 * 1024,
    min_pixels=512 * 512,
    max_images=3,
)
TRUE_CFG_SCALE = 4.0
NEGATIVE_PROMPT = " "


def image_only_processor(folder: Path) -> Any:
    """The Qwen2-VL processor of a pipeline folder, without its video processor.

    Reads ``processor/`` (image processor settings; tokenizer files, else ``tokenizer/``).
    """
    return common_image_only_processor(folder, "qwen2-vl")


class QwenImageEditEngine(DiffusersEngine):
    defaults = QWEN_DEFAULTS
    family = "qwen-image-edit"
    markup_use = "hint"  # an instruction model reads the strokes drawn on the image

    pipe: Any = None
    inpaint: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import QwenImageEditInpaintPipeline, QwenImageEditPlusPipeline

        loader: Any = QwenImageEditPlusPipeline
        self.pipe = loader.from_pretrained(
            folder, processor=image_only_processor(folder), dtype=self.dtype, local_files_only=True
        )
        place(self.pipe, self.model, self.device)
        accelerate(self.pipe.transformer, self.options, self.model.name)
        # dtype: from_pipe would otherwise cast the shared modules to float32.
        self.inpaint = QwenImageEditInpaintPipeline.from_pipe(self.pipe, dtype=self.pipe.transformer.dtype)
        self.inpaint.set_progress_bar_config(disable=True)

    def _release_pipelines(self) -> None:
        self.pipe = self.inpaint = None

    def check(self, job: EditJob) -> None:
        if job.mask is not None and len(job.images) > 1:
            raise InvalidValue(
                f"Invalid 'image': the model '{self.model.name}' takes 1 image with a mask "
                f"(got {len(job.images)}); send the mask with a single image, or several "
                "images without a mask.",
                param="image",
                code="too_many_images",
            )

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o = self.options

        # 1. OpenAI parameters -> steps, CFG, strength and a size within the pixel budget.
        plan = self.plan(job)
        masked = job.mask is not None or (job.input_fidelity == "high" and len(job.images) == 1)
        cfg = TRUE_CFG_SCALE if o.true_cfg_scale is None else o.true_cfg_scale
        guided: dict[str, Any] = {"true_cfg_scale": cfg}
        if cfg > 1:  # diffusers warns about a negative prompt that CFG would not use
            guided["negative_prompt"] = NEGATIVE_PROMPT if o.negative_prompt is None else o.negative_prompt
        width, height = plan.size

        # 2. The hooks: cancellation before every transformer pass, step count, partials.
        pipe = self.inpaint if masked else self.pipe
        tap = DenoiseTap(
            progress=progress,
            steps=steps_run(plan.steps, plan.strength) if masked else plan.steps,
            partial_images=job.partial_images,
            decode=qwen_decoder(pipe, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
        )
        common: dict[str, Any] = {
            "prompt": job.prompt,
            "num_inference_steps": plan.steps,
            "num_images_per_prompt": job.n,
            "generator": cpu_generators(request_seed(job.seed, self.options.seed), job.n),
            "output_type": "np",
            "callback_on_step_end": tap,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "max_sequence_length": o.max_sequence_length or 512,
            **guided,
        }

        # 3. Denoise.
        with tap.watching(pipe.transformer):
            if masked:
                result = pipe(
                    image=pil_rgb(job.images[0], plan.size),
                    mask_image=diffusers_mask(job.mask, plan.size),
                    strength=plan.strength,
                    **common,
                )
            else:
                result = pipe(image=self.references(job, start=0), height=height, width=width, **common)

        # 4. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)
