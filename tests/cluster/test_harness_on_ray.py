"""The suites that build their own app (``harness_factory``, ``LiveServer``) for the edit API,
run again with the app's engines as Ray Serve replicas: the same test functions (not copies),
collected here, where ``tests.apps`` builds apps through ``ray_apps.RayApps`` and the accounts
database of each test is a fresh database on the cluster's PostgreSQL.

Covered: idempotency, ledger and usage rows, client disconnects (499 and the engine cancelled
at its next step on the replica), the queue and run deadlines (504) and the contract tests that need
their own settings (streams of a failing engine, queue and body limits). A test that injects an
engine other than a plain ``EchoEngine`` skips itself here (``RayApps.build`` says why);
``SKIPPED`` names the few that read state only the in-process backend has.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests import apps
from tests import test_contract_edits as contract
from tests import test_disconnects as disconnects
from tests import test_metrics as metrics
from tests.accounts import conftest as accounts_conftest
from tests.accounts import test_generations_ledger, test_idempotency, test_ledger, test_usage_api
from tests.cluster.conftest import Cluster
from tests.cluster.ray_apps import RayApps
from tests.cluster.reuse import fixtures_defined_in, pick_tests
from tests.cluster.test_contract_on_ray import COVERED as ON_A_FRONT

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

SKIPPED: dict[str, str] = {}


def _builds_its_own_app(name: str, fn: Any) -> bool:
    source = inspect.getsource(fn)
    return name not in ON_A_FRONT and ("harness_factory(" in source or "LiveServer(" in source)


SUITES = [test_idempotency, test_ledger, test_usage_api, test_generations_ledger, disconnects, contract]
COVERED: dict[str, Any] = {}
for _suite in SUITES:
    COVERED.update(pick_tests(_suite, _builds_its_own_app))
    globals().update({k: v for k, v in fixtures_defined_in(_suite).items() if k not in globals()})
COVERED["test_deadline_is_counted_as_504"] = metrics.test_deadline_is_counted_as_504
COVERED["test_a_run_past_its_deadline_is_a_504_and_frees_the_model"] = (
    metrics.test_a_run_past_its_deadline_is_a_504_and_frees_the_model
)


def _skipping(name: str, reason: str) -> Any:
    fn = COVERED[name]
    return pytest.mark.skip(reason=reason)(fn)


globals().update({name: _skipping(name, SKIPPED[name]) if name in SKIPPED else fn
                  for name, fn in COVERED.items()})  # fmt: skip
accounts = accounts_conftest.accounts


@pytest.fixture
def database_url(cluster: Cluster) -> Iterator[str]:
    """A fresh database per test on the cluster's PostgreSQL (the accounts suites' fixture
    takes a server from RETOUCH_TEST_POSTGRES_URL, which is outside this namespace)."""
    name = f"retouch_t_{uuid.uuid4().hex[:16]}"
    admin = cluster.postgres.url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield cluster.postgres.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def on_ray(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with apps.building_with(RayApps(cluster, monkeypatch).build):
        yield
