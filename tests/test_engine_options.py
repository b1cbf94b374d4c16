"""Every engine rejects unknown or mistyped options at start-up, naming the option."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from retouch.cli import main
from retouch.config import ModelSettings
from retouch.engine.registry import build_engine
from retouch.engine.types import EngineLoadError


@pytest.mark.parametrize("engine", ["echo", "classic"])
def test_unknown_option_stops_start_up(engine: str) -> None:
    model = ModelSettings(name="m", engine=engine, options={"stpes": 3})
    with pytest.raises(EngineLoadError, match=r"model 'm': unknown option 'stpes' \(the .* engine takes: ") as err:
        build_engine(model)
    assert engine in str(err.value)


@pytest.mark.parametrize(
    ("engine", "options", "option"),
    [("echo", {"steps": "many"}, "steps"), ("echo", {"delay_s": -1}, "delay_s"),
     ("classic", {"fill_budget": 0}, "fill_budget")],
)  # fmt: skip
def test_invalid_option_values_stop_start_up(engine: str, options: dict[str, object], option: str) -> None:
    with pytest.raises(EngineLoadError, match=f"option '{option}'"):
        build_engine(ModelSettings(name="m", engine=engine, options=options))


def test_known_options_are_applied() -> None:
    engine = build_engine(ModelSettings(name="m", engine="echo", options={"steps": 7, "fail": True}))
    assert (engine.steps, engine.fail) == (7, True)  # type: ignore[attr-defined]
    classic = build_engine(ModelSettings(name="c", engine="classic", options={"fill_budget": 900}))
    assert classic.settings.fill_budget == 900  # type: ignore[attr-defined]


def test_serve_says_which_option(tmp_path: object) -> None:
    config = tmp_path / "retouch.toml"  # type: ignore[operator]
    config.write_text('[[models]]\nname = "e"\nengine = "echo"\noptions = { colour = "red" }\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(config), "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown option 'colour'" in result.output
