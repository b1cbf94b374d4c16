"""A JSON response sent as several body messages, with an exact Content-Length."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class PiecesResponse(Response):
    """Sends ``pieces`` one after another instead of joining them into one buffer first."""

    media_type = "application/json"

    def __init__(
        self,
        pieces: list[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        self.pieces = pieces
        super().__init__(b"", status_code, headers, self.media_type, background)
        self.headers["content-length"] = str(sum(len(p) for p in pieces))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.pieces) - 1
        for i, piece in enumerate(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": i < last})
        if self.background is not None:
            await self.background()
