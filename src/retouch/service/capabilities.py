"""Options a family accepts but the serving engine may not implement: ``output_format`` gif /
svg and ``complexity``. Each is a 400 that names the engine that cannot and, where one is
served, the model whose engine can (never a silently different result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from retouch.config import EngineKind
from retouch.engine.types import EngineInfo
from retouch.errors import InvalidValue
from retouch.service.params import EditParams

_WHAT = {
    "gif": "an engine that renders animations",
    "svg": "an engine that draws vector images",
}


@dataclass(frozen=True)
class Served:
    """One configured model: its engine kind and what the loaded engine declares."""

    engine: str
    info: EngineInfo


def check_engine_options(params: EditParams, model: str, served: dict[str, Served]) -> None:
    """Raise a 400 for an option the engine of ``model`` (a served model name) cannot honour."""
    own = served[model]
    fmt = params.output_format
    if fmt not in own.info.output_formats:
        able = [name for name, s in served.items() if fmt in s.info.output_formats]
        where = (
            f"served models that can: {', '.join(able)}"
            if able
            else f"none of the engines retouch ships ({', '.join(get_args(EngineKind))}) can; "
            f"it needs {_WHAT.get(fmt, 'another engine')}"
        )
        raise InvalidValue(
            f"Invalid value: '{fmt}'. The model '{params.model}' runs the '{own.engine}' "
            f"engine, which cannot write {fmt} output ({where}). Use output_format 'png', "
            "'jpeg' or 'webp'.",
            param="output_format",
        )
    if params.complexity is not None and own.info.complexity is None:
        able = [f"{name} ({s.engine})" for name, s in served.items() if s.info.complexity]
        hint = (
            f"served models that take it: {', '.join(able)}"
            if able
            else "the sd-inpaint engine takes it (it scales classifier-free guidance)"
        )
        raise InvalidValue(
            f"Invalid 'complexity': the model '{params.model}' runs the '{own.engine}' engine, "
            f"which has no planning-effort knob ({hint}). Omit 'complexity'.",
            param="complexity",
        )
