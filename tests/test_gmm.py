from __future__ import annotations

import io
import math

import pytest
import torch

from diffpose.diffusion.gmm import (
    DepthPrior,
    GaussianMixture,
    fit_gmm,
    gmm_q_sample,
    initial_distribution,
    standard_normal,
)
from diffpose.diffusion.schedule import Schedule

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _two_kernels() -> GaussianMixture:
    """pi (0.3, 0.7); means (-2, 1), (3, -1); sigmas (0.5, 1.0), (1.5, 0.3); C = 2, batch ()."""
    return GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[-2.0, 1.0], [3.0, -1.0]], dtype=F64),
        torch.tensor([[0.5, 1.0], [1.5, 0.3]], dtype=F64),
    )


def test_kernel_frequencies_match_the_weights() -> None:
    n, pi = 100_000, torch.tensor([0.7, 0.2, 0.1])
    mixture = GaussianMixture(pi, torch.zeros(3, 1), torch.ones(3, 1))
    counts = torch.bincount(mixture.choose(_gen(0), (n,)), minlength=3).double()
    expected = n * pi.double()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    # Two degrees of freedom: P(chi2 > x) = exp(-x / 2); fail only below p = 1e-6.
    assert chi2 < -2 * math.log(1e-6)


def test_zero_weight_kernels_are_never_chosen() -> None:
    pi = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])  # batch (2,)
    mixture = GaussianMixture(pi, torch.zeros(2, 3, 1), torch.ones(2, 3, 1))
    k = mixture.choose(_gen(0), (5000,))  # (5000, 2)
    assert (k[:, 0] == 1).all()
    assert set(k[:, 1].unique().tolist()) == {0, 2}


def test_sample_returns_the_chosen_kernels_parameters() -> None:
    mixture = _two_kernels()
    x, mu, sigma = mixture.sample(_gen(0), (1000,))
    assert x.shape == mu.shape == sigma.shape == (1000, 2)
    first = (mu == mixture.mu[0]).all(-1)
    second = (mu == mixture.mu[1]).all(-1)
    assert (first ^ second).all()
    torch.testing.assert_close(sigma[first], mixture.sigma[0].expand(int(first.sum()), 2))
    torch.testing.assert_close(sigma[second], mixture.sigma[1].expand(int(second.sum()), 2))


def test_mean_covariance_log_prob_by_hand() -> None:
    mixture = GaussianMixture(
        torch.tensor([0.25, 0.75], dtype=F64),
        torch.tensor([[0.0], [4.0]], dtype=F64),
        torch.tensor([[1.0], [2.0]], dtype=F64),
    )
    assert mixture.mean().item() == pytest.approx(3.0)  # 0.75 * 4
    assert mixture.covariance().item() == pytest.approx(6.25)  # 0.25 * 1 + 0.75 * (4 + 16) - 9
    x = 1.0
    density = 0.25 * math.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) + 0.75 * math.exp(
        -0.5 * ((x - 4) / 2) ** 2
    ) / (2 * math.sqrt(2 * math.pi))
    assert mixture.log_prob(torch.tensor([x], dtype=F64)).item() == pytest.approx(
        math.log(density), rel=1e-12
    )
    assert standard_normal((2,), F64).log_prob(torch.zeros(2, dtype=F64)).item() == pytest.approx(
        -math.log(2 * math.pi)
    )


def test_top_keeps_the_heaviest_and_renormalises() -> None:
    mixture = GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[0.0], [1.0], [2.0]]),
        torch.tensor([[1.0], [2.0], [3.0]]),
    )
    top = mixture.top(2)
    torch.testing.assert_close(top.pi, torch.tensor([0.625, 0.375]))
    torch.testing.assert_close(top.mu, torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(top.sigma, torch.tensor([[2.0], [3.0]]))
    with pytest.raises(ValueError, match="top"):
        mixture.top(4)


def test_standard_normal_is_one_unit_kernel() -> None:
    mixture = standard_normal((4, 17, 3))
    assert mixture.batch_shape == (4, 17) and mixture.kernels == 1 and mixture.dim == 3
    torch.testing.assert_close(mixture.mean(), torch.zeros(4, 17, 3))
    torch.testing.assert_close(mixture.covariance(), torch.ones(4, 17, 3))


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="GaussianMixture"):
        GaussianMixture(torch.ones(3), torch.zeros(2, 1), torch.ones(2, 1))


