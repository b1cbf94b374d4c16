"""``retouch edit`` and ``retouch generate``: one image request from the command line.

Both go through the official ``openai`` SDK with streaming: against ``--server`` (or
``OPENAI_BASE_URL``) over HTTP, or, without one, against the configured engines started inside
this process (``inprocess.py``: the same app, validation and service as ``retouch serve``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import openai
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from retouch.cli import build_settings, load_engines

FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
SUFFIX_OF_FORMAT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


class Failed(click.ClickException):
    """A request failed; the message is the server's or engine's own, in plain words."""

    def format_message(self) -> str:
        return self.message


@dataclass
class Job:
    """One request, as the command line described it."""

    kind: str  # "edit" or "generate"
    prompt: str
    fields: dict[str, Any]
    images: list[Path] = field(default_factory=list)
    mask: Path | None = None
    stream: bool = True
    partial_images: int = 2


# -- where the results go ---------------------------------------------------------------------


def output_format(output: Path | None, requested: str | None) -> str | None:
    """The ``output_format`` to send: ``--format``, else the one ``-o``'s suffix names; None
    (send nothing) for png, everyone's default, which models without output options (dall-e-2)
    would refuse as a parameter."""
    implied = FORMAT_OF_SUFFIX.get(output.suffix.lower()) if output else None
    if requested and implied and output is not None and requested != implied:
        raise click.UsageError(f"-o {output} ends in {output.suffix} but --format is {requested}")
    return requested or (implied if implied != "png" else None)


def output_paths(output: Path | None, default: Path, n: int, fmt: str) -> list[Path]:
    """``OUT`` for one image, ``OUT-1.png``, ``OUT-2.png`` ... for several."""
    base = output if output is not None else default
    suffix = base.suffix if base.suffix.lower() in FORMAT_OF_SUFFIX else SUFFIX_OF_FORMAT[fmt]
    stem = base.with_suffix("") if base.suffix.lower() in FORMAT_OF_SUFFIX else base
    if n == 1:
        return [stem.with_name(stem.name + suffix)]
    return [stem.with_name(f"{stem.name}-{i}{suffix}") for i in range(1, n + 1)]


# -- progress ---------------------------------------------------------------------------------


class Reporter:
    """A progress bar on stderr (partial images arriving, stage, elapsed); silent when stderr
    is not a terminal."""

    def __init__(self, n: int, partials: int, label: str) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
            console=self.console, disable=not self.console.is_terminal, transient=False,
        )  # fmt: skip
        self.n, self.partials, self.done, self.seen = n, partials, 0, 0
        self.task: TaskID = self.progress.add_task(label, total=n * (partials + 1), note="")

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def partial(self, index: int) -> None:
        self.seen += 1
        self.progress.update(self.task, advance=1, description=f"partial image {index + 1} arrived",
                             note=f"{self.seen} partial{'s' if self.seen > 1 else ''}")  # fmt: skip

    def completed(self) -> None:
        self.done += 1
        # An engine may send fewer partials than asked for: count what is left as done.
        remaining = (self.n - self.done) * (self.partials + 1)
        total = self.progress.tasks[0].total or 0
        self.progress.update(self.task, completed=total - remaining,
                             description=f"image {self.done} of {self.n} done")  # fmt: skip


# -- running ----------------------------------------------------------------------------------


def _message(exc: openai.APIError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else exc.message


async def _request(client: openai.AsyncOpenAI, job: Job, stream: bool) -> Any:
    kwargs = dict(job.fields)
    if stream:
        kwargs.update(stream=True, partial_images=job.partial_images)
    if job.kind == "generate":
        return await client.images.generate(prompt=job.prompt, **kwargs)
    images = [(p.name, p.read_bytes()) for p in job.images]
    if job.mask is not None:
        kwargs["mask"] = (job.mask.name, job.mask.read_bytes())
    return await client.images.edit(
        image=images if len(images) > 1 else images[0], prompt=job.prompt, **kwargs
    )


async def _images(client: openai.AsyncOpenAI, job: Job, report: Reporter) -> list[tuple[bytes, dict[str, Any]]]:
    """The output images and what the server said about each (size, quality, usage ...)."""
    report.stage("sending the request" if job.kind == "generate" else
                 f"sending {len(job.images)} image{'s' if len(job.images) > 1 else ''}")  # fmt: skip
    if "model" not in job.fields and (default := await _default_model(client)) is not None:
        job.fields["model"] = default
    stream = job.stream
    try:
        answer = await _request(client, job, stream)
    except openai.BadRequestError as exc:
        refused = exc.param in ("stream", "partial_images") and exc.code == "unknown_parameter"
        if not (stream and refused):
            raise
        report.stage("this model does not stream; waiting for the result")
        stream = False
        answer = await _request(client, job, stream)
    results: list[tuple[bytes, dict[str, Any]]] = []
    if not stream:
        for item in answer.data or []:
            data = base64.b64decode(item.b64_json) if item.b64_json else await _download(client, item.url)
            results.append((data, {**answer.model_dump(exclude={"data"}), **item.model_dump()}))
            report.completed()
        return results
    report.stage("waiting for the engine")
    async for event in answer:
        if event.type.endswith(".partial_image"):
            report.partial(event.partial_image_index)
        elif event.type.endswith(".completed"):
            results.append((base64.b64decode(event.b64_json), event.model_dump(exclude={"b64_json"})))
            report.completed()
    return results


async def _default_model(client: openai.AsyncOpenAI) -> str | None:
    """The server's first own model name (retouch lists those before OpenAI's aliases), so an
    edit follows that model's rules (``size=auto`` keeps the image's size) rather than
    gpt-image-1.5's; None for servers that list no such name."""
    async for model in client.models.list():
        if model.owned_by.startswith("retouch:"):
            return model.id
    return None


