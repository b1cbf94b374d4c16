"""What the diffusers engines share: options, device and dtype, loading, pixels in and out.

Each family module (``flux2_klein``, ``qwen_image_edit``, ``sd_inpaint``) subclasses
``DiffusersEngine`` and writes its own ``_load_pipelines`` and ``_generate`` as plain numbered
steps; everything here is the part that is identical for all three:

* ``EngineOptions``: the engine-specific keys of ``ModelSettings.options``, validated at start-up;
* device / dtype resolution, weights resolution and the start-up errors that name the fix;
* OpenAI parameters -> a ``Plan`` (steps, guidance, strength, generation size);
* pixels: RGB inputs at the generation size, OpenAI's mask as a diffusers mask (white =
  repaint), and the exact composite that keeps every pixel outside the edit area;
* one job at a time per pipeline, cancellation counters, and GPU out-of-memory as a clean 500.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import secrets
import threading
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from retouch.config import ModelSettings
from retouch.engine.batching import Coalescer, Member
from retouch.engine.classic.matting import extract_foreground
from retouch.engine.types import (
    EditJob,
    EditOutput,
    EngineInfo,
    EngineLoadError,
    MarkupUse,
    Pixels,
    Progress,
    Quality,
)
from retouch.engine.weights import resolve_weights
from retouch.errors import Cancelled, EngineFailed
from retouch.imaging.encode import fit, flatten
from retouch.integers import ascii_int

log = logging.getLogger(__name__)

SIZE_MULTIPLE = 16
"""Every family packs 2x2 latent patches over an 8x VAE: sides must be multiples of 16."""


class FirstBlockCache(BaseModel):
    """diffusers' first-block cache: run the first transformer block every step; when its
    output residual changed by less than ``threshold`` (relative L1) since the last full pass,
    reuse the cached residual of the remaining blocks instead of running them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["first-block"]
    threshold: float = Field(0.05, gt=0, description="Relative change under which blocks are skipped.")


