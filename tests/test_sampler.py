from __future__ import annotations

import math

import pytest
import torch

from diffpose.diffusion.gmm import GaussianMixture, standard_normal
from diffpose.diffusion.sampler import Denoiser, sample
from diffpose.diffusion.schedule import Schedule
from diffpose.metrics import aggregate_hypotheses

F64 = torch.float64
B, J, C = 3, 17, 3


@pytest.fixture
def released() -> Schedule:
    return Schedule.make("linear", 51, 1e-4, 1e-3)


def _pose(seed: int, shape: tuple[int, ...] = (B, J, C)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class Recorder:
    """A denoiser that records (rows, t) per call and returns ``respond(x_t, t)``."""

    def __init__(self, respond: Denoiser) -> None:
        self.respond = respond
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        self.calls.append((x_t.shape[0], sorted(set(t.tolist()))))
        return self.respond(x_t, t)


def _one_kernel(mu: torch.Tensor, sigma: torch.Tensor) -> GaussianMixture:
    """A per-(sample, joint) mixture with a single kernel: its draw is known, so an eps-oracle exists."""
    return GaussianMixture(
        torch.ones(*mu.shape[:-1], 1, dtype=mu.dtype), mu[..., None, :], sigma[..., None, :]
    )


@pytest.mark.parametrize("steps", [1, 5])
def test_eps_oracle_recovers_x0_from_the_whitened_frame(released: Schedule, steps: int) -> None:
    """init = one kernel (mu, sigma) per joint: the oracle eps in that frame gives back x0 exactly."""
    x0, mu = _pose(0), _pose(1)
    sigma = 0.2 + _pose(2).abs()
    hypotheses = 4

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frame = [v.repeat(hypotheses, 1, 1) for v in (x0, mu, sigma)]
        return released.predict_eps(x_t, t, *frame)

    denoise = Recorder(oracle)
    out = sample(
        denoise,
        released,
        steps=steps,
        hypotheses=hypotheses,
        init=_one_kernel(mu, sigma),
        generator=torch.Generator().manual_seed(3),
    )
    assert out.shape == (hypotheses, B, J, C)
    torch.testing.assert_close(out, x0.expand(hypotheses, B, J, C), rtol=0, atol=1e-9)
    assert [rows for rows, _ in denoise.calls] == [hypotheses * B] * steps  # one batched call per step
    assert [ts for _, ts in denoise.calls] == [[t] for t in released.ddim_timesteps(steps)]


def test_x0_oracle_from_a_mixture(released: Schedule) -> None:
    x0 = _pose(0)
    g = torch.Generator().manual_seed(0)
    init = GaussianMixture(
        torch.softmax(torch.randn(B, J, 3, generator=g, dtype=F64), -1),
        torch.randn(B, J, 3, C, generator=g, dtype=F64),
        0.1 + torch.rand(B, J, 3, C, generator=g, dtype=F64),
    )
    out = sample(
        lambda x, t: x0.repeat(5, 1, 1), released, steps=3, hypotheses=5, init=init, predict="x0", generator=g
    )
    torch.testing.assert_close(out, x0.expand(5, B, J, C), rtol=0, atol=1e-12)


def test_plain_ddim_from_standard_normal(released: Schedule) -> None:
    x0 = _pose(0)
    denoise = Recorder(lambda x, t: released.predict_eps(x, t, x0.repeat(2, 1, 1)))
    out = sample(
        denoise,
        released,
        steps=4,
        hypotheses=2,
        init=standard_normal((B, J, C), F64),
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(out, x0.expand(2, B, J, C), rtol=0, atol=1e-9)


def test_hypotheses_from_a_mixture_are_distinct(released: Schedule) -> None:
    init = standard_normal((B, J, C), F64)
    out = sample(
        lambda x, t: torch.zeros_like(x),
        released,
        steps=2,
        hypotheses=6,
        init=init,
        generator=torch.Generator().manual_seed(0),
    )
    flat = out.reshape(6, -1)
    distance = torch.cdist(flat, flat)
    assert (distance + torch.eye(6, dtype=F64) > 1e-3).all()


def test_eta0_from_start_is_deterministic_and_draws_nothing(released: Schedule) -> None:
    start = _pose(0)
    generator = torch.Generator().manual_seed(0)
    generator_state, global_state = generator.get_state(), torch.get_rng_state()

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x + 0.01 * t[:, None, None]

    first = sample(denoise, released, steps=3, hypotheses=2, start=start, t_start=30, generator=generator)
    second = sample(denoise, released, steps=3, hypotheses=2, start=start, t_start=30)
    assert torch.equal(first, second)
    assert torch.equal(first[0], first[1])  # no noise anywhere: every hypothesis is the same path
    assert torch.equal(generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_eta1_depends_on_the_generator(released: Schedule) -> None:
    start = _pose(0)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x

    def run(seed: int) -> torch.Tensor:
        return sample(
            denoise,
            released,
            steps=5,
            hypotheses=2,
            start=start,
            eta=1.0,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, a_again = run(0), run(1), run(0)
    assert torch.equal(a, a_again)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0], a[1])


def test_refiner_start_two_calls_as_released(released: Schedule) -> None:
    """start, steps=2, t_start=12, eta=0: calls at t=12 then t=0, the released generalized_steps update."""
    start = _pose(0)
    denoise = Recorder(lambda x, t: 0.05 * x + 1e-3 * t[:, None, None].to(x.dtype))
    out = sample(denoise, released, steps=2, hypotheses=1, start=start, t_start=12)
    assert [ts for _, ts in denoise.calls] == [[12], [0]]
    x = start.clone()
    for t, t_next in ((12, 0), (0, -1)):
        a_t = released.alphas_bar[t].item()
        a_n = 1.0 if t_next < 0 else released.alphas_bar[t_next].item()
        e = 0.05 * x + 1e-3 * t
        x0 = (x - e * math.sqrt(1 - a_t)) / math.sqrt(a_t)
        x = math.sqrt(a_n) * x0 + math.sqrt(1 - a_n) * e
    torch.testing.assert_close(out[0], x, rtol=0, atol=1e-12)


def test_refiner_start_with_x0_oracle(released: Schedule) -> None:
    start, x0 = _pose(0), _pose(1)
    denoise = Recorder(lambda x, t: x0.repeat(x.shape[0] // B, 1, 1))
    out = sample(denoise, released, steps=2, hypotheses=3, start=start, t_start=12, predict="x0")
    assert [ts for _, ts in denoise.calls] == [[12], [0]]
    torch.testing.assert_close(out, x0.expand(3, B, J, C), rtol=0, atol=0)


def test_rows_are_hypothesis_major(released: Schedule) -> None:
    """Row h * B + b of a denoiser call is hypothesis h of sample b (``context.repeat(H, 1, 1)`` lines up)."""
    start = _pose(0)
    seen: list[torch.Tensor] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    sample(denoise, released, steps=1, hypotheses=4, start=start, t_start=5)
    assert torch.equal(seen[0], start.repeat(4, 1, 1))


def test_sample_argument_checks(released: Schedule) -> None:
    with pytest.raises(ValueError, match="init"):
        sample(lambda x, t: x, released, steps=2, hypotheses=1)
    with pytest.raises(ValueError, match="ddim_timesteps"):
        sample(lambda x, t: x, released, steps=14, hypotheses=1, start=_pose(0), t_start=12)
    with pytest.raises(ValueError, match="start"):
        sample(
            lambda x, t: x,
            released,
            steps=2,
            hypotheses=1,
            start=_pose(0, (B, J, 5)),
            init=standard_normal((B, J, C), F64),
        )


def test_aggregate_mean_and_median() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 10.0]).reshape(4, 1, 1, 1)
    assert aggregate_hypotheses(values, "mean").item() == 4.0
    assert aggregate_hypotheses(values, "median").item() == 2.5
    assert aggregate_hypotheses(torch.tensor([1.0, 5.0, 2.0]).reshape(3, 1, 1, 1), "median").item() == 2.0
    assert aggregate_hypotheses(values).shape == (1, 1, 1)
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_hypotheses(values, "mode")
