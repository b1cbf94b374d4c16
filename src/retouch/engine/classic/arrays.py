"""Typed views of OpenCV results (its stubs return a union of array types)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from retouch.engine.types import Pixels

FloatImage = npt.NDArray[np.float32]


def u8(array: Any) -> Pixels:
    """``array`` as uint8 pixels (no copy when it already is)."""
    return np.asarray(array, dtype=np.uint8)


def f32(array: Any) -> FloatImage:
    return np.asarray(array, dtype=np.float32)
