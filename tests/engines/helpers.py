"""Small helpers shared by the engine test modules."""

from __future__ import annotations

import numpy as np

from tests.conftest import decode_b64, encode_image, gradient


def pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_b64(b64).convert("RGB"))


def png(size: tuple[int, int] = (64, 64), shift: int = 0) -> tuple[str, bytes, str]:
    return ("in.png", encode_image(np.roll(gradient(size), shift, axis=1)), "image/png")


def hole_mask(size: tuple[int, int], hole: tuple[int, int, int, int]) -> np.ndarray:
    """True inside ``hole`` (x0, y0, x1, y1): the edit area of ``tests.conftest.mask_bytes``."""
    inside = np.zeros((size[1], size[0]), bool)
    inside[hole[1] : hole[3], hole[0] : hole[2]] = True
    return inside


class CancelAfter:
    """A ``Progress`` that is cancelled once ``checks`` checks have passed (an engine test's
    stand-in for a client that goes away mid-edit); counts the partial images it gets."""

    def __init__(self, checks: int) -> None:
        self.checks = checks
        self.partials = 0

    @property
    def cancelled(self) -> bool:
        return self.checks <= 0

    def check(self) -> None:
        from retouch.errors import Cancelled

        self.checks -= 1
        if self.checks < 0:
            raise Cancelled()

    def partial(self, image: np.ndarray, *, output_index: int = 0) -> None:
        self.partials += 1


def job(**kw: object) -> object:
    """An ``EditJob`` of one 64x64 gradient (``kw`` overrides any field)."""
    from retouch.engine.types import EditJob

    fields: dict[str, object] = {
        "prompt": "make it blue", "images": (gradient((64, 64)),), "mask": None, "size": (64, 64),
        "n": 1, "quality": "high", "input_fidelity": "low", "background": "auto", "partial_images": 0,
    }  # fmt: skip
    fields.update(kw)
    return EditJob(**fields)  # type: ignore[arg-type]
