"""The declarative Serve config the Ray backend submits (no cluster needed): names, placement,
admission limits, and which changes Serve applies in place versus as a rolling update."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from retouch.cli import main
from retouch.cluster.deploy import serve_config
from retouch.config import ModelSettings, load_settings

pytest.importorskip("ray.serve")
from ray.serve._private.deploy_utils import get_app_code_version
from ray.serve.config import RequestRouterConfig
from ray.serve.schema import ServeDeploySchema

from retouch.cluster.routing import FreeReplicaFirstRouter


def config(**model: Any) -> dict[str, Any]:
    fields = {"name": "klein", "engine": "flux2-klein", "weights": "org/w", **model}
    settings = load_settings(None, models=[ModelSettings(**fields)], queue={"max_queue": 7})
    return serve_config(settings)


def version(cfg: dict[str, Any]) -> str:
    return get_app_code_version(ServeDeploySchema.model_validate(cfg).applications[0])


def test_one_application_and_deployment_named_after_each_model() -> None:
    settings = load_settings(None, models=[
        ModelSettings(name="klein", engine="flux2-klein", weights="org/w"),
        ModelSettings(name="classic", engine="classic"),
    ])  # fmt: skip
    cfg = serve_config(settings)
    schema = ServeDeploySchema.model_validate(cfg)  # what Serve itself accepts
    assert [(a.name, [d.name for d in a.deployments]) for a in schema.applications] == [
        ("klein", ["klein"]), ("classic", ["classic"])
    ]  # fmt: skip
    assert all(a.route_prefix is None for a in schema.applications)  # handles only
    assert cfg["proxy_location"] == "Disabled"


def test_admission_and_placement_options() -> None:
    (deployment,) = config(workers=2, replicas=4, gpus_per_replica=1,
                           ray_resources={"a100": 1})["applications"][0]["deployments"]  # fmt: skip
    assert deployment["max_ongoing_requests"] == 2  # per replica
    assert deployment["max_queued_requests"] == 7  # per front
    assert deployment["num_replicas"] == 4
    options = dict(deployment["ray_actor_options"])
    assert options.pop("runtime_env") == {"env_vars": {
        # A job's pixels are one gRPC message; Serve's replicas take 4 MiB unless told otherwise.
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(2**31 - 1),
        # Methods on the replica's main loop; Serve's logs to their files only, not to stderr;
        # the collector frozen once the engine has loaded.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_LOG_TO_STDERR": "0",
        "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
    }}  # fmt: skip
    assert options == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {"a100": 1.0}}
    (classic,) = serve_config(load_settings(None))["applications"][0]["deployments"]
    assert classic["ray_actor_options"]["num_gpus"] == 0  # CPU engines reserve no GPU


def test_the_deployments_route_with_retouchs_router_and_a_capped_backoff() -> None:
    """Serve's router backs off to 0.5 s by default; the config caps it at
    router_max_backoff_s. Serve's own schema accepts both, and imports the router class."""
    settings = load_settings(None, cluster={"router_max_backoff_s": 0.02})
    cfg = serve_config(settings)
    options = ServeDeploySchema.model_validate(cfg).applications[0].deployments[0]
    router = RequestRouterConfig.model_validate(options.request_router_config)
    assert router.get_request_router_class() is FreeReplicaFirstRouter
    assert router.max_backoff_s == 0.02
    assert (router.initial_backoff_s, router.backoff_multiplier) == (0.025, 2)  # Serve's own


def test_autoscaling_bounds() -> None:
    (deployment,) = config(min_replicas=0, max_replicas=8, workers=1)["applications"][0]["deployments"]
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 0, "max_replicas": 8, "target_ongoing_requests": 1
    }  # fmt: skip
    with pytest.raises(ValueError, match="either replicas or"):
        ModelSettings(name="x", engine="echo", replicas=2, max_replicas=3)
    with pytest.raises(ValueError, match="above max_replicas"):
        ModelSettings(name="x", engine="echo", min_replicas=4, max_replicas=3)


def test_scaling_changes_are_in_place_and_engine_changes_roll() -> None:
    base = version(config(replicas=1))
    # Same code version: Serve applies these to the running replicas (no model reload).
    assert version(config(replicas=4)) == base
    autoscaled = version(config(min_replicas=1, max_replicas=3))
    assert version(config(min_replicas=0, max_replicas=8)) == autoscaled
    assert version(config(replicas=1, gpus_per_replica=2, aliases=["k"])) == base
    # The engine's own settings are the application's args: a new version, a rolling update.
    assert version(config(replicas=1, options={"steps": 8})) != base
    assert version(config(replicas=1, weights="org/other")) != base
    assert version(config(replicas=1, workers=2)) != base
    # Serve hashes whether a deployment autoscales: switching between fixed and autoscaled
    # replicas is a rolling update too (docs/deployment.md says so).
    assert autoscaled != base


def test_cli_prints_the_config() -> None:
    result = CliRunner().invoke(main, ["cluster-config", "--model", "klein=flux2-klein:org/w"])
    assert result.exit_code == 0, result.output
    assert '"import_path": "retouch.cluster.replica:build_application"' in result.output


def test_a_front_imports_serve_only_when_it_attaches() -> None:
    """Serve reads its gRPC message limit when it is imported; ``deploy.connect`` raises it
    first (jobs of more than 4 MiB of pixels), so nothing a front loads before may import it."""
    code = ("import sys, retouch.bootstrap, retouch.api.app, retouch.scheduler.ray, retouch.cluster.deploy; "
            "print(sorted(m for m in sys.modules if m.startswith('ray.serve')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
