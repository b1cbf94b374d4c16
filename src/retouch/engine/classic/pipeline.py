"""Runs a parsed prompt (a list of ``Op``) on one job: the state between operations, the edit
area, the alpha channel, the output size and the intermediate stages.

Rules it enforces:
* with a mask, the result is composited into the edit area only; where the mask is 0 the
  output pixels are the input pixels, byte for byte (at the input's size);
* the foreground matte is computed once, from the input colours (not from an already
  black-and-white image), and follows the geometric operations;
* ``background=transparent`` gives the matte as alpha unless an operation decided the
  background otherwise (a colour or an image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from retouch.engine.classic import ops
from retouch.engine.classic.arrays import u8
from retouch.engine.classic.fill import fill
from retouch.engine.classic.learned_fill import OnnxInpainter
from retouch.engine.classic.matting import foreground_alpha
from retouch.engine.classic.operations import Op
from retouch.engine.classic.text import draw_text, pick_font
from retouch.engine.types import EditJob, Pixels
from retouch.imaging.encode import fit

STAGES = {"fill": 3, "sketch": 3, "cartoon": 3}
"""Work stages per operation (intermediate states that can become partial images)."""

StageHook = Callable[[Pixels], None]


def stage_count(plan: Sequence[Op]) -> int:
    return sum(STAGES.get(op.name, 1) for op in plan)


def partial_stages(total: int, wanted: int) -> set[int]:
    """Which stages (1-based) to publish for ``wanted`` partial images: evenly spread, never
    the last one (that is the final image)."""
    if wanted <= 0 or total <= 1:
        return set()
    picks = {round(total * (j + 1) / (wanted + 1)) for j in range(wanted)}
    return {s for s in picks if 1 <= s < total}


@dataclass
class Canvas:
    """The image between operations."""

    rgb: Pixels
    alpha: Pixels | None
    """None while the image is fully opaque."""
    reference: Pixels
    """The input colours, kept in step with geometric operations, for the matte."""
    matte_source: Callable[[Pixels], Pixels]
    _matte: Pixels | None = None
    background_decided: bool = False
    geometry_changed: bool = False

    def matte(self) -> Pixels:
        if self._matte is None:
            self._matte = self.matte_source(self.reference)
        return self._matte

    def transform(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.rgb = np.ascontiguousarray(fn(self.rgb))
        self.reference = np.ascontiguousarray(fn(self.reference))
        if self.alpha is not None:
            self.alpha = np.ascontiguousarray(fn(self.alpha))
        if self._matte is not None:
            self._matte = np.ascontiguousarray(fn(self._matte))
        self.geometry_changed = True


@dataclass
class Stages:
    """Counts work stages and hands the chosen ones to ``publish``."""

    publish: StageHook | None
    chosen: set[int] = field(default_factory=set)
    done: int = 0

    def reached(self, image: Callable[[], Pixels]) -> None:
        self.done += 1
        if self.publish is not None and self.done in self.chosen:
            self.publish(image())


@dataclass(frozen=True)
class Settings:
    fill_budget: int
    font: str | None
    fonts: tuple[Path, ...]
    matte: Callable[[Pixels], Pixels] = foreground_alpha
    """The subject's alpha (``matting.foreground_alpha`` with the engine's segmenter)."""
    inpainter: OnnxInpainter | None = None
    """A learned fill model (option ``fill_model``); None = the classical fill."""


def render(
    job: EditJob,
    plan: Sequence[Op],
    settings: Settings,
    *,
    variant: int = 0,
    publish: StageHook | None = None,
    check: Callable[[], None] = lambda: None,
) -> Pixels:
    """One output image of ``job``. ``publish`` receives the chosen intermediate stages;
    ``check`` is called between operations (it raises when the job was cancelled)."""
    source, mask = _inputs(job)
    rgb, alpha = _split(source)
    canvas = Canvas(rgb.copy(), alpha, rgb, settings.matte)
    stages = Stages(publish, partial_stages(stage_count(plan), job.partial_images))

    def composed() -> Pixels:
        return _compose(canvas, rgb, alpha, mask)

    for op in plan:
        check()
        _apply(
            op,
            canvas,
            job,
            mask,
            settings,
            variant,
            lambda img: _stage(canvas, img, stages, composed),
        )
        stages.reached(composed)
    if job.background == "transparent" and not canvas.background_decided:
        check()
        canvas.alpha = _combine_alpha(canvas.alpha, canvas.matte())
    return _to_size(composed(), job.size)


def _stage(canvas: Canvas, image: Pixels, stages: Stages, composed: Callable[[], Pixels]) -> None:
    """An operation's own intermediate state: show it as the current colours for a moment."""
    kept = canvas.rgb
    canvas.rgb = image[:, :, :3] if image.ndim == 3 and image.shape[2] > 3 else image
    try:
        stages.reached(composed)
    finally:
        canvas.rgb = kept


