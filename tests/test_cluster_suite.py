"""Runs ``tests/cluster`` (a real Ray cluster, SeaweedFS and two fronts) inside a network
namespace that has only ``lo``: Ray binds the host's routable address and every interface, and
tests may send traffic to loopback only. Needs root (CI runs as root) and ``unshare``; skip it
locally with ``-m "not cluster"``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.cluster
def test_cluster_suite_in_a_loopback_only_namespace() -> None:
    pytest.importorskip("ray.serve")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (CI runs as root)")
    inner = f"{sys.executable} -m pytest -q -p no:cacheprovider -x tests/cluster"
    env = {**os.environ, "RETOUCH_TEST_IN_NETNS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {inner}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(done.stdout[-20000:])
    print(done.stderr[-5000:], file=sys.stderr)
    assert done.returncode == 0, "the cluster suite failed (its output is above)"
