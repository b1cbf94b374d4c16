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

Cross-request batching (``batch_max_size``): requests with the same generation size, steps,
strength, guidance and reference count and sizes share one call.

* unmasked edits and generations: ``Flux2KleinPipeline`` takes one reference list for the whole
  batch (``prepare_image_latents`` encodes it once and repeats it over the rows), so a batched
  call replaces that method for the call (``per_row_references``): every row gets its own
  request's reference latents, each encoded by the pipeline's own method exactly as alone;
* masked edits with at most one reference: ``Flux2KleinInpaintPipeline``'s own batch dimension
  (start images, masks and one reference per row); with two or more references per request
  its reference list would be read as one batch, so those run alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

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
    batches = True  # unmasked path: prompts, generators and (per_row_references) references per row

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

    def _masked(self, job: EditJob) -> bool:
        # a generation's blank canvas and full mask are ignored: klein generates from text alone
        return not job.generate and (job.mask is not None or job.input_fidelity == "high")

    def _path(self, job: EditJob) -> str:
        return "masked" if self._masked(job) else "plain"

    def batch_key(self, job: EditJob) -> Hashable | None:
        """The base key plus the reference sizes: rows of one call must have reference token
        sequences of equal length (same count, same preprocessed sizes), and the transformer
        reads one set of position ids for the batch. Masked edits with two or more references
        run alone (the inpaint pipeline reads a reference list as one reference per row)."""
        key = super().batch_key(job)
        if key is None or job.generate:
            return None if key is None else (key, ())
        start = 1 if self._masked(job) else 0
        sizes = self.reference_sizes(job, start=start, min_side=REFERENCE_MIN_SIDE)
        if start == 1 and len(sizes) > 1:
            return None
        return (key, sizes)

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        o = self.options
        masked = self._masked(job)

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

    def _generate_batch(self, members: list[Member]) -> list[EditOutput]:
        """Jobs of one ``batch_key`` (same path, size, steps, strength, guidance, reference
        sizes, n = 1) as one call: row i is job i's prompt, generator and references (and
        start image and mask on the masked path)."""
        o, jobs = self.options, [m.job for m in members]
        masked = self._masked(jobs[0])
        plan = self.plan(jobs[0])
        width, height = plan.size
        start = 1 if masked else 0
        rows = [
            [] if j.generate else self.references(j, start=start, min_side=REFERENCE_MIN_SIDE)
            for j in jobs
        ]
        pipe = self.inpaint if masked else self.pipe
        tap = DenoiseTap(
            progress=GroupProgress(members),
            steps=steps_run(plan.steps, plan.strength) if masked else plan.steps,
            partial_images=jobs[0].partial_images,
            decode=klein_decoder(pipe, plan.size, o.preview_downscale),
            flow=True,
            on_step=self.count_step,
            outputs=[(m.progress, row) for row, m in enumerate(members)],
        )
        common: dict[str, Any] = {
            "prompt": [j.prompt for j in jobs],
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "generator": batch_generators(jobs, o.seed),
            "output_type": "np",
            "callback_on_step_end": tap,
            "callback_on_step_end_tensor_inputs": ["latents"],
            "max_sequence_length": o.max_sequence_length or 512,
            "text_encoder_out_layers": tuple(o.text_encoder_out_layers or TEXT_ENCODER_OUT_LAYERS),
        }
        with tap.watching(pipe.transformer):
            if masked:  # the inpaint pipeline's own batch dimension: one reference per row at most
                result = pipe(
                    image=[pil_rgb(j.images[0], plan.size) for j in jobs],
                    mask_image=[diffusers_mask(j.mask, plan.size) for j in jobs],
                    image_reference=[refs[0] for refs in rows] if rows[0] else None,
                    strength=plan.strength,
                    **common,
                )
            else:
                with per_row_references(pipe, rows):
                    # the pipeline checks and sizes row 0's; the override encodes every row's
                    result = pipe(image=rows[0] or None, height=height, width=width, **common)
        images = to_pixels(result.images)
        return [self.output(j, [images[row]], tap.steps_done) for row, j in enumerate(jobs)]


def condition_images(pipe: Any, references: list[Image.Image]) -> list[Any]:
    """References as ``Flux2KleinPipeline.__call__`` preprocesses its ``image`` list (step 4 of
    its ``__call__`` in diffusers 0.42.1): over 1024² shrunk to that area, sides floored to the
    VAE patch multiple, then ``preprocess`` (crop). ``per_row_references`` checks the result
    against the pipeline's own for row 0."""
    out = []
    for img in references:
        if img.width * img.height > 1024 * 1024:
            img = pipe.image_processor._resize_to_target_area(img, 1024 * 1024)
        multiple = pipe.vae_scale_factor * 2
        width, height = (img.width // multiple) * multiple, (img.height // multiple) * multiple
        out.append(pipe.image_processor.preprocess(img, height=height, width=width, resize_mode="crop"))
    return out


@contextlib.contextmanager
def per_row_references(pipe: Any, rows: list[list[Image.Image]]) -> Iterator[None]:
    """For one batched call of ``pipe``: each batch row gets its own request's references.

    ``Flux2KleinPipeline.prepare_image_latents(images, batch_size, ...)`` encodes one list and
    repeats it ``batch_size`` times. For the call it is replaced by one that runs the pipeline's
    own method once per row (batch size 1, the row's preprocessed references: the latents each
    request gets alone) and concatenates the rows along the batch dimension. The position ids
    depend only on the reference count and sizes, which ``batch_key`` makes equal, so they are
    the same for every row (checked: the transformer reads row 0's ids for the whole batch).
    Callers hold the engine's lock, so the instance attribute is never seen by another call.
    """
    import torch

    own = type(pipe).prepare_image_latents

    def prepare_image_latents(images: list[Any], batch_size: int, generator: Any, device: Any, dtype: Any) -> Any:
        per_row = [condition_images(pipe, refs) for refs in rows]
        if batch_size != len(rows) or len(images) != len(per_row[0]) or not all(
            torch.equal(a, b) for a, b in zip(images, per_row[0], strict=True)
        ):
            raise RuntimeError("klein batching: the pipeline's references are not row 0's (a diffusers change?)")
        encoded = [own(pipe, refs, 1, generator, device, dtype) for refs in per_row]
        ids = encoded[0][1]
        if not all(torch.equal(e[1], ids) for e in encoded):
            raise RuntimeError("klein batching: rows with different reference positions")
        return torch.cat([e[0] for e in encoded], dim=0), ids.repeat(len(rows), 1, 1)

    pipe.prepare_image_latents = prepare_image_latents
    try:
        yield
    finally:
        del pipe.prepare_image_latents  # back to the class's method
