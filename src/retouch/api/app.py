"""The ASGI application: routes, lifespan (engines, workers, storage, accounts) and handlers.

Routes are thin: they read the body with caps, hand an ``EditForm`` to ``EditService`` and
choose JSON or SSE. Everything the service needs is built once, in ``lifespan``, and kept in
``app.state.services``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from retouch.accounting.gate import Gate, OpenGate, Principal, StoredResponse
from retouch.api import errors as handlers
from retouch.api.auth import authenticate
from retouch.api.forms import RequestTimeout, read_json, read_multipart
from retouch.api.middleware import RequestContext
from retouch.api.responses import PiecesResponse
from retouch.api.usage import images_usage
from retouch.config import ModelSettings, Settings
from retouch.engine.registry import build_engine
from retouch.engine.types import Engine
from retouch.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    RetouchError,
    retry_after_headers,
)
from retouch.metrics import CONTENT_TYPE as METRICS_TYPE
from retouch.metrics import Metrics
from retouch.scheduler import EngineWorker, Worker
from retouch.service.edits import EditService
from retouch.service.form import EditForm
from retouch.service.models import ModelRoutes
from retouch.service.tokens import load_tokenizer
from retouch.storage import open_store
from retouch.storage.base import BlobStore
from retouch.storage.signing import UrlSigner

log = logging.getLogger(__name__)
T = TypeVar("T")
GateFactory = Callable[[Settings], Awaitable[Gate]]


@dataclass
class Services:
    settings: Settings
    routes: ModelRoutes
    workers: dict[str, Worker]
    edits: EditService
    gate: Gate
    store: BlobStore
    signer: UrlSigner
    metrics: Metrics


async def open_gate(settings: Settings) -> Gate:
    """The default gate: open. Replaced by the database gate when accounts are configured."""
    return OpenGate()


def build_app(
    settings: Settings,
    *,
    engines: dict[str, Engine] | None = None,
    gate_factory: GateFactory = open_gate,
) -> Starlette:
    """``engines``: already loaded engines by model name (``retouch serve`` loads them before
    the server starts; tests inject fakes this way); the others are built and loaded here."""

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await _start(settings, engines or {}, gate_factory, metrics)
        app.state.services = services
        sweeper = asyncio.create_task(_sweep_blobs(services))
        try:
            yield
        finally:
            sweeper.cancel()
            for worker in services.workers.values():
                worker.close()
            services.edits.close()
            services.store.close()
            await services.gate.close()

    routes = [
        Route("/v1/images/edits", create_edit, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/organization/usage/images", images_usage, methods=["GET"]),
        Route("/v1/blobs/{key}", get_blob, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
    ]
    paths = {route.endpoint: route.path for route in routes}
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContext, metrics=metrics, route_of=lambda e: paths.get(e, "other"))
        ],
        exception_handlers={
            RetouchError: handlers.on_retouch_error,
            HTTPException: handlers.on_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app


async def _start(
    settings: Settings, overrides: dict[str, Engine], gate_factory: GateFactory, metrics: Metrics
) -> Services:
    routes = ModelRoutes(settings)
    await asyncio.to_thread(load_tokenizer)
    workers: dict[str, Worker] = {}
    if settings.cluster.backend == "ray":
        from retouch.cluster.backend import attach

        workers.update(await attach(settings, observer=metrics))
    for model in settings.models:
        if model.name in workers:
            continue
        engine = overrides.get(model.name)
        if engine is None:  # engines handed in were loaded by whoever built them
            engine = build_engine(model)
            await asyncio.to_thread(engine.load)
        workers[model.name] = EngineWorker(
            engine, workers=model.workers, max_queue=settings.queue.max_queue, observer=metrics
        )
    gate = await gate_factory(settings)
    store = await asyncio.to_thread(open_store, settings.storage, settings.data_dir)
    signer = UrlSigner.from_settings(settings.storage.signing_keys, settings.data_dir)
    edits = EditService(settings, routes, workers, gate, store, signer, metrics)
    metrics.watch_queues(lambda: workers.items())
    return Services(settings, routes, workers, edits, gate, store, signer, metrics)


async def _sweep_blobs(services: Services) -> None:
    while True:
        try:
            deleted = await asyncio.to_thread(services.store.sweep, int(time.time()))
            if deleted:
                log.info("deleted %d expired blobs", deleted)
        except Exception:
            log.exception("blob sweep failed")
        await asyncio.sleep(services.settings.storage.sweep_interval_s)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# -- POST /v1/images/edits ------------------------------------------------------------------


async def create_edit(request: Request) -> Response:
    services = _services(request)
    request_id: str = request.state.request_id
    principal = await authenticate(request)
    form = await _read_form(request, services.settings)
    idem = request.headers.get("idempotency-key")
    fingerprint = await asyncio.to_thread(_fingerprint, form) if idem else ""
    held = False  # this request holds the idempotency key: it must remember or release it
    if idem:
        stored = await services.gate.replay(principal, idem, fingerprint)
        if stored is not None:
            return Response(stored.body, status_code=stored.status, media_type=stored.content_type,
                            headers={"idempotent-replayed": "true"})  # fmt: skip
        held = True
    try:
        prepared, headers = await services.edits.prepare(form, principal, request_id)
        request.state.extra_headers = headers
        request.state.model = prepared.params.served_model
        if prepared.params.stream:  # streams are not kept for replay: the key is released
            if prepared.worker.saturated:  # refuse with a real 429 before the 200 goes out
                busy = QueueFull(
                    f"The model '{prepared.params.model}' is busy; retry later.",
                    headers=retry_after_headers(prepared.worker.retry_after_s()),
                )
                await services.edits.settle(prepared, busy.status)
                raise busy
            body = await services.edits.begin_stream(prepared)
            if prepared.replica:
                headers["x-retouch-replica"] = prepared.replica
            return StreamingResponse(
                body,
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        pieces = await _until_disconnect(
            request, services.edits.respond(prepared, str(request.base_url))
        )
        if prepared.replica:
            headers["x-retouch-replica"] = prepared.replica
        if idem:
            stored = StoredResponse(200, b"".join(pieces), "application/json")
            await services.gate.remember(principal, idem, fingerprint, stored)
            held = False
        return PiecesResponse(pieces, headers=headers)
    finally:
        if held and idem:
            await _release(services.gate, principal, idem)


async def _release(gate: Gate, principal: Principal, key: str) -> None:
    """Free an idempotency key after a failed or streamed request, so a retry runs again;
    shielded because it also runs when the client went away."""
    try:
        await asyncio.shield(gate.release(principal, key))
    except Exception:  # the claim then lapses on its own (idempotency.LEASE_S)
        log.exception("could not release Idempotency-Key of %s", principal.key_id)


async def _read_form(request: Request, settings: Settings) -> EditForm:
    limits = settings.limits
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body ({int(length):,} bytes) is larger than the "
            f"{limits.max_body_bytes:,} bytes allowed."
        )
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    try:
        async with asyncio.timeout(limits.receipt_timeout_s):
            if media == "multipart/form-data":
                form = await read_multipart(request.stream(), content_type, limits)
            elif media == "application/json":
                form = await read_json(request.stream(), limits)
            else:
                raise InvalidRequest(
                    "Invalid Content-Type: send multipart/form-data (or application/json with "
                    "'images' as data URLs).",
                    code="unsupported_content_type",
                )
    except TimeoutError:
        raise RequestTimeout(
            f"The request body was not received within {limits.receipt_timeout_s:.0f} s."
        ) from None
    return form


def _fingerprint(form: EditForm) -> str:
    digest = hashlib.sha256(orjson.dumps(form.fields, option=orjson.OPT_SORT_KEYS))
    for upload in [*form.images, *([form.mask] if form.mask else [])]:
        digest.update(upload.param.encode())
        digest.update(hashlib.sha256(upload.data).digest())
    return digest.hexdigest()


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client disconnects first.

    Starlette does not cancel a handler when its client goes away; without this race an
    abandoned non-streaming edit would keep a GPU busy until the end. The body has been read,
    so the next ASGI message can only be ``http.disconnect``.
    """
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise asyncio.CancelledError("client disconnected")
    return task.result()


