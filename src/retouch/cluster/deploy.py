"""Fronts and the Ray cluster: connect, deploy (declaratively, idempotently), attach.

Why declarative: every Python ``serve.run`` stamps the deployments with a new random version
and so replaces every replica, even for an unchanged config; two fronts that each ``serve.run``
at start-up keep restarting each other's engines. The declarative config (what ``serve deploy``
and KubeRay's ``RayService`` submit) is versioned by its content instead: the same config
changes nothing, a change of replica counts, autoscaling or queue limits is applied in place,
and a change of the engine's own settings (``args``) rolls the replicas. So every front with
the same config may submit it (``[cluster] deploy = true``, the default), and fronts with
``deploy = false`` only attach. ``retouch cluster-config`` prints the same config as YAML for
``serve deploy`` or a ``RayService``.

The config covers *all* Serve applications of the cluster: one application per model, named
after the model, holding one deployment of the same name. Applications that are not in it are
removed, so a retouch cluster should not host other Serve applications.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from retouch.config import ModelSettings, Settings

log = logging.getLogger(__name__)

APP_IMPORT_PATH = "retouch.cluster.replica:build_application"
# Over the gRPC transport a job's pixels, and its output's, are one message each way, and Serve
# caps both ends at 4 MiB unless this variable says more (one 1536x1024 RGBA image is 6 MiB):
# the replicas get it in their runtime_env, a front sets it before it imports Serve. The front
# bounds the pixels already (limits.max_request_pixels, limits.max_output_pixels).
GRPC_LIMIT_VAR = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
GRPC_MAX_MESSAGE = 2**31 - 1  # gRPC's own ceiling
# The replicas' environment. Besides the message limit, three settings of Serve's
# throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED), taken one by one because the mode
# also makes every replica open ports of its own (direct ingress) and holds access-log lines
# back. Replicas run their methods on their main loop instead of a thread of their own: the
# methods are async and never block (the engine runs in the replica's pool), so nothing waits
# behind them; with the front's router on the front's own loop (``front_handle``) that saves
# 1.4-1.9 ms of a job's round trip on a 2-core host (``bench/serve_rtt.py`` measures both on
# and off). Serve's own log lines go to the replica's log files only: through stderr, Ray's log
# monitor would also read each one and publish it to the GCS for drivers that never print it.
# Once the engine has loaded, Serve freezes the garbage collector's view of what is there
# (``gc.freeze``): with torch and diffusers imported that is some 450,000 long-lived objects,
# which each full collection would otherwise walk again (a third of a second or more on a
# 2-core host, ``bench/gc_pause.py``), in the middle of a request.
REPLICA_ENV = {
    GRPC_LIMIT_VAR: str(GRPC_MAX_MESSAGE),
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}
ROUTER_IMPORT_PATH = "retouch.cluster.routing:FreeReplicaFirstRouter"  # imported by Serve, not here
# Placement and scaling go in the deployment options (in-place updates); everything else of a
# model is the engine's own configuration and goes in ``args`` (a change rolls the replicas).
_PLACEMENT_FIELDS = {
    "replicas", "min_replicas", "max_replicas", "gpus_per_replica", "cpus_per_replica",
    "ray_resources", "aliases", "family",
}  # fmt: skip


def gpus(model: ModelSettings) -> float:
    if model.gpus_per_replica is not None:
        return model.gpus_per_replica
    return 0.0 if model.engine in ("classic", "echo") else 1.0


def deployment_options(model: ModelSettings, settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": model.name,
        # Per replica, enforced by the replica: one job per pipeline slot.
        "max_ongoing_requests": model.workers,
        # Per caller (each front's handle counts its own queue): with N fronts the cluster
        # holds at most N x max_queue waiting requests. See docs/deployment.md, "Admission".
        "max_queued_requests": settings.queue.max_queue,
        "ray_actor_options": {
            "num_cpus": model.cpus_per_replica,
            "num_gpus": gpus(model),
            **({"resources": dict(model.ray_resources)} if model.ray_resources else {}),
            "runtime_env": {"env_vars": dict(REPLICA_ENV)},  # see GRPC_LIMIT_VAR, REPLICA_ENV
        },
        "graceful_shutdown_timeout_s": settings.queue.deadline_s,
        # A request waiting for a busy replica: Serve's router retries it with a growing
        # pause, by default up to 0.5 s (a freed replica would idle that long); capped here.
        # Serve's router, choosing a replica known to be free first (``retouch.cluster.routing``).
        "request_router_config": {
            "request_router_class": ROUTER_IMPORT_PATH,
            "max_backoff_s": settings.cluster.router_max_backoff_s,
        },
    }
    if model.min_replicas is not None or model.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": model.min_replicas if model.min_replicas is not None else 1,
            "max_replicas": model.max_replicas or max(1, model.min_replicas or 1),
            "target_ongoing_requests": model.workers,
        }
    else:
        options["num_replicas"] = model.replicas or 1
    return options


def cluster_models(settings: Settings) -> list[ModelSettings]:
    """The models whose engines run as Serve deployments (a relay runs in the front)."""
    return [m for m in settings.models if m.engine != "upstream"]


def serve_config(settings: Settings) -> dict[str, Any]:
    """The declarative Serve config (``ServeDeploySchema``) for ``settings``."""
    applications = [
        {
            "name": model.name,
            "import_path": APP_IMPORT_PATH,
            "route_prefix": None,  # reached through handles only, never Serve's HTTP proxy
            "args": {"model": model.model_dump(mode="json", exclude=_PLACEMENT_FIELDS)},
            "deployments": [deployment_options(model, settings)],
        }
        for model in cluster_models(settings)
    ]
    return {"proxy_location": "Disabled", "applications": applications}


def connect(settings: Settings) -> None:
    """Attach this process to the cluster (idempotent). Needs a Ray node on this host."""
    os.environ.setdefault(GRPC_LIMIT_VAR, str(GRPC_MAX_MESSAGE))  # read when Serve is imported
    import ray

    if ray.is_initialized():
        return
    ray.init(
        address=settings.cluster.address,
        namespace=settings.cluster.namespace,
        log_to_driver=False,  # replica logs stay in the cluster's log files
        logging_level=logging.WARNING,
    )


def deploy(settings: Settings) -> None:
    """Submit the config (the same calls ``serve deploy`` makes) and wait until every model's
    application runs."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config(settings))
    client = serve_start(proxy_location=config.proxy_location)
    client.deploy_apps(config)
    wait_running(settings, settings.cluster.deploy_timeout_s)


