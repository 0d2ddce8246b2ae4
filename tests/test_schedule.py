from __future__ import annotations

import math

import pytest
import torch

from diffpose.diffusion.schedule import Schedule, beta_schedule

T = 51  # the released code's schedule: linear 1e-4 .. 1e-3 over 51 steps


@pytest.fixture
def released() -> Schedule:
    return Schedule.make("linear", T, 1e-4, 1e-3)


def _abar_by_hand(t: int) -> float:
    """prod_{s <= t} (1 - beta_s), beta_s = 1e-4 + 9e-4 s / 50, in plain Python floats."""
    return math.prod(1.0 - (1e-4 + 9e-4 * s / 50) for s in range(t + 1))


def test_linear_betas_are_the_released_linspace(released: Schedule) -> None:
    assert released.betas.dtype == torch.float64 and released.steps == T
    assert released.betas[0].item() == pytest.approx(1e-4, rel=1e-15)
    assert released.betas[1].item() == pytest.approx(1.18e-4, rel=1e-12)
    assert released.betas[-1].item() == pytest.approx(1e-3, rel=1e-15)


@pytest.mark.parametrize(
    ("t", "abar", "noise_std"),
    [
        (0, 0.9999, 0.01),
        (6, 0.9989224933756821, 0.032825396026825576),  # the released GT setting starts here
        (12, 0.9972993426030385, 0.051967849647271906),  # the released CPN setting: ~0.052 (DIFFPOSE.md)
        (50, 0.9723305030035974, 0.16634150713638085),
    ],
)
def test_released_schedule_pinned_values(released: Schedule, t: int, abar: float, noise_std: float) -> None:
    assert released.alphas_bar[t].item() == pytest.approx(abar, rel=1e-12)
    assert released.alphas_bar[t].item() == pytest.approx(_abar_by_hand(t), rel=1e-12)
    assert math.sqrt(1.0 - released.alphas_bar[t].item()) == pytest.approx(noise_std, rel=1e-9)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_bar_strictly_decreasing(kind: str) -> None:
    abar = Schedule.make(kind, 1000, 1e-4, 0.02).alphas_bar
    assert (abar[1:] < abar[:-1]).all()
    assert 0.0 < abar[-1] < abar[0] < 1.0


def test_cosine_endpoints_and_closed_form() -> None:
    steps, s = 1000, 0.008
    schedule = Schedule.make("cosine", steps)

    def f(t: float) -> float:
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    assert schedule.betas[0].item() == pytest.approx(4.128422482196914e-05, rel=1e-9)
    assert schedule.betas[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert schedule.betas[-1].item() == 0.999  # 1 - f(T)/f(T-1) = 1, clipped
    assert schedule.betas.max().item() == 0.999
    # Unclipped steps follow abar_t = f(t + 1) / f(0) exactly.
    for t in (0, 499, 990):
        assert schedule.alphas_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)


def test_beta_schedule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="beta_start"):
        beta_schedule("linear", 10, 0.1, 0.01)
    with pytest.raises(ValueError, match="steps"):
        beta_schedule("linear", 0)


