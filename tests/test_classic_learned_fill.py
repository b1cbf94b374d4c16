"""Plumbing of the optional learned fill (option ``fill_model``) with random-weight ONNX
inpainters of LaMa's and MI-GAN's signatures built here, and ``retouch models pull`` for the
classic engine's hub files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from retouch.cli import main
from retouch.engine.classic import ClassicEngine, model_files
from retouch.engine.classic.learned_fill import OnnxInpainter
from retouch.engine.types import EditJob, EngineLoadError, Pixels
from tests.classic_helpers import photo
from tests.test_classic_matting import NullProgress


def inpainter(path: Path, *, size: int | None = None, uint8: bool = False) -> Path:
    """image (1x3xHxW) + mask (1x1xHxW) -> concat -> 3x3 conv (random weights) -> sigmoid
    (-> x255 as uint8 for the MI-GAN-style variant)."""
    rng = np.random.default_rng(0)
    dims: list[Any] = [1, 3, size or "h", size or "w"]
    mdims: list[Any] = [1, 1, size or "h", size or "w"]
    kind = TensorProto.UINT8 if uint8 else TensorProto.FLOAT
    nodes = []
    image, mask = "image", "mask"
    if uint8:
        nodes += [
            helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        ]
        image, mask = "image_f", "mask_f"
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32), "w")
    nodes += [
        helper.make_node("Concat", [image, mask], ["both"], axis=1),
        helper.make_node("Conv", ["both", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["conv"], ["prob"]),
    ]
    if uint8:
        scale = numpy_helper.from_array(np.array(255.0, np.float32), "scale")
        nodes += [
            helper.make_node("Mul", ["prob", "scale"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["output"], to=TensorProto.UINT8),
        ]
        inits = [weight, scale]
    else:
        nodes.append(helper.make_node("Identity", ["prob"], ["output"]))
        inits = [weight]
    graph = helper.make_graph(
        nodes,
        "inpainter",
        [helper.make_tensor_value_info("image", kind, dims),
         helper.make_tensor_value_info("mask", kind, mdims)],
        [helper.make_tensor_value_info("output", kind, dims)],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def fill_job(image: Pixels, hole: np.ndarray, n: int = 1) -> EditJob:
    return EditJob(
        prompt="remove the object",
        images=(image,),
        mask=np.where(hole, 255, 0).astype(np.uint8),
        size=(image.shape[1], image.shape[0]),
        n=n,
        quality="high",
        input_fidelity="low",
        background="auto",
        partial_images=0,
    )


def hole_of(side: int) -> np.ndarray:
    hole = np.zeros((side, side), bool)
    hole[side // 3 : side // 2, side // 4 : side // 2] = True
    return hole


@pytest.mark.parametrize(
    ("size", "uint8"), [(None, False), (64, False), (None, True)], ids=["free", "fixed", "uint8"]
)
def test_learned_fill_writes_only_the_hole_and_is_deterministic(
    tmp_path: Path, size: int | None, uint8: bool
) -> None:
    path = inpainter(tmp_path / "fill.onnx", size=size, uint8=uint8)
    engine = ClassicEngine(options={"fill_model": str(path)})
    engine.load()
    assert "fill: fill.onnx" in engine.info.description
    image, hole = photo(96), hole_of(96)
    first = engine.run(fill_job(image, hole), NullProgress()).images[0]
    again = engine.run(fill_job(image, hole), NullProgress()).images[0]
    assert np.array_equal(first, again)
    assert np.array_equal(first[~hole], image[~hole])
    classical = ClassicEngine().run(fill_job(image, hole), NullProgress()).images[0]
    assert not np.array_equal(first[hole], classical[hole])  # the model's output was used
    assert not np.array_equal(first[hole], image[hole])


def test_learned_fill_variations_differ(tmp_path: Path) -> None:
    engine = ClassicEngine(options={"fill_model": str(inpainter(tmp_path / "f.onnx"))})
    engine.load()
    out = engine.run(fill_job(photo(96), hole_of(96), n=2), NullProgress()).images
    assert not np.array_equal(out[0], out[1])


def test_learned_fill_streams_two_stages(tmp_path: Path) -> None:
    model = OnnxInpainter(inpainter(tmp_path / "f.onnx"))
    stages: list[Pixels] = []
    image, hole = photo(96), hole_of(96)
    model.fill(image, hole, on_stage=stages.append)
    assert len(stages) == 2
    assert all(np.array_equal(s[~hole], image[~hole]) for s in stages)


def test_a_model_of_the_wrong_signature_is_a_load_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "one-input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(EngineLoadError, match="two 4-D inputs"):
        ClassicEngine(options={"fill_model": str(tmp_path / "bad.onnx")}).load()


def test_hub_files_resolve_from_the_cache_and_pull_downloads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, str, bool]] = []
    target = inpainter(tmp_path / "lama.onnx")

    def fake_download(repo: str, filename: str, *, local_files_only: bool = False) -> str:
        calls.append((repo, filename, local_files_only))
        if local_files_only and len(calls) == 1:
            raise FileNotFoundError(filename)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(EngineLoadError, match="retouch models pull classic"):
        model_files.resolve("fill_model", "hf:someone/lama-onnx/onnx/lama.onnx")
    config = tmp_path / "retouch.toml"
    config.write_text(
        '[[models]]\nname = "classic"\nengine = "classic"\n'
        '[models.options]\nfill_model = "hf:someone/lama-onnx/onnx/lama.onnx"\n'
    )
    result = CliRunner().invoke(main, ["models", "pull", "classic", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert calls[-1] == ("someone/lama-onnx", "onnx/lama.onnx", False)
    assert str(target) in result.output
    engine = ClassicEngine(options={"fill_model": "hf:someone/lama-onnx/onnx/lama.onnx"})
    engine.load()
    assert calls[-1][2] is True  # serving reads the cache only
    result = CliRunner().invoke(main, ["models", "pull", "classic"])
    assert result.exit_code == 0
    assert "nothing to download" in result.output
