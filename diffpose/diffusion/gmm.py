"""Gaussian mixtures over poses: the initial distribution H_K and the GMM-based forward noise of DiffPose.

A :class:`GaussianMixture` holds, for every element of a batch (typically ``(B, J)``: one mixture per sample
and joint), ``M`` diagonal Gaussian kernels over ``C`` coordinates. DiffPose builds H_K from the 2D detector's
per-joint mixture (image-plane uncertainty) and a per-joint depth prior fitted on the training split
(:class:`DepthPrior`, :func:`initial_distribution`); the forward process then moves a clean pose towards a
kernel drawn from that mixture (:func:`gmm_q_sample`, see :mod:`diffpose.diffusion.schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffpose.data.skeleton import NUM_JOINTS, ROOT
from diffpose.diffusion.schedule import Schedule, Step

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Per-element mixtures of diagonal Gaussians.

    pi     (..., M)     kernel weights, non-negative, summing to 1 over M
    mu     (..., M, C)  kernel means
    sigma  (..., M, C)  kernel standard deviations (diagonal covariance ``sigma**2``)

    ``...`` is the batch shape (e.g. ``(B, J)``). The density of one element is
    ``p(x) = sum_m pi_m prod_c N(x_c; mu_mc, sigma_mc^2)``.
    """

    pi: Tensor
    mu: Tensor
    sigma: Tensor

    def __post_init__(self) -> None:
        if self.mu.ndim < 2 or self.mu.shape != self.sigma.shape or self.pi.shape != self.mu.shape[:-1]:
            raise ValueError(
                "GaussianMixture: need pi (..., M), mu and sigma (..., M, C); "
                f"got pi {tuple(self.pi.shape)}, "
                f"mu {tuple(self.mu.shape)}, sigma {tuple(self.sigma.shape)}"
            )

    @property
    def batch_shape(self) -> torch.Size:
        return self.pi.shape[:-1]

    @property
    def kernels(self) -> int:
        return self.pi.shape[-1]

    @property
    def dim(self) -> int:
        return self.mu.shape[-1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianMixture:
        return GaussianMixture(*(v.to(device=device, dtype=dtype) for v in (self.pi, self.mu, self.sigma)))

    def choose(self, generator: torch.Generator | None = None, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """Kernel indices, long ``(*sample_shape, ...)``: ``m`` with probability ``pi_m``, per element.

        One uniform ``u`` per element, ``m = #{k : F_k <= u}`` with the cumulative weights ``F``
        (renormalised so ``F_{M-1} = 1``); zero-weight kernels are never chosen.
        """
        cdf = self.pi.to(torch.float64).cumsum(-1)
        cdf = cdf / cdf[..., -1:]
        u = torch.rand(
            (*sample_shape, *self.batch_shape, 1),
            generator=generator,
            dtype=torch.float64,
            device=self.pi.device,
        )
        return (cdf <= u).sum(-1).clamp(max=self.kernels - 1)

    def pick(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma)`` of the chosen kernels, each ``(*index.shape, C)``; ``index`` is ``(*S, ...)``."""
        lead = tuple(index.shape)
        if lead[len(lead) - len(self.batch_shape) :] != tuple(self.batch_shape):
            raise ValueError(f"pick: index shape {lead} does not end with the batch shape {tuple(self.batch_shape)}")
        at = index[..., None, None].expand(*lead, 1, self.dim)
        mu = self.mu.expand(*lead, self.kernels, self.dim).gather(-2, at).squeeze(-2)
        sigma = self.sigma.expand(*lead, self.kernels, self.dim).gather(-2, at).squeeze(-2)
        return mu, sigma

    def sample(
        self, generator: torch.Generator | None = None, sample_shape: tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draws ``(x, mu, sigma)``, each ``(*sample_shape, ..., C)``: ``x = mu + sigma * eps``.

        One kernel per element; ``mu`` and ``sigma`` are the drawn kernel's (the frame the forward and reverse
        processes whiten in).
        """
        mu, sigma = self.pick(self.choose(generator, sample_shape))
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + sigma * eps, mu, sigma

    def mean(self) -> Tensor:
        """``E[x] = sum_m pi_m mu_m``, ``(..., C)``."""
        return (self.pi[..., None] * self.mu).sum(-2)

    def covariance(self) -> Tensor:
        """Diagonal of the mixture covariance, ``(..., C)``: ``sum_m pi_m (sigma_m^2 + mu_m^2) - E[x]^2``.

        The off-diagonal terms (non-zero when the kernel means differ) are not returned.
        """
        second = (self.pi[..., None] * (self.sigma**2 + self.mu**2)).sum(-2)
        return second - self.mean() ** 2

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)``, ``x (..., C)`` broadcastable against the batch shape; returns ``(...)``."""
        z = (x[..., None, :] - self.mu) / self.sigma
        log_kernel = -0.5 * (z**2 + LOG_2PI).sum(-1) - self.sigma.log().sum(-1)  # (..., M)
        return torch.logsumexp(self.pi.log() + log_kernel, dim=-1)

    def top(self, m: int) -> GaussianMixture:
        """The ``m`` heaviest kernels per element, weights renormalised to sum to 1."""
        if not 1 <= m <= self.kernels:
            raise ValueError(f"top: m must be in [1, {self.kernels}], got {m}")
        pi, index = self.pi.topk(m, dim=-1)
        at = index[..., None].expand(*index.shape, self.dim)
        return GaussianMixture(pi / pi.sum(-1, keepdim=True), self.mu.gather(-2, at), self.sigma.gather(-2, at))


def standard_normal(
    shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> GaussianMixture:
    """The one-kernel mixture N(0, I) over ``shape = (..., C)`` (the "no heatmap init" variant); no copies."""
    *batch, c = shape
    one = torch.ones((), dtype=dtype, device=device)
    return GaussianMixture(
        one.expand(*batch, 1),
        torch.zeros((), dtype=dtype, device=device).expand(*batch, 1, c),
        one.expand(*batch, 1, c),
    )


def _draw_index(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``weights (B, N)``, with probability proportional to the weight (inverse CDF)."""
    cdf = weights.cumsum(-1)
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=weights.shape[1] - 1)


