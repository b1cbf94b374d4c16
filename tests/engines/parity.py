"""Parity cases: one retouch request and the diffusers call the docs say it becomes.

Each ``Case`` holds the OpenAI request (sent with the official SDK) and the *reference call*: the
engine's pipeline class loaded straight from the same folder with ``from_pretrained`` and called
the way ``docs/engines-diffusers.md`` says retouch calls it (same seed, steps, strength,
guidance, size, references, mask), then post-processed the way the docs say (resize to the
requested size, pixels outside the mask copied from image 1). Nothing from ``retouch.engine`` is
used on the reference side, so a silent difference in the adapters (a different scheduler
setting, image preprocessing, a hook that touches the latents) shows as a pixel difference.

Used by ``tests/engines/test_parity.py`` and ``bench/parity.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from PIL import Image

from tests.conftest import encode_image, gradient

TINY = {"max_pixels": 64 * 64, "min_pixels": 0, "max_sequence_length": 64, "seed": 0}
"""The tiny models' options: a 64x64 budget, short prompts, seed option 0 (request i of n
uses generator seed 0 + i)."""
OPTIONS: dict[str, dict[str, Any]] = {
    "flux2-klein": {**TINY, "text_encoder_out_layers": [1]},
    "qwen-image-edit": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
    "sd-inpaint": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
    "flux-kontext": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
    "joyimage-edit": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
    "longcat-image-edit": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
    "qwen-image-2.1": {**TINY, "steps": {"low": 2, "medium": 3, "high": 4}},
}
SETTINGS: dict[str, dict[str, Any]] = {
    "flux-kontext": {"accept_license": "non-commercial"},
    "qwen-image-2.1": {"accept_license": "non-commercial"},
}
"""Model settings besides the options (Kontext's weights are non-commercial)."""
"""klein keeps its own step table (2/4/4); Qwen's, SD's and Kontext's (20/30/40, 15/25/40,
14/20/28) are shrunk
through the ``steps`` option so the suite stays fast, and the mapping itself is read from the
option like the defaults would be."""

SIZE = (64, 64)
HOLE = (16, 8, 48, 40)


def source(shift: int = 0, size: tuple[int, int] = SIZE) -> np.ndarray:
    return np.ascontiguousarray(np.roll(gradient(size), shift, axis=1))


def alpha_mask(size: tuple[int, int] = SIZE, *, soft: bool = False) -> np.ndarray:
    """OpenAI's mask alpha: 0 inside the hole (edit), 255 outside; ``soft`` adds a ramp of
    partial alpha around the hole (what a feathered brush uploads)."""
    alpha = np.full((size[1], size[0]), 255, np.uint8)
    x0, y0, x1, y1 = HOLE
    if soft:
        yy, xx = np.mgrid[: size[1], : size[0]]
        dx = np.maximum(np.maximum(x0 - xx, xx - (x1 - 1)), 0)
        dy = np.maximum(np.maximum(y0 - yy, yy - (y1 - 1)), 0)
        ramp = np.clip(np.maximum(dx, dy) * 40, 0, 255)
        alpha = ramp.astype(np.uint8)
    else:
        alpha[y0:y1, x0:x1] = 0
    return alpha


def mask_png(alpha: np.ndarray) -> bytes:
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., 3] = alpha
    return encode_image(rgba)


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The documented final resize to the requested size: bicubic up, box down."""
    h, w = pixels.shape[:2]
    if (w, h) == size:
        return pixels
    resample = Image.Resampling.BICUBIC if size[0] > w else Image.Resampling.BOX
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def keep_outside(generated: np.ndarray, original: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The documented composite, in floats: edit weight ``m = 1 - alpha/255``; retouch does the
    same in integers, so the two agree to within 1/255 where ``0 < m < 1`` and exactly elsewhere."""
    m = (255 - alpha.astype(np.float64))[:, :, None] / 255
    out = generated.astype(np.float64) * m + original.astype(np.float64) * (1 - m)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class Case:
    name: str
    engine: str
    request: dict[str, Any]
    """``images.edit`` arguments besides model/image/mask."""
    images: list[np.ndarray]
    reference: Callable[[Any], np.ndarray]
    """(the directly loaded pipeline) -> the expected output pixels."""
    alpha: np.ndarray | None = None
    tolerance: int = 0
    """0 = identical; 1 only where a soft mask makes the integer composite the difference."""
    patches: list[Callable[[], AbstractContextManager[Any]]] = field(default_factory=list)


