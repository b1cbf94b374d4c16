"""Build ``u2netp-int8.onnx``, the classic engine's default segmenter, from the published
``u2netp.onnx``: its seven largest convolutions in 8-bit integers, everything else unchanged.

    python bench/quantize_u2netp.py            # writes src/retouch/engine/classic/models/
    python bench/quantize_u2netp.py --check    # only say whether the bundled file matches

U²-Net-p costs 19.8 GMAC at 320x320, and 16 GMAC of it are in seven 3x3 convolutions of at
least 0.9 GMAC each, at the two finest scales (320² and 160²). Those seven become
``QLinearConv`` (onnxruntime's static quantisation, QOperator format: unsigned 8-bit
activations, signed 7-bit per-channel weights — ``reduce_range``, so that AVX2's 16-bit
pair sums cannot saturate); every other layer, the side outputs and the fusion included,
stays float32. Quantising all 119 convolutions (or the 25 of at least 50 MMAC) was measured
too: the matte's mean IoU on ``bench/matting.py``'s composites fell from 0.96 to 0.61, while
these seven leave it at 0.96 and cut the network's CPU time by about a fifth.

Four of the seven read a concatenation (U²-Net's decoder joins the upsampled coarser result
with the encoder's skip connection); quantisation puts one ``QuantizeLinear`` after the float32
``Concat``. ``quantise_concat_inputs`` moves it before: each part quantised with the same
scale and zero point, then an 8-bit ``Concat`` — the same bytes (quantising is elementwise),
but the 128-channel 320² concatenation is never held in float32 (52 MB; the network's peak
RSS drops by about 50 MB, ``bench/matting.py``).

Calibration (the activation ranges, min-max): scikit-image's nine colour photographs
(``bench/composites.PHOTOS``, each also mirrored and blurred by sigma 4 px) and eight of its
grey images as RGB — no composite of the benchmark. Needs the dev dependencies (onnx,
scikit-image). Deterministic: the same inputs give the same file (its sha256 is in
``models/PROVENANCE.md`` and checked at load).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from bench.composites import PHOTOS, photo  # noqa: E402

from retouch.engine.classic.segment import BUNDLED, DEFAULT_INPUT, QUANTISED, normalise  # noqa: E402

MIN_MACS = 0.9e9
GREY = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel")


def calibration_images() -> list[np.ndarray]:
    from skimage import data

    images = []
    for name in PHOTOS:
        image = photo(name)
        images += [image, np.ascontiguousarray(image[:, ::-1]), cv2.GaussianBlur(image, (0, 0), 4)]
    for name in GREY:
        grey = getattr(data, name)()
        images.append(np.ascontiguousarray(np.dstack([grey] * 3)))
    return images


def large_convolutions(model_path: Path) -> list[str]:
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        w, out = weights[node.input[1]], shapes[node.output[0]]
        if out[1] * out[2] * out[3] * w[1] * w[2] * w[3] >= MIN_MACS:
            chosen.append(node.name)
    return chosen


def quantise_concat_inputs(model: Any) -> int:
    """Rewrite ``Concat -> QuantizeLinear`` (the Concat used only there) as a QuantizeLinear
    per part and an 8-bit Concat, in place; the number of rewrites."""
    from onnx import helper

    graph = model.graph
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    replaced: dict[int, list[Any]] = {}
    for i, node in enumerate(nodes):
        c = producer.get(node.input[0], -1) if node.op_type == "QuantizeLinear" else -1
        concat = nodes[c] if c >= 0 else None
        if concat is None or concat.op_type != "Concat" or uses[concat.output[0]] != 1:
            continue
        scale, zero = node.input[1], node.input[2]
        parts = [
            helper.make_node("QuantizeLinear", [x, scale, zero], [f"{x}_{node.name}"], name=f"{node.name}_{k}")
            for k, x in enumerate(concat.input)
        ]
        axis = next(a.i for a in concat.attribute if a.name == "axis")
        joined = helper.make_node(
            "Concat", [q.output[0] for q in parts], [node.output[0]], name=f"{concat.name}_quantized", axis=axis
        )
        replaced[c] = []
        replaced[i] = [*parts, joined]
    del graph.node[:]
    graph.node.extend(n for i, node in enumerate(nodes) for n in replaced.get(i, [node]))
    return len(replaced) // 2


def build(target: Path) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_images()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._next, None)
            return None if image is None else {"input.1": normalise(image, (DEFAULT_INPUT,) * 2)}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(BUNDLED), str(pre), skip_symbolic_shape=True)
        chosen = large_convolutions(pre)
        others = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv" and n.name not in chosen]
        print(f"quantising {len(chosen)} convolutions: {', '.join(chosen)}")
        quantize_static(
            str(pre), str(target), Reader(), quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=True, op_types_to_quantize=["Conv", "Relu"], nodes_to_exclude=others,
            calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        model = onnx.load(str(target))
        print(f"8-bit concatenations: {quantise_concat_inputs(model)}")
        onnx.checker.check_model(model)
        onnx.save(model, str(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / QUANTISED.name
        build(built)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        print(f"sha256 {digest} ({built.stat().st_size} bytes)")
        if args.check:
            same = QUANTISED.is_file() and QUANTISED.read_bytes() == built.read_bytes()
            print("the bundled file matches" if same else "the bundled file DIFFERS")
            sys.exit(0 if same else 1)
        QUANTISED.write_bytes(built.read_bytes())
        print(f"wrote {QUANTISED}")


if __name__ == "__main__":
    main()