class TaylorSeerCache(BaseModel):
    """diffusers' TaylorSeer cache: full passes every ``cache_interval`` steps, the steps in
    between predicted from a Taylor expansion of the cached block outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["taylorseer"]
    cache_interval: int = Field(5, ge=1, description="A full pass every this many steps.")
    max_order: int = Field(1, ge=0, le=4, description="Order of the Taylor prediction.")
    disable_cache_before_step: int = Field(3, ge=0, description="Steps always computed first.")
    disable_cache_after_step: int | None = Field(None, ge=0, description="Steps always computed from here on.")


StepCache = Annotated[FirstBlockCache | TaylorSeerCache, Field(discriminator="kind")]


class EngineOptions(BaseModel):
    """Keys of ``ModelSettings.options`` understood by the diffusers engines (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int | dict[Quality, int] | None = Field(
        None, description="Denoising steps: one number, or per quality {low, medium, high}."
    )
    guidance_scale: float | None = Field(
        None, description="Guidance (klein: 1.0 for the distilled model; SD: CFG scale)."
    )
    true_cfg_scale: float | None = Field(None, description="Qwen: true CFG scale (1 = off).")
    negative_prompt: str | None = Field(None, description="Qwen / SD: negative prompt.")
    high_fidelity_strength: float | None = Field(
        None, gt=0, le=1, description="Strength used for input_fidelity=high (lower keeps more)."
    )
    max_pixels: int | None = Field(None, gt=0, description="Largest generation size in pixels.")
    min_pixels: int | None = Field(None, ge=0, description="Smallest generation size in pixels.")
    reference_max_pixels: int | None = Field(
        None, gt=0, description="Reference images are shrunk to at most this many pixels."
    )
    max_images: int | None = Field(None, ge=1, description="Most input images per request.")
    max_sequence_length: int | None = Field(None, gt=0, description="Prompt tokens kept.")
    text_encoder_out_layers: list[int] | None = Field(
        None, description="klein: text-encoder layers whose states form the prompt embedding."
    )
    preview_downscale: int = Field(
        2, ge=1, le=8, description="Partial images decode latents average-pooled by this factor."
    )
    compile: Literal[False, "blocks", "full"] = Field(
        False,
        description="torch.compile the denoiser: 'blocks' = compile_repeated_blocks "
        "(regional, fast to compile), 'full' = the whole transformer.",
    )
    attention_backend: str | None = Field(
        None, description="diffusers attention backend, e.g. 'native', 'flash', '_flash_3_hub', 'sage'."
    )
    quantize: Literal["fp8", "int8"] | None = Field(
        None, description="torchao weight quantisation of the denoiser (needs torchao)."
    )
    cache: StepCache | None = Field(
        None,
        description="Step caching of the transformer (lossy): {kind = 'first-block', threshold "
        "= 0.05} or {kind = 'taylorseer', cache_interval = 5, max_order = 1, "
        "disable_cache_before_step = 3}.",
    )
    batch_max_size: int = Field(
        1, ge=1, le=64,
        description="Cross-request batching: most concurrent requests run as one pipeline call "
        "(1 = off); needs workers >= batch_max_size. SD inpainting, FLUX.1-Kontext and "
        "FLUX.2-klein (its reference-image edits and generations).",
    )  # fmt: skip
    batch_window_ms: float = Field(
        20.0, ge=0, le=2000,
        description="How long the first request of a batch waits for others to join.",
    )  # fmt: skip
    warmup_sizes: list[str] = Field(
        default_factory=list,
        description="Generation sizes 'WxH' run once at start-up (compile each shape early).",
    )
    allow_download: bool = Field(
        False, description="Let 'serve' download missing hub weights instead of failing."
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="Base seed of every request, for reproducible outputs; none = a fresh random "
        "seed per request (OpenAI's models give a new image on every call).",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_true(cls, value: Any) -> Any:
        return "blocks" if value is True else value

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            w, x, h = size.partition("x")
            width, height = ascii_int(w), ascii_int(h)
            if not (x and width and height):
                raise ValueError(f"warmup size {size!r} is not WIDTHxHEIGHT")
        return sizes


@dataclass(frozen=True)
class FamilyDefaults:
    """A family's answers to OpenAI's knobs when ``options`` does not override them."""

    description: str
    steps: Mapping[Quality, int]
    guidance_scale: float
    high_fidelity_strength: float
    max_pixels: int
    min_pixels: int
    max_images: int


@dataclass(frozen=True)
class Plan:
    """One request's pipeline arguments, resolved from the job and the options."""

    steps: int
    guidance_scale: float
    strength: float
    size: tuple[int, int]
    """Generation (width, height): multiples of 16, the output's aspect, within the budget."""


def resolve_device(setting: str) -> torch.device:
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        dtype: torch.dtype = getattr(torch, setting)
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32  # bf16 matmul is slower than fp32 on most CPUs


def generation_size(
    size: tuple[int, int], *, min_pixels: int, max_pixels: int, multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """The output's aspect at a pixel count within [min_pixels, max_pixels], sides rounded
    to ``multiple``. The service resizes the result to exactly the requested size."""
    w, h = size
    pixels = w * h
    scale = 1.0
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
    elif pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
    gw = max(multiple, int(w * scale / multiple + 0.5) * multiple)  # half up, not to even
    gh = max(multiple, int(h * scale / multiple + 0.5) * multiple)
    while gw * gh > max_pixels and (gw > multiple or gh > multiple):  # rounding went over
        if gw >= gh:
            gw -= multiple
        else:
            gh -= multiple
    return gw, gh


def steps_run(steps: int, strength: float) -> int:
    """Denoising steps an img2img / inpaint pipeline really runs at ``strength`` (diffusers'
    ``get_timesteps``: the first ``steps - int(steps * strength)`` steps are skipped)."""
    init = min(steps * strength, steps)
    return steps - int(max(steps - init, 0))


def rgb(pixels: Pixels) -> Pixels:
    """Input pixels as RGB: an alpha channel is flattened onto white."""
    return flatten(pixels) if pixels.shape[2] == 4 else pixels


def pil_rgb(pixels: Pixels, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(fit(rgb(pixels), size))


def fit_size(size: tuple[int, int], max_pixels: int, min_side: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The (width, height) ``fit_pixels`` gives an image of ``size``."""
    w, h = size
    gw, gh = generation_size((w, h), min_pixels=0, max_pixels=max_pixels)
    if min(gw, gh) < min_side:
        scale = min_side / min(w, h)
        gw = -(-int(round(w * scale)) // SIZE_MULTIPLE) * SIZE_MULTIPLE
        gh = -(-int(round(h * scale)) // SIZE_MULTIPLE) * SIZE_MULTIPLE
    return gw, gh


def fit_pixels(pixels: Pixels, max_pixels: int, min_side: int = SIZE_MULTIPLE) -> Image.Image:
    """A reference image shrunk to ``max_pixels`` (aspect kept, sides multiples of 16), or
    enlarged where its short side is under ``min_side``."""
    h, w = pixels.shape[:2]
    return pil_rgb(pixels, fit_size((w, h), max_pixels, min_side))


def diffusers_mask(mask: Pixels | None, size: tuple[int, int]) -> Image.Image:
    """OpenAI's edit area as a diffusers mask: white (255) = repaint, at ``size``.

    ``EditJob.mask`` already has 255 where the upload's alpha was 0; no mask = repaint all.
    """
    if mask is None:
        return Image.new("L", size, 255)
    return Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR)


def to_pixels(images: Any) -> list[Pixels]:
    """A pipeline's ``output_type="np"`` batch (floats in [0, 1]) as uint8 images."""
    array = np.asarray(images, dtype=np.float32)
    array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(a) for a in array]


def composite(generated: Pixels, original: Pixels, mask: Pixels) -> Pixels:
    """``generated`` inside the edit area, ``original`` outside it, bit-exact where mask == 0.

    Integer blend ``(g*m + o*(255-m) + 127) // 255``: m = 0 gives ``o`` exactly, m = 255 gives
    ``g`` exactly, and partial mask values (soft edges of the upload's alpha) blend.
    """
    m = mask.astype(np.uint32)[:, :, None]
    out = (generated.astype(np.uint32) * m + original.astype(np.uint32) * (255 - m) + 127) // 255
    return out.astype(np.uint8)


def finish(job: EditJob, generated: list[Pixels]) -> list[Pixels]:
    """Pipeline output -> the job's images: exactly ``job.size``, pixels outside the mask
    taken from the first input image."""
    images = [fit(g, job.size) for g in generated]
    if job.mask is None:
        return images
    original = fit(rgb(job.images[0]), job.size)
    mask = job.mask
    if (mask.shape[1], mask.shape[0]) != job.size:
        mask = np.asarray(Image.fromarray(mask).resize(job.size, Image.Resampling.BILINEAR))
    return [composite(g, original, mask) for g in images]


def request_seed(job_seed: int, configured: int | None) -> int:
    """The seed of one request: the configured one (reproducible) or a fresh random one."""
    base = configured if configured is not None else secrets.randbits(31)
    return base + job_seed


def batch_generators(jobs: list[EditJob], configured: int | None) -> list[torch.Generator]:
    """Each job's own generators, in batch order: a batched job gets the noise it would get
    alone."""
    return [g for job in jobs for g in cpu_generators(request_seed(job.seed, configured), job.n)]


def cpu_generators(seed: int, n: int) -> list[torch.Generator]:
    """One generator per output image (seed + index), on the CPU so a seed gives the same
    noise on any device."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


BEYOND_HIGH_STEPS = {"xhigh": 1.5, "max": 2.0}
"""``quality`` xhigh / max (2.5 families): the ``high`` step count times this, unless the
``steps`` option names them."""
COMPLEXITY_GUIDANCE = {"low": 0.75, "medium": 1.0, "high": 1.25}
"""``complexity`` (2.6 families) on engines with classifier-free guidance: the guidance scale
times this. More guidance = the prompt's content and layout weigh more against the model's
prior, the nearest knob a diffusion model has to "planning effort"."""


class DiffusersEngine:
    """Base of the diffusers engines: settings, loading, one job at a time, failures."""

    defaults: FamilyDefaults
    family: str
    markup_use: MarkupUse = "mask"
    """How ``markup`` reaches this engine (``EngineInfo.markup``)."""
    complexity_scales_guidance: bool = False
    """``complexity`` scales the CFG scale (engines that run a real CFG pass)."""
    text_to_image: str | None = None
    """How the engine serves ``/v1/images/generations`` (``EngineInfo.text_to_image``)."""
    batches = False
    """Whether the family's pipelines take per-request inputs on their batch dimension
    (``_generate_batch``); the others run one request per call."""
    size_multiple = SIZE_MULTIPLE
    """Generation sides are multiples of this (Qwen-Image-2.1: 32, a 16x VAE and 2x2 tokens)."""

    def __init__(self, model: ModelSettings) -> None:
        self.model = model
        try:
            self.options = EngineOptions.model_validate(model.options)
        except ValidationError as exc:
            raise EngineLoadError(f"model {model.name!r}: invalid options: {exc}") from exc
        d = self.defaults
        self.max_images = self.options.max_images or d.max_images
        self.info = EngineInfo(
            name=model.name,
            description=d.description,
            max_images=self.max_images,
            supports_mask=True,
            supports_transparency=True,
            generative=True,
            markup=self.markup_use,
            text_to_image=self.text_to_image,
            complexity=(
                "scales the classifier-free guidance (low 0.75x, medium 1x, high 1.25x)"
                if self.complexity_scales_guidance
                else None
            ),
        )
        self.device = resolve_device(model.device)
        self.dtype = resolve_dtype(model.dtype, self.device)
        self.folder: Path | None = None
        self._lock = threading.Lock()
        self.steps_run = 0
        """Denoising steps completed, over all jobs (tests and metrics)."""
        self.cancelled_runs = 0
        self.coalescer: Coalescer | None = None
        if self.options.batch_max_size > 1:
            self.coalescer = Coalescer(
                self.options.batch_max_size, self.options.batch_window_ms / 1000, self._run_group
            )

    # -- the Engine protocol --------------------------------------------------------------------

    def load(self) -> None:
        batch = self.options.batch_max_size
        if batch > 1 and not self.batches:
            raise EngineLoadError(
                f"model {self.model.name!r}: the {self.family} engine does not batch across "
                "requests (its pipeline has no batch dimension for per-request inputs; see "
                "docs/engines-diffusers.md, batching); remove batch_max_size"
            )
        if batch > 1 and self.options.cache is not None:
            raise EngineLoadError(
                f"model {self.model.name!r}: cache and batch_max_size cannot be combined: a "
                "step cache decides what to skip from the whole batch's latents, so one "
                "request would change another's image"
            )
        if batch > 1 and self.model.workers < batch:
            raise EngineLoadError(
                f"model {self.model.name!r}: batch_max_size = {batch} needs workers >= {batch} "
                "so that concurrent requests reach the engine together"
            )
        if batch == 1 and self.model.workers != 1:
            raise EngineLoadError(
                f"model {self.model.name!r}: a diffusers pipeline runs one job at a time; set "
                "workers = 1 (configure a second model on another device for parallel jobs, "
                "or batch_max_size to batch concurrent requests)"
            )
        self.folder = resolve_weights(self.model, allow_download=self.options.allow_download)
        log.info("loading %s (%s) from %s on %s as %s", self.model.name, self.family,
                 self.folder, self.device, self.dtype)  # fmt: skip
        try:
            self._load_pipelines(self.folder)
        except EngineLoadError:
            raise
        except Exception as exc:
            raise EngineLoadError(
                f"model {self.model.name!r} ({self.family}): could not load the pipeline from "
                f"{self.folder}: {type(exc).__name__}: {exc}. If the download is incomplete, "
                f"fetch it again with: retouch models pull {self.model.name}"
            ) from exc
        self._warm_up()

    def check(self, job: EditJob) -> None:
        return None

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        if self.coalescer is not None:
            key = self.batch_key(job)
            if key is not None:
                return self.coalescer.submit(key, job, progress)
        with self._lock:  # diffusers pipelines keep per-call state: never two calls at once
            progress.check()
            with self._failures(job):
                return self._generate(job, progress)

    @contextlib.contextmanager
    def _failures(self, job: EditJob) -> Iterator[None]:
        try:
            yield
        except Cancelled:
            self.cancelled_runs += 1
            raise
        except torch.cuda.OutOfMemoryError as exc:
            self._free_memory()
            raise EngineFailed(
                f"The model '{self.model.name}' ran out of GPU memory for this request "
                f"(size {job.size[0]}x{job.size[1]}, n={job.n}); try a smaller size or n."
            ) from exc

    def batch_key(self, job: EditJob) -> Hashable | None:
        """What must be equal for two jobs to share one pipeline call, or None to run alone:
        the path (mask / start image or not), generation size, steps, strength, guidance and
        the partial-image count (previews come at the same steps). ``n > 1`` runs alone: the
        pipelines repeat per-request images and prompts in different orders."""
        if job.n != 1:
            return None
        plan = self.plan(job)
        return (self._path(job), plan.size, plan.steps, plan.strength, plan.guidance_scale,
                job.partial_images)  # fmt: skip

    def _path(self, job: EditJob) -> str:
        return "masked" if job.mask is not None else "plain"

    def _run_group(self, members: list[Member]) -> None:
        """One pipeline call for a group from the coalescer (on its batch thread)."""
        with self._lock:
            live = [m for m in members if not m.progress.cancelled]
            if len(live) == 1:  # exactly today's single-request call
                with self._failures(live[0].job):
                    live[0].finish(self._generate(live[0].job, live[0].progress))
            elif live:
                with self._failures(live[0].job):
                    outputs = self._generate_batch(live)
                for member, output in zip(live, outputs, strict=True):
                    member.finish(output)
        for m in members:
            if not m.done.is_set():
                m.finish(error=Cancelled())

    def close(self) -> None:
        if self.coalescer is not None:
            self.coalescer.close()
        self._release_pipelines()
        self._free_memory()

    # -- for the family modules -------------------------------------------------------------

    def _load_pipelines(self, folder: Path) -> None:
        raise NotImplementedError

    def _release_pipelines(self) -> None:
        raise NotImplementedError

    def _load_one(self, loader: Any, folder: Path, **components: Any) -> Any:
        """One pipeline class from ``folder`` with the ``components`` the family builds itself
        (an image-only processor, say), placed on the device and accelerated as configured."""
        pipe = loader.from_pretrained(folder, dtype=self.dtype, local_files_only=True, **components)
        place(pipe, self.model, self.device)
        accelerate(pipe.transformer, self.options, self.model.name)
        return pipe

    def _generate(self, job: EditJob, progress: Progress) -> EditOutput:
        raise NotImplementedError

    def _generate_batch(self, members: list[Member]) -> list[EditOutput]:
        """Several jobs with the same ``batch_key`` in one pipeline call (``batches``)."""
        raise NotImplementedError

    def _warmup_job(self, size: tuple[int, int]) -> EditJob:
        w, h = size
        image = np.full((h, w, 3), 127, np.uint8)
        return EditJob(prompt="warm-up", images=(image,), mask=None, size=size, n=1,
                       quality="high", input_fidelity="low", background="auto",
                       partial_images=0)  # fmt: skip

    def _warm_up(self) -> None:
        """Run one request per configured size, so compilation happens before serving."""
        for text in self.options.warmup_sizes:
            w, _, h = text.partition("x")
            job = self._warmup_job((int(w), int(h)))
            log.info("warming up %s at %s", self.model.name, text)
            self._generate(job, _NoProgress())

    def plan(self, job: EditJob) -> Plan:
        """OpenAI's quality / input_fidelity / size -> steps, guidance, strength, size."""
        d, o = self.defaults, self.options
        if isinstance(o.steps, int):
            steps = o.steps
        else:
            table = {**d.steps, **(o.steps or {})}
            steps = table.get(job.quality) or round(table["high"] * BEYOND_HIGH_STEPS[job.quality])
        fidelity_strength = o.high_fidelity_strength or d.high_fidelity_strength
        strength = fidelity_strength if job.input_fidelity == "high" else 1.0
        size = generation_size(
            job.size,
            min_pixels=d.min_pixels if o.min_pixels is None else o.min_pixels,
            max_pixels=o.max_pixels or d.max_pixels,
            multiple=self.size_multiple,
        )
        guidance = d.guidance_scale if o.guidance_scale is None else o.guidance_scale
        if job.complexity is not None and self.complexity_scales_guidance:
            guidance *= COMPLEXITY_GUIDANCE[job.complexity]
        return Plan(steps=steps, guidance_scale=guidance, strength=strength, size=size)

    def references(self, job: EditJob, start: int, min_side: int = SIZE_MULTIPLE) -> list[Image.Image]:
        """Input images from ``start`` on, as reference images: aspect kept, within the
        reference pixel budget."""
        return [fit_pixels(p, self._reference_budget(), min_side) for p in job.images[start:]]

    def reference_sizes(self, job: EditJob, start: int, min_side: int = SIZE_MULTIPLE) -> tuple[tuple[int, int], ...]:
        """The (width, height) of every image ``references`` gives, without resizing any."""
        budget = self._reference_budget()
        return tuple(fit_size((p.shape[1], p.shape[0]), budget, min_side) for p in job.images[start:])

    def _reference_budget(self) -> int:
        o = self.options
        return o.reference_max_pixels or o.max_pixels or self.defaults.max_pixels

    def output(self, job: EditJob, generated: list[Pixels], steps: int) -> EditOutput:
        """Resize, composite outside the mask, and cut out the foreground when asked."""
        images = finish(job, generated)
        notes: list[str] = []
        if job.background == "transparent":  # the built-in engine's matting, on the result
            images = [extract_foreground(i) for i in images]
            notes.append("transparent background: foreground extracted by the built-in engine")
        return EditOutput(images=images, steps=steps, notes=notes)

    def count_step(self) -> None:
        self.steps_run += 1

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _NoProgress:
    """The ``Progress`` of start-up warm-ups: never cancelled, partials dropped."""

    cancelled = False

    def check(self) -> None:
        return None

    def partial(self, image: Pixels, *, output_index: int = 0) -> None:
        return None


def image_only_processor(folder: Path, kind: Literal["qwen2-vl", "qwen3-vl"], subfolder: str = "processor") -> Any:
    """The Qwen2-VL / Qwen3-VL processor of a pipeline folder, without its video processor.

    transformers cannot build the (unused) video processors without torchvision, and the only
    torchvision 0.28.0 wheel there is (PyPI's) is a CUDA build that does not load next to the CPU
    torch this project pins. Reads ``subfolder`` (image processor settings; tokenizer files,
    else ``tokenizer/``; a ``chat_template.jinja`` if present, else the tokenizer's template).
    """
    from transformers import (
        AutoTokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen3VLProcessor,
    )

    base: Any = Qwen2VLProcessor if kind == "qwen2-vl" else Qwen3VLProcessor

    class ImageOnlyProcessor(base):  # type: ignore[misc]
        """Skips the type check of the absent video processor; images work unchanged."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    processor_dir = folder / subfolder
    tokenizer_dir = processor_dir if (processor_dir / "tokenizer_config.json").is_file() else folder / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    template_file = processor_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else tokenizer.chat_template
    ImageOnlyProcessor.__name__ = f"ImageOnly{base.__name__}"
    return ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessor.from_pretrained(processor_dir),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template,
    )


def place(pipe: Any, model: ModelSettings, device: torch.device) -> None:
    """Move a loaded pipeline to its device (or set up CPU offload) and silence its bars."""
    if model.cpu_offload and device.type != "cpu":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)


def accelerate(denoiser: Any, options: EngineOptions, model_name: str) -> None:
    """The optional speed-ups of ``options`` on the denoiser (transformer or UNet), in the
    order that composes: quantise, then choose the attention kernel, then compile."""
    if options.quantize is not None:
        try:
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                Int8WeightOnlyConfig,
                quantize_,
            )
        except ImportError as exc:
            raise EngineLoadError(
                f"model {model_name!r}: option quantize={options.quantize!r} needs torchao "
                "(pip install torchao)"
            ) from exc
        config = (
            Float8DynamicActivationFloat8WeightConfig()
            if options.quantize == "fp8"
            else Int8WeightOnlyConfig()
        )
        quantize_(denoiser, config)
    if options.cache is not None:
        enable_step_cache(denoiser, options.cache, model_name)
    if options.attention_backend is not None:
        denoiser.set_attention_backend(options.attention_backend)
    if options.compile == "blocks":
        denoiser.compile_repeated_blocks(fullgraph=True)
    elif options.compile == "full":
        denoiser.compile(fullgraph=True)


FIRST_BLOCK_CACHE_FAILS = {"Flux2Transformer2DModel"}
"""Denoisers whose first-block cache raises inside diffusers 0.42.1 (checked on the tiny
pipelines; ``tests/engines/test_step_cache.py``)."""


def enable_step_cache(denoiser: Any, cache: FirstBlockCache | TaylorSeerCache, model_name: str) -> None:
    """diffusers' cache hooks on the denoiser. Their state lives between calls, so
    ``DenoiseTap.watching`` resets it before every pipeline call (``reset_step_cache``)."""
    import diffusers

    hooks: Any = diffusers  # the config classes are untyped
    if not hasattr(denoiser, "enable_cache"):
        raise EngineLoadError(
            f"model {model_name!r}: option cache={cache.kind!r} needs a transformer denoiser "
            f"with diffusers' cache hooks; {type(denoiser).__name__} has none"
        )
    if isinstance(cache, FirstBlockCache) and type(denoiser).__name__ in FIRST_BLOCK_CACHE_FAILS:
        raise EngineLoadError(
            f"model {model_name!r}: diffusers {diffusers.__version__}'s first-block cache fails "
            f"on {type(denoiser).__name__} (a TypeError inside the cache hook: its block outputs are not the tensors the hook expects); "
            "use cache = {kind = 'taylorseer'} for this model"
        )
    config: Any
    if isinstance(cache, FirstBlockCache):
        config = hooks.FirstBlockCacheConfig(threshold=cache.threshold)
    else:
        config = hooks.TaylorSeerCacheConfig(
            cache_interval=cache.cache_interval,
            max_order=cache.max_order,
            disable_cache_before_step=cache.disable_cache_before_step,
            disable_cache_after_step=cache.disable_cache_after_step,
        )
    try:
        denoiser.enable_cache(config)
    except Exception as exc:
        raise EngineLoadError(
            f"model {model_name!r}: diffusers cannot apply cache={cache.kind!r} to "
            f"{type(denoiser).__name__}: {type(exc).__name__}: {exc}"
        ) from exc
