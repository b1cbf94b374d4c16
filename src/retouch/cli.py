"""Command line: ``retouch serve`` and friends. Builds ``Settings``; may import anything."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import click

from retouch import __version__
from retouch.cli_settings import build_settings, load_engines, parse_model_flag

__all__ = ["build_settings", "load_engines", "main", "parse_model_flag"]


@click.group()
@click.version_option(__version__, prog_name="retouch")
def main() -> None:
    """retouch: a self-hosted server for OpenAI's image edit API."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [8000].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Data folder.")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--model", "models", multiple=True, help="NAME=ENGINE[:WEIGHTS]; repeatable.")
@click.option("--database-url", default=None, help="Accounts database URL.")
@click.option("--insecure", is_flag=True, default=None, help="Serve without keys off loopback.")
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    config: Path | None,
    models: tuple[str, ...],
    database_url: str | None,
    insecure: bool | None,
) -> None:
    """Start the HTTP server."""
    import uvicorn

    from retouch.api.server import server_config
    from retouch.bootstrap import build_app

    settings = build_settings(
        config, models, host=host, port=port, data_dir=data_dir,
        database_url=database_url, insecure=insecure,
    )  # fmt: skip
    from retouch.logs import configure

    configure(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from retouch.accounting.database_gate import ServingRefused, database_gate, prepare_database

    try:
        has_keys = prepare_database(settings)
    except ServingRefused as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"accounts database: {exc}") from None
    # With the Ray backend the engines load in the cluster's replicas, not in this front.
    engines = load_engines(settings) if settings.cluster.backend == "local" else {}
    app = build_app(settings, engines=engines, gate_factory=database_gate, after_start=freeze_collector)
    served = ", ".join(
        f"{m.name} ({m.engine}{': ' + m.weights if m.weights else ''})" for m in settings.models
    )
    default = settings.default_model or settings.models[0].name
    click.echo(
        f"retouch {__version__} listening on http://{settings.host}:{settings.port} - "
        f"models: {served}; OpenAI model names go to {default}; "
        + ("API keys required" if has_keys else "no API keys: serving open"),
        err=True,
    )
    uvicorn.Server(server_config(app, settings)).run()


def freeze_collector() -> None:
    """What is loaded once the server has started (modules, engines, a front's Ray client)
    lives as long as the process: frozen, it is left out of the collector's full passes, which
    otherwise walk it all and stall every request in flight. On this project's 2-core host a
    full pass took 170-190 ms with the built-in engines, about 240 ms with Ray Serve loaded
    and 330-430 ms with torch and diffusers (``bench/gc_pause.py``; README, saturation)."""
    gc.collect()
    gc.freeze()


@main.command("cluster-config")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--model", "model_flags", multiple=True, help="NAME=ENGINE[:WEIGHTS]; repeatable.")
def cluster_config(config: Path | None, model_flags: tuple[str, ...]) -> None:
    """Print the Ray Serve config that 'retouch serve' submits for the Ray backend (JSON,
    which is also YAML): for 'serve deploy' or a KubeRay RayService's serveConfigV2."""
    import orjson

    from retouch.cluster.deploy import serve_config

    settings = build_settings(config, model_flags)
    click.echo(orjson.dumps(serve_config(settings), option=orjson.OPT_INDENT_2).decode())


@main.group()
def models() -> None:
    """Model weights (generative engines)."""


@models.command("pull")
@click.argument("name")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="TOML config file.")
@click.option("--model", "model_flags", multiple=True, help="NAME=ENGINE[:WEIGHTS]; repeatable.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit).")
def pull(name: str, config: Path | None, model_flags: tuple[str, ...], revision: str | None) -> None:
    """Download the weights of the configured model NAME (or a hub id) into the local
    Hugging Face cache, so that 'retouch serve' starts without network access."""
    from retouch.engine.weights import is_local, pull_weights, weights_id

    settings = build_settings(config, model_flags)
    configured = {n: m for m in settings.models for n in (m.name, *m.aliases)}
    if name in configured:
        model = configured[name]
        if model.engine == "classic":
            _pull_classic(model.name, model.options)
            return
        if model.engine in ("echo", "upstream"):
            raise click.ClickException(f"model {name!r} ({model.engine}) has no weights to pull")
        try:
            weights = weights_id(model)
        except Exception as exc:
            raise click.ClickException(str(exc)) from None
        if is_local(weights):
            click.echo(f"model {name!r} uses the local folder {weights}; nothing to download")
            return
    elif "/" in name:
        weights = name
    else:
        known = ", ".join(sorted(configured)) or "none"
        raise click.ClickException(
            f"no configured model named {name!r} (configured: {known}); pass --config or "
            "--model as for 'retouch serve', or a hub id such as black-forest-labs/FLUX.2-klein-4B"
        )
    click.echo(f"downloading {weights} ...", err=True)
    try:
        folder = pull_weights(weights, revision=revision)
    except Exception as exc:
        raise click.ClickException(f"could not download {weights!r}: {exc}") from None
    click.echo(f"{weights} is in {folder}")


def _pull_classic(name: str, options: dict[str, Any]) -> None:
    """The classic engine's optional ONNX files (options matte_model, fill_model)."""
    from retouch.engine.classic import model_files

    try:
        paths = model_files.pull(options, name=name)
    except Exception as exc:
        raise click.ClickException(str(exc)) from None
    if not paths:
        click.echo(
            f"model {name!r} (classic) uses its bundled segmentation model; nothing to download"
        )
    for path in paths:
        click.echo(f"{path}")


@main.command("settings-doc")
def settings_doc() -> None:
    """Print the settings reference (docs/settings.md)."""
    from retouch.settings_doc import render

    sys.stdout.write(render())


def _add_account_commands() -> None:
    from retouch.accounting.commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_account_commands()


def _add_image_commands() -> None:
    from retouch.cli_images import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_image_commands()

if __name__ == "__main__":
    main()
