"""The edit contract suite of ``tests/test_contract_edits.py``, run again against a front whose
engine runs as Ray Serve replicas: the same test functions (not copies), collected here, where
the ``echo`` and ``live_server`` fixtures are fronts of the test cluster.

Included: every contract test that drives the API only through the SDK / HTTP (the ``echo``
or ``live_server`` fixture and its own parameters). Left out, by rule: tests that build their
own app (``harness_factory``: those run on Ray in ``test_harness_on_ray.py``), that inspect the
in-process engine (``recording``, ``.services``). ``EXCLUDED`` names the few that assume the in-process host name.
"""

from __future__ import annotations

import inspect

import pytest

from tests import test_contract_edits as contract
from tests.cluster.reuse import fixtures_of, pick_tests

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

EXCLUDED = {
    # Asserts the in-process base URL (http://retouch.test/); links over the cluster are
    # covered by test_cluster.py::test_links_made_by_one_front_are_served_by_the_other.
    "test_dall_e_2_url_by_default_and_the_link_serves_the_image",
}
_FRONT_FIXTURES = {"echo", "live_server"}


def _runs_against_a_front(name: str, fn: object) -> bool:
    fixtures = fixtures_of(fn)
    source = inspect.getsource(fn)  # type: ignore[arg-type]
    return (name not in EXCLUDED and bool(fixtures) and fixtures <= _FRONT_FIXTURES
            and ".services" not in source)  # fmt: skip


COVERED = sorted(pick_tests(contract, _runs_against_a_front))
globals().update({name: getattr(contract, name) for name in COVERED})
