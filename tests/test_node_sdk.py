"""The official OpenAI Node SDK (tests/node, openai 7.57.0) against a real retouch socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from retouch.config import Settings
from retouch.engine.echo import EchoEngine
from tests.conftest import echo_models, encode_image, gradient, mask_bytes
from tests.live import LiveServer
from tests.waiting import wait_until

NODE_DIR = Path(__file__).resolve().parent / "node"
pytestmark = pytest.mark.live


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        return "run `npm ci --prefix tests/node` (make install does)"
    return None


@pytest.mark.skipif(_node_ready() is not None, reason=str(_node_ready()))
def test_node_sdk_edits_stream_and_errors(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "mask.png"
    image.write_bytes(encode_image(gradient((96, 64))))
    mask.write_bytes(mask_bytes((96, 64), (30, 20, 60, 44)))
    with LiveServer(make_settings()) as server:
        done = subprocess.run(
            ["node", str(NODE_DIR / "edits.mjs"), f"{server.url}/v1", str(image), str(mask)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["single"]["size"] == "1536x1024"  # gpt-image rules: auto -> closest fixed size
    assert out["single"]["format"] == "webp"
    assert out["single"]["b64"]
    assert out["single"]["usage"]["input_tokens_details"]["image_tokens"] == 194
    assert out["many"] == {"count": 2, "size": "96x64"}  # the Node SDK sends image[] parts
    types = [e["type"] for e in out["stream"]]
    assert types[-1] == "image_edit.completed"
    assert types[:-1] == ["image_edit.partial_image"] * (len(types) - 1)
    assert len(types) >= 2
    assert [e["index"] for e in out["stream"][:-1]] == list(range(len(types) - 1))
    assert out["error"]["status"] == 400
    assert out["error"]["code"] == "invalid_value"
    assert out["error"]["param"] == "size"
    assert out["error"]["requestID"].startswith("req_")


@pytest.mark.skipif(_node_ready() is not None, reason=str(_node_ready()))
def test_node_sdk_reads_an_early_429_on_a_large_upload(make_settings: Callable[..., Settings]) -> None:
    """The server answers 429 at the model field while the Node SDK is still sending a 4 MB
    upload (then discards the rest: lingering close); the SDK reports a RateLimitError, not a
    connection error, every time."""
    engine = EchoEngine("echo", {"delay_s": 8.0, "steps": 80})
    settings = make_settings(models=echo_models(), queue={"max_queue": 0})
    with LiveServer(settings, engines={"echo": engine}) as server:
        client = server.sdk()
        holder = threading.Thread(target=lambda: client.images.edit(
            model="echo", image=("a.png", encode_image(gradient((32, 32))), "image/png"), prompt="x"
        ))  # fmt: skip
        holder.start()
        wait_until(lambda: server.services.workers["echo"].running == 1, timeout=10)
        done = subprocess.run(
            ["node", str(NODE_DIR / "early429.mjs"), f"{server.url}/v1", "4"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        holder.join()
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == 4
    for answer in answers:
        assert answer == {"status": 429, "code": "queue_full", "name": "RateLimitError", "retryAfter": "1"}