def _inputs(job: EditJob) -> tuple[Pixels, Pixels | None]:
    """The first image (and mask) at the output size. An output of another aspect ratio
    (``size=auto`` picks one of OpenAI's fixed sizes) gets the input scaled to cover it and
    centre-cropped: a classical edit must not distort the picture."""
    image, mask = job.images[0], job.mask
    h, w = image.shape[:2]
    tw, th = job.size
    if abs(w / h - tw / th) < 0.01:
        source = fit(image, job.size)
        if mask is not None and mask.shape[:2] != source.shape[:2]:
            mask = u8(cv2.resize(mask, (tw, th), interpolation=cv2.INTER_NEAREST))
        return source, mask
    source = _cover(image, job.size)
    if mask is not None:
        mask = _cover(mask, job.size, cv2.INTER_NEAREST)
    return source, mask


def _split(pixels: Pixels) -> tuple[Pixels, Pixels | None]:
    if pixels.ndim == 2:
        return u8(cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)), None
    if pixels.shape[2] == 4:
        alpha = np.ascontiguousarray(pixels[:, :, 3])
        rgb = np.ascontiguousarray(pixels[:, :, :3])
        return rgb, None if bool((alpha == 255).all()) else alpha
    return pixels, None


def _apply(
    op: Op,
    canvas: Canvas,
    job: EditJob,
    mask: Pixels | None,
    settings: Settings,
    variant: int,
    on_stage: StageHook,
) -> None:
    name = op.name
    if name == "fill":
        assert mask is not None  # the engine's check refuses fill without a mask
        _fill(canvas, mask, settings, variant, on_stage)
    elif name in _COLOUR:
        canvas.rgb = _COLOUR[name](canvas.rgb, op, variant, on_stage)
    elif name == "flip":
        canvas.transform(lambda a: ops.flip(a, op.axis))
    elif name == "rotate":
        canvas.transform(lambda a: ops.rotate(a, op.degrees))
    elif name == "crop_subject":
        box = _subject_box(canvas.matte(), job.size)
        canvas.transform(lambda a: a[box[1] : box[3], box[0] : box[2]])
    elif name == "text":
        font = pick_font(op.text, settings.fonts)
        assert font is not None  # the engine's check refuses text no font can draw
        canvas.rgb = draw_text(
            canvas.rgb, op.text, font_path=font, position=op.position or "bottom", color=op.color
        )
    elif name == "remove_background":
        canvas.alpha = _combine_alpha(canvas.alpha, canvas.matte())
        canvas.background_decided = True
    elif name in ("background_color", "background_image", "blur_background"):
        _replace_background(op, canvas, job)
    else:  # pragma: no cover - the grammar only produces the names above
        raise ValueError(f"unknown operation {name!r}")


def _fill(
    canvas: Canvas, mask: Pixels, settings: Settings, variant: int, on_stage: StageHook
) -> None:
    hole = mask > 0
    budget = settings.fill_budget
    if canvas.alpha is None and settings.inpainter is not None:
        canvas.rgb = settings.inpainter.fill(canvas.rgb, hole, variant=variant, on_stage=on_stage)
        return
    # An image with alpha goes to the classical fill, which fills the alpha channel too.
    if canvas.alpha is None:
        canvas.rgb = fill(canvas.rgb, hole, budget=budget, variant=variant, on_stage=on_stage)
        return
    both = fill(
        np.dstack([canvas.rgb, canvas.alpha]),
        hole,
        budget=budget,
        variant=variant,
        on_stage=on_stage,
    )
    canvas.rgb = np.ascontiguousarray(both[:, :, :3])
    canvas.alpha = np.ascontiguousarray(both[:, :, 3])


_COLOUR: dict[str, Callable[[Pixels, Op, int, StageHook], Pixels]] = {
    "grayscale": lambda rgb, op, v, s: ops.grayscale(rgb),
    "sepia": lambda rgb, op, v, s: ops.sepia(rgb, op.amount),
    "brightness": lambda rgb, op, v, s: ops.brightness(rgb, op.amount),
    "contrast": lambda rgb, op, v, s: ops.contrast(rgb, op.amount),
    "saturation": lambda rgb, op, v, s: ops.saturation(rgb, op.amount),
    "temperature": lambda rgb, op, v, s: ops.temperature(rgb, op.amount),
    "blur": lambda rgb, op, v, s: ops.blur(rgb, op.amount),
    "sharpen": lambda rgb, op, v, s: ops.sharpen(rgb, op.amount),
    "pixelate": lambda rgb, op, v, s: ops.pixelate(rgb, op.amount, v),
    "invert": lambda rgb, op, v, s: ops.invert(rgb),
    "sketch": lambda rgb, op, v, s: ops.sketch(rgb, op.amount, v, s),
    "cartoon": lambda rgb, op, v, s: ops.cartoon(rgb, op.amount, v, s),
    "posterize": lambda rgb, op, v, s: ops.posterize(rgb, op.levels, v),
    "vignette": lambda rgb, op, v, s: ops.vignette(rgb, op.amount),
}