def _moment_errors(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """|sample mean - mean| and |sample var - var| in standard errors, per coordinate (x: (N, C))."""
    n = x.shape[0]
    centred = x - x.mean(0)
    m2, m4 = (centred**2).mean(0), (centred**4).mean(0)
    se_mean = (m2 / n).sqrt()
    se_var = ((m4 - m2**2) / n).sqrt()
    return (x.mean(0) - mean).abs() / se_mean, (m2 - var).abs() / se_var


def test_gmm_forward_last_step_has_the_exact_moments() -> None:
    """Linear 1e-4 .. 0.02 over 1000 steps (abar_T ~ 4e-5): x_T matches its closed-form moments

    E[x_T] = a x0 + (1 - a) E[mu],  Var[x_T] = (1 - a)^2 Var[mu] + (1 - abar_T) E[sigma^2],  a = sqrt(abar_T),
    within 5 standard errors; those moments are the mixture's up to O(a).
    """
    schedule = Schedule.make("linear", 1000, 1e-4, 0.02)
    mixture = _two_kernels()
    n = 200_000
    x0 = torch.tensor([0.5, -0.25], dtype=F64).expand(n, 2)
    x_t, _, _, _ = gmm_q_sample(schedule, x0, 999, mixture, _gen(0))
    abar = schedule.alphas_bar[-1].item()
    a = math.sqrt(abar)
    pi = mixture.pi[:, None]
    mean_mu = (pi * mixture.mu).sum(0)
    var_mu = (pi * mixture.mu**2).sum(0) - mean_mu**2
    mean = a * x0[0] + (1 - a) * mean_mu
    var = (1 - a) ** 2 * var_mu + (1 - abar) * (pi * mixture.sigma**2).sum(0)
    err_mean, err_var = _moment_errors(x_t, mean, var)
    assert (err_mean < 5).all() and (err_var < 5).all()
    torch.testing.assert_close(mean, mixture.mean(), rtol=0, atol=2 * a * 3)
    torch.testing.assert_close(var, mixture.covariance(), rtol=3 * a, atol=0)


def test_gmm_forward_last_step_is_the_mixture() -> None:
    """Cosine over 1000 steps (abar_T ~ 2.4e-9): 200k draws of x_T match the mixture's mean and covariance."""
    schedule = Schedule.make("cosine", 1000)
    mixture = _two_kernels()
    n = 200_000
    x0 = torch.tensor([0.5, -0.25], dtype=F64).expand(n, 2)
    x_t, _, _, _ = gmm_q_sample(schedule, x0, 999, mixture, _gen(1))
    err_mean, err_var = _moment_errors(x_t, mixture.mean(), mixture.covariance())
    assert (err_mean < 5).all() and (err_var < 5).all()


def test_gmm_q_sample_per_element_kernels_invert() -> None:
    schedule = Schedule.make()
    b, j = 8, 17
    g = _gen(2)
    pi = torch.softmax(torch.randn(b, j, 3, generator=g, dtype=F64), -1)
    mixture = GaussianMixture(
        pi,
        torch.randn(b, j, 3, 3, generator=g, dtype=F64),
        0.1 + torch.rand(b, j, 3, 3, generator=g, dtype=F64),
    )
    x0 = torch.randn(b, j, 3, generator=g, dtype=F64)
    t = torch.arange(b) * 6
    x_t, eps, mu, sigma = gmm_q_sample(schedule, x0, t, mixture, g)
    assert x_t.shape == eps.shape == mu.shape == sigma.shape == (b, j, 3)
    is_kernel = (mu[:, :, None] == mixture.mu).all(-1) & (sigma[:, :, None] == mixture.sigma).all(
        -1
    )  # (B, J, M)
    assert (is_kernel.sum(-1) == 1).all()
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps, mu, sigma), x0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="gmm_q_sample"):
        gmm_q_sample(schedule, x0[:, :5], t, mixture, g)


def _draw_1d(
    n: int, pi: list[float], mu: list[float], sigma: list[float], g: torch.Generator
) -> torch.Tensor:
    truth = GaussianMixture(
        torch.tensor(pi, dtype=F64),
        torch.tensor(mu, dtype=F64)[:, None],
        torch.tensor(sigma, dtype=F64)[:, None],
    )
    return truth.sample(g, (n,))[0]  # (N, 1)