# -- the reference calls -------------------------------------------------------------------------


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels)


def _repaint(alpha: np.ndarray | None, size: tuple[int, int] = SIZE) -> Image.Image:
    """diffusers' mask: white = repaint = 255 - OpenAI alpha (all white without a mask)."""
    if alpha is None:
        return Image.new("L", size, 255)
    return Image.fromarray(255 - alpha)


def _first(result: Any) -> np.ndarray:
    """The model card's output: PIL images."""
    return np.asarray(result.images[0].convert("RGB"))


KLEIN_COMMON: dict[str, Any] = {
    "guidance_scale": 1.0,
    "max_sequence_length": 64,
    "text_encoder_out_layers": (1,),
}


def klein_edit(prompt: str, refs: list[np.ndarray], steps: int, gen_size: tuple[int, int],
               out_size: tuple[int, int] = SIZE) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        w, h = gen_size
        result = pipe(prompt=prompt, image=[_pil(r) for r in refs], height=h, width=w,
                      num_inference_steps=steps, generator=_generator(), **KLEIN_COMMON)  # fmt: skip
        return resize(_first(result), out_size)

    return call


def klein_inpaint(prompt: str, image: np.ndarray, alpha: np.ndarray | None, steps: int,
                  strength: float, refs: tuple[np.ndarray, ...] = ()) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        from diffusers import Flux2KleinInpaintPipeline

        inpaint = Flux2KleinInpaintPipeline.from_pipe(pipe)
        inpaint.set_progress_bar_config(disable=True)
        result = inpaint(prompt=prompt, image=_pil(image), mask_image=_repaint(alpha),
                         image_reference=[_pil(r) for r in refs] or None, strength=strength,
                         num_inference_steps=steps, generator=_generator(), **KLEIN_COMMON)  # fmt: skip
        out = _first(result)
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


QWEN_CFG: dict[str, Any] = {"true_cfg_scale": 4.0, "negative_prompt": " ", "max_sequence_length": 64}


def qwen_edit(prompt: str, refs: list[np.ndarray], steps: int) -> Callable[[Any], np.ndarray]:
    def call(pipe: Any) -> np.ndarray:
        result = pipe(prompt=prompt, image=[_pil(r) for r in refs], height=64, width=64,
                      num_inference_steps=steps, generator=_generator(), **QWEN_CFG)  # fmt: skip
        return _first(result)

    return call


def qwen_inpaint(prompt: str, image: np.ndarray, alpha: np.ndarray | None, steps: int,
                 strength: float) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        from diffusers import QwenImageEditInpaintPipeline

        inpaint = QwenImageEditInpaintPipeline.from_pipe(pipe)
        inpaint.set_progress_bar_config(disable=True)
        result = inpaint(prompt=prompt, image=_pil(image), mask_image=_repaint(alpha),
                         strength=strength, num_inference_steps=steps, generator=_generator(),
                         **QWEN_CFG)  # fmt: skip
        out = _first(result)
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


def sd_inpaint(prompt: str, image: np.ndarray, alpha: np.ndarray | None, steps: int,
               strength: float, n: int = 1, index: int = 0) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        gens = [_generator(i) for i in range(n)] if n > 1 else _generator()
        result = pipe(prompt=prompt, image=_pil(image), mask_image=_repaint(alpha), height=64,
                      width=64, strength=strength, num_inference_steps=steps, guidance_scale=7.5,
                      num_images_per_prompt=n, generator=gens)  # fmt: skip
        out = np.asarray(result.images[index].convert("RGB"))
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


