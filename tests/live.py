"""A real uvicorn server on 127.0.0.1 in a background thread, for tests where sockets matter
(streaming timing, client disconnects) and for the synchronous SDK."""

from __future__ import annotations

import threading
from typing import Any

import httpx2
import openai
import uvicorn

from retouch.api.server import server_config
from retouch.config import Settings
from tests import apps
from tests.waiting import wait_until


class LiveServer:
    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        self.app = apps.build(settings, **app_kwargs)
        # the production configuration (retouch serve), on a free loopback port
        config = server_config(
            self.app, settings, host="127.0.0.1", port=0, log_level="warning",
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-uvicorn", daemon=True)
        self.base_url = ""

    def start(self) -> None:
        self.thread.start()
        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("the live uvicorn server did not start")
            return bool(self.server.started)

        wait_until(started, timeout=60)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def services(self) -> Any:
        return self.app.state.services

    def sdk(self, **kwargs: Any) -> openai.OpenAI:
        """The official sync client over a real socket (no retries unless asked)."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", "sk-test")
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", http_client=httpx2.Client(timeout=30), **kwargs
        )

    def http(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.base_url, timeout=30)
