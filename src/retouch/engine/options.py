"""Engine options (``ModelSettings.options``) validated once, at start-up.

Each engine declares its options as a pydantic model with ``extra="forbid"``; ``parse_options``
turns a mistake (an unknown or misspelt option, a wrong type) into an ``EngineLoadError`` that
names the model, the option and the options the engine knows, so ``retouch serve`` stops with
that message instead of ignoring the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from retouch.engine.types import EngineLoadError

M = TypeVar("M", bound=BaseModel)


class StrictOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_options(model: type[M], options: Mapping[str, Any] | None, *, name: str, engine: str) -> M:
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        known = ", ".join(sorted(model.model_fields)) or "none"
        problems = []
        for error in exc.errors():
            option = ".".join(str(part) for part in error["loc"]) or "options"
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown option {option!r}")
            else:
                problems.append(f"option {option!r}: {error['msg']}")
        raise EngineLoadError(
            f"model {name!r}: {'; '.join(problems)} (the {engine} engine takes: {known})"
        ) from None
