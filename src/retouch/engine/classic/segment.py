"""Which pixels are the subject: a learned salient-object model by default, GrabCut without it.

The default is U²-Net-p (Qin et al., Pattern Recognition 2020), shipped in this package as the
published ONNX export (``models/u2netp.onnx``, 4.6 MB, float32) and as the file the engine
runs, ``models/u2netp-int8.onnx``: the same network with its seven largest convolutions (16 of
its 19.8 GMAC) in 8-bit integers, built from the first by ``bench/quantize_u2netp.py`` —
about a fifth less CPU time, the same matte quality on ``bench/matting.py``. Licence and
provenance of both in ``models/PROVENANCE.md``; both are checked against their sha256 at
load. It runs on the CPU by onnxruntime (``onnx_session``). Any ONNX segmenter with the same
interface (one 1x3xSxS image input normalised with ImageNet's mean and deviation, a first
output 1x1xSxS of foreground probabilities) loads through the same code, e.g. the float32
file or the full U²-Net (176 MB), from a path set in the engine option ``matte_model`` (or a
hub file fetched by ``retouch models pull``).

Determinism: onnxruntime runs single-threaded, sequentially, with no random source, so the
same image gives the same probabilities in every thread and process. One session is shared
by all threads (``InferenceSession.run`` is thread-safe).

``GrabCutSegmenter`` is the fallback when onnxruntime is not installed (``matting`` keeps the
classical border-seeded cut for it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from retouch.engine.classic.onnx_session import open_session
from retouch.engine.types import EngineLoadError, Pixels

log = logging.getLogger(__name__)

FloatImage = npt.NDArray[np.float32]

MODELS = Path(__file__).parent / "models"
BUNDLED = MODELS / "u2netp.onnx"
"""The published float32 export (the source of ``QUANTISED``)."""
BUNDLED_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
QUANTISED = MODELS / "u2netp-int8.onnx"
"""The default: ``BUNDLED`` with its largest convolutions in 8 bits (``bench/quantize_u2netp.py``)."""
QUANTISED_SHA256 = "f0d0901b717162ef5531711e7f07abb3f6ee63b48fbf9d91a5b5d5192d6085a9"
_CHECKED = {BUNDLED: BUNDLED_SHA256, QUANTISED: QUANTISED_SHA256}
_LABELS = {
    BUNDLED: "U²-Net-p (bundled, float32, onnxruntime)",
    QUANTISED: "U²-Net-p (bundled, onnxruntime)",
}
DEFAULT_INPUT = 320
"""Input side for models whose ONNX input has no fixed size (U²-Net was trained at 320²)."""
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class Segmenter(Protocol):
    name: str
    """Shown in the engine's description: which segmenter is active."""
    learned: bool

    def probability(self, rgb: Pixels) -> FloatImage:
        """Foreground probability in [0, 1], H' x W' float32 at the model's own resolution."""
        ...


class GrabCutSegmenter:
    """Marker for the classical fallback (``matting`` runs the border-seeded GrabCut)."""

    learned = False

    def __init__(self, why: str) -> None:
        self.name = f"GrabCut (classical; {why})"

    def probability(self, rgb: Pixels) -> FloatImage:  # pragma: no cover - never called
        raise NotImplementedError("matting runs GrabCut itself")


class OnnxSegmenter:
    """A salient-object ONNX model run by onnxruntime, one thread, deterministic (the
    session's options are ``onnx_session``'s)."""

    learned = True

    def __init__(self, path: Path, *, label: str | None = None) -> None:
        self._session = open_session(path, what="the segmentation model", arena=True)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1] not in (3, "3") or not outputs:
            raise EngineLoadError(
                f"the segmentation model {path} must take one 1x3xHxW image input and give a "
                f"1x1xHxW probability output (it takes {[(i.name, i.shape) for i in inputs]})"
            )
        self._input = str(inputs[0].name)
        self._output = str(outputs[0].name)
        self.size = (
            int(shape[3]) if isinstance(shape[3], int) else DEFAULT_INPUT,
            int(shape[2]) if isinstance(shape[2], int) else DEFAULT_INPUT,
        )
        self.name = label or f"{path.name} (onnxruntime)"

    def probability(self, rgb: Pixels) -> FloatImage:
        tensor = normalise(rgb, self.size)
        out: Any = self._session.run([self._output], {self._input: tensor})[0]
        prob = np.asarray(out, np.float32).reshape(out.shape[-2], out.shape[-1])
        return np.clip(prob, 0.0, 1.0)


def normalise(rgb: Pixels, size: tuple[int, int]) -> FloatImage:
    """The model's input: ``rgb`` scaled to ``size`` (W, H), as U²-Net's own test code (divided
    by the image's maximum, then ImageNet's statistics), 1x3xHxW float32 contiguous."""
    small = cv2.resize(np.ascontiguousarray(rgb[:, :, :3]), size, interpolation=cv2.INTER_AREA)
    x = small.astype(np.float32)
    x *= 1.0 / max(1.0, float(x.max()))
    x -= _MEAN
    x /= _STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> Segmenter:
    expected = _CHECKED.get(path)
    if expected is not None:
        digest = sha256(path)
        if digest != expected:
            raise EngineLoadError(
                f"the bundled segmentation weights {path} are damaged (sha256 {digest}, "
                f"expected {expected}); reinstall retouch"
            )
        return OnnxSegmenter(path, label=_LABELS[path])
    return OnnxSegmenter(path)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def segmenter(model: Path | None = None, *, kind: str = "auto") -> Segmenter:
    """The segmenter for ``kind`` ("auto": the learned model when onnxruntime is installed,
    else GrabCut; "learned": the model or an error; "grabcut") and ``model`` (an ONNX file;
    None = the bundled U²-Net-p, ``QUANTISED``). Loaded once per path and shared."""
    if kind == "grabcut":
        return GrabCutSegmenter("the segmenter option")
    if not onnxruntime_available():
        if kind == "learned" or model is not None:
            raise EngineLoadError(
                "the learned segmenter needs onnxruntime: pip install onnxruntime "
                "(or set the engine option segmenter='grabcut')"
            )
        log.warning("onnxruntime is not installed: background removal falls back to GrabCut")
        return GrabCutSegmenter("onnxruntime is not installed")
    path = (model or QUANTISED).expanduser().resolve()
    if not path.is_file():
        raise EngineLoadError(f"the segmentation model {path} does not exist")
    with _lock:  # one load per path even when several engines start at once
        return _load(path)


def default_segmenter() -> Segmenter:
    return segmenter()
