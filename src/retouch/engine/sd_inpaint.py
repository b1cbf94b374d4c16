"""Stable Diffusion inpainting (SD 1.5 inpainting class): the small tier, the only family that
runs at all on a CPU (slowly: minutes per 512-pixel image, ``engines.md`` §3).

``StableDiffusionInpaintPipeline`` for everything:

* a mask -> the masked area is repainted (``strength`` 1.0; ``input_fidelity=high`` 0.75
  starts from the noised input so its colours and layout show through);
* no mask -> the whole image is the edit area, starting from the noised input (``strength``
  0.75, ``input_fidelity=high`` 0.5): an img2img variation guided by the prompt. SD has no
  instruction following; it repaints what the prompt describes. This choice (instead of a
  400) keeps OpenAI clients that send no mask working; the docs say what to expect.

One input image only (``max_images`` 1); classifier-free guidance 7.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retouch.engine.batching import GroupProgress, Member
from retouch.engine.diffusers_common import (
    DiffusersEngine,
    FamilyDefaults,
    accelerate,
    batch_generators,
    cpu_generators,
    diffusers_mask,
    pil_rgb,
    place,
    request_seed,
    steps_run,
    to_pixels,
)
from retouch.engine.previews import DenoiseTap, sd_decoder
from retouch.engine.types import EditJob, EditOutput, Progress

SD_DEFAULTS = FamilyDefaults(
    description="Stable Diffusion inpainting: masked repaints, CPU-capable (diffusers).",
    steps={"low": 15, "medium": 25, "high": 40},
    guidance_scale=7.5,
    high_fidelity_strength=0.75,
    max_pixels=512 * 512,
    min_pixels=256 * 256,
    max_images=1,
)
NO_MASK_STRENGTH = {"low": 0.75, "high": 0.5}
"""Without a mask: how far from the input the img2img variation may go, per input_fidelity."""


class SDInpaintEngine(DiffusersEngine):
    defaults = SD_DEFAULTS
    family = "sd-inpaint"
    batches = True  # prompts, images, masks and generators are all per batch row

    pipe: Any = None

    def _load_pipelines(self, folder: Path) -> None:
        from diffusers import StableDiffusionInpaintPipeline

        loader: Any = StableDiffusionInpaintPipeline
        self.pipe = loader.from_pretrained(
            folder, dtype=self.dtype, local_files_only=True,
            safety_checker=None, requires_safety_checker=False,
        )  # fmt: skip
        place(self.pipe, self.model, self.device)
        accelerate(self.pipe.unet, self.options, self.model.name)

    def _release_pipelines(self) -> None:
        self.pipe = None

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o, pipe = self.options, self.pipe

        # 1. OpenAI parameters -> steps, CFG, strength and a size SD renders well (<= 512^2).
        plan = self.plan(job)
        strength = plan.strength if job.mask is not None else NO_MASK_STRENGTH[job.input_fidelity]
        width, height = plan.size

        # 2. The hooks: cancellation before every UNet pass, step count, partial images (the
        #    current latents: SD predicts noise, so there is no free x0 estimate).
        tap = DenoiseTap(
            progress=progress,
            steps=steps_run(plan.steps, strength),
            partial_images=job.partial_images,
            decode=sd_decoder(pipe, o.preview_downscale),
            flow=False,
            on_step=self.count_step,
        )

        # 3. Denoise.
        with tap.watching(pipe.unet):
            result = pipe(
                prompt=job.prompt,
                negative_prompt=o.negative_prompt,
                image=pil_rgb(job.images[0], plan.size),
                mask_image=diffusers_mask(job.mask, plan.size),
                height=height,
                width=width,
                strength=strength,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                num_images_per_prompt=job.n,
                generator=cpu_generators(request_seed(job.seed, self.options.seed), job.n),
                output_type="np",
                callback_on_step_end=tap,
                callback_on_step_end_tensor_inputs=["latents"],
            )

        # 4. Back to the requested size; pixels outside the mask come from the input exactly.
        return self.output(job, to_pixels(result.images), tap.steps_done)

    def _generate_batch(self, members: list[Member]) -> list[EditOutput]:
        """Jobs of one ``batch_key`` (same path, size, steps, strength, n = 1) as one call:
        row i is job i's prompt, image, mask and generator."""
        o, pipe, jobs = self.options, self.pipe, [m.job for m in members]
        plan = self.plan(jobs[0])
        strength = plan.strength if jobs[0].mask is not None else NO_MASK_STRENGTH[jobs[0].input_fidelity]
        width, height = plan.size
        tap = DenoiseTap(
            progress=GroupProgress(members),
            steps=steps_run(plan.steps, strength),
            partial_images=jobs[0].partial_images,
            decode=sd_decoder(pipe, o.preview_downscale),
            flow=False,
            on_step=self.count_step,
            outputs=[(m.progress, row) for row, m in enumerate(members)],
        )
        with tap.watching(pipe.unet):
            result = pipe(
                prompt=[j.prompt for j in jobs],
                negative_prompt=None if o.negative_prompt is None else [o.negative_prompt] * len(jobs),
                image=[pil_rgb(j.images[0], plan.size) for j in jobs],
                mask_image=[diffusers_mask(j.mask, plan.size) for j in jobs],
                height=height,
                width=width,
                strength=strength,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                generator=batch_generators(jobs, o.seed),
                output_type="np",
                callback_on_step_end=tap,
                callback_on_step_end_tensor_inputs=["latents"],
            )
        images = to_pixels(result.images)
        return [self.output(j, [images[row]], tap.steps_done) for row, j in enumerate(jobs)]
