"""``Idempotency-Key`` on the HTTP side: replay lookup, then remember the response or release.

The gate stores and claims keys (``retouch.accounting.idempotency``); this helper decides what a
route does around that:

* A completed, billed edit is always delivered. If storing its response fails, the store is
  retried (three quick attempts, then in the background for up to half the claim's lease) and
  logged; the key is *not* released, so an SDK retry meanwhile gets 409 and then the replay,
  never a second run and a second bill.
* Replay bodies are joined and inspected off the event loop (they can be tens of MB).
* A stored ``response_format=url`` response whose links have expired is refused with 422
  ``idempotency_replay_expired`` rather than replayed: the blobs behind expired links are
  deleted by the sweeper, so re-signing them would hand out links to nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time

import orjson

from retouch.accounting.gate import Gate, Principal, StoredResponse
from retouch.errors import Unprocessable
from retouch.service.form import EditForm

log = logging.getLogger(__name__)

_EXPIRES = re.compile(rb"[?&]expires=([0-9]{1,20})(?:&|$)")
RETRY_FOR_S = 300.0
"""Background retries of a failed store stop after this; it is half the claim's lease
(``accounting.idempotency.LEASE_S``), so the claim still holds while they run."""
_background: set[asyncio.Task[None]] = set()
"""Stores being retried after the response went out (kept referenced until done)."""


def fingerprint(form: EditForm) -> str:
    """sha256 over the sorted text fields and every file (its name and content)."""
    digest = hashlib.sha256(orjson.dumps(form.fields, option=orjson.OPT_SORT_KEYS))
    for upload in [*form.images, *([form.mask] if form.mask else [])]:
        digest.update(upload.param.encode())
        digest.update(hashlib.sha256(upload.data).digest())
    return digest.hexdigest()


def earliest_link_expiry(body: bytes) -> int | None:
    """The soonest ``expires`` of the image links in a stored ``ImagesResponse``, if any."""
    if b'"url"' not in body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = [
        int(m[1])
        for item in doc.get("data") or []
        if isinstance(item, dict) and isinstance(item.get("url"), str)
        for m in [_EXPIRES.search(item["url"].encode())]
        if m is not None
    ]
    return min(found) if found else None


class Idempotency:
    """One request's key (or none): ``replay`` first, then ``remember`` or ``release``."""

    def __init__(self, gate: Gate, principal: Principal, key: str | None) -> None:
        self.gate = gate
        self.principal = principal
        self.key = key
        self.fingerprint = ""
        self.held = False
        """This request claimed the key and must end with ``remember`` or ``release``."""

    async def replay(self, form: EditForm) -> StoredResponse | None:
        """The stored response to send instead of running, or ``None`` (key now held)."""
        if not self.key:
            return None
        self.fingerprint = await asyncio.to_thread(fingerprint, form)
        stored = await self.gate.replay(self.principal, self.key, self.fingerprint)
        if stored is None:
            self.held = True
            return None
        expiry = await asyncio.to_thread(earliest_link_expiry, stored.body)
        if expiry is not None and expiry <= time.time():
            raise Unprocessable(
                "The response stored for this Idempotency-Key links to images that have "
                "expired; send the request with a new Idempotency-Key to run it again.",
                code="idempotency_replay_expired",
            )
        return stored

    async def remember(self, pieces: list[bytes]) -> None:
        """Keep the response for replays. Never raises: the edit is delivered regardless."""
        if not self.held or not self.key:
            return
        body = await asyncio.to_thread(b"".join, pieces)
        stored = StoredResponse(200, body, "application/json")
        self.held = False  # from here on the key is never released into a re-run
        for attempt in range(3):
            try:
                await asyncio.shield(self._store(stored))
                return
            except Exception as exc:
                log.warning("storing the Idempotency-Key response failed (%s); retrying", exc)
                await asyncio.sleep(0.1 * 2**attempt)
        log.error("could not store the Idempotency-Key response of %s; retrying in the "
                  "background", self.principal.key_id)  # fmt: skip
        task = asyncio.get_running_loop().create_task(self._store_later(stored))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _store(self, stored: StoredResponse) -> None:
        assert self.key is not None
        await self.gate.remember(self.principal, self.key, self.fingerprint, stored)

    async def _store_later(self, stored: StoredResponse) -> None:
        deadline = time.monotonic() + RETRY_FOR_S
        delay = 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._store(stored)
                log.info("stored the Idempotency-Key response of %s after retrying",
                         self.principal.key_id)  # fmt: skip
                return
            except Exception as exc:
                log.warning("storing the Idempotency-Key response still fails (%s)", exc)
                delay = min(delay * 2, 30.0)
        log.error("gave up storing the Idempotency-Key response of %s; its claim lapses on its "
                  "own", self.principal.key_id)  # fmt: skip

    async def release(self) -> None:
        """Free a held key after a failed or streamed request, so that a retry runs again;
        shielded because it also runs when the client went away."""
        if not self.held or not self.key:
            return
        self.held = False
        try:
            await asyncio.shield(self.gate.release(self.principal, self.key))
        except Exception:  # the claim then lapses on its own (idempotency.LEASE_S)
            log.exception("could not release Idempotency-Key of %s", self.principal.key_id)
