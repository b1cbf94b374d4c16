"""Optional learned fill: a LaMa- or MI-GAN-style ONNX inpainter, set by the engine option
``fill_model`` (a path, or ``hf:OWNER/REPO/FILE`` fetched by ``retouch models pull``).

No registry package ships such weights (LaMa and MI-GAN are published on model hubs only), so
the classical fill (``fill``) stays the default and is used whenever no model is configured.

Interface expected of the model: two inputs, the image (1x3xHxW) and the mask (1x1xHxW, 1 or
255 = hole), in the order the model declares them (names containing "mask" are the mask);
float inputs get values in [0, 1], uint8 inputs [0, 255]; one output 1x3xHxW, in [0, 1] or
[0, 255] (told apart by its range). A fixed input size (LaMa's exports use 512x512) is
honoured by scaling; a free one gets the crop's size rounded up to a multiple of 8.

The model sees a crop around the hole with as much context again on each side; its output is
scaled back, made seamless with the same membrane correction as the classical fill, and only
hole pixels are written. Deterministic: onnxruntime single-threaded, no random source (the
session is opened by ``onnx_session``, as the segmenter's, without the memory arena).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from retouch.engine.classic.arrays import u8
from retouch.engine.classic.fill import _crop_box, _diffusion, _paste, _seamless
from retouch.engine.classic.onnx_session import open_session
from retouch.engine.types import EngineLoadError, Pixels

BoolMask = npt.NDArray[np.bool_]
StageHook = Callable[[Pixels], None]
MAX_SIDE = 512
"""Longest side the model sees when its input size is free (cost grows with the area)."""


class OnnxInpainter:
    def __init__(self, path: Path) -> None:
        self._session = open_session(
            path, what="classic option 'fill_model': the fill model", arena=False
        )
        inputs = self._session.get_inputs()
        if len(inputs) != 2 or any(len(i.shape) != 4 for i in inputs):
            raise EngineLoadError(
                f"classic option 'fill_model': {path} must take two 4-D inputs (image "
                f"1x3xHxW and mask 1x1xHxW); it takes {[(i.name, i.shape) for i in inputs]}"
            )
        masks = [i for i in inputs if "mask" in i.name.lower()]
        mask_input = masks[0] if masks else inputs[1]
        image_input = inputs[0] if inputs[0] is not mask_input else inputs[1]
        self._image, self._mask = image_input.name, mask_input.name
        self._image_u8 = "uint8" in image_input.type
        self._mask_u8 = "uint8" in mask_input.type
        shape = image_input.shape
        self.fixed: tuple[int, int] | None = (
            (int(shape[3]), int(shape[2]))
            if isinstance(shape[2], int) and isinstance(shape[3], int)
            else None
        )
        self._output = self._session.get_outputs()[0].name
        self.name = path.name

    def _run(self, rgb: Pixels, hole: BoolMask) -> Pixels:
        """The model's output for one crop (at the crop's size)."""
        h, w = hole.shape
        if self.fixed is not None:
            size = self.fixed
        else:
            s = min(1.0, MAX_SIDE / max(h, w))
            size = (max(8, math.ceil(w * s / 8) * 8), max(8, math.ceil(h * s / 8) * 8))
        image = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_hole = cv2.resize(hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
        image = np.where(small_hole[:, :, None], 0, image).astype(np.uint8)
        x: Any = image.transpose(2, 0, 1)[None]
        m: Any = small_hole[None, None]
        x = x if self._image_u8 else x.astype(np.float32) / 255.0
        m = (m * 255).astype(np.uint8) if self._mask_u8 else m.astype(np.float32)
        out = np.asarray(
            self._session.run([self._output], {self._image: x, self._mask: m})[0], np.float32
        )
        if out.ndim != 4 or out.shape[1] != 3:
            raise ValueError(f"the fill model gave an output of shape {out.shape}, not 1x3xHxW")
        result = out[0].transpose(1, 2, 0)
        if not self._image_u8 and float(np.nanmax(result)) <= 1.5:
            result = result * 255.0
        result = u8(np.clip(np.nan_to_num(result) + 0.5, 0, 255))
        return u8(cv2.resize(result, (w, h), interpolation=cv2.INTER_CUBIC))

    def fill(
        self,
        rgb: Pixels,
        hole: BoolMask,
        *,
        variant: int = 0,
        on_stage: StageHook | None = None,
    ) -> Pixels:
        """``rgb`` (H x W x 3) with the ``hole`` pixels synthesised by the model. Variants
        other than 0 give the model more context (a different, deterministic fill)."""
        if not hole.any():
            return rgb.copy()
        if hole.all():
            raise ValueError("nothing to fill from: the edit area covers the whole image")
        ys, xs = np.nonzero(hole)
        extent = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
        context = 1.0 + 0.25 * (variant % 5)
        y0, y1, x0, x1 = _crop_box(hole, max(16, extent * context))
        crop, crop_hole = rgb[y0:y1, x0:x1], hole[y0:y1, x0:x1]
        if on_stage is not None:
            on_stage(_paste(rgb, crop_hole, _diffusion(crop, crop_hole), (y0, x0)))
        learned = self._run(np.ascontiguousarray(crop), crop_hole)
        if on_stage is not None:
            on_stage(_paste(rgb, crop_hole, learned, (y0, x0)))
        return _paste(rgb, crop_hole, _seamless(crop, crop_hole, learned), (y0, x0))
