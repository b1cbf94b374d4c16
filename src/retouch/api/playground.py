"""The playground: a static page at ``/`` and its files under ``/ui/``, shipped in the package.

Static files only. The page calls the ordinary ``/v1`` routes with the key the person types in,
so it adds no way around authentication; the content security policy keeps it to this origin
(no CDN, works offline).
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


async def index(request: Request) -> Response:
    page = resources.files("retouch.api").joinpath("ui", "index.html").read_bytes()
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={"content-security-policy": _CSP, "cache-control": "no-cache",
                 "referrer-policy": "no-referrer"},
    )  # fmt: skip


def playground_routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"]),
        Mount("/ui", StaticFiles(packages=[("retouch.api", "ui")]), name="ui"),
    ]
