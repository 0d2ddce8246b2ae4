"""Noise schedules and the closed-form maths of the (GMM-shifted) forward and DDIM reverse processes.

The diffused variable ``x`` is a pose tensor ``(..., J, C)``. The forward process carries a mean shift ``mu``
and a per-element noise scale ``sigma`` (a diagonal covariance ``sigma**2``), both broadcastable to ``x``:

    q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0 + (1 - sqrt(abar_t)) mu, (1 - abar_t) sigma^2),
    abar_t = prod_{s <= t} (1 - beta_s),  t = 0 .. T-1.

``mu = 0, sigma = 1`` is plain DDPM; a kernel ``(mu, sigma)`` of a Gaussian mixture drawn per element makes
``x_{T-1}`` distributed like the mixture (abar_{T-1} ~ 0): the GMM-based forward diffusion of DiffPose. In the
whitened coordinates ``y = (x - mu) / sigma`` it is the standard process ``y_t = sqrt(abar_t) y_0 +
sqrt(1 - abar_t) eps``, and the reverse step below is DDIM (Song et al. 2021) in ``y``, written back in ``x``.

Coefficients are precomputed once in float64 and cast to ``x``'s dtype and device when used. The scheduler
never sees the model: it takes the model's output and says what it means (``predict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Step = int | Tensor
Predict = Literal["eps", "noise", "x0"]
PREDICTIONS = ("eps", "noise", "x0")
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def beta_schedule(kind: str, steps: int, beta_start: float = 1e-4, beta_end: float = 1e-3) -> Tensor:
    """Per-step noise variances ``beta_t``, float64 ``(steps,)``.

    linear: ``beta_t = linspace(beta_start, beta_end, steps)`` (the released DiffPose code: 1e-4 .. 1e-3 over
            51 steps).
    cosine: Nichol & Dhariwal 2021, ``abar(t) = f(t) / f(0)``,
            ``f(t) = cos^2(((t / T) + s) / (1 + s) * pi/2)``, ``s = 0.008``,
            ``beta_t = min(1 - abar(t+1) / abar(t), 0.999)``; ``beta_start``/``beta_end`` are not used.
    """
    if steps < 1:
        raise ValueError(f"beta_schedule: steps must be >= 1, got {steps}")
    if kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"beta_schedule: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
            )
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if kind == "cosine":
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((s + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * (math.pi / 2.0)) ** 2
        return (1.0 - f[1:] / f[:-1]).clamp(max=COSINE_MAX_BETA)
    raise ValueError(f"beta_schedule: unknown kind {kind!r} (expected 'linear' or 'cosine')")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A fixed noise schedule: ``betas`` float64 ``(T,)`` and the float64 tables derived from it.

    ``alphas_bar[t] = prod_{s <= t} (1 - betas[s])``. Timesteps are 0-based (``0 .. T-1``); ``t = -1`` in
    :meth:`ddim_step` means "the clean pose", ``abar_{-1} = 1``.
    """

    betas: Tensor
    alphas_bar: Tensor = field(init=False)
    _abar_ext: Tensor = field(init=False, repr=False)  # (T+1,): abar_{-1} = 1, abar_0, ..., abar_{T-1}

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"Schedule: betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("Schedule: every beta must lie in (0, 1)")
        abar = torch.cumprod(1.0 - betas, dim=0)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_bar", abar)
        object.__setattr__(self, "_abar_ext", torch.cat([abar.new_ones(1), abar]))

    @classmethod
    def make(
        cls, kind: str = "linear", steps: int = 51, beta_start: float = 1e-4, beta_end: float = 1e-3
    ) -> Schedule:
        """The schedule of :func:`beta_schedule`; the defaults are the released DiffPose code's."""
        return cls(beta_schedule(kind, steps, beta_start, beta_end))

    @property
    def steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.betas.numel()

    def abar(self, t: Step, like: Tensor) -> Tensor:
        """``abar_t`` in ``like``'s dtype and device, shaped to broadcast against ``like``.

        ``t`` is an int (a scalar coefficient) or a long tensor ``(B,)`` (one step per leading row of
        ``like``, shaped ``(B, 1, ..., 1)``). ``t = -1`` gives 1.
        """
        if isinstance(t, int):
            if not -1 <= t < self.steps:
                raise ValueError(f"timestep {t} outside [-1, {self.steps - 1}]")
            return torch.tensor(self._abar_ext[t + 1].item(), dtype=like.dtype, device=like.device)
        t = torch.as_tensor(t)
        a = self._abar_ext.to(t.device)[t.long() + 1]
        if a.ndim == 1:
            a = a.reshape(a.shape + (1,) * (like.ndim - 1))
        return a.to(dtype=like.dtype, device=like.device)

    def q_sample(
        self, x0: Tensor, t: Step, eps: Tensor, mu: Tensor | float = 0.0, sigma: Tensor | float = 1.0
    ) -> Tensor:
        """Draw from ``q(x_t | x_0)`` given whitened noise ``eps ~ N(0, I)`` (same shape as ``x0``):

        x_t = sqrt(abar_t) x_0 + (1 - sqrt(abar_t)) mu + sqrt(1 - abar_t) sigma eps
        """
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1.0 - a.sqrt()) * mu + (1.0 - a).sqrt() * sigma * eps

    def predict_x0(
        self, x_t: Tensor, t: Step, eps: Tensor, mu: Tensor | float = 0.0, sigma: Tensor | float = 1.0
    ) -> Tensor:
        """Invert :meth:`q_sample` for ``x_0`` (no division by ``sigma``):

        x_0 = (x_t - (1 - sqrt(abar_t)) mu - sqrt(1 - abar_t) sigma eps) / sqrt(abar_t)
        """
        a = self.abar(t, x_t)
        return (x_t - (1.0 - a.sqrt()) * mu - (1.0 - a).sqrt() * sigma * eps) / a.sqrt()

    def predict_eps(
        self, x_t: Tensor, t: Step, x0: Tensor, mu: Tensor | float = 0.0, sigma: Tensor | float = 1.0
    ) -> Tensor:
        """Invert :meth:`q_sample` for the whitened noise (needs ``sigma > 0`` and ``t >= 0``):

        eps = (x_t - sqrt(abar_t) x_0 - (1 - sqrt(abar_t)) mu) / (sqrt(1 - abar_t) sigma)
        """
        a = self.abar(t, x_t)
        return (x_t - a.sqrt() * x0 - (1.0 - a.sqrt()) * mu) / ((1.0 - a).sqrt() * sigma)

    def split(
        self,
        x_t: Tensor,
        t: Step,
        model_out: Tensor,
        mu: Tensor | float = 0.0,
        sigma: Tensor | float = 1.0,
        predict: Predict = "eps",
    ) -> tuple[Tensor, Tensor]:
        """``(x0_hat, noise_hat)`` from a model output; ``noise_hat = sigma * eps_hat``, the noise in x units.

        predict = "eps":   the output is the whitened noise ``eps`` (N(0, I) under q).
        predict = "noise": the output is ``sigma * eps`` (the released code's training target, noise scaled by
                           the 2D kernel's sigma).
        predict = "x0":    the output is ``x_0``, and
                           noise_hat = (x_t - sqrt(abar_t) x_0 - (1 - sqrt(abar_t)) mu) / sqrt(1 - abar_t).
        None of the three divides by ``sigma``.
        """
        if predict == "eps":
            return self.predict_x0(x_t, t, model_out, mu, sigma), sigma * model_out
        if predict == "noise":
            return self.predict_x0(x_t, t, model_out, mu, 1.0), model_out
        if predict == "x0":
            a = self.abar(t, x_t)
            return model_out, (x_t - a.sqrt() * model_out - (1.0 - a.sqrt()) * mu) / (1.0 - a).sqrt()
        raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")

    def ddim_step(
        self,
        x_t: Tensor,
        t: Step,
        t_prev: Step,
        model_out: Tensor,
        eta: float = 0.0,
        noise: Tensor | None = None,
        mu: Tensor | float = 0.0,
        sigma: Tensor | float = 1.0,
        predict: Predict = "eps",
    ) -> Tensor:
        """One DDIM update ``x_t -> x_{t_prev}`` (Song et al. 2021, eq. 12), in whitened coordinates:

            y0 = (y_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
            c  = eta * sqrt((1 - abar_p) / (1 - abar_t)) * sqrt(1 - abar_t / abar_p)
            y_p = sqrt(abar_p) y0 + sqrt(1 - abar_p - c^2) eps + c z,   z ~ N(0, I)  (``noise``)

        written back in x (``x = mu + sigma y``):

            x_p = sqrt(abar_p) x0 + (1 - sqrt(abar_p)) mu + sqrt(1 - abar_p - c^2) sigma eps + c sigma z

        ``eta = 0`` is deterministic; ``eta = 1`` is the DDPM posterior variance. ``t_prev = -1`` (abar = 1)
        returns ``x0_hat``. ``noise`` (whitened, shape of ``x_t``) is required when ``eta > 0``; the caller
        draws it so that the scheduler owns no random state. No clipping of ``x0_hat``.
        """
        if isinstance(t, int) and isinstance(t_prev, int) and not t_prev < t:
            raise ValueError(f"ddim_step: t_prev ({t_prev}) must be < t ({t})")
        if eta < 0:
            raise ValueError(f"ddim_step: eta must be >= 0, got {eta}")
        x0, noise_hat = self.split(x_t, t, model_out, mu, sigma, predict)
        a_t = self.abar(t, x_t)
        a_p = self.abar(t_prev, x_t)
        c = eta * ((1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p)).clamp(min=0.0).sqrt()
        x_p = a_p.sqrt() * x0 + (1.0 - a_p.sqrt()) * mu + (1.0 - a_p - c**2).clamp(min=0.0).sqrt() * noise_hat
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step: eta > 0 needs noise (whitened N(0, I), shape of x_t)")
            x_p = x_p + c * sigma * noise
        return x_p

    def ddim_timesteps(self, k: int, t_start: int | None = None) -> list[int]:
        """The K timesteps a K-call DDIM sampler visits, from ``t_start`` (default T-1) down to 0.

        ``t_i = floor(t_start * (K - 1 - i) / (K - 1))`` for ``i = 0 .. K-1``: evenly spaced (floor of a
        linspace), always starting at ``t_start`` and ending at 0 (so the last call maps ``t = 0`` to the
        clean pose, as the released code's ``[12, 0]`` does); ``K = 1`` gives ``[t_start]``. With
        ``t_start / (K - 1) >= 1`` the steps are distinct; ``K > t_start + 1`` raises ``ValueError``. Unlike
        improved-diffusion's ``space_timesteps`` no betas are respaced: DDIM uses ``abar`` of the kept steps
        directly.
        """
        t_start = self.steps - 1 if t_start is None else t_start
        if not 0 <= t_start < self.steps:
            raise ValueError(f"ddim_timesteps: t_start {t_start} outside [0, {self.steps - 1}]")
        if k < 1:
            raise ValueError(f"ddim_timesteps: need at least 1 step, got {k}")
        if k > t_start + 1:
            raise ValueError(
                f"ddim_timesteps: {k} steps asked but only {t_start + 1} timesteps lie in [0, {t_start}]"
            )
        if k == 1:
            return [t_start]
        return [t_start * (k - 1 - i) // (k - 1) for i in range(k)]

    def sample_timesteps(
        self,
        n: int,
        generator: torch.Generator | None = None,
        antithetic: bool = True,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training timesteps, long ``(n,)``, uniform on ``0 .. T-1``.

        ``antithetic``: draw ``n // 2 + 1`` steps ``t`` and pair each with ``T - 1 - t`` (the released code's
        variance reduction), keeping the first ``n``. Drawn on the generator's device, moved to ``device``.
        """
        where = generator.device if generator is not None else "cpu"
        if not antithetic:
            t = torch.randint(0, self.steps, (n,), generator=generator, device=where)
        else:
            half = torch.randint(0, self.steps, (n // 2 + 1,), generator=generator, device=where)
            t = torch.cat([half, self.steps - 1 - half])[:n]
        return t.to(device) if device is not None else t
