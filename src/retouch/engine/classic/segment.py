"""Which pixels are the subject: a learned salient-object model by default, GrabCut without it.

The default is U²-Net-p (Qin et al., Pattern Recognition 2020), 4.6 MB of ONNX weights shipped
in this package (``models/u2netp.onnx``; licence and provenance in ``models/PROVENANCE.md``),
run by onnxruntime on the CPU. Any ONNX segmenter with the same interface (one 1x3xSxS image
input normalised with ImageNet's mean and deviation, a first output 1x1xSxS of foreground
probabilities) loads through the same code, e.g. the full U²-Net (176 MB), from a path set
in the engine option ``matte_model`` (or a hub file fetched by ``retouch models pull``).

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

from retouch.engine.types import EngineLoadError, Pixels

log = logging.getLogger(__name__)

FloatImage = npt.NDArray[np.float32]

MODELS = Path(__file__).parent / "models"
BUNDLED = MODELS / "u2netp.onnx"
BUNDLED_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
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

    name = "GrabCut (classical; onnxruntime is not installed)"
    learned = False

    def probability(self, rgb: Pixels) -> FloatImage:  # pragma: no cover - never called
        raise NotImplementedError("matting runs GrabCut itself")


class OnnxSegmenter:
    """A salient-object ONNX model run by onnxruntime, one thread, deterministic."""

    learned = True

    def __init__(self, path: Path, *, label: str | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread and sequential execution: the same sums in the same order on every
        # call, whatever thread or process runs it; the server parallelises across jobs.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Without the arena the activations (~250 MB at 320²) go back after each call.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        # Denormal activations are flushed to zero: about 10 % faster on x86, same output.
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        try:
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise EngineLoadError(
                f"the segmentation model {path} could not be loaded by onnxruntime: {exc}"
            ) from exc
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
        small = cv2.resize(rgb[:, :, :3], self.size, interpolation=cv2.INTER_AREA)
        x = small.astype(np.float32)
        # As U²-Net's own test code: scale by the image's maximum, then ImageNet statistics.
        x *= 1.0 / max(1.0, float(x.max()))
        x = (x - _MEAN) / _STD
        tensor = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
        out: Any = self._session.run([self._output], {self._input: tensor})[0]
        prob = np.asarray(out, np.float32).reshape(out.shape[-2], out.shape[-1])
        return np.clip(prob, 0.0, 1.0)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> Segmenter:
    if path == BUNDLED:
        digest = sha256(path)
        if digest != BUNDLED_SHA256:
            raise EngineLoadError(
                f"the bundled segmentation weights {path} are damaged (sha256 {digest}, "
                f"expected {BUNDLED_SHA256}); reinstall retouch"
            )
        return OnnxSegmenter(path, label="U²-Net-p (bundled, onnxruntime)")
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
    None = the bundled U²-Net-p). Loaded once per path and shared."""
    if kind == "grabcut":
        return GrabCutSegmenter()
    if not onnxruntime_available():
        if kind == "learned" or model is not None:
            raise EngineLoadError(
                "the learned segmenter needs onnxruntime: pip install onnxruntime "
                "(or set the engine option segmenter='grabcut')"
            )
        log.warning("onnxruntime is not installed: background removal falls back to GrabCut")
        return GrabCutSegmenter()
    path = (model or BUNDLED).expanduser().resolve()
    if not path.is_file():
        raise EngineLoadError(f"the segmentation model {path} does not exist")
    with _lock:  # one load per path even when several engines start at once
        return _load(path)


def default_segmenter() -> Segmenter:
    return segmenter()