KONTEXT_COMMON: dict[str, Any] = {"guidance_scale": 2.5, "max_sequence_length": 64}


def kontext_edit(prompt: str, image: np.ndarray, steps: int, gen_size: tuple[int, int],
                 out_size: tuple[int, int] = SIZE) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        w, h = gen_size
        start = _pil(resize(image, gen_size))  # the documented resize to the generation size
        result = pipe(prompt=prompt, image=start, height=h, width=w, max_area=w * h,
                      _auto_resize=False, num_inference_steps=steps, generator=_generator(),
                      **KONTEXT_COMMON)  # fmt: skip
        return resize(_first(result), out_size)

    return call


def kontext_inpaint(prompt: str, image: np.ndarray, alpha: np.ndarray | None, steps: int,
                    strength: float) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        from diffusers import FluxKontextInpaintPipeline

        inpaint = FluxKontextInpaintPipeline.from_pipe(pipe)
        inpaint.set_progress_bar_config(disable=True)
        result = inpaint(prompt=prompt, image=_pil(image), mask_image=_repaint(alpha), height=64,
                         width=64, max_area=64 * 64, _auto_resize=False, strength=strength,
                         num_inference_steps=steps, generator=_generator(), **KONTEXT_COMMON)  # fmt: skip
        out = _first(result)
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


JOY_COMMON: dict[str, Any] = {"guidance_scale": 4.0, "max_sequence_length": 64}


def joy_edit(prompt: str, image: np.ndarray, steps: int, gen_size: tuple[int, int] = SIZE,
             alpha: np.ndarray | None = None, out_size: tuple[int, int] = SIZE) -> Callable[[Any], np.ndarray]:  # fmt: skip
    """The input resized to the generation size; the global generator seeded with the request
    seed (the pipeline samples the reference latents without a generator)."""

    def call(pipe: Any) -> np.ndarray:
        w, h = gen_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            result = pipe(prompt=prompt, image=_pil(resize(image, gen_size)), height=h, width=w,
                          num_inference_steps=steps, generator=_generator(), **JOY_COMMON)  # fmt: skip
        out = resize(_first(result), out_size)
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


def longcat_edit(prompt: str, image: np.ndarray, steps: int, alpha: np.ndarray | None = None,
                 guidance: float = 4.5) -> Callable[[Any], np.ndarray]:  # fmt: skip
    def call(pipe: Any) -> np.ndarray:
        result = pipe(image=_pil(image), prompt=prompt, num_inference_steps=steps,
                      guidance_scale=guidance, generator=_generator())  # fmt: skip
        out = _first(result)
        return out if alpha is None else keep_outside(out, image, alpha)

    return call


def flatten_white(rgba: np.ndarray) -> np.ndarray:
    """The documented opaque output of an RGBA model: alpha composited onto white."""
    rgb, a = rgba[..., :3].astype(np.uint16), rgba[..., 3:4].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def qwen21_edit(prompt: str, refs: list[np.ndarray], steps: int, alpha: np.ndarray | None = None,
                transparent: bool = False) -> Callable[[Any], np.ndarray]:  # fmt: skip
    """References at their own size, ``output_resolution`` = sqrt(64*64) = 64, no CFG."""

    def call(pipe: Any) -> np.ndarray:
        result = pipe(prompt=prompt, image=[_pil(r) for r in refs], height=64, width=64,
                      num_inference_steps=steps, generator=_generator(), output_resolution=64)  # fmt: skip
        rgba = np.asarray(result.images[0])
        if transparent:
            return rgba
        out = flatten_white(rgba)
        return out if alpha is None else keep_outside(out, refs[0], alpha)

    return call


