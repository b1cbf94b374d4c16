"""A real uvicorn server on 127.0.0.1 in a background thread, for tests where sockets matter
(streaming timing, client disconnects) and for the synchronous SDK."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from retouch.api.app import build_app
from retouch.config import Settings


class LiveServer:
    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        self.app = build_app(settings, **app_kwargs)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> Any:
        return self.app.state.services
