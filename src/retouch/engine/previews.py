"""Inside the denoising loop: real partial images, cancellation, and a step count.

``DenoiseTap`` is two hooks on a diffusers pipeline call (``engines.md`` §5):

* a forward pre-hook on the denoiser (transformer / UNet) that stops a cancelled job *before*
  the next step's compute, and remembers the step's input latents;
* the ``callback_on_step_end`` that counts the step, stops a cancelled job (raising skips the
  final VAE decode, unlike diffusers' ``_interrupt``), and at the chosen steps decodes a preview.

Previews of flow-matching families (FLUX.2, Qwen) decode the x0 estimate: with Euler steps
``x_{i+1} = x_i + (s_{i+1} - s_i) v``, the input ``x_i`` (seen by the pre-hook) and the output
``x_{i+1}`` give ``v``, and ``x0 = x_{i+1} - s_{i+1} v``, so even the first preview is the
image taking shape rather than noise. Stable Diffusion (epsilon prediction) gets the fallback:
its current latents ``x_t`` are decoded as they are (noisy early on, clear after ~40 %).

Pipelines without ``callback_on_step_end`` (LongCat-Image-Edit) run the tap on the pre-hook
alone (``hook_only``): a denoiser call with a new timestep means the previous step finished,
and its input holds that step's output latents (the first ``target_tokens`` tokens), so the
step count, the previews and the cancellation check all happen one call later, before the
next step's compute; the last step is counted when the call returns.

Decoding uses the pipeline's own VAE on latents average-pooled by ``preview_downscale`` (2: a
quarter of the pixels, a quarter of the cost); the service resizes partials to the output size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from retouch.engine.types import Pixels, Progress, preview_steps
from retouch.errors import Cancelled

log = logging.getLogger(__name__)

Decoder = Callable[[torch.Tensor, dict[str, Any]], Pixels]
"""(latents of output 0 as the pipeline holds them, the denoiser's forward kwargs) -> RGB."""


def flow_x0(scheduler: Any, x_next: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
    """The x0 estimate after one Euler step of a flow-matching scheduler.

    The scheduler has already advanced ``step_index``, so the step just taken went from
    ``sigmas[k - 1]`` to ``sigmas[k]``; this holds when img2img strength skipped the first steps.
    """
    k = int(scheduler.step_index)
    s_now, s_next = float(scheduler.sigmas[k - 1]), float(scheduler.sigmas[k])
    x_prev = x_in[:, : x_next.shape[1]].to(x_next.dtype)  # the denoiser also sees references
    velocity = (x_next - x_prev) / (s_next - s_now)
    return x_next - s_next * velocity


class DenoiseTap:
    def __init__(
        self,
        *,
        progress: Progress,
        steps: int,
        partial_images: int,
        decode: Decoder,
        flow: bool,
        on_step: Callable[[], None],
        outputs: Sequence[tuple[Progress, int]] | None = None,
        hook_only: Any = None,
        target_tokens: int = 0,
    ) -> None:
        """``outputs``: where partial images go, as (progress, batch row) pairs; default the
        first image of the call to ``progress``. A batched call lists each request's first row
        and passes the group's progress (cancelled only when all members are).

        ``hook_only``: the pipeline, for pipelines that take no step callback; the latents of
        a finished step are then the first ``target_tokens`` tokens of the next denoiser
        input (``None`` = all of it)."""
        self.progress = progress
        self.outputs = list(outputs) if outputs is not None else [(progress, 0)]
        self.emit = preview_steps(steps, partial_images)
        self.decode = decode
        self.flow = flow
        self.on_step = on_step
        self._x_in: torch.Tensor | None = None
        self._kwargs: dict[str, Any] = {}
        self._broken = False
        self.steps_done = 0
        self._hook_pipe = hook_only
        self._target_tokens = target_tokens
        self._timestep: float | None = None

    @contextlib.contextmanager
    def watching(self, denoiser: torch.nn.Module, *, cache_context: bool = False) -> Iterator[DenoiseTap]:
        """Hooks on for one pipeline call. ``cache_context``: for pipelines that do not name a
        cache context around their denoiser calls themselves (FLUX.1-Kontext), without which
        diffusers' step caches refuse to run; only for single-pass (no true CFG) calls."""
        reset_step_cache(denoiser)
        handle = denoiser.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        try:
            if cache_context and getattr(denoiser, "is_cache_enabled", False):
                with denoiser.cache_context("cond"):  # type: ignore[operator]
                    yield self
            else:
                yield self
            if self._hook_pipe is not None and self._timestep is not None:
                self._step_end(self._hook_pipe, None)  # the last step: no later call sees it
        finally:
            handle.remove()

    def _before_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.progress.check()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if self._hook_pipe is not None:
            timestep = float(kwargs["timestep"].flatten()[0])
            if timestep == self._timestep:  # the same step's second (CFG) pass
                return None
            if self._timestep is not None and hidden is not None:
                latents = hidden[:, : self._target_tokens] if self._target_tokens else hidden
                self._step_end(self._hook_pipe, latents)
            self._timestep = timestep
        if self.emit:
            self._x_in = hidden
            self._kwargs = kwargs
        return None

    def __call__(self, pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self._step_end(pipe, tensors["latents"])
        return tensors

    def _step_end(self, pipe: Any, latents: torch.Tensor | None) -> None:
        self.steps_done += 1
        self.on_step()
        self.progress.check()
        if latents is not None and self.steps_done in self.emit and not self._broken:
            self._publish(pipe, latents)

    def _publish(self, pipe: Any, latents: torch.Tensor) -> None:
        for progress, row in self.outputs:
            if progress.cancelled:
                continue
            try:
                x = latents[row : row + 1]
                if self.flow and self._x_in is not None:
                    x = flow_x0(pipe.scheduler, x, self._x_in[row : row + 1])
                image = self.decode(x, self._kwargs)
            except Cancelled:
                raise
            except Exception:  # a preview must never cost the client its edit
                log.exception("partial image decode failed; no more partials for this job")
                self._broken = True
                return
            progress.partial(image)


def reset_step_cache(denoiser: Any) -> None:
    """Clear diffusers' step-cache state (first-block / TaylorSeer hooks). Pipelines reset it
    only at the end of a call that completes (``maybe_free_model_hooks``): after a cancelled
    or failed request the next request's first steps would be compared with, or predicted from,
    someone else's latents."""
    if getattr(denoiser, "is_cache_enabled", False):
        denoiser._reset_stateful_cache()


def to_rgb8(decoded: torch.Tensor) -> Pixels:
    """A VAE's (1, 3, H, W) output in [-1, 1] as an H x W x 3 uint8 array."""
    x = (decoded[0].float().clamp(-1, 1) + 1) * 127.5
    return np.ascontiguousarray(x.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def _pool(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool the last two (spatial) dimensions, keeping at least 1x1."""
    if factor <= 1:
        return latents
    h, w = latents.shape[-2:]
    factor = min(factor, h, w)
    lead = latents.shape[:-2]
    flat = latents.reshape(-1, 1, h, w).float()
    pooled = F.avg_pool2d(flat, factor)
    return pooled.reshape(*lead, *pooled.shape[-2:]).to(latents.dtype)


def klein_decoder(pipe: Any, size: tuple[int, int], downscale: int) -> Decoder:
    """FLUX.2 latents: packed tokens (1, h*w, C*4), row-major -> unpatchify -> VAE."""
    width, height = size

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        h = height // (pipe.vae_scale_factor * 2)
        w = width // (pipe.vae_scale_factor * 2)
        grid = x.transpose(1, 2).reshape(1, x.shape[2], h, w)
        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        grid = grid * std.to(grid.device, grid.dtype) + mean
        latents = _pool(pipe._unpatchify_latents(grid), downscale)
        return to_rgb8(vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0])

    return decode


def kontext_decoder(pipe: Any, size: tuple[int, int], downscale: int) -> Decoder:
    """FLUX.1 latents: packed 2x2 patches -> unpack -> undo scaling and shift -> VAE."""
    width, height = size

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        vae = pipe.vae
        latents = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        latents = _pool(latents, downscale)
        return to_rgb8(vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0])

    return decode


def qwen_decoder(pipe: Any, downscale: int) -> Decoder:
    """Qwen-Image latents: packed 2x2 patches, grid read from the transformer's ``img_shapes``
    (the inpaint pipeline chooses its own size) -> de-normalise -> the video VAE, frame 0."""

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        _, h, w = kwargs["img_shapes"][0][0]
        factor = pipe.vae_scale_factor
        latents = pipe._unpack_latents(x, h * factor * 2, w * factor * 2, factor)
        vae = pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
        latents = latents * std.to(latents) + mean.to(latents)
        latents = _pool(latents, downscale)
        decoded = vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
        return to_rgb8(decoded[:, :, 0])

    return decode


def joy_decoder(pipe: Any, downscale: int) -> Decoder:
    """JoyImage latents ``(B, items, C, T, h, w)``: the last item is the target (the first
    holds the reference) -> de-normalise -> the Wan VAE, frame 0."""

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        latents = pipe.denormalize_latents(x[:, -1])
        latents = _pool(latents, downscale)
        vae = pipe.vae
        decoded = vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
        return to_rgb8(decoded[:, :, 0])

    return decode


def qwen21_decoder(pipe: Any, size: tuple[int, int], downscale: int) -> Decoder:
    """Qwen-Image-2.1 latents: unpatched tokens (1, h*w, C), row-major -> de-normalise -> the
    RGBA VAE, frame 0; the preview shows the colour channels."""
    width, height = size

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        latents = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
        vae = pipe.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1)
        latents = _pool(latents * std.to(latents) + mean.to(latents), downscale)
        decoded = vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
        return to_rgb8(decoded[:, :3, 0])

    return decode


def sd_decoder(pipe: Any, downscale: int) -> Decoder:
    """Stable Diffusion: the current (noisy) latents, unscaled, through the VAE."""

    def decode(x: torch.Tensor, kwargs: dict[str, Any]) -> Pixels:
        vae = pipe.vae
        latents = _pool(x / vae.config.scaling_factor, downscale)
        return to_rgb8(vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0])

    return decode