def small_renders() -> AbstractContextManager[Any]:
    """JoyImage's resolution buckets and LongCat's ~1 MP render size, shrunk to 64x64 on both
    sides of the comparison (``tests/engines/conftest.py`` does the same)."""
    import contextlib

    import diffusers.pipelines.joyimage.image_processor as joy_buckets
    import diffusers.pipelines.longcat_image.pipeline_longcat_image_edit as longcat

    full_size = longcat.calculate_dimensions
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(joy_buckets, "find_best_bucket", return_value=(64, 64)))
    stack.enter_context(mock.patch.object(
        longcat, "calculate_dimensions", lambda area, ratio: full_size(64 * 64, ratio)
    ))  # fmt: skip
    return stack


def small_qwen_constants() -> AbstractContextManager[Any]:
    """Qwen's pipelines resize inputs to ~1 MP (module constants); shrink them to 64x64 on
    both sides of the comparison (``tests/engines/conftest.py`` does the same)."""
    import contextlib

    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_inpaint as qwen_inpaint_mod
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as qwen_plus

    full_size = qwen_inpaint_mod.calculate_dimensions
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(qwen_plus, "VAE_IMAGE_SIZE", 64 * 64))
    stack.enter_context(mock.patch.object(qwen_plus, "CONDITION_IMAGE_SIZE", 56 * 56))
    stack.enter_context(mock.patch.object(
        qwen_inpaint_mod, "calculate_dimensions", lambda area, ratio: full_size(64 * 64, ratio)
    ))  # fmt: skip
    return stack


