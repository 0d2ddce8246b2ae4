from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from diffpose import metrics
from diffpose.metrics import (
    AUC_THRESHOLDS_MM,
    MM_PER_M,
    aggregate_hypotheses,
    auc,
    auc_thresholds,
    j_agg_mpjpe,
    j_best_mpjpe,
    joint_errors,
    joint_spread,
    jointwise_best_mpjpe,
    mean_of_action_means,
    mpjpe,
    mpjve,
    n_mpjpe,
    p_agg_mpjpe,
    p_best_mpjpe,
    p_mpjpe,
    pck,
    pck_curve,
    per_action_means,
    procrustes_align,
    root_relative,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
DTYPES = [torch.float32, torch.float64]


def random_poses(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Poses (*shape, 17, 3) in metres, spread like a body (about 0.3 m per axis)."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(*shape, 17, 3, generator=g, dtype=dtype)


def rotation_matrix(axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    """Rodrigues: R = I + sin(a) K + (1 - cos(a)) K^2 for the unit axis k, K = [k]_x."""
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


# --- P1 ---------------------------------------------------------------------------------------------


def test_mpjpe_hand_value() -> None:
    pred = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [3.0, 4.0, 0.0]])
    target = torch.zeros(3, 3)
    # distances 0, 3, 5
    assert mpjpe(pred, target).item() == pytest.approx(8.0 / 3.0)
    assert joint_errors(pred, target).tolist() == pytest.approx([0.0, 3.0, 5.0])


def test_mpjpe_is_per_sample() -> None:
    target = torch.zeros(2, 2, 3)
    pred = torch.tensor([[[0.0, 0.0, 0.1], [0.0, 0.0, 0.3]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert mpjpe(pred, target).tolist() == pytest.approx([0.2, 0.0])


def test_root_relative() -> None:
    pose = torch.tensor([[[1.0, 2.0, 3.0], [2.0, 2.0, 5.0]]])
    assert root_relative(pose).tolist() == [[[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]]]
    assert root_relative(pose, root=1).tolist() == [[[-1.0, 0.0, -2.0], [0.0, 0.0, 0.0]]]


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        mpjpe(torch.zeros(4, 17, 3), torch.zeros(4, 1, 17, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., J, 3\)"):
        mpjpe(torch.zeros(4, 17, 2), torch.zeros(4, 17, 2))


# --- P2 and N-MPJPE ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_p_mpjpe_of_a_similar_copy_is_zero(dtype: torch.dtype) -> None:
    target = random_poses(3, seed=1)
    rotation = rotation_matrix((1.0, 2.0, 3.0), 0.7)
    moved = 1.7 * target @ rotation + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert mpjpe(moved, target).min() > 0.1
    errors = p_mpjpe(moved.to(dtype), target.to(dtype))
    assert errors.dtype == dtype
    assert errors.shape == (3,)
    assert errors.max().item() < 1e-6
    assert torch.allclose(procrustes_align(moved, target), target, atol=1e-10)


def test_p_mpjpe_matches_kabsch_with_least_squares_scale() -> None:
    pred, target = random_poses(5, seed=2), random_poses(5, seed=3)
    expected = []
    for p, t in zip(pred, target, strict=True):
        x, y = p - p.mean(0), t - t.mean(0)
        rot, _ = Rotation.align_vectors(y.numpy(), x.numpy())  # y ~ x @ R^T
        xr = x @ torch.from_numpy(rot.as_matrix()).T
        scale = (xr * y).sum() / (x * x).sum()
        expected.append((scale * xr - y).norm(dim=-1).mean().item())
    assert p_mpjpe(pred, target).tolist() == pytest.approx(expected, rel=1e-9)


def root_mean_square(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).square().sum(dim=-1).mean(dim=-1).sqrt()


def test_procrustes_never_increases_the_squared_error() -> None:
    pred, target = random_poses(256, seed=4), random_poses(256, seed=5)
    near = target + 0.02 * random_poses(256, seed=6)
    for p in (pred, near):
        aligned = procrustes_align(p, target)
        assert (root_mean_square(aligned, target) <= root_mean_square(p, target) + 1e-12).all()
    assert (p_mpjpe(pred, target) <= mpjpe(pred, target)).all()


def test_p_mpjpe_can_exceed_mpjpe() -> None:
    # Procrustes minimises the SQUARED error; the mean distance can grow. One joint 20 cm off: the
    # identity leaves 20 cm / 17 = 11.8 mm, the least-squares fit spreads the outlier over all joints.
    target = random_poses(4, seed=5)
    pred = target.clone()
    pred[:, 5, 2] += 0.2
    assert mpjpe(pred, target).tolist() == pytest.approx([0.2 / 17] * 4)
    assert (p_mpjpe(pred, target) > 2 * mpjpe(pred, target)).all()


def test_p_mpjpe_excludes_reflection() -> None:
    target = random_poses(4, seed=7)
    mirrored = target * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    # A random 17-point cloud is chiral: no rotation maps its mirror image onto it.
    assert p_mpjpe(mirrored, target).min().item() > 0.05


def test_p_mpjpe_is_per_sample_not_batch_mean() -> None:
    target = random_poses(2, seed=8)
    pred = torch.stack([target[0] @ rotation_matrix((0.0, 0.0, 1.0), 1.0), random_poses(seed=9)])
    errors = p_mpjpe(pred, target)
    assert errors[0].item() < 1e-9
    assert errors[1].item() > 0.05
    assert errors[1].item() == pytest.approx(p_mpjpe(pred[1], target[1]).item(), rel=1e-12)


def test_p_mpjpe_of_a_collapsed_prediction_is_finite() -> None:
    target = random_poses(seed=10)
    collapsed = torch.zeros_like(target)
    spread = (target - target.mean(0)).norm(dim=-1).mean()
    assert p_mpjpe(collapsed, target).item() == pytest.approx(spread.item(), rel=1e-12)


def test_n_mpjpe_of_a_scaled_copy_is_zero() -> None:
    target = random_poses(3, seed=11)
    assert n_mpjpe(0.8 * target, target).max().item() < 1e-12
    assert mpjpe(0.8 * target, target).min().item() > 0.01


def test_n_mpjpe_hand_value() -> None:
    pred = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # s = <pred, target> / <pred, pred> = 2 / 4; s * pred = (1,0,0), (0,0,0): errors 0 and 1.
    assert n_mpjpe(pred, target).item() == pytest.approx(0.5)


# --- MPJVE ------------------------------------------------------------------------------------------


def test_mpjve_of_a_constant_offset_is_zero() -> None:
    target = random_poses(2, 5, seed=12)
    errors = mpjve(target + torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64), target)
    assert errors.shape == (2, 4)
    assert errors.abs().max().item() < 1e-12


def test_mpjve_of_alternating_jitter() -> None:
    target = random_poses(1, 6, seed=13)[..., :4, :]  # (1, T=6, J=4, 3)
    sign = torch.tensor([(-1.0) ** t for t in range(6)], dtype=torch.float64)
    jitter = torch.zeros(1, 6, 4, 3, dtype=torch.float64)
    jitter[..., 2, 0] = 0.01 * sign  # one joint of four jumps +-1 cm every frame
    errors = mpjve(target + jitter, target)
    # its velocity error is 2 cm every step; averaged over 4 joints: 5 mm
    assert errors.shape == (1, 5)
    assert errors[0].tolist() == pytest.approx([0.005] * 5)


# --- PCK and AUC ------------------------------------------------------------------------------------


def poses_at_error(errors_m: list[float], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.zeros(2, len(errors_m), 3, dtype=dtype)
    pred = target.clone()
    pred[..., 0] = torch.tensor(errors_m, dtype=dtype)
    return pred, target


def test_auc_thresholds_are_the_official_ones() -> None:
    thresholds = auc_thresholds()
    assert len(AUC_THRESHOLDS_MM) == thresholds.numel() == 31
    assert thresholds[0].item() == 0.0 and thresholds[-1].item() == 0.15
    assert thresholds[20].item() == 0.1
    assert torch.allclose(thresholds, torch.linspace(0, 0.15, 31, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pck_and_auc_at_exactly_100_mm(dtype: torch.dtype) -> None:
    pred, target = poses_at_error([0.1] * 17, dtype)
    assert pck(pred, target).tolist() == [1.0, 1.0]
    assert pck(pred, target, threshold=0.05).tolist() == [0.0, 0.0]
    assert pck(pred, target, threshold=0.1).tolist() == [0.0, 0.0]  # strict <, as the official code
    # thresholds strictly above 100 mm: 105, ..., 150 -> 10 of 31
    assert auc(pred, target).tolist() == pytest.approx([10 / 31] * 2)
    assert auc(pred, target).dtype == dtype


def test_auc_of_a_perfect_prediction_is_30_of_31() -> None:
    pred, target = poses_at_error([0.0] * 17, torch.float64)
    assert auc(pred, target).tolist() == pytest.approx([30 / 31] * 2)


def test_pck_and_auc_with_mixed_errors() -> None:
    pred, target = poses_at_error([0.02, 0.2, 0.02, 0.2], torch.float64)
    assert pck(pred, target).tolist() == [0.5, 0.5]
    # 20 mm joints pass 25..150 mm (26 thresholds), 200 mm joints none: (2 * 26 / 31) / 4
    assert auc(pred, target).tolist() == pytest.approx([13 / 31] * 2)
    curve = pck_curve(pred, target, auc_thresholds())
    assert curve.shape == (2, 31)
    assert curve[0, :5].tolist() == [0.0] * 5 and curve[0, 5:].tolist() == [0.5] * 26


# --- multi-hypothesis -------------------------------------------------------------------------------


def test_single_hypothesis_aggregates_are_the_plain_metrics() -> None:
    pred, target = random_poses(8, seed=14), random_poses(8, seed=15)
    hyps = pred.unsqueeze(0)
    for how in ("mean", "median"):
        assert torch.equal(j_agg_mpjpe(hyps, target, aggregate=how), mpjpe(pred, target))
        assert torch.allclose(p_agg_mpjpe(hyps, target, aggregate=how), p_mpjpe(pred, target), atol=0)
    assert torch.equal(j_best_mpjpe(hyps, target), mpjpe(pred, target))
    assert torch.equal(jointwise_best_mpjpe(hyps, target), mpjpe(pred, target))


def test_median_follows_numpy_for_even_counts() -> None:
    x = torch.tensor([0.0, 10.0, 1.0, 3.0])  # sorted 0, 1, 3, 10: median (1 + 3) / 2 = 2
    hyps = torch.zeros(4, 5, 17, 3)
    hyps[..., 0] = x[:, None, None]
    target = torch.zeros(5, 17, 3)
    assert j_agg_mpjpe(hyps, target, aggregate="median").tolist() == pytest.approx([2.0] * 5)
    assert j_agg_mpjpe(hyps, target, aggregate="mean").tolist() == pytest.approx([3.5] * 5)
    assert aggregate_hypotheses(hyps[:3], "median")[..., 0].unique().tolist() == [1.0]
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate_hypotheses(hyps, "mode")  # type: ignore[arg-type]


def test_oracle_ordering_on_random_hypotheses() -> None:
    target = random_poses(32, seed=16)
    hyps = target + 0.05 * random_poses(10, 32, seed=17)
    each = mpjpe(hyps, target.expand_as(hyps))  # (10, 32)
    j_best, p_best = j_best_mpjpe(hyps, target), p_best_mpjpe(hyps, target)
    assert torch.equal(j_best, each.min(dim=0).values)
    assert (jointwise_best_mpjpe(hyps, target) <= j_best + 1e-12).all()
    assert (p_best <= j_best + 1e-12).all()
    # Jensen: the error of the mean pose is at most the mean error of the hypotheses.
    assert (j_agg_mpjpe(hyps, target) <= each.mean(dim=0) + 1e-12).all()
    assert (j_best <= each.mean(dim=0)).all()


def test_aggregate_can_beat_the_oracle() -> None:
    # J-Best <= J-Agg does NOT hold in general: two hypotheses 1 cm either side of the truth average to it.
    target = random_poses(3, seed=18)
    offset = torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64)
    hyps = torch.stack([target + offset, target - offset])
    assert j_agg_mpjpe(hyps, target).abs().max().item() < 1e-12
    assert j_best_mpjpe(hyps, target).tolist() == pytest.approx([0.01] * 3)


def test_jointwise_oracle_picks_per_joint() -> None:
    target = torch.zeros(1, 2, 3, dtype=torch.float64)
    hyps = torch.tensor([[[[0.0, 0.0, 0.0], [0.4, 0.0, 0.0]]], [[[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    hyps = hyps.double()  # (H=2, 1, J=2, 3): each hypothesis is perfect on one joint
    assert j_best_mpjpe(hyps, target).tolist() == pytest.approx([0.1])
    assert jointwise_best_mpjpe(hyps, target).tolist() == [0.0]


def test_hypothesis_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="hypotheses must be"):
        j_best_mpjpe(torch.zeros(5, 17, 3), torch.zeros(5, 17, 3))


def test_joint_spread_hand_values() -> None:
    hyps = torch.zeros(3, 2, 17, 3)
    hyps[..., 0] = torch.tensor([0.0, 0.0, 3.0])[:, None, None]  # mean 1: distances 1, 1, 2
    spread = joint_spread(hyps)
    assert spread.shape == (2, 17)
    assert spread.flatten().tolist() == pytest.approx([4 / 3] * 34)
    assert joint_spread(hyps[:1]).abs().max().item() == 0.0


# --- per-action means -------------------------------------------------------------------------------


def test_per_action_means_hand_values() -> None:
    errors = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    actions = torch.tensor([0, 0, 0, 2, 2])
    means = per_action_means(errors, actions, num_actions=4)
    assert means[0].item() == 2.0 and means[2].item() == 7.0
    assert means[1].isnan() and means[3].isnan()
    # the mean of action means (4.5) differs from the pooled mean (4.0)
    assert mean_of_action_means(errors, actions, num_actions=4).item() == pytest.approx(4.5)


def test_per_action_means_rejects_bad_codes() -> None:
    errors = torch.ones(3)
    with pytest.raises(ValueError, match="lie in"):
        per_action_means(errors, torch.tensor([0, 1, 5]), num_actions=4)
    with pytest.raises(ValueError, match="integer codes"):
        per_action_means(errors, torch.tensor([0.0, 1.0, 2.0]), num_actions=4)


# --- dtype, device, gradients -----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_error_keeps_dtype_and_device(dtype: torch.dtype, device: str) -> None:
    pred = random_poses(4, 3, seed=19, dtype=dtype).to(device)
    target = random_poses(4, 3, seed=20, dtype=dtype).to(device)
    hyps = random_poses(5, 4, 3, seed=21, dtype=dtype).to(device)
    results = [
        mpjpe(pred, target),
        p_mpjpe(pred, target),
        n_mpjpe(pred, target),
        mpjve(pred, target),
        pck(pred, target),
        auc(pred, target),
        j_agg_mpjpe(hyps, target),
        p_agg_mpjpe(hyps, target),
        j_best_mpjpe(hyps, target),
        p_best_mpjpe(hyps, target),
        joint_spread(hyps),
    ]
    for result in results:
        assert result.dtype == dtype and result.device.type == device
        assert torch.isfinite(result).all()
    reference = p_mpjpe(pred.double().cpu(), target.double().cpu())
    assert torch.allclose(results[1].double().cpu(), reference, rtol=1e-5)
    codes = torch.arange(4, device=device).repeat_interleave(3)
    assert per_action_means(results[0].flatten(), codes, 4).dtype == dtype


def test_gradients_flow_through_mpjpe_and_p_mpjpe() -> None:
    target = random_poses(2, seed=22)
    pred = (target + 0.05 * random_poses(2, seed=23)).requires_grad_()
    for metric in (mpjpe, p_mpjpe, n_mpjpe):
        (grad,) = torch.autograd.grad(metric(pred, target).sum(), pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    exact = target.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mpjpe(exact, target).sum(), exact)
    assert torch.isfinite(grad).all()


def test_p_mpjpe_gradient_is_correct() -> None:
    target = random_poses(seed=24)[:6]
    pred = (target + 0.05 * random_poses(seed=25)[:6]).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: p_mpjpe(p, target), (pred,))


def test_float32_gradient_through_float64_procrustes() -> None:
    target = random_poses(2, seed=26, dtype=torch.float32)
    pred = (target + 0.05 * random_poses(2, seed=27, dtype=torch.float32)).requires_grad_()
    (grad,) = torch.autograd.grad(p_mpjpe(pred, target).sum(), pred)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_millimetre_constant() -> None:
    assert MM_PER_M * mpjpe(torch.tensor([[0.0, 0.0, 0.0415]]), torch.zeros(1, 3)).item() == pytest.approx(
        41.5
    )


# ---- reliability of the hypotheses --------------------------------------------------------------------------

def _gaussian_hypotheses(h: int, n: int, j: int, scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(n, j, 3, generator=g, dtype=torch.float64)
    hyps = centre + scale * torch.randn(h, n, j, 3, generator=g, dtype=torch.float64)
    target = centre + scale * torch.randn(n, j, 3, generator=g, dtype=torch.float64)
    return centre, hyps, target


def test_hypotheses_from_the_true_distribution_are_calibrated():
    _, hyps, target = _gaussian_hypotheses(200, 1000, 4, 0.05)
    r = metrics.reliability(hyps, target)
    # 4000 (sample, joint) pairs: a binomial standard error of 0.008 at q = 0.5; 200 hypotheses estimate the
    # median and the quantiles to about 1% (the fitted median sits closer to its own hypotheses than to a new
    # draw, a small overconfidence that vanishes as N grows).
    assert r["calibration"].shape == (21,)
    assert float(r["calibration_error"]) < 0.025
    assert float(r["coverage_50"]) == pytest.approx(0.5, abs=0.03)
    assert float(r["coverage_90"]) == pytest.approx(0.9, abs=0.02)


def test_hypotheses_shrunk_toward_their_mean_are_overconfident():
    centre, hyps, target = _gaussian_hypotheses(200, 1000, 4, 0.05)
    shrunk = centre + (hyps - centre) / 3
    r = metrics.reliability(shrunk, target)
    inner = torch.tensor(metrics.CALIBRATION_LEVELS[1:-1], dtype=torch.float64)
    assert torch.all(r["calibration"][1:-1] < inner)  # below the diagonal at every level
    assert float(r["coverage_90"]) < 0.5 and float(r["calibration_error"]) > 0.25
    assert float(r["sharpness_90"]) < float(metrics.reliability(hyps, target)["sharpness_90"]) / 2.5


def test_energy_score_of_a_point_mass_at_the_target_is_zero_and_of_two_samples_by_hand():
    target = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])                  # (1, J=2, 3)
    assert torch.all(metrics.energy_score(target.expand(5, -1, -1, -1).clone(), target) == 0)
    # Two hypotheses of joint 0 at distance 3 and 4 from the target and 5 from each other:
    # (3 + 4) / 2 - (5 + 5) / (2 * 2 * 1) = 3.5 - 2.5 = 1.
    hyps = torch.tensor([[[[3.0, 0.0, 0.0]]], [[[0.0, 4.0, 0.0]]]])             # (H=2, 1, 1, 3)
    assert float(metrics.energy_score(hyps, torch.zeros(1, 1, 3))) == pytest.approx(1.0)
    assert float(metrics.energy_score(hyps[:1], torch.zeros(1, 1, 3))) == pytest.approx(3.0)  # N = 1: the error


def test_mean_median_best_and_worst_hypothesis_errors_are_named_apart():
    target = torch.zeros(1, 2, 3)
    hyps = torch.zeros(3, 1, 2, 3)
    hyps[0, 0, 1, 0], hyps[1, 0, 1, 0], hyps[2, 0, 1, 0] = 1.0, 2.0, 6.0                # joint 1 at x = 1, 2, 6
    r = metrics.reliability(hyps, target)
    assert float(r["mean_hypothesis_p1"]) == pytest.approx(3.0 / 2)     # x = 3, averaged over 2 joints
    assert float(r["median_hypothesis_p1"]) == pytest.approx(2.0 / 2)
    assert float(r["oracle_best_p1"]) == pytest.approx(1.0 / 2)
    assert float(r["oracle_worst_p1"]) == pytest.approx(6.0 / 2)


def test_exact_joints_leave_the_distribution_numbers_but_not_the_p1s():
    _, hyps, target = _gaussian_hypotheses(20, 50, 4, 0.05)
    hyps[..., 0, :], target[..., 0, :] = 0.0, 0.0                    # a root-relative pose's root
    r = metrics.reliability(hyps, target, exact=(0,))
    rest = metrics.reliability(hyps[..., 1:, :], target[..., 1:, :])
    for key in ("calibration_error", "energy_score", "coverage_50", "coverage_90", "sharpness_90"):
        assert float(r[key]) == pytest.approx(float(rest[key]))
    # the root, a sphere of radius 0 that holds no target, would pull the curve toward 0
    assert float(metrics.reliability(hyps, target)["coverage_50"]) == pytest.approx(float(r["coverage_50"]) * 3 / 4)
    # the P1s average every joint, as P1 does: the oracle best is j_best_mpjpe
    assert float(r["oracle_best_p1"]) == pytest.approx(float(metrics.j_best_mpjpe(hyps, target).mean()))
    assert float(r["mean_hypothesis_p1"]) == pytest.approx(float(metrics.j_agg_mpjpe(hyps, target).mean()))
    assert float(r["mean_hypothesis_p1"]) == pytest.approx(float(rest["mean_hypothesis_p1"]) * 3 / 4)


def test_quantile_radii_interpolate_as_numpy():
    import numpy as np

    _, hyps, _ = _gaussian_hypotheses(7, 5, 3, 1.0)
    levels = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    expect = np.quantile(metrics.median_distances(hyps).numpy(), levels.numpy(), axis=0)
    np.testing.assert_allclose(metrics.quantile_radii(hyps, levels).numpy(), expect, rtol=1e-12)
