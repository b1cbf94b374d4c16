"""The composition root: builds every service the app needs, once, and takes them down.

``build_app``, the library entry point, makes the ASGI app (``retouch.api.app.create_app``)
with a lifespan that calls ``start_services``; nothing else constructs backends, gates or
stores. Swapping an implementation (another gate, a Ray or upstream backend) is a change here,
not in the routes or the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette

from retouch.accounting.gate import Gate, OpenGate, ServingRefused, serving_check
from retouch.api.app import create_app
from retouch.config import ModelSettings, Settings
from retouch.engine.registry import build_engine
from retouch.engine.types import Engine
from retouch.metrics import Metrics
from retouch.net.fetch import Fetcher
from retouch.scheduler.base import Backend
from retouch.scheduler.local import LocalBackend
from retouch.scheduler.upstream import UpstreamBackend
from retouch.service.edits import EditService
from retouch.service.models import ModelRoutes
from retouch.service.tokens import load_tokenizer
from retouch.storage import open_store
from retouch.storage.base import BlobStore
from retouch.storage.signing import UrlSigner

log = logging.getLogger(__name__)

GateFactory = Callable[[Settings], Awaitable[Gate]]
"""Builds the accounting gate at start-up (``database_gate`` for ``retouch serve``)."""


@dataclass
class Services:
    settings: Settings
    routes: ModelRoutes
    workers: dict[str, Backend]
    """One backend per configured model name."""
    edits: EditService
    gate: Gate
    store: BlobStore
    signer: UrlSigner
    metrics: Metrics
    fetcher: Fetcher = field(default_factory=Fetcher)
    """SSRF-safe downloads: ``image_url`` inputs and a relay's mirrored links."""


async def open_gate(settings: Settings) -> Gate:
    """The default gate: open. Replaced by the database gate when accounts are configured."""
    return OpenGate()


def local_backend(
    engine: Engine, model: ModelSettings, settings: Settings, metrics: Metrics | None = None
) -> LocalBackend:
    queue = settings.queue
    return LocalBackend(
        engine,
        workers=model.workers,
        max_queue=queue.max_queue,
        run_deadline_s=model.run_deadline_s or queue.run_deadline_s,
        cancel_grace_s=queue.cancel_grace_s,
        observer=metrics,
    )


async def start_services(
    settings: Settings,
    engines: dict[str, Engine],
    gate_factory: GateFactory,
    metrics: Metrics | None = None,
) -> Services:
    """``engines``: already loaded engines by model name (they were loaded by whoever built
    them); the other configured models are built and loaded here. With the Ray backend the
    engines load in the cluster's replicas instead, and every model gets a ``RayBackend``."""
    metrics = metrics or Metrics()
    routes = ModelRoutes(settings)
    await asyncio.to_thread(load_tokenizer)
    backends: dict[str, Backend] = {}
    if settings.cluster.backend == "ray":
        from retouch.scheduler.ray import attach

        backends.update(await attach(settings, observer=metrics))
    for model in settings.models:
        if model.name in backends:  # a cluster backend, attached above
            continue
        if model.upstream is not None:  # a relay: a backend without an engine
            backends[model.name] = UpstreamBackend(
                model.name, model.upstream, max_queue=settings.queue.max_queue
            )
            continue
        engine = engines.get(model.name)
        if engine is None:
            engine = build_engine(model)
            await asyncio.to_thread(engine.load)
        backends[model.name] = local_backend(engine, model, settings, metrics)
    gate = await gate_factory(settings)
    if gate.open_mode:  # the open-mode rule, whatever the gate
        try:
            serving_check(settings, has_keys=False)
        except ServingRefused:
            await gate.close()
            raise
    store = await asyncio.to_thread(open_store, settings.storage, settings.data_dir)
    signer = UrlSigner.from_settings(settings.storage.signing_keys, settings.data_dir)
    fetcher = Fetcher()
    edits = EditService(settings, routes, backends, gate, store, signer, metrics, fetcher=fetcher)
    metrics.watch_queues(lambda: [(name, b.stats()) for name, b in backends.items()])
    return Services(settings, routes, backends, edits, gate, store, signer, metrics, fetcher)


async def stop_services(services: Services) -> None:
    """Backends first (they wait, bounded, for running jobs before freeing engines)."""
    await asyncio.gather(*(b.close() for b in services.workers.values()))
    services.edits.close()
    services.store.close()
    await services.gate.close()


async def sweep_blobs(services: Services) -> None:
    """Delete expired blobs, forever (cancelled at shutdown)."""
    while True:
        try:
            deleted = await asyncio.to_thread(services.store.sweep, int(time.time()))
            if deleted:
                log.info("deleted %d expired blobs", deleted)
        except Exception:
            log.exception("blob sweep failed")
        await asyncio.sleep(services.settings.storage.sweep_interval_s)


def build_app(
    settings: Settings,
    *,
    engines: dict[str, Engine] | None = None,
    gate_factory: GateFactory = open_gate,
    after_start: Callable[[], None] | None = None,
) -> Starlette:
    """The ASGI app. ``engines``: already loaded engines by model name (``retouch serve``
    loads them before the server starts; tests inject fakes this way); the others are built
    and loaded at start-up. ``after_start`` runs once the services are up, before the server
    takes its first request.

    Safe by default: without keys (the open gate, or a database gate holding none) the app
    refuses to serve on a non-loopback ``settings.host`` unless ``settings.insecure``."""
    if gate_factory is open_gate:  # known open before start-up: say so at once
        serving_check(settings, has_keys=False)

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await start_services(settings, engines or {}, gate_factory, metrics)
        app.state.services = services
        if after_start is not None:
            after_start()
        sweeper = asyncio.create_task(sweep_blobs(services))
        try:
            yield
        finally:
            sweeper.cancel()
            await stop_services(services)

    return create_app(metrics, lifespan)
