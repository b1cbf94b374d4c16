from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from retouch.cli import build_settings, main, parse_model_flag
from retouch.config import load_settings
from retouch.settings_doc import render

ROOT = Path(__file__).resolve().parents[1]


def test_settings_doc_is_current() -> None:
    """docs/settings.md is generated; regenerate with `retouch settings-doc > docs/settings.md`."""
    assert (ROOT / "docs" / "settings.md").read_text() == render()


def test_every_setting_has_a_description() -> None:
    from retouch.config import (
        AccountSettings,
        Limits,
        ModelSettings,
        QueueSettings,
        Settings,
        StorageSettings,
    )

    for model in (Settings, Limits, QueueSettings, StorageSettings, ModelSettings, AccountSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_precedence_flags_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "retouch.toml"
    toml.write_text(
        'port = 9001\nhost = "127.0.0.2"\n[limits]\nmax_images = 4\n'
        '[[models]]\nname = "e"\nengine = "echo"\naliases = ["e2"]\n'
    )
    monkeypatch.setenv("RETOUCH_PORT", "9002")
    settings = load_settings(toml, port=None)
    assert settings.port == 9002  # env beats the file
    assert settings.host == "127.0.0.2"
    assert settings.limits.max_images == 4
    assert [m.name for m in settings.models] == ["e"]
    assert load_settings(toml, port=9003).port == 9003  # flags beat env


def test_invalid_settings_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="configured twice"):
        load_settings(None, models=[{"name": "a", "engine": "echo"}, {"name": "a", "engine": "echo"}])
    with pytest.raises(ValueError, match="greater than 0"):
        load_settings(None, limits={"max_body_bytes": 0})


def test_model_flag() -> None:
    m = parse_model_flag("klein=flux2-klein:black-forest-labs/FLUX.2-klein-4B")
    assert (m.name, m.engine, m.weights) == ("klein", "flux2-klein", "black-forest-labs/FLUX.2-klein-4B")
    settings = build_settings(None, ("e=echo",), port=None)
    assert settings.models[0].engine == "echo"


def test_cli_rejects_bad_model_flag() -> None:
    result = CliRunner().invoke(main, ["serve", "--model", "nonsense"])
    assert result.exit_code != 0
    assert "NAME=ENGINE" in result.output
