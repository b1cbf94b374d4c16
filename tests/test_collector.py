"""``retouch serve`` freezes the garbage collector once the app has started (``build_app``'s
``after_start`` hook, ``cli.freeze_collector``): what start-up loaded (modules, engines, a Ray
client) is then left out of the collector's full passes, which would otherwise walk it all on
the event loop's thread (``bench/gc_pause.py``)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from click.testing import CliRunner

from retouch.bootstrap import Services, build_app
from retouch.cli import main
from retouch.config import Settings
from tests.conftest import echo_models


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (freezing is for the process's life)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_after_start_runs_once_the_services_are_up(make_settings: Callable[..., Settings]) -> None:
    seen: list[Services] = []
    app = build_app(make_settings(models=echo_models()), after_start=lambda: seen.append(app.state.services))

    async def start_and_stop() -> None:
        async with LifespanManager(app, startup_timeout=60):
            assert len(seen) == 1  # before the first request can arrive

    asyncio.run(start_and_stop())
    assert isinstance(seen[0], Services)


def test_serve_freezes_what_start_up_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    """The services that start-up made are frozen too: the freeze comes after start-up, not
    before (a front's Ray client is made at start-up)."""
    seen: list[tuple[int, bool]] = []

    def run_start_up_only(server: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        app = server.config.app

        async def start_and_stop() -> None:
            async with LifespanManager(app, startup_timeout=60):
                services = app.state.services
                collected = any(o is services for o in gc.get_objects())  # frozen ones are not listed
                seen.append((gc.get_freeze_count(), collected))

        asyncio.run(start_and_stop())

    monkeypatch.setattr(uvicorn.Server, "run", run_start_up_only)
    config = tmp_path / "retouch.toml"
    config.write_text('[[models]]\nname = "e"\nengine = "echo"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    [(count, collected)] = seen
    assert count > 10_000  # the modules and the started app, not a handful
    assert not collected  # the services made at start-up are among the frozen