def _kmeans_pp(x: Tensor, kernels: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeds ``(B, M, C)`` for ``x (B, N, C)``: each next seed drawn with probability ~ D(x)^2."""
    b, n, _ = x.shape
    rows = torch.arange(b, device=x.device)
    first = _draw_index(torch.ones(b, n, dtype=x.dtype, device=x.device), generator)
    seeds = [x[rows, first]]  # (B, C) each
    d2 = ((x - seeds[0][:, None]) ** 2).sum(-1)  # (B, N)
    for _ in range(1, kernels):
        seeds.append(x[rows, _draw_index(d2, generator)])
        d2 = torch.minimum(d2, ((x - seeds[-1][:, None]) ** 2).sum(-1))
    return torch.stack(seeds, dim=1)


def fit_gmm(
    x: Tensor,
    kernels: int,
    iters: int = 100,
    generator: torch.Generator | None = None,
    min_sigma: float = 1e-4,
    tol: float = 1e-6,
) -> GaussianMixture:
    """Maximum likelihood diagonal GMM by EM over a batch: ``x (..., N, C)`` -> mixture over ``...``.

    Seeds by k-means++ (so the result is a function of ``x`` and the generator's state), then iterates
        r_nm  = pi_m N(x_n; mu_m, sigma_m^2) / sum_k pi_k N(x_n; mu_k, sigma_k^2)
        pi_m  = sum_n r_nm / N,   mu_m = sum_n r_nm x_n / sum_n r_nm,
        sigma_m^2 = max(sum_n r_nm (x_n - mu_m)^2 / sum_n r_nm, min_sigma^2)
    for ``iters`` rounds or until the mean log-likelihood gains less than ``tol``. Works in float64; the
    mixture comes back in ``x``'s dtype: pi ``(..., M)``, mu and sigma ``(..., M, C)``. A kernel that loses
    all its points keeps its previous mean and sigma, with weight 0.
    """
    if x.ndim < 2 or x.shape[-2] < kernels:
        raise ValueError(f"fit_gmm: need x (..., N, C) with N >= kernels={kernels}, got {tuple(x.shape)}")
    *batch, n, c = x.shape
    data = x.to(torch.float64).reshape(-1, n, c)  # (B, N, C)
    mu = _kmeans_pp(data, kernels, generator)  # (B, M, C)
    sigma = data.std(dim=1, keepdim=True).clamp(min=min_sigma).expand_as(mu).clone()
    log_pi = torch.full(mu.shape[:2], -math.log(kernels), dtype=torch.float64, device=x.device)
    last = -math.inf
    squares = data**2
    for _ in range(iters):
        # sum_c (x_c - mu_mc)^2 / sigma_mc^2 expanded into matrix products, never forming (B, N, M, C).
        precision = sigma**-2  # (B, M, C)
        mahalanobis = (
            squares @ precision.mT - 2.0 * data @ (mu * precision).mT + (mu**2 * precision).sum(-1)[:, None]
        )  # (B, N, M)
        log_kernel = -0.5 * (mahalanobis + c * LOG_2PI) - sigma.log().sum(-1)[:, None]
        log_joint = log_pi[:, None] + log_kernel
        peak = log_joint.amax(-1, keepdim=True)
        r = (log_joint - peak).exp()
        total = r.sum(-1, keepdim=True)
        r = r / total  # responsibilities (B, N, M); one exp instead of logsumexp's two
        log_lik = peak + total.log()  # (B, N, 1)
        mass = r.sum(1)  # (B, M)
        alive = (mass > 1e-8)[..., None]
        safe = mass.clamp(min=1e-8)[..., None]
        new_mu = r.mT @ data / safe  # (B, M, C)
        new_var = r.mT @ squares / safe - new_mu**2
        mu = torch.where(alive, new_mu, mu)
        sigma = torch.where(alive, new_var.clamp(min=min_sigma**2).sqrt(), sigma)
        log_pi = (mass / n).clamp(min=1e-300).log()
        ll = log_lik.mean().item()
        if ll - last < tol:
            break
        last = ll
    pi = log_pi.exp()
    pi = pi / pi.sum(-1, keepdim=True)
    return GaussianMixture(
        pi.reshape(*batch, kernels).to(x.dtype),
        mu.reshape(*batch, kernels, c).to(x.dtype),
        sigma.reshape(*batch, kernels, c).to(x.dtype),
    )


@dataclass(frozen=True, eq=False)
class DepthPrior:
    """What H_K takes from the training split, in the diffusion space's unit.

    weights  (J, D)  per-joint depth-kernel weights
    mu       (J, D)  root-relative depth means
    sigma    (J, D)  root-relative depth standard deviations
    xy_scale ()      maps root-relative normalised 2D offsets (u - u_root, v - v_root) to root-relative 3D
                     (x, y): ``x ~ xy_scale * (u - u_root)`` (a weak-perspective depth / focal ratio)
    root     int     the root joint
    """

    weights: Tensor
    mu: Tensor
    sigma: Tensor
    xy_scale: Tensor
    root: int = ROOT

    @property
    def kernels(self) -> int:
        return self.weights.shape[-1]

    @property
    def joints(self) -> int:
        return self.weights.shape[0]

    @classmethod
    def empty(
        cls, kernels: int, joints: int = NUM_JOINTS, root: int = ROOT, dtype: torch.dtype = torch.float32
    ) -> DepthPrior:
        """A placeholder with a fitted prior's shapes (equal weights, depth N(0, 1), ``xy_scale = 1``).

        For registering buffers before :meth:`fit` runs; ``state_dict()`` has the same keys and shapes.
        """
        return cls(
            torch.full((joints, kernels), 1.0 / kernels, dtype=dtype),
            torch.zeros(joints, kernels, dtype=dtype),
            torch.ones(joints, kernels, dtype=dtype),
            torch.ones((), dtype=dtype),
            root,
        )

    @classmethod
    def fit(
        cls,
        pose_2d: Tensor,
        pose_3d: Tensor,
        kernels: int = 5,
        generator: torch.Generator | None = None,
        iters: int = 100,
        max_samples: int | None = 50_000,
        root: int = ROOT,
        min_sigma: float = 1e-4,
    ) -> DepthPrior:
        """Fit on training poses: ``pose_2d (N, J, 2)`` normalised screen units, ``pose_3d (N, J, 3)``.

        Both are made root-relative here. ``xy_scale = sum(du * dxy) / sum(du^2)`` over all poses, joints and
        both axes (least squares through the origin). The depth GMM is :func:`fit_gmm` per joint on the
        root-relative z of at most ``max_samples`` poses drawn without replacement by ``generator``. The
        root's depth is identically 0, so its kernels collapse to ``min_sigma``
        (:func:`initial_distribution` sets the root apart anyway).
        """
        if pose_2d.ndim != 3 or pose_2d.shape[-1] != 2 or pose_3d.shape != (*pose_2d.shape[:2], 3):
            raise ValueError(
                f"DepthPrior.fit: need pose_2d (N, J, 2) and pose_3d (N, J, 3), got "
                f"{tuple(pose_2d.shape)}, {tuple(pose_3d.shape)}"
            )
        uv = pose_2d.to(torch.float64)
        xyz = pose_3d.to(torch.float64)
        du = uv - uv[:, root : root + 1]  # (N, J, 2)
        dxyz = xyz - xyz[:, root : root + 1]  # (N, J, 3)
        xy_scale = (du * dxyz[..., :2]).sum() / (du**2).sum()
        z = dxyz[..., 2]  # (N, J)
        if max_samples is not None and z.shape[0] > max_samples:
            rows = torch.randperm(z.shape[0], generator=generator, device=z.device)[:max_samples]
            z = z[rows]
        depth = fit_gmm(z.T[..., None], kernels, iters, generator, min_sigma)  # batch (J,)
        dtype = pose_3d.dtype
        return cls(
            depth.pi.to(dtype),
            depth.mu[..., 0].to(dtype),
            depth.sigma[..., 0].to(dtype),
            xy_scale.to(dtype),
            root,
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {
            "weights": self.weights,
            "mu": self.mu,
            "sigma": self.sigma,
            "xy_scale": self.xy_scale,
            "root": torch.tensor(self.root),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> DepthPrior:
        return cls(state["weights"], state["mu"], state["sigma"], state["xy_scale"], int(state["root"]))


def initial_distribution(gmm_2d: Tensor, prior: DepthPrior, root_sigma: float = 1e-3) -> GaussianMixture:
    """H_K from 2D uncertainty: ``gmm_2d (..., J, M, 5)`` -> mixture over ``(..., J)``, M*D kernels, C=3.

    ``gmm_2d`` holds (pi, mu_u, mu_v, sigma_u, sigma_v) in normalised screen units (pixels through
    ``normalize_screen``; sigmas scale by ``2 / width``). Kernel ``(m, d)``, at index ``m * D + d``, has

        weight  pi_m * w_d
        mean    (s (mu_u_m - u_root), s (mu_v_m - v_root), z_d)
        sigma   (s sigma_u_m, s sigma_v_m, sz_d)

    with ``s = prior.xy_scale``, ``(w, z, sz)`` the joint's depth kernels and ``(u_root, v_root)`` the mean of
    the root joint's heaviest 2D kernel (the root's own 2D uncertainty is not propagated). The root joint is 0
    after root alignment: all its kernels have mean 0 and sigma ``root_sigma`` (small but positive, so that
    the whitened coordinates ``(x - mu) / sigma`` stay defined there).
    """
    *batch, j, m, five = gmm_2d.shape
    if five != 5 or j != prior.joints:
        raise ValueError(f"initial_distribution: need gmm_2d (..., {prior.joints}, M, 5), got {tuple(gmm_2d.shape)}")
    d = prior.kernels
    like = dict(dtype=gmm_2d.dtype, device=gmm_2d.device)
    s = prior.xy_scale.to(**like)
    w, z, sz = (v.to(**like) for v in (prior.weights, prior.mu, prior.sigma))  # (J, D)
    pi_2d, mean_uv, sigma_uv = (
        gmm_2d[..., 0],
        gmm_2d[..., 1:3],
        gmm_2d[..., 3:5],
    )  # (..., J, M), (..., J, M, 2)

    heaviest = pi_2d[..., prior.root, :].argmax(-1)  # (...)
    at = heaviest[..., None, None].expand(*batch, 1, 2)
    uv_root = mean_uv[..., prior.root, :, :].gather(-2, at)  # (..., 1, 2)
    xy = s * (mean_uv - uv_root[..., None, :, :])  # (..., J, M, 2)
    sxy = s * sigma_uv

    grid = (*batch, j, m, d)
    pi = pi_2d[..., None] * w[:, None, :]  # (..., J, M, D)
    mu = torch.cat([xy[..., None, :].expand(*grid, 2), z[:, None, :, None].expand(*grid, 1)], dim=-1)
    sigma = torch.cat([sxy[..., None, :].expand(*grid, 2), sz[:, None, :, None].expand(*grid, 1)], dim=-1)
    is_root = (torch.arange(j, device=gmm_2d.device) == prior.root)[:, None, None, None]  # (J, 1, 1, 1)
    mu = torch.where(is_root, torch.zeros((), **like), mu)
    sigma = torch.where(is_root, torch.full((), root_sigma, **like), sigma)
    return GaussianMixture(
        pi.reshape(*batch, j, m * d), mu.reshape(*batch, j, m * d, 3), sigma.reshape(*batch, j, m * d, 3)
    )


def gmm_q_sample(
    schedule: Schedule,
    x0: Tensor,
    t: Step,
    mixture: GaussianMixture,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GMM-based forward diffusion: ``(x_t, eps, mu, sigma)``, each shaped like ``x0 (..., C)``.

    Draws a kernel per element from ``mixture`` (whose batch shape must end ``x0.shape[:-1]``'s; leading
    dims of ``x0`` get independent draws), then
        x_t = sqrt(abar_t) x_0 + (1 - sqrt(abar_t)) mu + sqrt(1 - abar_t) sigma eps,  eps ~ N(0, I).
    ``eps`` is the whitened noise (target for ``predict="eps"``; ``sigma * eps`` for ``predict="noise"``).
    """
    batch = tuple(mixture.batch_shape)
    lead = tuple(x0.shape[:-1])
    if x0.shape[-1] != mixture.dim or lead[len(lead) - len(batch) :] != batch:
        raise ValueError(f"gmm_q_sample: x0 {tuple(x0.shape)} does not end with the mixture's {(*batch, mixture.dim)}")
    mu, sigma = mixture.pick(mixture.choose(generator, lead[: len(lead) - len(batch)]))
    mu, sigma = mu.to(x0.dtype), sigma.to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return schedule.q_sample(x0, t, eps, mu, sigma), eps, mu, sigma