async def _download(client: openai.AsyncOpenAI, url: str | None) -> bytes:
    if not url:
        raise Failed("the server returned an image without data or a URL")
    response = await client._client.get(url)  # the SDK's own HTTP client: same transport
    response.raise_for_status()
    return bytes(response.content)


ClientFactory = Callable[[], Any]


async def _run(open_client: ClientFactory, job: Job, report: Reporter) -> list[tuple[bytes, dict[str, Any]]]:
    async with open_client() as client:
        return await _images(client, job, report)


def _server_client(server: str, api_key: str | None) -> ClientFactory:
    base = server.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"

    def open_client() -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=base, api_key=api_key or "none")

    return open_client


def _local_client(config: Path | None, engines: tuple[str, ...]) -> ClientFactory:
    from retouch.inprocess import inprocess_client

    scratch = tempfile.TemporaryDirectory(prefix="retouch-edit-")
    settings = build_settings(config, engines, data_dir=Path(scratch.name))
    loaded = load_engines(settings)

    @contextlib.asynccontextmanager
    async def open_client() -> AsyncIterator[openai.AsyncOpenAI]:
        try:
            async with inprocess_client(settings, loaded) as client:
                yield client
        finally:
            for engine in loaded.values():
                engine.close()
            scratch.cleanup()

    return open_client


