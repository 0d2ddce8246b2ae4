"""The reverse process: K DDIM steps from H_K (or from a given pose) to N hypotheses of the clean pose.

Model-agnostic: the denoiser is any callable ``denoise(x_t (N, J, C), t (N,) long) -> (N, J, C)`` that
closes over its own conditioning. All hypotheses go through one call per step as a batch of ``H * B`` rows,
hypothesis-major: row ``h * B + b`` is hypothesis ``h`` of sample ``b``, so a conditioning tensor ``(B, ...)``
lines up after ``context.repeat(H, 1, ...)`` (``torch.Tensor.repeat``, not ``repeat_interleave``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffpose.diffusion.gmm import GaussianMixture
from diffpose.diffusion.schedule import Predict, Schedule

Denoiser = Callable[[Tensor, Tensor], Tensor]


def sample(
    denoise: Denoiser,
    schedule: Schedule,
    *,
    steps: int,
    hypotheses: int = 1,
    init: GaussianMixture | None = None,
    start: Tensor | None = None,
    t_start: int | None = None,
    eta: float = 0.0,
    predict: Predict = "eps",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``H`` reverse-process samples of the clean pose, ``(H, B, J, C)``, from ``steps`` denoiser calls.

    Start (at ``t_start``, default T-1; the visited steps are ``schedule.ddim_timesteps(steps, t_start)``):
    - ``init`` only: a kernel ``(mu, sigma)`` of ``init`` (batch shape ``(B, J)``) is drawn per hypothesis,
      sample and joint and ``x_{t_start} = mu + sigma * eps``. The same ``(mu, sigma)`` is the whitening frame
      of every reverse step of that path (the paper's method; ``init = standard_normal(...)`` is plain DDIM).
      For ``t_start < T-1`` the draw is still from ``init`` itself, not from ``q(x_{t_start})``.
    - ``start (B, J, C)``: ``x_{t_start} = start`` with no noise added (the released code's refiner: the
      context encoder's pose, e.g. ``t_start = 12`` of 51 for CPN), in the frame ``mu = 0, sigma = 1`` unless
      ``init`` is also given, in which case its drawn kernel supplies ``(mu, sigma)``.
    Each step ``t -> t_prev`` is :meth:`Schedule.ddim_step` (the last one to ``t_prev = -1``, the clean pose).
    With ``eta = 0`` and ``start`` without ``init`` nothing random is drawn and all hypotheses coincide.
    Gradients are not switched off here: call it under ``torch.inference_mode()`` at evaluation.
    """
    if init is None and start is None:
        raise ValueError("sample: give init (a GaussianMixture), start (a pose tensor), or both")
    if hypotheses < 1:
        raise ValueError(f"sample: hypotheses must be >= 1, got {hypotheses}")
    timesteps = schedule.ddim_timesteps(steps, t_start)
    if init is not None:
        if init.pi.ndim != 3:
            raise ValueError(f"sample: init must have batch shape (B, J), got {tuple(init.batch_shape)}")
        mu, sigma = init.pick(init.choose(generator, (hypotheses,)))  # (H, B, J, C) each
    if start is None:
        x = mu + sigma * torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    else:
        x = start.expand(hypotheses, *start.shape).clone()  # (H, B, J, C)
        if init is None:
            mu, sigma = 0.0, 1.0
        elif tuple(start.shape) != (*init.batch_shape, init.dim):
            raise ValueError(
                f"sample: start {tuple(start.shape)} does not match init's {(*init.batch_shape, init.dim)}"
            )
        else:
            mu, sigma = mu.to(start.dtype), sigma.to(start.dtype)
    h, b, j, c = x.shape
    for t, t_prev in zip(timesteps, [*timesteps[1:], -1], strict=True):
        t_rows = torch.full((h * b,), t, dtype=torch.long, device=x.device)
        out = denoise(x.reshape(h * b, j, c), t_rows).reshape(h, b, j, c)
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = schedule.ddim_step(x, t, t_prev, out, eta, noise, mu, sigma, predict)
    return x

