"""What every command line needs before it runs: settings from flags, and loaded engines.

Shared by ``retouch serve`` (``cli.py``) and ``retouch edit`` / ``generate``
(``cli_images.py``), which ``cli.py`` registers; a module of its own so neither imports the
other (no cycle between the two)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from retouch.config import ModelSettings, Settings, UpstreamSettings, load_settings
from retouch.engine.types import Engine, EngineLoadError


def parse_model_flag(value: str) -> ModelSettings:
    """``NAME=ENGINE[:WEIGHTS]``, e.g. ``klein=flux2-klein:black-forest-labs/FLUX.2-klein-4B``,
    or ``NAME=upstream:BASE_URL`` for a relay (more relay options in the TOML file)."""
    name, sep, rest = value.partition("=")
    engine, _, weights = rest.partition(":")
    if not sep or not name or not engine:
        raise click.BadParameter(f"expected NAME=ENGINE[:WEIGHTS], got {value!r}")
    try:
        if engine == "upstream":
            upstream = UpstreamSettings(base_url=weights)
            return ModelSettings(name=name, engine="upstream", upstream=upstream)
        return ModelSettings(name=name, engine=engine, weights=weights or None)
    except Exception as exc:
        raise click.BadParameter(str(exc)) from None


def build_settings(config: Path | None, models: tuple[str, ...], **flags: Any) -> Settings:
    overrides = dict(flags)
    if models:
        overrides["models"] = [parse_model_flag(m) for m in models]
    try:
        return load_settings(config, **overrides)
    except Exception as exc:
        raise click.ClickException(f"invalid configuration: {exc}") from None


def load_engines(settings: Settings) -> dict[str, Engine]:
    """Build and load every configured engine before the server starts, so a missing extra,
    missing weights or a broken model stop ``serve`` with its own message (naming the model,
    where it looked and the fix), not inside the ASGI server's start-up traceback."""
    from retouch.engine.registry import build_engine

    engines: dict[str, Engine] = {}
    for model in settings.models:
        if model.engine == "upstream":  # a relay: nothing to load
            continue
        try:
            engine = build_engine(model)
            engine.load()
        except EngineLoadError as exc:
            raise click.ClickException(str(exc)) from None
        engines[model.name] = engine
    return engines
