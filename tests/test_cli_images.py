"""``retouch edit`` / ``retouch generate``: in-process and against a live server, checked
against what the API itself returns for the same request (classic is deterministic)."""

from __future__ import annotations

import base64
import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from retouch.cli import main
from retouch.cli_images import output_format, output_paths
from retouch.config import load_settings
from tests.conftest import encode_image, mask_bytes
from tests.live import LiveServer

pytestmark = pytest.mark.live

SIZE = (160, 120)
HOLE = (60, 40, 100, 80)


def photo() -> np.ndarray:
    """A small synthetic photo: a gradient with a dark square where the mask will be."""
    w, h = SIZE
    x = np.linspace(40, 220, w)[None, :, None]
    y = np.linspace(30, 200, h)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2 + 0 * x], axis=2)
    rgb[45:75, 65:95] = (20, 20, 30)
    return rgb.astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "photo.png").write_bytes(encode_image(photo()))
    (folder / "mask.png").write_bytes(mask_bytes(SIZE, HOLE))
    return {"photo": folder / "photo.png", "mask": folder / "mask.png", "dir": folder}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server on the default settings: the classic engine."""
    settings = load_settings(None, data_dir=tmp_path_factory.mktemp("cli-live") / "data")
    with LiveServer(settings) as live:
        yield live


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def api_edit(server: LiveServer, files: dict[str, Path], prompt: str, *, mask: bool = False,
             **params: object) -> list[np.ndarray]:  # fmt: skip
    """What the API answers for the request, through the official SDK."""
    with server.sdk() as client:
        result = client.images.edit(
            model="classic", image=("photo.png", files["photo"].read_bytes(), "image/png"),
            prompt=prompt, **({"mask": ("mask.png", files["mask"].read_bytes())} if mask else {}),
            **params,  # type: ignore[arg-type]
        )  # fmt: skip
    return [pixels(base64.b64decode(d.b64_json or "")) for d in result.data or []]


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def written(result: Result) -> list[Path]:
    return [Path(line.split(" ", 2)[1]) for line in result.stdout.splitlines() if line.startswith("wrote ")]


def test_in_process_edit_with_a_mask_equals_the_api(files: dict[str, Path], server: LiveServer,
                                                     tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "filled.png"
    result = run("edit", files["photo"], "--prompt", "remove this", "--mask", files["mask"], "-o", out)
    assert result.exit_code == 0, result.output
    assert written(result) == [out]
    got = pixels(out.read_bytes())
    assert got.shape[:2] == (SIZE[1], SIZE[0])  # the served model's auto size keeps the image's
    expected = api_edit(server, files, "remove this", mask=True, stream=False)
    assert np.array_equal(got, expected[0])
    # the hole really changed, the rest did not
    x0, y0, x1, y1 = HOLE
    original = pixels(files["photo"].read_bytes())
    assert not np.array_equal(got[y0:y1, x0:x1], original[y0:y1, x0:x1])
    outside = np.ones(got.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(got[outside], original[outside])


def test_default_output_goes_next_to_the_input(files: dict[str, Path]) -> None:
    result = run("edit", files["photo"], "--prompt", "black and white", "--format", "webp")
    assert result.exit_code == 0, result.output
    target = files["dir"] / "photo-edited.webp"
    assert written(result) == [target]
    image = Image.open(target)
    assert image.format == "WEBP"
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() <= 2  # grey


def test_live_server_n_2_writes_numbered_files(files: dict[str, Path], server: LiveServer,
                                               tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "pix.png"
    result = run("edit", files["photo"], "-p", "pixelate", "-n", "2", "-o", out,
                 "--server", server.url, "--api-key", "sk-anything")  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = written(result)
    assert paths == [tmp_path / "pix-1.png", tmp_path / "pix-2.png"]
    got = [pixels(p.read_bytes()) for p in paths]
    expected = api_edit(server, files, "pixelate", n=2)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not np.array_equal(got[0], got[1])  # pixelate has real variations


def test_errors_are_the_servers_message_and_exit_non_zero(files: dict[str, Path],
                                                          server: LiveServer) -> None:  # fmt: skip
    with server.sdk() as client, pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(model="classic", image=files["photo"].open("rb"), prompt="add a red rose")
    message = refused.value.body["message"]  # type: ignore[index]
    for where in (["--server", server.url], []):
        result = run("edit", files["photo"], "-p", "add a red rose", *where)
        assert result.exit_code == 1
        assert message in result.stderr
        assert "Traceback" not in result.output
    unreachable = run("edit", files["photo"], "-p", "sepia", "--server", "http://127.0.0.1:9")
    assert unreachable.exit_code == 1
    assert "could not reach the server at http://127.0.0.1:9" in unreachable.stderr


def test_a_model_that_does_not_stream_falls_back(files: dict[str, Path], server: LiveServer,
                                                 tmp_path: Path) -> None:  # fmt: skip
    square = tmp_path / "square.png"
    square.write_bytes(encode_image(photo()[:, :120]))
    (tmp_path / "m.png").write_bytes(mask_bytes((120, 120), HOLE))
    out = tmp_path / "d2.png"
    # dall-e-2 refuses stream and answers with a signed URL, which the command fetches
    result = run("edit", square, "-p", "remove this", "--mask", tmp_path / "m.png", "--model",
                 "dall-e-2", "--size", "256x256", "-o", out, "--server", server.url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (256, 256)


def test_output_naming_rules(tmp_path: Path) -> None:
    assert output_format(tmp_path / "a.jpg", None) == "jpeg"
    assert output_format(tmp_path / "a.png", None) is None
    assert output_format(tmp_path / "a.png", "png") == "png"
    assert output_format(None, None) is None
    with pytest.raises(Exception, match="ends in .png but --format is webp"):
        output_format(tmp_path / "a.png", "webp")
    assert output_paths(tmp_path / "out", tmp_path / "x", 1, "webp") == [tmp_path / "out.webp"]
    assert output_paths(None, tmp_path / "x-edited", 2, "jpeg") == [
        tmp_path / "x-edited-1.jpg", tmp_path / "x-edited-2.jpg"]  # fmt: skip


def test_generate_uses_the_generations_route(server: LiveServer, tmp_path: Path) -> None:
    """Until the server has /v1/images/generations the command says so in the server's words;
    once it has it, the file equals what the API returns."""
    out = tmp_path / "gen.png"
    result = run("generate", "-p", "a plain grey square", "--size", "1024x1024", "-o", out,
                 "--server", server.url)  # fmt: skip
    with server.http() as http:
        probe = http.post("/v1/images/generations", json={"prompt": "a plain grey square",
                                                          "size": "1024x1024", "model": "classic"})  # fmt: skip
    if probe.status_code == 200:
        assert result.exit_code == 0, result.output
        expected = pixels(base64.b64decode(probe.json()["data"][0]["b64_json"]))
        assert np.array_equal(pixels(out.read_bytes()), expected)
    else:
        assert result.exit_code == 1
        assert probe.json()["error"]["message"] in result.stderr
        assert not out.exists()


def _read_all(fd: int, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    chunks = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_progress_on_a_terminal_and_quiet_without_one(files: dict[str, Path], server: LiveServer,
                                                      tmp_path: Path) -> None:  # fmt: skip
    args = [sys.executable, "-m", "retouch", "edit", str(files["photo"]), "-p", "remove this",
            "--mask", str(files["mask"]), "--partial-images", "2", "--server", server.url]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "100"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([*args, "-o", str(tmp_path / "tty.png")], stdin=slave,
                            stdout=subprocess.PIPE, stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    try:
        shown = _read_all(master, proc, time.monotonic() + 120).decode(errors="replace")
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert "partial image 1 arrived" in shown
    assert "image 1 of 1 done" in shown
    assert "0:00:" in shown  # the elapsed-time column
    assert proc.stdout is not None
    assert b"wrote" in proc.stdout.read()
    piped = subprocess.run([*args, "-o", str(tmp_path / "pipe.png")], capture_output=True,
                           env=env, timeout=120, check=True)  # fmt: skip
    assert b"partial image" not in piped.stderr
    assert b"\x1b[" not in piped.stderr  # no terminal control codes
    assert b"wrote" in piped.stdout
