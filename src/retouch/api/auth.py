"""Who is calling: the one place routes authenticate, so that every authenticated response
carries the key's ``x-ratelimit-*`` headers (``RequestContext`` adds them, errors included)."""

from __future__ import annotations

from starlette.requests import Request

from retouch.accounting.gate import Gate, Principal


async def authenticate(request: Request) -> Principal:
    gate: Gate = request.app.state.services.gate
    principal = await gate.authenticate(request.headers.get("authorization"))
    request.state.extra_headers = dict(principal.headers)
    return principal