def cases() -> list[Case]:
    a, b, c = source(), source(20), source(40)
    hard, soft = alpha_mask(), alpha_mask(soft=True)
    qwen, renders = [small_qwen_constants], [small_renders]
    return [
        # FLUX.2-klein: quality -> 2/4/4 steps, guidance 1.0, size budget, references, masks.
        Case("klein edit quality=high", "flux2-klein", {"prompt": "make it blue"}, [a],
             klein_edit("make it blue", [a], 4, SIZE)),
        Case("klein edit quality=low", "flux2-klein", {"prompt": "x", "quality": "low"}, [a],
             klein_edit("x", [a], 2, SIZE)),
        Case("klein 3 references", "flux2-klein", {"prompt": "mix"}, [a, b, c],
             klein_edit("mix", [a, b, c], 4, SIZE)),
        # 96x48 over a 64x64 budget -> rendered at 80x48, resized to 96x48.
        Case("klein size 96x48", "flux2-klein", {"prompt": "x", "size": "96x48"}, [a],
             klein_edit("x", [a], 4, (80, 48), (96, 48))),
        Case("klein mask", "flux2-klein", {"prompt": "a rose"}, [a],
             klein_inpaint("a rose", a, hard, 4, 1.0), alpha=hard),
        Case("klein soft mask", "flux2-klein", {"prompt": "a rose"}, [a],
             klein_inpaint("a rose", a, soft, 4, 1.0), alpha=soft, tolerance=1),
        Case("klein mask + reference", "flux2-klein", {"prompt": "a rose"}, [a, b],
             klein_inpaint("a rose", a, hard, 4, 1.0, (b,)), alpha=hard),
        Case("klein input_fidelity=high", "flux2-klein", {"prompt": "x", "input_fidelity": "high"},
             [a], klein_inpaint("x", a, None, 4, 0.75)),
        Case("klein mask + input_fidelity=high", "flux2-klein",
             {"prompt": "x", "input_fidelity": "high"}, [a],
             klein_inpaint("x", a, hard, 4, 0.75), alpha=hard),
        # Qwen-Image-Edit: true CFG 4 with negative prompt " ", references, inpaint at 0.8.
        Case("qwen edit quality=low", "qwen-image-edit", {"prompt": "blue", "quality": "low"}, [a],
             qwen_edit("blue", [a], 2), patches=qwen),
        Case("qwen 2 references", "qwen-image-edit", {"prompt": "mix"}, [a, b],
             qwen_edit("mix", [a, b], 4), patches=qwen),
        Case("qwen mask", "qwen-image-edit", {"prompt": "a rose", "quality": "medium"}, [a],
             qwen_inpaint("a rose", a, hard, 3, 1.0), alpha=hard, patches=qwen),
        Case("qwen input_fidelity=high", "qwen-image-edit",
             {"prompt": "x", "input_fidelity": "high"}, [a],
             qwen_inpaint("x", a, None, 4, 0.8), patches=qwen),
        # SD inpainting: CFG 7.5; mask strength 1.0 (0.75 high); no mask 0.75 (0.5 high).
        Case("sd mask", "sd-inpaint", {"prompt": "a rose"}, [a],
             sd_inpaint("a rose", a, hard, 4, 1.0), alpha=hard),
        Case("sd mask + input_fidelity=high", "sd-inpaint",
             {"prompt": "a rose", "input_fidelity": "high", "quality": "medium"}, [a],
             sd_inpaint("a rose", a, hard, 3, 0.75), alpha=hard),
        Case("sd no mask", "sd-inpaint", {"prompt": "x"}, [a], sd_inpaint("x", a, None, 4, 0.75)),
        Case("sd no mask + input_fidelity=high", "sd-inpaint",
             {"prompt": "x", "input_fidelity": "high"}, [a], sd_inpaint("x", a, None, 4, 0.5)),
        # FLUX.1-Kontext: guidance 2.5, max_area = the generation size, no auto-resize.
        Case("kontext edit", "flux-kontext", {"prompt": "make it blue"}, [a],
             kontext_edit("make it blue", a, 4, SIZE)),
        Case("kontext quality=low size 96x48", "flux-kontext",
             {"prompt": "x", "quality": "low", "size": "96x48"}, [a],
             kontext_edit("x", a, 2, (80, 48), (96, 48))),
        Case("kontext mask", "flux-kontext", {"prompt": "a rose"}, [a],
             kontext_inpaint("a rose", a, hard, 4, 1.0), alpha=hard),
        Case("kontext input_fidelity=high", "flux-kontext",
             {"prompt": "x", "input_fidelity": "high", "quality": "medium"}, [a],
             kontext_inpaint("x", a, None, 3, 0.8)),
        # JoyImage-Edit: CFG 4.0, the input resized to the generation size, masks composited.
        Case("joyimage edit", "joyimage-edit", {"prompt": "make it blue"}, [a],
             joy_edit("make it blue", a, 4), patches=renders),
        Case("joyimage quality=low mask", "joyimage-edit", {"prompt": "a rose", "quality": "low"},
             [a], joy_edit("a rose", a, 2, alpha=hard), alpha=hard, patches=renders),
        Case("joyimage soft mask", "joyimage-edit", {"prompt": "a rose", "quality": "medium"}, [a],
             joy_edit("a rose", a, 3, alpha=soft), alpha=soft, tolerance=1, patches=renders),
        # LongCat-Image-Edit: CFG 4.5, no step callback (previews from the transformer hook).
        Case("longcat edit", "longcat-image-edit", {"prompt": "make it blue"}, [a],
             longcat_edit("make it blue", a, 4), patches=renders),
        Case("longcat mask quality=medium", "longcat-image-edit",
             {"prompt": "a rose", "quality": "medium"}, [a],
             longcat_edit("a rose", a, 3, alpha=hard), alpha=hard, patches=renders),
        # Qwen-Image-2.1: references as given, no CFG, RGBA flattened onto white (or kept).
        Case("qwen21 edit", "qwen-image-2.1", {"prompt": "make it blue"}, [a],
             qwen21_edit("make it blue", [a], 4)),
        Case("qwen21 3 references quality=low", "qwen-image-2.1", {"prompt": "mix", "quality": "low"},
             [a, b, c], qwen21_edit("mix", [a, b, c], 2)),
        Case("qwen21 mask", "qwen-image-2.1", {"prompt": "a rose"}, [a],
             qwen21_edit("a rose", [a], 4, alpha=hard), alpha=hard),
        Case("sd mask n=2 (image 2)", "sd-inpaint", {"prompt": "a rose", "n": 2}, [a],
             sd_inpaint("a rose", a, hard, 4, 1.0, n=2, index=1), alpha=hard),
    ]