def _sorted(mixture: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = mixture.mu[..., 0].argsort(-1)
    return (
        mixture.pi.gather(-1, order),
        mixture.mu[..., 0].gather(-1, order),
        mixture.sigma[..., 0].gather(-1, order),
    )


def test_em_recovers_a_two_component_mixture() -> None:
    x = _draw_1d(20_000, [0.3, 0.7], [-2.0, 3.0], [0.5, 1.0], _gen(3))
    pi, mu, sigma = _sorted(fit_gmm(x, 2, 200, _gen(4)))
    # Standard errors: weight ~0.003, means ~0.007 / 0.009, sigmas ~0.005 / 0.006.
    torch.testing.assert_close(pi, torch.tensor([0.3, 0.7], dtype=F64), rtol=0, atol=0.02)
    torch.testing.assert_close(mu, torch.tensor([-2.0, 3.0], dtype=F64), rtol=0, atol=0.05)
    torch.testing.assert_close(sigma, torch.tensor([0.5, 1.0], dtype=F64), rtol=0, atol=0.05)


def test_em_is_batched_and_deterministic() -> None:
    g = _gen(5)
    x = torch.stack(
        [
            _draw_1d(5000, [0.5, 0.5], [-3.0, 3.0], [1.0, 1.0], g),
            _draw_1d(5000, [0.2, 0.8], [0.0, 10.0], [2.0, 0.5], g),
        ]
    )  # (2, N, 1)
    fitted = fit_gmm(x, 2, 200, _gen(6))
    assert fitted.pi.shape == (2, 2) and fitted.mu.shape == (2, 2, 1)
    pi, mu, _ = _sorted(fitted)
    torch.testing.assert_close(pi, torch.tensor([[0.5, 0.5], [0.2, 0.8]], dtype=F64), rtol=0, atol=0.03)
    torch.testing.assert_close(mu, torch.tensor([[-3.0, 3.0], [0.0, 10.0]], dtype=F64), rtol=0, atol=0.1)
    again = fit_gmm(x, 2, 200, _gen(6))
    assert torch.equal(fitted.mu, again.mu) and torch.equal(fitted.pi, again.pi)


def test_em_with_one_kernel_is_the_sample_moments() -> None:
    x = torch.randn(1000, 2, generator=_gen(7), dtype=F64) * torch.tensor([2.0, 0.5], dtype=F64) + 1.0
    fitted = fit_gmm(x, 1, 5, _gen(8))
    torch.testing.assert_close(fitted.pi, torch.ones(1, dtype=F64))
    torch.testing.assert_close(fitted.mu[0], x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(fitted.sigma[0], x.std(0, correction=0), rtol=0, atol=1e-12)


def _synthetic_poses(n: int, j: int, scale: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """pose_2d (N, J, 2) and pose_3d (N, J, 3) with x, y - root = scale * (u, v - root) exactly."""
    uv = torch.randn(n, j, 2, generator=g, dtype=F64) * 0.2
    xyz = torch.empty(n, j, 3, dtype=F64)
    xyz[..., :2] = scale * (uv - uv[:, :1]) + torch.randn(
        n, 1, 2, generator=g, dtype=F64
    )  # any root position
    xyz[..., 2] = 5.0 + torch.randn(n, j, generator=g, dtype=F64) * torch.linspace(0.1, 0.5, j, dtype=F64)
    return uv, xyz


def test_depth_prior_fit_recovers_scale_and_depth_moments() -> None:
    uv, xyz = _synthetic_poses(3000, 17, 1.7, _gen(9))
    prior = DepthPrior.fit(uv, xyz, kernels=1, generator=_gen(10), min_sigma=1e-4)
    assert prior.xy_scale.item() == pytest.approx(1.7, rel=1e-12)
    z = xyz[..., 2] - xyz[:, :1, 2]  # (N, J)
    torch.testing.assert_close(prior.weights, torch.ones(17, 1, dtype=F64))
    torch.testing.assert_close(prior.mu[:, 0], z.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(prior.sigma[1:, 0], z[:, 1:].std(0, correction=0), rtol=0, atol=1e-12)
    assert prior.sigma[0, 0].item() == pytest.approx(1e-4)  # the root's depth is identically 0


def test_depth_prior_state_dict_round_trip() -> None:
    uv, xyz = _synthetic_poses(500, 17, 0.9, _gen(11))
    prior = DepthPrior.fit(uv, xyz, kernels=3, generator=_gen(12), max_samples=200, iters=10)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    loaded = DepthPrior.from_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.root == prior.root and loaded.kernels == 3
    for name in ("weights", "mu", "sigma", "xy_scale"):
        assert torch.equal(getattr(loaded, name), getattr(prior, name))


def test_empty_prior_has_the_fitted_shapes() -> None:
    uv, xyz = _synthetic_poses(300, 17, 0.9, _gen(13))
    fitted = DepthPrior.fit(uv.float(), xyz.float(), kernels=4, generator=_gen(14), iters=5).state_dict()
    empty = DepthPrior.empty(kernels=4).state_dict()
    assert empty.keys() == fitted.keys()
    for name, value in empty.items():
        assert value.shape == fitted[name].shape and value.dtype == fitted[name].dtype, name
    torch.testing.assert_close(DepthPrior.empty(kernels=4).weights.sum(-1), torch.ones(17))


def _hand_gmm_2d() -> torch.Tensor:
    """B = 1, J = 3, M = 2 in normalised screen units; (pi, mu_u, mu_v, sigma_u, sigma_v)."""
    return torch.tensor(
        [
            [
                [
                    [0.4, 0.1, 0.2, 0.01, 0.01],
                    [0.6, 0.3, -0.1, 0.02, 0.02],
                ],  # root: heaviest mean (0.3, -0.1)
                [[0.25, 0.5, 0.4, 0.01, 0.02], [0.75, 0.7, 0.0, 0.03, 0.04]],
                [[1.0, 0.3, -0.1, 0.05, 0.05], [0.0, 9.0, 9.0, 1.0, 1.0]],
            ]
        ],
        dtype=F64,
    )


def test_initial_distribution_by_hand_one_depth_kernel() -> None:
    prior = DepthPrior(
        weights=torch.ones(3, 1, dtype=F64),
        mu=torch.tensor([[0.0], [0.2], [-0.3]], dtype=F64),
        sigma=torch.tensor([[1e-4], [0.05], [0.07]], dtype=F64),
        xy_scale=torch.tensor(2.0, dtype=F64),
    )
    h = initial_distribution(_hand_gmm_2d(), prior, root_sigma=1e-3)
    assert h.pi.shape == (1, 3, 2) and h.mu.shape == (1, 3, 2, 3)
    torch.testing.assert_close(h.pi[0], torch.tensor([[0.4, 0.6], [0.25, 0.75], [1.0, 0.0]], dtype=F64))
    expected_mu = torch.tensor(
        [
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            [[0.4, 1.0, 0.2], [0.8, 0.2, 0.2]],  # 2 * (0.5 - 0.3), 2 * (0.4 + 0.1); 2 * (0.7 - 0.3), 2 * 0.1
            [[0.0, 0.0, -0.3], [17.4, 18.2, -0.3]],
        ],
        dtype=F64,
    )
    expected_sigma = torch.tensor(
        [
            [[1e-3, 1e-3, 1e-3], [1e-3, 1e-3, 1e-3]],
            [[0.02, 0.04, 0.05], [0.06, 0.08, 0.05]],
            [[0.1, 0.1, 0.07], [2.0, 2.0, 0.07]],
        ],
        dtype=F64,
    )
    torch.testing.assert_close(h.mu[0], expected_mu)
    torch.testing.assert_close(h.sigma[0], expected_sigma)


def test_initial_distribution_kernel_order_is_m_major() -> None:
    prior = DepthPrior(
        weights=torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.5, 0.5]], dtype=F64),
        mu=torch.tensor([[0.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], dtype=F64),
        sigma=torch.tensor([[1e-4, 1e-4], [0.1, 0.2], [0.1, 0.1]], dtype=F64),
        xy_scale=torch.tensor(1.0, dtype=F64),
    )
    h = initial_distribution(_hand_gmm_2d(), prior)
    assert h.kernels == 4
    # Joint 1, kernel (m, d) at m * 2 + d: weight pi_m * w_d, depth z_d.
    torch.testing.assert_close(h.pi[0, 1], torch.tensor([0.025, 0.225, 0.075, 0.675], dtype=F64))
    torch.testing.assert_close(h.mu[0, 1, :, 2], torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=F64))
    torch.testing.assert_close(h.sigma[0, 1, :, 2], torch.tensor([0.1, 0.2, 0.1, 0.2], dtype=F64))
    torch.testing.assert_close(h.mu[0, 1, :, 0], torch.tensor([0.2, 0.2, 0.4, 0.4], dtype=F64))
    torch.testing.assert_close(h.pi.sum(-1), torch.ones(1, 3, dtype=F64))