def wait_running(settings: Settings, timeout_s: float) -> None:
    from ray import serve

    names = {m.name for m in cluster_models(settings)}
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, str] = {}
    while True:
        apps = serve.status().applications
        statuses = {name: str(apps[name].status) if name in apps else "MISSING" for name in names}
        failed = {n: apps[n].message for n in names if n in apps and statuses[n].endswith("DEPLOY_FAILED")}
        if failed:
            raise RuntimeError(f"Ray Serve could not deploy {failed}")
        if all(s.endswith("RUNNING") for s in statuses.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine deployments are not running after {timeout_s:.0f} s: {statuses}")
        time.sleep(0.5)


def handle(model: ModelSettings) -> Any:
    """A new, not yet initialised handle of ``model``'s deployment (application and deployment
    named after it). Not ``serve.get_deployment_handle``'s: that one is cached per process, and
    a handle whose router runs on a caller's loop must be that loop's own."""
    from ray.serve.handle import DeploymentHandle

    return DeploymentHandle(model.name, app_name=model.name)


def front_handle(model: ModelSettings, settings: Settings, *, router_on_this_loop: bool = True) -> Any:
    """The handle a front calls ``model`` through, on the configured transport: Serve's gRPC
    channel to each replica (``_by_reference=False``, Serve's own option for it) or Ray actor
    calls. Its router runs on the calling event loop (see ``REPLICA_ENV``), so call this in the
    loop that will use the handle; ``router_on_this_loop=False`` keeps Serve's default, a
    router thread shared by the process (``bench/serve_rtt.py`` compares the two)."""
    fresh = handle(model)
    fresh._init(_run_router_in_separate_loop=not router_on_this_loop)
    return fresh.options(_by_reference=settings.cluster.transport == "actor")