def _replace_background(op: Op, canvas: Canvas, job: EditJob) -> None:
    matte = canvas.matte()
    if canvas.alpha is not None:
        matte = _combine_alpha(canvas.alpha, matte)
    h, w = canvas.rgb.shape[:2]
    if op.name == "background_color":
        color = op.color or (255, 255, 255)
        background = np.empty_like(canvas.rgb)
        background[:] = color
        canvas.alpha = None
    elif op.name == "background_image":
        background = _cover(_split(job.images[op.image])[0], (w, h))
        canvas.alpha = None
    else:  # blur_background: the sharp subject over a blurred copy of the whole image
        background = ops.blur(canvas.rgb, 1.5 * max(0.3, op.amount))
    canvas.rgb = _over(canvas.rgb, background, matte)
    canvas.background_decided = True


def _over(front: Pixels, back: Pixels, alpha: Pixels) -> Pixels:
    weight = alpha.astype(np.float32) * (1.0 / 255.0)
    return u8(cv2.blendLinear(front, back, weight, 1.0 - weight))


def _combine_alpha(current: Pixels | None, matte: Pixels) -> Pixels:
    return matte.copy() if current is None else u8(cv2.min(current, matte))


def _cover(image: Pixels, size: tuple[int, int], interpolation: int | None = None) -> Pixels:
    """Scale to cover ``size`` (width, height) and crop the centre: no distortion."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = max(w / iw, h / ih)
    sw, sh = max(w, round(iw * scale)), max(h, round(ih * scale))
    if interpolation is not None:
        interp = interpolation
    else:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, (sw, sh), interpolation=interp)
    x0, y0 = (sw - w) // 2, (sh - h) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + h, x0 : x0 + w])


def _subject_box(matte: Pixels, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box around the foreground with the output's aspect ratio and a small margin."""
    h, w = matte.shape[:2]
    ys, xs = np.nonzero(matte >= 128)
    if len(xs) == 0 or (matte >= 128).all():
        return 0, 0, w, h
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    pad = round(0.06 * max(x1 - x0, y1 - y0))
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    aspect = size[0] / size[1]
    bw, bh = x1 - x0, y1 - y0
    if bw / bh < aspect:
        bw = round(bh * aspect)
    else:
        bh = round(bw / aspect)
    bw, bh = min(bw, w), min(bh, h)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(min(max(0, round(cx - bw / 2)), w - bw))
    top = int(min(max(0, round(cy - bh / 2)), h - bh))
    return left, top, left + bw, top + bh


def _compose(canvas: Canvas, rgb: Pixels, alpha: Pixels | None, mask: Pixels | None) -> Pixels:
    """The current state as an output image: edit area only, alpha attached."""
    out_rgb, out_alpha = canvas.rgb, canvas.alpha
    if mask is not None and not canvas.geometry_changed:
        out_rgb = _blend(rgb, out_rgb, mask)
        if out_alpha is not None or alpha is not None:
            before = alpha if alpha is not None else np.full(mask.shape, 255, np.uint8)
            after = out_alpha if out_alpha is not None else np.full(mask.shape, 255, np.uint8)
            out_alpha = _blend(before, after, mask)
    if out_alpha is None:
        return out_rgb
    return np.dstack([out_rgb, out_alpha])


def _blend(before: Pixels, after: Pixels, mask: Pixels) -> Pixels:
    """``after`` inside the edit area, ``before`` (exactly) outside, linear in between."""
    weight = mask.astype(np.float32) * (1.0 / 255.0)
    out = u8(cv2.blendLinear(after, before, weight, 1.0 - weight))
    cv2.copyTo(before, (mask == 0).astype(np.uint8), out)  # exact, not just within rounding
    return out


def _to_size(image: Pixels, size: tuple[int, int]) -> Pixels:
    """Fit to ``size`` without distortion: a rotated or cropped result of another aspect
    ratio is scaled to fit and padded (transparent when there is alpha, else black)."""
    h, w = image.shape[:2]
    if (w, h) == size:
        return image
    tw, th = size
    if abs(w / h - tw / th) < 0.01:
        return fit(image, size)
    scale = min(tw / w, th / h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = fit(image, (sw, sh))
    channels = image.shape[2]
    out = np.zeros((th, tw, channels), np.uint8)
    x0, y0 = (tw - sw) // 2, (th - sh) // 2
    out[y0 : y0 + sh, x0 : x0 + sw] = scaled
    return out