def _pose(seed: int, shape: tuple[int, ...] = (4, 17, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_q_sample_inverts_for_every_t(released: Schedule) -> None:
    x0, eps, mu = _pose(0), _pose(1), _pose(2)
    sigma = 0.1 + _pose(3).abs()
    for t in range(T):
        x_t = released.q_sample(x0, t, eps, mu, sigma)
        torch.testing.assert_close(released.predict_x0(x_t, t, eps, mu, sigma), x0, rtol=0, atol=1e-12)
        torch.testing.assert_close(released.predict_eps(x_t, t, x0, mu, sigma), eps, rtol=0, atol=1e-9)


def test_q_sample_equation_and_per_row_timesteps(released: Schedule) -> None:
    x0, eps, mu = _pose(0), _pose(1), _pose(2)
    sigma = 0.1 + _pose(3).abs()
    a = released.alphas_bar[12].item()
    expected = math.sqrt(a) * x0 + (1 - math.sqrt(a)) * mu + math.sqrt(1 - a) * sigma * eps
    torch.testing.assert_close(released.q_sample(x0, 12, eps, mu, sigma), expected, rtol=0, atol=1e-14)
    # mu = 0, sigma = 1: plain DDPM.
    plain = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    torch.testing.assert_close(released.q_sample(x0, 12, eps), plain, rtol=0, atol=1e-14)
    # A (B,) timestep tensor applies row by row.
    t = torch.tensor([0, 12, 30, 50])
    rows = released.q_sample(x0, t, eps, mu, sigma)
    for b in range(4):
        one = released.q_sample(x0[b], int(t[b]), eps[b], mu[b], sigma[b])
        torch.testing.assert_close(rows[b], one, rtol=0, atol=1e-14)


def test_coefficients_follow_the_input_dtype(released: Schedule) -> None:
    x0 = _pose(0).float()
    assert released.q_sample(x0, 5, x0).dtype == torch.float32
    assert released.q_sample(x0, torch.tensor([1, 2, 3, 4]), x0).dtype == torch.float32


def test_ddim_timesteps_hand_written(released: Schedule) -> None:
    assert released.ddim_timesteps(1) == [50]
    assert released.ddim_timesteps(2) == [50, 0]
    assert released.ddim_timesteps(5) == [50, 37, 25, 12, 0]
    assert released.ddim_timesteps(50) == [50, *range(48, -1, -1)]
    assert released.ddim_timesteps(51) == list(range(50, -1, -1))
    assert released.ddim_timesteps(2, t_start=12) == [12, 0]  # released CPN: seq [0, 12]
    assert released.ddim_timesteps(2, t_start=6) == [6, 0]  # released GT: seq [0, 6]
    assert released.ddim_timesteps(13, t_start=12) == list(range(12, -1, -1))


@pytest.mark.parametrize(("k", "t_start"), [(52, None), (14, 12), (0, None)])
def test_ddim_timesteps_too_many_or_too_few(released: Schedule, k: int, t_start: int | None) -> None:
    with pytest.raises(ValueError, match="ddim_timesteps"):
        released.ddim_timesteps(k, t_start)


def test_ddim_timesteps_rejects_t_start_out_of_range(released: Schedule) -> None:
    with pytest.raises(ValueError, match="t_start"):
        released.ddim_timesteps(2, t_start=51)


@pytest.mark.parametrize("predict", ["eps", "noise", "x0"])
def test_ddim_eta0_with_oracle_stays_on_the_forward_path(released: Schedule, predict: str) -> None:
    """Exact model output: x_{t_prev} = q_sample(x0, t_prev, eps), same eps; t_prev = -1 gives x0."""
    x0, eps, mu = _pose(0), _pose(1), _pose(2)
    sigma = 0.1 + _pose(3).abs()
    oracle = {"eps": eps, "noise": sigma * eps, "x0": x0}[predict]
    x_t = released.q_sample(x0, 50, eps, mu, sigma)
    for t_prev in (37, 0):
        x_prev = released.ddim_step(x_t, 50, t_prev, oracle, 0.0, None, mu, sigma, predict)
        expected = released.q_sample(x0, t_prev, eps, mu, sigma)
        torch.testing.assert_close(x_prev, expected, rtol=0, atol=1e-10)
    x_clean = released.ddim_step(x_t, 50, -1, oracle, 0.0, None, mu, sigma, predict)
    torch.testing.assert_close(x_clean, x0, rtol=0, atol=1e-10)


def test_ddim_oracle_recovers_x0_in_k_steps(released: Schedule) -> None:
    x0, eps, mu = _pose(0), _pose(1), _pose(2)
    sigma = 0.1 + _pose(3).abs()
    x = released.q_sample(x0, 50, eps, mu, sigma)
    steps = released.ddim_timesteps(5)
    for t, t_prev in zip(steps, [*steps[1:], -1], strict=True):
        x = released.ddim_step(x, t, t_prev, released.predict_eps(x, t, x0, mu, sigma), 0.0, None, mu, sigma)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_ddim_matches_the_released_update(released: Schedule) -> None:
    """mu = 0, eta = 0, predict="noise": the released code's generalized_steps update, for any sigma."""
    x_t, out = _pose(0), _pose(1)
    sigma = 0.1 + _pose(3).abs()
    a_t, a_p = released.alphas_bar[12].item(), released.alphas_bar[0].item()
    x0 = (x_t - out * math.sqrt(1 - a_t)) / math.sqrt(a_t)
    expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * out
    got = released.ddim_step(x_t, 12, 0, out, sigma=sigma, predict="noise")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(released.ddim_step(x_t, 12, 0, out), expected, rtol=0, atol=1e-12)


def test_ddim_eta1_adds_the_ddpm_posterior_variance(released: Schedule) -> None:
    """eta = 1 between neighbouring steps: c^2 = (1 - abar_{t-1}) / (1 - abar_t) * beta_t."""
    x_t, out = _pose(0), _pose(1)
    sigma = 0.5
    t = 30
    with_noise = released.ddim_step(x_t, t, t - 1, out, 1.0, torch.ones_like(x_t), 0.0, sigma)
    without = released.ddim_step(x_t, t, t - 1, out, 1.0, torch.zeros_like(x_t), 0.0, sigma)
    abar, beta = released.alphas_bar, released.betas
    posterior = ((1 - abar[t - 1]) / (1 - abar[t]) * beta[t]).item()
    c = (with_noise - without) / sigma
    torch.testing.assert_close(c, torch.full_like(c, math.sqrt(posterior)), rtol=1e-9, atol=0)


def test_ddim_step_argument_checks(released: Schedule) -> None:
    x = _pose(0)
    with pytest.raises(ValueError, match="noise"):
        released.ddim_step(x, 10, 5, x, eta=0.5)
    with pytest.raises(ValueError, match="t_prev"):
        released.ddim_step(x, 5, 5, x)
    with pytest.raises(ValueError, match="predict"):
        released.ddim_step(x, 5, 1, x, predict="v")
    with pytest.raises(ValueError, match="timestep"):
        released.q_sample(x, 51, x)


def test_sample_timesteps_antithetic(released: Schedule) -> None:
    t = released.sample_timesteps(11, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (11,)
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    torch.testing.assert_close(t[:5] + t[6:11], torch.full((5,), T - 1))  # pairs (t, T-1-t), n//2+1 drawn
    again = released.sample_timesteps(11, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    wide = released.sample_timesteps(20000, torch.Generator().manual_seed(1), antithetic=False)
    assert set(wide.tolist()) == set(range(T))