def execute(job: Job, paths: Callable[[int, str], list[Path]], *, server: str | None,
            api_key: str | None, config: Path | None, engines: tuple[str, ...]) -> None:  # fmt: skip
    """Run ``job`` and write its images; every failure becomes ``Failed`` with the server's or
    engine's own message."""
    open_client = _server_client(server, api_key) if server else _local_client(config, engines)
    n = int(job.fields.get("n", 1))
    where = server or "in-process engine"
    started = time.monotonic()
    try:
        with Reporter(n, job.partial_images if job.stream else 0, f"connecting to {where}") as report:
            results = asyncio.run(_run(open_client, job, report))
    except openai.APIConnectionError as exc:
        raise Failed(f"could not reach the server at {server}: {exc.__cause__ or exc}") from None
    except openai.APIStatusError as exc:
        raise Failed(f"the server refused the request (HTTP {exc.status_code}): {_message(exc)}") from None
    except openai.APIError as exc:  # an error event in the stream, after the 200
        raise Failed(f"the request failed: {_message(exc)}") from None
    if not results:
        raise Failed("the server answered without any image")
    fmt = str(results[0][1].get("output_format") or job.fields.get("output_format") or "png")
    targets = paths(len(results), fmt)
    for path in targets:
        if path.exists() and any(path.resolve() == image.resolve() for image in job.images):
            raise Failed(f"refusing to overwrite the input image {path}; pass -o")
    for (data, info), path in zip(results, targets, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        click.echo(f"wrote {path} ({info.get('size') or '?'}, {info.get('quality') or '?'}, "
                   f"{len(data):,} bytes)")  # fmt: skip
    usage = results[-1][1].get("usage")
    if usage:
        click.echo(f"usage: {usage.get('total_tokens')} tokens "
                   f"({usage.get('input_tokens')} in, {usage.get('output_tokens')} out); "
                   f"{time.monotonic() - started:.1f} s", err=True)  # fmt: skip


# -- the commands -----------------------------------------------------------------------------


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--prompt", "-p", required=True, help="What to do (or draw)."),
        click.option("--model", "model", default=None, help="Model name to request."),
        click.option("-n", "n", type=click.IntRange(1, 10), default=None, help="How many images."),
        click.option("--size", default=None, help="WIDTHxHEIGHT or auto."),
        click.option("--quality", default=None, help="auto, low, medium or high."),
        click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "webp"]), default=None,
                     help="Output format [from -o's suffix, else png]."),
        click.option("--compression", type=click.IntRange(0, 100), default=None,
                     help="Output compression in percent (jpeg and webp)."),
        click.option("--background", default=None, help="auto, opaque or transparent."),
        click.option("--partial-images", type=click.IntRange(0, 3), default=2, show_default=True,
                     help="Partial images to stream while it works."),
        click.option("--no-stream", is_flag=True, help="Ask for the finished images only."),
        click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Output file (OUT-1, OUT-2 ... for n > 1)."),
        click.option("--server", envvar="OPENAI_BASE_URL", default=None,
                     help="A retouch (or OpenAI-compatible) server URL [OPENAI_BASE_URL]; "
                          "default: run the configured engine in this process."),
        click.option("--api-key", envvar="OPENAI_API_KEY", default=None,
                     help="API key for --server [OPENAI_API_KEY]."),
        click.option("--config", type=click.Path(path_type=Path), default=None,
                     help="TOML config file (in-process, as for 'retouch serve')."),
        click.option("--engine", "engines", multiple=True,
                     help="NAME=ENGINE[:WEIGHTS] (in-process, as 'retouch serve --model')."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _fields(model: str | None, n: int | None, size: str | None, quality: str | None,
            fmt: str | None, compression: int | None, background: str | None) -> dict[str, Any]:  # fmt: skip
    values = {"model": model, "n": n, "size": size, "quality": quality, "output_format": fmt,
              "output_compression": compression, "background": background}  # fmt: skip
    return {k: v for k, v in values.items() if v is not None}


@click.command("edit")
@click.argument("images", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--mask", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="PNG whose transparent pixels (alpha 0) mark what to edit.")  # fmt: skip
@click.option("--input-fidelity", default=None, help="low or high.")
@_common
def edit(images: tuple[Path, ...], mask: Path | None, input_fidelity: str | None, prompt: str,
         model: str | None, n: int | None, size: str | None, quality: str | None, fmt: str | None,
         compression: int | None, background: str | None, partial_images: int, no_stream: bool,
         output: Path | None, server: str | None, api_key: str | None, config: Path | None,
         engines: tuple[str, ...]) -> None:  # fmt: skip
    """Edit IMAGE(S) as --prompt says; writes the result next to the first image (or -o)."""
    fmt = output_format(output, fmt)
    fields = _fields(model, n, size, quality, fmt, compression, background)
    if input_fidelity:
        fields["input_fidelity"] = input_fidelity
    job = Job("edit", prompt, fields, list(images), mask, not no_stream, partial_images)
    first = images[0]
    default = first.with_name(f"{first.stem}-edited")
    execute(job, lambda count, f: output_paths(output, default, count, f), server=server,
            api_key=api_key, config=config, engines=engines)  # fmt: skip


@click.command("generate")
@_common
def generate(prompt: str, model: str | None, n: int | None, size: str | None,
             quality: str | None, fmt: str | None, compression: int | None,
             background: str | None, partial_images: int, no_stream: bool, output: Path | None,
             server: str | None, api_key: str | None, config: Path | None,
             engines: tuple[str, ...]) -> None:  # fmt: skip
    """Generate images from --prompt alone (POST /v1/images/generations)."""
    fmt = output_format(output, fmt)
    job = Job("generate", prompt, _fields(model, n, size, quality, fmt, compression, background),
              stream=not no_stream, partial_images=partial_images)  # fmt: skip
    default = Path("generated")
    execute(job, lambda count, f: output_paths(output, default, count, f), server=server,
            api_key=api_key, config=config, engines=engines)  # fmt: skip


COMMANDS = [edit, generate]
