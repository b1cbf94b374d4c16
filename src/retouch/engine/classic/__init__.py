"""Placeholder for the built-in classic engine (issue: the built-in offline engine)."""

from __future__ import annotations

from typing import Any

from retouch.engine.echo import EchoEngine
from retouch.engine.types import EngineInfo


class ClassicEngine(EchoEngine):
    def __init__(self, name: str = "classic", options: dict[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.info = EngineInfo(name=name, description="Classical image processing, no weights.")
