"""The engine seam: what an engine receives, what it returns, and how it reports progress.

An engine never sees HTTP, wire models or the database. It gets an ``EditJob`` (decoded pixels and
resolved, validated parameters), a ``Progress`` to publish partial images through and to observe
cancellation, and returns an ``EditOutput``.

Pixel conventions (numpy, uint8, row-major):
* images: ``H x W x 3`` (RGB) or ``H x W x 4`` (RGBA);
* mask: ``H x W``, the size of the first image; 255 = fully editable (OpenAI alpha 0),
  0 = keep (OpenAI alpha 255); intermediate values are partial transparency in the upload;
* output images are exactly ``job.size`` (width, height); RGBA only when the engine produced a
  real alpha channel (``background`` transparent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from retouch.types import Pixels as Pixels  # re-exported: engines speak it

Quality = Literal["low", "medium", "high", "xhigh", "max"]
"""``xhigh`` and ``max`` come from the 2.5+ families; generative engines give them more steps."""
Complexity = Literal["low", "medium", "high"]
MarkupUse = Literal["mask", "hint"]
Fidelity = Literal["low", "high"]
Background = Literal["transparent", "opaque", "auto"]


@dataclass(frozen=True)
class EditJob:
    """One validated edit, ready for an engine."""

    prompt: str
    images: tuple[Pixels, ...]
    mask: Pixels | None
    size: tuple[int, int]
    """Output (width, height), already resolved from ``auto``."""
    n: int
    quality: Quality
    input_fidelity: Fidelity
    background: Background
    partial_images: int
    """How many partial images the client asked for (0-3); the engine may send fewer."""
    seed: int = 0
    """Deterministic seed: engines derive per-image seeds as ``seed + index``."""
    complexity: Complexity | None = None
    """Planning effort (gpt-image-2.6); only reaches engines whose info says they take it."""
    generate: bool = False
    """A text-to-image job (``/v1/images/generations``): ``images`` holds one blank canvas of
    ``size`` and ``mask`` marks all of it; engines that generate natively ignore both."""


@dataclass
class EditOutput:
    images: list[Pixels]
    """``job.n`` images of exactly ``job.size``."""
    steps: int = 0
    """Denoising steps (or work stages) actually run, for logs and metrics."""
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks (e.g. "identical copies: the operation is deterministic")."""
    replica: str | None = None
    """The engine replica that ran the job (set by the Ray backend; ``x-retouch-replica``)."""


class Progress(Protocol):
    """Handed to ``Engine.run``; safe to call from the engine's worker thread."""

    @property
    def cancelled(self) -> bool:
        """True once the client went away or the deadline passed."""
        ...

    def check(self) -> None:
        """Raise ``retouch.errors.Cancelled`` if the job was cancelled; call between steps."""
        ...

    def partial(self, image: Pixels, *, output_index: int = 0) -> None:
        """Publish a real intermediate image of output ``output_index`` (any size; it is
        resized to ``job.size`` when encoded). Extra partials beyond what the client asked for
        are dropped, so engines may call this freely."""
        ...


@dataclass(frozen=True)
class EngineInfo:
    """What an engine declares about itself, for ``/v1/models``, validation and docs."""

    name: str
    description: str
    max_images: int = 16
    """How many input images the engine takes at most (a 400 names the limit beyond it)."""
    supports_mask: bool = True
    supports_transparency: bool = True
    generative: bool = False
    output_formats: frozenset[str] = frozenset({"png", "jpeg", "webp"})
    """Formats the engine can produce (the service encodes png/jpeg/webp from pixels; gif or
    svg would need an engine that makes animations or vector drawings)."""
    complexity: str | None = None
    """What ``complexity`` changes in this engine (for docs and errors); ``None``: the engine
    has no such knob and ``complexity`` is a 400 naming it."""
    markup: MarkupUse = "mask"
    """How a ``markup`` image reaches the engine: ``mask`` = its strokes and the area they
    enclose become the edit mask; ``hint`` = it is drawn onto the first image for the model to
    read (instruction-following engines)."""
    text_to_image: str | None = None
    """How the engine generates from a prompt alone (``/v1/images/generations``); ``None``: it
    cannot, and generations are a 400 that says so."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model (or the built-in classic engine) that runs one edit at a time per worker."""

    info: EngineInfo

    def load(self) -> None:
        """Load weights or warm up; called once at start-up, off the event loop. Raise
        ``EngineLoadError`` with a message that says how to fix it."""
        ...

    def check(self, job: EditJob) -> None:
        """Cheap pre-flight check before the job is queued (for example: can this engine carry
        out the prompt?). Raises a ``RetouchError`` (400) to refuse."""
        ...

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        """Run the edit. Blocking; runs in the engine's worker thread, never on the event loop."""
        ...

    def close(self) -> None:
        """Release resources (GPU memory, pools)."""
        ...


def preview_steps(num_steps: int, partial_images: int) -> frozenset[int]:
    """Completed-step counts after which to publish a partial image: evenly spaced, never the
    last step (that would be the final image), possibly fewer than asked for few steps."""
    picks = {
        max(1, round(num_steps * (j + 1) / (partial_images + 1))) for j in range(partial_images)
    }
    return frozenset(s for s in picks if s < num_steps)


class EngineLoadError(RuntimeError):
    """A configured engine could not load; the message names the model, where it looked and
    the command that fixes it. Raised at start-up, never on a request."""
