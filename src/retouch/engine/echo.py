"""``echo``: returns the first input image unchanged (fitted to the output size).

Not an editor: it is the engine of benchmarks (non-model overhead) and of tests that need
latency, failure or cancellation knobs. Options (``ModelSettings.options``):
``delay_s`` (seconds of simulated work, split into ``steps``), ``steps`` (default 4),
``fail`` (raise inside the engine on every request).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import Field

from retouch.engine.options import StrictOptions, parse_options
from retouch.engine.types import (
    EditJob,
    EditOutput,
    EngineInfo,
    Pixels,
    Progress,
    preview_steps,
)
from retouch.imaging.encode import fit


class EchoOptions(StrictOptions):
    delay_s: float = Field(0.0, ge=0, description="Seconds of simulated work per request.")
    steps: int = Field(4, ge=1, description="Steps the work is split into (partial images).")
    fail: bool = Field(False, description="Raise inside the engine on every request.")


class EngineCrashed(RuntimeError):
    """The simulated failure of the ``fail`` option."""


class EchoEngine:
    def __init__(self, name: str = "echo", options: dict[str, Any] | None = None) -> None:
        opts = parse_options(EchoOptions, options, name=name, engine="echo")
        self.delay_s = opts.delay_s
        self.steps = opts.steps
        self.fail = opts.fail
        self.info = EngineInfo(name=name, description="Returns the input image unchanged.")
        self.runs = 0
        self.cancelled_runs = 0

    def load(self) -> None:
        return None

    def check(self, job: EditJob) -> None:
        return None

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        self.runs += 1
        source = fit(job.images[0], job.size)
        emit_after = preview_steps(self.steps, job.partial_images)
        for step in range(1, self.steps + 1):
            try:
                progress.check()
            except BaseException:
                self.cancelled_runs += 1
                raise
            if self.delay_s:
                time.sleep(self.delay_s / self.steps)
            if self.fail and step == self.steps:
                raise EngineCrashed("simulated engine failure")
            if step in emit_after:
                progress.partial(_coarse(source, 2 ** min(5, self.steps - step + 1)))
        return EditOutput(images=[source] * job.n, steps=self.steps)

    def close(self) -> None:
        return None


def _coarse(pixels: Pixels, factor: int) -> Pixels:
    """A blocky intermediate state: the image at 1/factor resolution, blown back up."""
    h, w = pixels.shape[:2]
    small = pixels[::factor, ::factor]
    return np.ascontiguousarray(np.repeat(np.repeat(small, factor, 0), factor, 1)[:h, :w])
