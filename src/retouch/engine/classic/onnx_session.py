"""The one way the classic engine opens an ONNX model: onnxruntime on the CPU, deterministic.

Used by the segmenter (``segment``) and the optional learned fill (``learned_fill``).

* One thread, sequential execution, no random source: the same sums in the same order on
  every call, whatever thread or process runs it (the server parallelises across jobs).
  ``InferenceSession.run`` is thread-safe, so one session is shared by all threads.
* All graph optimisations (onnxruntime's default, ``ORT_ENABLE_ALL``: fusions and the NCHWc
  layout of MLAS's convolutions) but one, ``NhwcTransformer``: it moves 8-bit convolutions
  (``QLinearConv``) to channels-last and wraps each in ``Transpose`` nodes, and in the
  segmenter (seven 8-bit convolutions between float32 layers) those transposes, with the
  extra quantise/dequantise pairs they bring, cost more than they save: 17 transposes, about
  50 ms of a 500 ms call on one core (``bench/matting.py``). The NCHW ``QLinearConv`` kernel
  gives the same bytes. Float32 models are not affected (the transformer only rewrites
  quantised operators on this CPU).
* Denormal activations flushed to zero: about 10 % faster on x86, same output.
* ``arena``: onnxruntime's CPU memory arena keeps the activation buffers between calls.
  Without it every call maps its activations afresh from the kernel and pays a page fault
  per 4 KiB: for U²-Net-p at 320² (about 250 MB of activations) that was 185 ms of a 770 ms
  call on one core (``bench/matting.py``). With it the memory stays mapped after the first
  call. With the arena, onnxruntime's memory pattern (one block for all activations, planned
  on the first call) is off: the arena would keep both the first call's buffers and the
  pattern's block (U²-Net-p: 514 MB retained after a few calls, against 263 MB without the
  pattern, which is also the peak). Off for models whose activations are too large to keep
  between calls (the optional learned fill).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retouch.engine.types import EngineLoadError

DISABLED = ["NhwcTransformer"]
"""onnxruntime graph optimisers left out (see above)."""


def open_session(path: Path, *, what: str, arena: bool) -> Any:
    """An onnxruntime session for ``path``; ``EngineLoadError`` (starting with ``what``, e.g.
    "the segmentation model") when onnxruntime is missing or cannot load it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EngineLoadError(f"{what} needs onnxruntime: pip install onnxruntime") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = not arena
    options.log_severity_level = 3
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    try:
        return ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED
        )
    except Exception as exc:
        raise EngineLoadError(f"{what} {path} could not be loaded by onnxruntime: {exc}") from exc
