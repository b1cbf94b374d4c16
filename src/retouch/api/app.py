"""The ASGI application: the route list, the middleware and the error handlers.

Routes are thin: the edit route lives in ``api.edits``; everything the routes need is built
once by the composition root (``retouch.bootstrap.build_app``, the library entry point) in the
lifespan it passes to ``create_app``, and kept in ``app.state.services``. This module never
imports the composition root.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from retouch.accounting.gate import Principal
from retouch.api import errors as handlers
from retouch.api.auth import authenticate
from retouch.api.edits import create_edit, create_generation
from retouch.api.middleware import RequestContext
from retouch.api.playground import playground_routes
from retouch.api.usage import images_usage
from retouch.config import ModelSettings
from retouch.engine.licences import license_of
from retouch.errors import ClientLeft, NotFound, PermissionDenied, RetouchError
from retouch.integers import ascii_int
from retouch.metrics import CONTENT_TYPE as METRICS_TYPE
from retouch.metrics import Metrics
from retouch.service.describe import model_capabilities

if TYPE_CHECKING:  # annotations only: the HTTP layer does not import the composition root
    from retouch.bootstrap import Services

log = logging.getLogger(__name__)

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(metrics: Metrics, lifespan: Lifespan) -> Starlette:
    """The routes, middleware and error handlers around a ``lifespan`` that puts the services
    in ``app.state.services`` (``retouch.bootstrap.build_app`` builds both)."""
    routes = [
        Route("/v1/images/edits", create_edit, methods=["POST"]),
        Route("/v1/images/generations", create_generation, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/organization/usage/images", images_usage, methods=["GET"]),
        Route("/v1/blobs/{key}", get_blob, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        *playground_routes(),
    ]
    paths = {getattr(r, "endpoint", None): r.path for r in routes if isinstance(r, Route)}
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContext, metrics=metrics, route_of=lambda e: paths.get(e, "other"))
        ],
        exception_handlers={
            ClientLeft: handlers.on_client_left,
            RetouchError: handlers.on_retouch_error,
            HTTPException: handlers.on_http_exception,
        },
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    return app


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# -- models, blobs, health ------------------------------------------------------------------


def _model_object(services: Services, name: str, model: ModelSettings) -> dict[str, Any]:
    """OpenAI's model object, plus what the name accepts (``retouch``; SDKs keep extra keys)."""
    family = services.routes.resolve(name).family
    info = services.workers[model.name].info
    return {
        "id": name, "object": "model", "created": 0, "owned_by": f"retouch:{model.engine}",
        "retouch": model_capabilities(name, family, info, services.settings.limits),
        # the weights' licence (retouch's addition; OpenAI's clients keep extra keys)
        "license": license_of(model),
    }  # fmt: skip


def _allowed(principal: Principal, name: str, model: ModelSettings) -> bool:
    return principal.models is None or bool({name, model.name} & principal.models)


async def list_models(request: Request) -> Response:
    principal = await authenticate(request)
    services = _services(request)
    data = [
        _model_object(services, name, m)
        for name, m in services.routes.names()
        if _allowed(principal, name, m)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def get_model(request: Request) -> Response:
    principal = await authenticate(request)
    name = request.path_params["model"]
    services = _services(request)
    model = services.routes.served_by(name)  # dated snapshots too
    if model is not None and _allowed(principal, name, model):
        return Response(orjson.dumps(_model_object(services, name, model)),
                        media_type="application/json")  # fmt: skip
    raise NotFound(
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


async def get_blob(request: Request) -> Response:
    services = _services(request)
    key = request.path_params["key"]
    expires = ascii_int(request.query_params.get("expires"))
    signature = request.query_params.get("sig", "")
    if expires is None or not services.signer.verify(key, expires, signature):
        raise PermissionDenied("Invalid or tampered link signature.", code="invalid_signature")
    if expires < time.time():
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
    stats = {name: backend.stats() for name, backend in services.workers.items()}
    models = {
        name: {"running": s.running, "waiting": s.waiting, "capacity": s.capacity,
               "ready": s.ready, **({"reason": s.reason} if s.reason else {})}
        for name, s in stats.items()
    }  # fmt: skip
    if not all(s.ready for s in stats.values()):
        status = "not_ready"
    elif any(s.running + s.waiting >= s.capacity for s in stats.values()):
        status = "saturated"
    else:
        status = "ready"
    body = {"status": status, "models": models}
    code = 200 if status == "ready" else 503
    return Response(orjson.dumps(body), status_code=code, media_type="application/json")


__all__ = ["create_app"]
