"""The open-mode rule at the library entry point: ``build_app`` without keys refuses a
non-loopback host unless ``insecure``, whatever gate it is given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from retouch.accounting.gate import OpenGate, ServingRefused
from retouch.bootstrap import build_app
from retouch.config import Settings
from tests.conftest import echo_models

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "retouch.example"])
def test_default_gate_refuses_a_public_host(
    make_settings: Callable[..., Settings], host: str
) -> None:
    with pytest.raises(ServingRefused, match="--insecure"):
        build_app(make_settings(host=host, models=echo_models()))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.8.9.10"])
async def test_loopback_hosts_serve_open(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings], host: str
) -> None:
    h = await harness_factory(make_settings(host=host, models=echo_models()))
    assert (await h.http.get("/v1/models")).status_code == 200


async def test_insecure_serves_open_on_a_public_host(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    h = await harness_factory(make_settings(host="0.0.0.0", insecure=True, models=echo_models()))
    assert (await h.http.get("/v1/models")).status_code == 200


async def test_any_open_gate_is_refused_at_start_up(make_settings: Callable[..., Settings]) -> None:
    """A custom gate that needs no keys gets the same rule (checked when the app starts)."""
    closed: list[bool] = []

    class CustomOpen(OpenGate):
        async def close(self) -> None:
            closed.append(True)

    async def factory(settings: Settings) -> OpenGate:
        return CustomOpen()

    app = build_app(make_settings(host="0.0.0.0", models=echo_models()), gate_factory=factory)
    with pytest.raises(ServingRefused):
        async with LifespanManager(app, startup_timeout=60):
            pass
    assert closed == [True]  # the refused gate was closed, not leaked