def load_reference(engine: str, folder: Path) -> Any:
    """The pipeline class the model card names, loaded straight from the weights folder."""
    import diffusers

    if engine == "qwen-image-edit":
        from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor

        # engines.md 7.2: without torchvision the (unused) video processor fails a type check.
        with mock.patch.object(Qwen2VLProcessor, "check_argument_for_proper_class", return_value=None):
            processor = Qwen2VLProcessor(
                image_processor=Qwen2VLImageProcessor.from_pretrained(folder / "processor"),
                tokenizer=Qwen2TokenizerFast.from_pretrained(folder / "tokenizer"),
                video_processor=None,
            )
        pipe = diffusers.QwenImageEditPlusPipeline.from_pretrained(
            folder, processor=processor, local_files_only=True
        )
    elif engine in ("joyimage-edit", "qwen-image-2.1", "longcat-image-edit"):
        pipe = _load_qwen_vl(engine, folder)
    else:
        cls = {"flux2-klein": diffusers.Flux2KleinPipeline,
               "sd-inpaint": diffusers.StableDiffusionInpaintPipeline,
               "flux-kontext": diffusers.FluxKontextPipeline}[engine]  # fmt: skip
        pipe = cls.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_qwen_vl(engine: str, folder: Path) -> Any:
    """The Qwen-VL-encoder pipelines with their processor rebuilt from the saved folder (no
    video processor: transformers cannot build it without torchvision)."""
    import diffusers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen3VLProcessor,
    )

    sub = "text_processor" if engine == "longcat-image-edit" else "processor"
    cls: Any = Qwen2VLProcessor if engine == "longcat-image-edit" else Qwen3VLProcessor
    tok = Qwen2TokenizerFast.from_pretrained(folder / sub)
    with mock.patch.object(cls, "check_argument_for_proper_class", return_value=None):
        processor = cls(image_processor=Qwen2VLImageProcessor.from_pretrained(folder / sub), tokenizer=tok,
                        video_processor=None, chat_template=(folder / sub / "chat_template.jinja").read_text())  # fmt: skip
    if engine == "longcat-image-edit":
        return diffusers.LongCatImageEditPipeline.from_pretrained(
            folder, text_processor=processor, local_files_only=True
        )
    pipeline: Any = {"joyimage-edit": diffusers.JoyImageEditPipeline,
                     "qwen-image-2.1": diffusers.QwenImage21Pipeline}[engine]  # fmt: skip
    return pipeline.from_pretrained(folder, processor=processor, local_files_only=True)


def files(case: Case) -> dict[str, Any]:
    """The request's uploads as ``images.edit`` keyword arguments."""
    uploads: dict[str, Any] = {
        "image": [(f"in{i}.png", encode_image(img), "image/png") for i, img in enumerate(case.images)]
    }
    if case.alpha is not None:
        uploads["mask"] = ("mask.png", mask_png(case.alpha), "image/png")
    return uploads


def output_index(case: Case) -> int:
    """Which response image the reference is: the n=2 case compares image 2 (seed 0 + 1)."""
    return 1 if case.request.get("n", 1) > 1 else 0


def run_reference(case: Case, pipe: Any) -> np.ndarray:
    import contextlib

    with contextlib.ExitStack() as stack:
        for patch in case.patches:
            stack.enter_context(patch())
        return case.reference(pipe)


def compare(case: Case, got: np.ndarray, want: np.ndarray) -> int:
    """The largest per-channel difference; raises if it is over the case's tolerance, or
    if a tolerance is claimed anywhere but at partial mask values."""
    assert got.shape == want.shape, (case.name, got.shape, want.shape)
    diff = np.abs(got.astype(int) - want.astype(int))
    worst = int(diff.max())
    if case.tolerance and worst:
        assert case.alpha is not None
        partial = (case.alpha > 0) & (case.alpha < 255)
        assert not diff[~partial].any(), f"{case.name}: differs outside the soft mask edge"
    assert worst <= case.tolerance, f"{case.name}: max abs diff {worst} > {case.tolerance}"
    return worst


