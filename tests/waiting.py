"""The one polling helper of the test suite: wait for a condition, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Call ``predicate`` until it returns something truthy and return that; raise
    ``TimeoutError`` naming the predicate after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(predicate, '__name__', predicate)!s} still false after {timeout} s")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.01
) -> T:
    """``wait_until`` for the event loop: ``predicate`` may be a plain or async callable."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{getattr(predicate, '__name__', predicate)!s} still false after {timeout} s")
        await asyncio.sleep(interval)
