"""Leaf types shared across layers (imports nothing from retouch): pixels and uploads.

``imaging``, ``engine`` and ``service`` all speak these; keeping them here lets ``imaging``
stay below every other layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pixels = npt.NDArray[np.uint8]
"""HxWx3 (RGB) or HxWx4 (RGBA) uint8 pixels."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file (or decoded data URL)."""

    param: str
    """How errors name it: ``image``, ``image[2]`` or ``mask``."""
    filename: str
    content_type: str | None
    data: bytes