# -- models, blobs, health ------------------------------------------------------------------


def _model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def _allowed(principal: Principal, name: str, model: ModelSettings) -> bool:
    return principal.models is None or bool({name, model.name} & principal.models)


async def list_models(request: Request) -> Response:
    principal = await authenticate(request)
    routes = _services(request).routes
    data = [
        _model_object(name, f"retouch:{m.engine}")
        for name, m in routes.names()
        if _allowed(principal, name, m)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def get_model(request: Request) -> Response:
    principal = await authenticate(request)
    name = request.path_params["model"]
    for known, model in _services(request).routes.names():
        if known == name and _allowed(principal, name, model):
            return Response(orjson.dumps(_model_object(name, f"retouch:{model.engine}")),
                            media_type="application/json")  # fmt: skip
    raise NotFound(
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def get_blob(request: Request) -> Response:
    services = _services(request)
    key = request.path_params["key"]
    expires_raw = request.query_params.get("expires", "")
    signature = request.query_params.get("sig", "")
    if not expires_raw.isdigit() or not services.signer.verify(key, int(expires_raw), signature):
        raise PermissionDenied("Invalid or tampered link signature.", code="invalid_signature")
    if int(expires_raw) < time.time():
        raise NotFound("This link has expired.", code="expired")
    blob = await asyncio.to_thread(services.store.get, key)
    if blob is None:
        raise NotFound("This image does not exist or has expired.", code="not_found")
    return Response(
        blob.data,
        media_type=blob.content_type,
        headers={"cache-control": "private, max-age=3600", "content-disposition": "inline"},
    )


async def get_metrics(request: Request) -> Response:
    """Prometheus text format; unauthenticated like /healthz (keep it off the public
    listener or behind the proxy's allow-list)."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=METRICS_TYPE)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return Response(b'{"status":"starting"}', status_code=503, media_type="application/json")
    saturated = [name for name, w in services.workers.items() if w.saturated]
    models = {
        name: {"running": w.running, "waiting": max(0, w.admitted - w.running), "capacity": w.capacity}
        for name, w in services.workers.items()
    }
    status = 503 if saturated else 200
    body = {"status": "saturated" if saturated else "ready", "models": models}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


__all__ = ["Services", "build_app"]
