"""The playground in a real browser: Playwright driving Debian's Chromium.

Playwright's own browser download is not reachable here, so the system Chromium is launched
with ``executable_path`` (``RETOUCH_TEST_CHROMIUM``, else ``chromium`` on PATH; ``.ci/chromium.sh``
installs it). Without one the tests are skipped, unless ``RETOUCH_TEST_REQUIRE_BROWSER=1`` (CI),
where that is a failure. Screenshots of every step go to ``tests/artifacts/playground/``
(or ``RETOUCH_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright

from retouch.config import load_settings
from tests.live import LiveServer

# Edits run on two shared cores in CI: generous waits (they return as soon as the page is ready).
expect.set_options(timeout=60_000)
ARTIFACTS = Path(os.environ.get("RETOUCH_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts") / "playground"


def chromium_path() -> str | None:
    configured = os.environ.get("RETOUCH_TEST_CHROMIUM")
    if configured:
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        if os.environ.get("RETOUCH_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found (set RETOUCH_TEST_CHROMIUM or run .ci/chromium.sh)")
        pytest.skip("no Chromium found (apt-get install chromium, or RETOUCH_TEST_CHROMIUM)")
    # The sandbox needs user namespaces, which CI containers running as root do not give.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    browser = playwright.chromium.launch(executable_path=path, args=args)
    yield browser
    browser.close()


class Recorder:
    """ASGI wrapper keeping the bodies of edit requests exactly as the server received them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.recorded: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/images/edits":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode()

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.recorded.append((content_type, b"".join(chunks)))
            return message

        await self.app(scope, recording_receive, send)


class RecordingServer(LiveServer):
    def __init__(self, settings: Any, **app_kwargs: Any) -> None:
        super().__init__(settings, **app_kwargs)
        self.recorder = Recorder(self.app)
        self.server.config.app = self.recorder  # loaded by uvicorn when it starts

    @property
    def recorded(self) -> list[tuple[str, bytes]]:
        return self.recorder.recorded


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingServer]:
    """``retouch serve`` with its defaults (the classic engine), open: no keys."""
    settings = load_settings(None, data_dir=tmp_path_factory.mktemp("page") / "data")
    with RecordingServer(settings) as live:
        yield live


class Console:
    """Everything the page logged as an error, and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")


def open_page(browser: Browser, url: str, **context: Any) -> tuple[Page, Console]:
    context.setdefault("viewport", {"width": 1400, "height": 900})
    ctx = browser.new_context(accept_downloads=True, **context)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    console = Console(page)
    page.goto(url)
    return page, console


def shot(page: Page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def cat_photo(size: tuple[int, int] | None = None) -> bytes:
    """scikit-image's Chelsea the cat (a real photo shipped in the wheel), as PNG."""
    from skimage import data

    image = Image.fromarray(np.asarray(data.chelsea()))
    if size:
        image = image.resize(size)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
