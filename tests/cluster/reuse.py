"""Run test functions of the in-process suites again on the Ray cluster, without copying them:
a module here imports the chosen functions (and the fixtures of their own module) into its
namespace, where the cluster's fixtures replace the in-process ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any


def fixtures_of(fn: Any) -> set[str]:
    """The fixtures a test asks for: its parameters less those it parametrises itself."""
    params = set(inspect.signature(fn).parameters)
    marks = getattr(fn, "pytestmark", [])
    given = {name.strip() for m in marks if m.name == "parametrize" for name in
             (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}  # fmt: skip
    return params - given


def pick_tests(module: ModuleType, keep: Callable[[str, Any], bool]) -> dict[str, Any]:
    return {
        name: fn for name, fn in vars(module).items()
        if name.startswith("test_") and callable(fn) and keep(name, fn)
    }  # fmt: skip


def fixtures_defined_in(module: ModuleType) -> dict[str, Any]:
    """Module-level fixtures (pytest 8 wraps them in ``FixtureFunctionDefinition``)."""
    return {name: obj for name, obj in vars(module).items()
            if type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_pytestfixturefunction")}  # fmt: skip
