"""Racing a request's work against its client leaving.

Starlette does not cancel a handler when its client goes away, so without this race an
abandoned non-streaming edit would keep a GPU busy until the end (and be billed as a 200
nobody received). Watching ``receive()`` for ``http.disconnect`` (rather than polling
``request.is_disconnected()``) notices a hang-up at once and costs nothing while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from retouch.errors import ClientLeft

T = TypeVar("T")


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it, wait until it has wound down
    (its ``finally`` blocks write the ledger row and free the slot) and raise ``ClientLeft``.

    Call it only once the request body has been read: from then on the next ASGI message can
    only be ``http.disconnect``.
    """
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server itself is cancelling us: take the work along
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ClientLeft):
            await task
        raise ClientLeft()
    return task.result()
