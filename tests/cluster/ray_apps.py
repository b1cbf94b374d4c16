"""The Ray builder of ``tests.apps``: a test's own app (its settings, its gate) built in this
process as a front whose engines run as Serve replicas of the test cluster.

* Each model of the test's settings becomes a Serve application of its own, named after a
  hash of its config (``t-<model>-<hash>``), submitted together with the cluster's own
  applications (unchanged, so nothing of theirs restarts). Tests with the same engine config
  share the application; at most ``KEEP`` test applications are kept (older ones are removed).
* An injected engine is accepted when it is a plain ``EchoEngine``: its options go into the
  replicas' config, and its ``runs`` and ``cancelled_runs`` follow the replicas' jobs (a job a
  replica took is a run; a job whose cancellation the replica logged is a cancelled run).
  Any other engine instance (a subclass that records or misbehaves in this process) cannot
  run on a replica: the test is skipped with that reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from retouch.cluster import deploy
from retouch.config import Settings, load_settings
from retouch.engine.echo import EchoEngine
from retouch.logs import request_id_var
from retouch.scheduler.ray import RayBackend
from tests.cluster.conftest import Cluster

with warnings.catch_warnings():  # Ray's own imports warn (pydantic v1-style Fields)
    warnings.simplefilter("ignore")
    import ray.exceptions
    import ray.serve
    import ray.serve._private.api
    import ray.serve.exceptions
    import ray.serve.schema  # noqa: F401

KEEP = 4
_CANCELLED = re.compile(r"request (req_[0-9a-f]+) cancelled")
_DEPLOYED: dict[str, dict[str, Any]] = {}  # test applications of the session, oldest first


class _MirroredEcho(EchoEngine):
    """An injected ``EchoEngine`` whose counters are the replicas' (see the module doc)."""

    _cluster: Cluster
    _cancelled_ids: set[str]

    @property  # type: ignore[override]
    def cancelled_runs(self) -> int:
        # The replica logs a cancellation once its engine thread stopped, which may be just
        # after the front saw the job end: give the log a moment to catch up.
        deadline = time.monotonic() + 10
        while True:
            logged = set(_CANCELLED.findall(self._cluster.replica_logs()))
            if self._cancelled_ids <= logged or time.monotonic() > deadline:
                return len(self._cancelled_ids & logged)
            time.sleep(0.2)

    @cancelled_runs.setter
    def cancelled_runs(self, value: int) -> None:
        pass


class RayApps:
    def __init__(self, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cluster = cluster
        self.base = load_settings(cluster.a.config)
        self.apps = _DEPLOYED
        self.names: dict[str, str] = {}  # model name -> its application in the current test
        self.engines: dict[str, EchoEngine] = {}
        deploy.connect(self.base)
        monkeypatch.setattr(deploy, "handle", self._handle)
        monkeypatch.setattr(deploy, "wait_running", lambda settings, timeout_s: None)
        original: Callable[..., Any] = RayBackend.run
        apps = self

        async def run(backend: RayBackend, job: Any, ticket: Any, **kw: Any) -> Any:
            engine = apps.engines.get(backend.model.name)
            on_start = kw.get("on_start")
            started = False

            def start(replica: str | None) -> None:
                nonlocal started
                started = True
                if engine is not None:
                    engine.runs += 1
                if on_start is not None:
                    on_start(replica)

            kw["on_start"] = start
            try:
                return await original(backend, job, ticket, **kw)
            except asyncio.CancelledError:  # the client left (or a deadline): cancel on the replica
                if started and engine is not None and isinstance(engine, _MirroredEcho):
                    engine._cancelled_ids.add(request_id_var.get() or "")
                raise

        monkeypatch.setattr(RayBackend, "run", run)

    def _handle(self, model: Any) -> Any:
        from ray.serve.handle import DeploymentHandle

        return DeploymentHandle(model.name, app_name=self.names[model.name])  # fresh, as deploy.handle

    def build(self, settings: Settings, *, engines: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        from retouch.bootstrap import build_app

        if settings.queue.max_queue == 0 and any(m.upstream is None for m in settings.models):
            pytest.skip("queue.max_queue = 0 has no Ray Serve counterpart (max_queued_requests "
                        "must be -1 or at least 1); the local backend's rule")  # fmt: skip
        options: dict[str, dict[str, Any]] = {}
        for name, engine in (engines or {}).items():
            if type(engine) is not EchoEngine:
                pytest.skip(f"injects an in-process {type(engine).__name__}, which a Ray replica "
                            "cannot run (replicas build their engines from the config)")  # fmt: skip
            options[name] = {"delay_s": engine.delay_s, "steps": engine.steps, "fail": engine.fail}
            engine.__class__ = _MirroredEcho
            engine._cluster, engine._cancelled_ids = self.cluster, set()  # type: ignore[attr-defined]
            self.engines[name] = engine
        models = [
            m if m.upstream is not None else m.model_copy(update={
                "replicas": 1, "min_replicas": None, "max_replicas": None, "cpus_per_replica": 0.0,
                "gpus_per_replica": 0.0, "ray_resources": {},
                **({"options": options[m.name]} if m.name in options else {}),
            })
            for m in settings.models
        ]  # fmt: skip
        cluster = settings.cluster.model_copy(
            update={"backend": "ray", "address": self.base.cluster.address, "deploy": False}
        )
        on_ray = settings.model_copy(update={"cluster": cluster, "models": models})
        self._deploy(on_ray)
        return build_app(on_ray, **kwargs)

    def _deploy(self, settings: Settings) -> None:
        from ray import serve
        from ray.serve._private.api import serve_start
        from ray.serve.schema import ServeDeploySchema

        wanted = []
        for app in deploy.serve_config(settings)["applications"]:
            digest = hashlib.sha256(json.dumps(app, sort_keys=True, default=str).encode()).hexdigest()
            name = f"t-{app['name']}-{digest[:10]}"
            self.names[app["name"]] = name
            self.apps.pop(name, None)
            self.apps[name] = {**app, "name": name}  # newest last
            wanted.append(name)
        while len(self.apps) > max(KEEP, len(wanted)):
            del self.apps[next(iter(self.apps))]
        running = serve.status().applications
        known = set(self.apps) | {a["name"] for a in self._base_apps()}
        if set(running) <= known and all(
            n in running and str(running[n].status).endswith("RUNNING") for n in wanted
        ):
            return
        config = {"proxy_location": "Disabled",
                  "applications": [*self._base_apps(), *self.apps.values()]}  # fmt: skip
        serve_start(proxy_location="Disabled").deploy_apps(ServeDeploySchema.model_validate(config))
        deadline = time.monotonic() + 180
        while True:
            apps = serve.status().applications
            if all(n in apps and str(apps[n].status).endswith("RUNNING") for n in wanted):
                return
            failed = [n for n in wanted if n in apps and str(apps[n].status).endswith("DEPLOY_FAILED")]
            if failed or time.monotonic() > deadline:
                raise AssertionError(f"test applications not running: {failed or wanted}")
            time.sleep(0.3)

    def _base_apps(self) -> list[dict[str, Any]]:
        return list(deploy.serve_config(self.base)["applications"])
