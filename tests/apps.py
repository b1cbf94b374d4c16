"""Where the tests' in-process apps come from: ``build`` is ``retouch.bootstrap.build_app``,
unless a suite swapped in another builder (``building_with``). The cluster suite does, so the
same test functions that build their own app (``harness_factory``, ``LiveServer``) run once with
engines in this process and once with engines as Ray Serve replicas (tests/cluster/ray_apps.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from retouch.config import Settings

Builder = Callable[..., Any]
_builder: Builder | None = None


def build(settings: Settings, **kwargs: Any) -> Any:
    if _builder is not None:
        return _builder(settings, **kwargs)
    from retouch.bootstrap import build_app

    return build_app(settings, **kwargs)


@contextlib.contextmanager
def building_with(builder: Builder) -> Iterator[None]:
    global _builder
    previous, _builder = _builder, builder
    try:
        yield
    finally:
        _builder = previous
