"""``classic``: the built-in offline engine. Real, deterministic edits with classical image
processing (OpenCV, Pillow) and a small bundled segmentation model (U²-Net-p, ONNX), and a
plain refusal for anything else.

Modules: ``grammar`` + ``phrases`` (prompt -> operations), ``operations`` (the ``Op`` type),
``ops`` (colour and filter operations), ``fill`` (inpainting), ``learned_fill`` (optional ONNX
inpainter), ``segment`` (the segmentation model), ``matting`` (foreground separation),
``model_files`` (where optional ONNX files come from), ``text`` (text rendering with the
bundled font), ``pipeline`` (runs a plan on a job). See ``docs/classic-engine.md``.

Options (``ModelSettings.options``): ``fill_budget`` (hole pixels filled at the coarse scale,
default 4500; larger is slower and sharper), ``font`` (path of a font for text the bundled
font cannot draw, e.g. a CJK font), ``segmenter`` ("auto", "learned" or "grabcut"),
``matte_model`` (another ONNX segmenter: a path or ``hf:OWNER/REPO/FILE``), ``fill_model``
(an ONNX inpainter, same forms; default: the classical fill).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from retouch.engine.classic import model_files, pipeline
from retouch.engine.classic.fill import DEFAULT_BUDGET
from retouch.engine.classic.grammar import NotUnderstood, parse
from retouch.engine.classic.learned_fill import OnnxInpainter
from retouch.engine.classic.matting import foreground_alpha
from retouch.engine.classic.operations import GEOMETRIC, VARIABLE, Op
from retouch.engine.classic.segment import Segmenter, segmenter
from retouch.engine.classic.text import font_paths, missing_characters
from retouch.engine.types import (
    EditJob,
    EditOutput,
    EngineInfo,
    EngineLoadError,
    Pixels,
    Progress,
)
from retouch.errors import UnsupportedInstruction

log = logging.getLogger(__name__)

CAPABILITIES = (
    "black and white, sepia, brighter/darker, more/less contrast, more/less saturation, "
    "warmer/cooler, blur, sharpen, pixelate, invert, flip/mirror, rotate by 90/180 degrees, "
    "pencil sketch, cartoon, posterize, vignette, crop to the subject, add the text '...', "
    "remove the background, a plain colour background, the second image as background, blur "
    "the background, and remove what a mask marks (fill); several in one prompt, in English "
    "or Chinese"
)
GENERATIVE_HINT = (
    "For generative edits, serve a model, e.g. `retouch serve --model "
    "klein=flux2-klein:black-forest-labs/FLUX.2-klein-4B` (see the README)."
)


@functools.lru_cache(maxsize=256)
def _parse(prompt: str) -> tuple[Op, ...]:
    return tuple(parse(prompt))


SEGMENTERS = ("auto", "learned", "grabcut")


def _text_option(opts: dict[str, Any], key: str) -> str | None:
    value = opts.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise EngineLoadError(f"classic option {key!r} must be a non-empty string, not {value!r}")
    return value


class ClassicEngine:
    def __init__(self, name: str = "classic", options: dict[str, Any] | None = None) -> None:
        opts = options or {}
        font = opts.get("font")
        kind = opts.get("segmenter", "auto")
        if kind not in SEGMENTERS:
            raise EngineLoadError(
                f"classic option 'segmenter' must be one of {', '.join(SEGMENTERS)}, not {kind!r}"
            )
        self.name = name
        self._segmenter_kind = str(kind)
        self._matte_model = _text_option(opts, "matte_model")
        self._fill_model = _text_option(opts, "fill_model")
        if self._matte_model and kind == "grabcut":
            raise EngineLoadError("classic option 'matte_model' cannot be used with segmenter='grabcut'")
        self._segmenter: Segmenter | None = None
        self.settings = pipeline.Settings(
            fill_budget=int(opts.get("fill_budget", DEFAULT_BUDGET)),
            font=str(font) if font else None,
            fonts=tuple(font_paths(str(font) if font else None)),
            matte=self._matte,
        )
        self.info = self._describe()

    def _describe(self) -> EngineInfo:
        if self._segmenter is not None:
            matte = self._segmenter.name
        elif self._segmenter_kind == "grabcut":
            matte = "GrabCut"
        else:
            matte = "not loaded yet"
        fill = self.settings.inpainter.name if self.settings.inpainter else "classical"
        return EngineInfo(
            name=self.name,
            description="Built-in classical image processing: colour, filters, geometry, text, "
            f"background and masked fill. Segmenter: {matte}; fill: {fill}.",
            max_images=2,
        )

    @property
    def segmenter(self) -> Segmenter:
        """The active segmenter, loaded on first use (``load`` does it at start-up)."""
        if self._segmenter is None:
            path = (
                model_files.resolve("matte_model", self._matte_model, name=self.name)
                if self._matte_model
                else None
            )
            self._segmenter = segmenter(path, kind=self._segmenter_kind)
            self.info = self._describe()
        return self._segmenter

    def _matte(self, rgb: Pixels) -> Pixels:
        return foreground_alpha(rgb, self.segmenter)

    def load(self) -> None:
        active = self.segmenter
        if self._fill_model:
            path = model_files.resolve("fill_model", self._fill_model, name=self.name)
            self.settings = pipeline.Settings(
                fill_budget=self.settings.fill_budget,
                font=self.settings.font,
                fonts=self.settings.fonts,
                matte=self._matte,
                inpainter=OnnxInpainter(path),
            )
        self.info = self._describe()
        log.info("classic %s: segmenter %s", self.name, active.name)

    def close(self) -> None:
        return None

    def check(self, job: EditJob) -> None:
        self._plan(job)

    def _plan(self, job: EditJob) -> tuple[Op, ...]:
        try:
            plan = _parse(job.prompt)
        except NotUnderstood as exc:
            raise self._refuse(f"it does not understand '{exc.fragment}'") from None
        names = {op.name for op in plan}
        has_mask = job.mask is not None
        if has_mask and not bool(job.mask.any()):  # type: ignore[union-attr]
            raise self._refuse("the mask has no transparent (editable) pixels")
        if "fill" in names:
            if not has_mask:
                raise self._refuse(
                    "removing an object needs a mask whose transparent pixels mark it"
                )
            if bool(job.mask.all()):  # type: ignore[union-attr]
                raise self._refuse(
                    "the mask covers the whole image, so there is nothing to fill from"
                )
        if has_mask and names & GEOMETRIC:
            raise self._refuse(
                "rotating or cropping changes the whole frame and cannot be limited to a mask"
            )
        for op in plan:
            self._check_op(op, job)
        used = 1 + max((op.image for op in plan if op.name == "background_image"), default=0)
        if len(job.images) > used:
            raise self._refuse(
                f"it got {len(job.images)} images but uses a second image only as a background "
                "('use the second image as background')"
            )
        return plan

    def _check_op(self, op: Op, job: EditJob) -> None:
        if op.name == "rotate" and op.degrees % 90:
            raise self._refuse(f"it rotates by multiples of 90 degrees only, not {op.degrees}")
        if op.name == "background_image" and len(job.images) <= op.image:
            raise self._refuse("'use the second image as background' needs a second image")
        if op.name == "text":
            if not op.text:
                raise self._refuse("the text to add is empty")
            missing = missing_characters(op.text, self.settings.fonts)
            if missing:
                raise self._refuse(
                    f"no installed font can draw {missing[:20]!r}; install a font that has "
                    "these characters (for Chinese, Japanese or Korean: fonts-noto-cjk) or "
                    "set the engine option 'font' to its path"
                )

    def _refuse(self, reason: str) -> UnsupportedInstruction:
        return UnsupportedInstruction(
            f"The built-in 'classic' engine cannot carry out this prompt: {reason}. "
            f"It can do: {CAPABILITIES}. {GENERATIVE_HINT}",
            param="prompt",
        )

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        plan = self._plan(job)
        varies = any(op.name in VARIABLE for op in plan)
        images = []
        for index in range(job.n if varies else 1):
            progress.check()
            images.append(
                pipeline.render(
                    job,
                    plan,
                    self.settings,
                    variant=job.seed + index,
                    publish=progress.partial if index == 0 else None,
                    check=progress.check,
                )
            )
        notes = []
        if job.n > 1:
            if varies:
                notes.append(
                    f"{job.n} distinct variations (seeds {job.seed}..{job.seed + job.n - 1})"
                )
            else:
                notes.append("identical copies: the operations are deterministic")
                images = images * job.n
        log.debug("classic: %s -> %d image(s)", [op.name for op in plan], len(images))
        return EditOutput(images=images, steps=pipeline.stage_count(plan), notes=notes)
