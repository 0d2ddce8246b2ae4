"""3D pose metrics as pure torch functions: Human3.6M P1/P2, MPI-INF-3DHP PCK/AUC, multi-hypothesis.

Units. Poses are (..., J, 3) tensors in metres. Every error function returns per-sample errors in the
unit of its input (metres in, metres out); callers convert for reports with ``MM_PER_M``. Thresholds
(PCK, AUC) are in metres too. Nothing here averages over the batch: reductions over samples, actions
or sequences are the caller's, so that each number in a table says which mean it is.

Dtype and device. Inputs may be float32 or float64 on any device; results come back in the input dtype
on the input device. Procrustes alignment runs in float64 internally (float32 on Apple MPS, which has
no float64).

Multi-hypothesis names. Hypotheses are (H, ..., J, 3) against a (..., J, 3) target. Here the prefix
names the protocol and the middle word says whether the ground truth is used:

    j_agg_mpjpe   aggregate the hypotheses (mean/median), then MPJPE (P1)        fair
    p_agg_mpjpe   aggregate the hypotheses, then P-MPJPE (P2)                    fair
    j_best_mpjpe  per sample, the hypothesis with the lowest MPJPE (P1)          ORACLE
    p_best_mpjpe  per sample, the hypothesis with the lowest P-MPJPE (P2)        ORACLE
    jointwise_best_mpjpe  per joint, the hypothesis closest to the truth (P1)    ORACLE

This is NOT D3DP's vocabulary (Shan et al. 2023, ``paTRICK-swk/D3DP:main.py``), where P/J mean pose-
and joint-level, not P1/P2: D3DP "P-Agg" is the hypothesis mean (our ``j_agg_mpjpe`` under P1),
D3DP "J-Agg" picks per joint the hypothesis whose 2D reprojection is closest to the 2D input (fair,
not implemented here: it needs the camera), D3DP "J-Best" is ``jointwise_best_mpjpe``, and D3DP
"P-Best" takes the minimum over hypotheses of the error averaged over a whole evaluation batch (an
oracle per batch, never below the per-sample ``j_best_mpjpe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

MM_PER_M = 1000.0

# MPI-INF-3DHP test protocol (``mpii_compute_3d_pck.m`` of the official test utilities).
PCK_THRESHOLD = 0.15
AUC_THRESHOLDS_MM: tuple[int, ...] = tuple(range(0, 155, 5))

Aggregate = Literal["mean", "median"]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.dim() < 2 or pred.shape[-1] != 3:
        raise ValueError(f"poses must be (..., J, 3), got {tuple(pred.shape)}")


def _check_hypotheses(hyps: Tensor, target: Tensor) -> None:
    if hyps.dim() != target.dim() + 1 or hyps.shape[1:] != target.shape:
        raise ValueError(
            f"hypotheses must be (H, *target.shape); got {tuple(hyps.shape)} for target {tuple(target.shape)}"
        )


def root_relative(pose: Tensor, root: int = 0) -> Tensor:
    """``pose - pose[..., root, :]``: coordinates relative to the root joint, shape (..., J, 3)."""
    return pose - pose[..., root : root + 1, :]


def joint_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Per-joint Euclidean distance ``||pred_j - target_j||``, shape (..., J), unit of the input."""
    _check_pair(pred, target)
    return torch.linalg.vector_norm(pred - target, dim=-1)


def mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-joint position error (Protocol 1): ``mean_j ||pred_j - target_j||``.

    No alignment: pass root-relative poses (``root_relative``) for the Human3.6M P1 number.
    Shapes (..., J, 3) -> (...); unit of the input.
    """
    return joint_errors(pred, target).mean(dim=-1)


def _similarity_align(pred: Tensor, target: Tensor) -> Tensor:
    """Least-squares similarity transform of ``pred`` onto ``target`` (both (..., J, 3), float64).

    Minimises ``sum_j ||s pred_j R + t - target_j||^2`` over scale s >= 0, rotation R (det +1) and
    translation t (Umeyama 1991). With centred X = pred - mean(pred), Y = target - mean(target) and
    the SVD X^T Y = U S V^T: R = U D V^T, D = diag(1, 1, sign det(U V^T)) (a reflection is never
    chosen), s = tr(D S) / ||X||_F^2, t = mean(target) - s mean(pred) R.
    A collapsed prediction (all joints at one point) gets s = 0, i.e. every joint at mean(target).
    """
    pred_mean = pred.mean(dim=-2, keepdim=True)  # (..., 1, 3)
    target_mean = target.mean(dim=-2, keepdim=True)
    x = pred - pred_mean  # (..., J, 3)
    y = target - target_mean
    u, s, vh = torch.linalg.svd(x.transpose(-1, -2) @ y)  # (..., 3, 3), (..., 3), (..., 3, 3)
    det = torch.linalg.det(u @ vh)  # (...)
    d = torch.ones_like(s)
    d[..., -1] = torch.where(det < 0, -1.0, 1.0)
    rotation = (u * d.unsqueeze(-2)) @ vh  # (..., 3, 3)
    norm_sq = x.square().sum(dim=(-2, -1)).clamp_min(torch.finfo(x.dtype).tiny)  # (...)
    scale = (s * d).sum(dim=-1) / norm_sq  # (...)
    return scale[..., None, None] * (x @ rotation) + target_mean


def _wide_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def procrustes_align(pred: Tensor, target: Tensor) -> Tensor:
    """``pred`` after its own best similarity transform (scale, rotation, translation; no reflection)
    onto ``target``, shape (..., J, 3), computed in float64 and returned in the input dtype."""
    _check_pair(pred, target)
    wide = _wide_dtype(pred.device)
    return _similarity_align(pred.to(wide), target.to(wide)).to(pred.dtype)


def p_mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """Procrustes-aligned MPJPE (Protocol 2): ``mpjpe(s pred R + t, target)``, per sample.

    Each sample gets its own scale s, rotation R (reflections excluded) and translation t; see
    ``_similarity_align``. The fit minimises the squared error, so P-MPJPE is usually but not always
    below MPJPE (one outlier joint can raise it). Shapes (..., J, 3) -> (...); unit of the input;
    computed in float64 and returned in the input dtype.
    """
    _check_pair(pred, target)
    wide = _wide_dtype(pred.device)
    target_wide = target.to(wide)
    return mpjpe(_similarity_align(pred.to(wide), target_wide), target_wide).to(pred.dtype)


def n_mpjpe(pred: Tensor, target: Tensor) -> Tensor:
    """Scale-normalised MPJPE: ``mpjpe(s pred, target)`` with ``s = <pred, target> / <pred, pred>``.

    s is the least-squares scale per sample (sums over joints and coordinates); no translation or
    rotation, so pass root-relative poses. Shapes (..., J, 3) -> (...); unit of the input.
    """
    _check_pair(pred, target)
    dot = (pred * target).sum(dim=(-2, -1))  # (...)
    norm_sq = pred.square().sum(dim=(-2, -1)).clamp_min(torch.finfo(pred.dtype).tiny)
    scale = (dot / norm_sq)[..., None, None]
    return mpjpe(scale * pred, target)


def mpjve(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-joint velocity error: ``mean_j ||(pred_t+1 - pred_t)_j - (target_t+1 - target_t)_j||``.

    Time is the third axis from the end. Shapes (..., T, J, 3) -> (..., T-1); unit of the input per
    frame (multiply by the frame rate for a per-second velocity error).
    """
    _check_pair(pred, target)
    if pred.dim() < 3 or pred.shape[-3] < 2:
        raise ValueError(f"mpjve needs (..., T, J, 3) with T >= 2, got {tuple(pred.shape)}")
    return mpjpe(torch.diff(pred, dim=-3), torch.diff(target, dim=-3))


def pck_curve(pred: Tensor, target: Tensor, thresholds: Tensor) -> Tensor:
    """Fraction of joints with error strictly below each threshold.

    ``pck_k = mean_j [||pred_j - target_j|| < thresholds_k]``. Shapes (..., J, 3), thresholds (K,)
    in the input unit -> (..., K) in the input dtype. Not differentiable.
    """
    errors = joint_errors(pred, target)  # (..., J)
    thresholds = thresholds.to(device=errors.device, dtype=errors.dtype)
    return (errors.unsqueeze(-1) < thresholds).to(errors.dtype).mean(dim=-2)


def pck(pred: Tensor, target: Tensor, threshold: float = PCK_THRESHOLD) -> Tensor:
    """Percentage of correct keypoints as a fraction: ``mean_j [||pred_j - target_j|| < threshold]``.

    The MPI-INF-3DHP number is PCK at 150 mm (``threshold=0.15`` m), strict ``<`` as in the official
    ``mpii_compute_3d_pck.m``. The official total counts 14 joints (head top, neck, shoulders, elbows,
    wrists, hips, knees, ankles; not pelvis, spine, head): select them before calling.
    Shapes (..., J, 3) -> (...) in [0, 1]; not differentiable.
    """
    return (joint_errors(pred, target) < threshold).to(pred.dtype).mean(dim=-1)


def auc_thresholds(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """The 31 AUC thresholds 0, 5, ..., 150 mm, in metres, shape (31,).

    Built as integer millimetres / 1000 so that each equals the decimal literal (0.1 is 0.1).
    """
    return (torch.tensor(AUC_THRESHOLDS_MM, dtype=torch.float64, device=device) / MM_PER_M).to(dtype)


def auc(pred: Tensor, target: Tensor, thresholds: Tensor | None = None) -> Tensor:
    """Area under the PCK curve as a fraction: the mean of ``pck_curve`` over the thresholds.

    Convention of the official MPI-INF-3DHP ``mpii_compute_3d_pck.m`` (and the P-STMO / D3DP python
    ports): thresholds 0:5:150 mm (31 values, ``auc_thresholds()``), strict ``<``, AUC =
    sum(PCK) / 31 (a plain mean, no trapezoid). The 0 mm threshold never counts a joint, so a perfect
    prediction scores 30/31 = 0.9677, and joints at exactly 100 mm count for the 10 thresholds
    105..150 mm: 10/31. Shapes (..., J, 3) -> (...) in [0, 1]; not differentiable.
    """
    if thresholds is None:
        thresholds = auc_thresholds(pred.dtype, pred.device)
    return pck_curve(pred, target, thresholds).mean(dim=-1)


def aggregate_hypotheses(hyps: Tensor, how: Aggregate = "mean") -> Tensor:
    """One pose from H hypotheses without the ground truth: (H, ..., J, 3) -> (..., J, 3).

    ``"mean"``: the coordinate-wise mean. ``"median"``: the coordinate-wise median, the mean of the
    two middle values when H is even (as ``numpy.median``; ``torch.median`` would take the lower one).
    """
    if how == "mean":
        return hyps.mean(dim=0)
    if how == "median":
        ordered = hyps.sort(dim=0).values
        count = hyps.shape[0]
        return 0.5 * (ordered[(count - 1) // 2] + ordered[count // 2])
    raise ValueError(f"unknown aggregate {how!r}; expected 'mean' or 'median'")


def j_agg_mpjpe(hyps: Tensor, target: Tensor, aggregate: Aggregate = "mean") -> Tensor:
    """Fair multi-hypothesis P1: ``mpjpe(aggregate_hypotheses(hyps, aggregate), target)``.

    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (...); unit of the input.
    """
    _check_hypotheses(hyps, target)
    return mpjpe(aggregate_hypotheses(hyps, aggregate), target)


def p_agg_mpjpe(hyps: Tensor, target: Tensor, aggregate: Aggregate = "mean") -> Tensor:
    """Fair multi-hypothesis P2: ``p_mpjpe(aggregate_hypotheses(hyps, aggregate), target)``.

    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (...); unit of the input.
    """
    _check_hypotheses(hyps, target)
    return p_mpjpe(aggregate_hypotheses(hyps, aggregate), target)


def j_best_mpjpe(hyps: Tensor, target: Tensor) -> Tensor:
    """ORACLE P1: ``min_h mpjpe(hyps_h, target)`` per sample. It looks at the ground truth to choose
    the hypothesis, so it is a bound on what the hypotheses contain, not a prediction error.

    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (...); unit of the input.
    """
    _check_hypotheses(hyps, target)
    return mpjpe(hyps, target.expand_as(hyps)).amin(dim=0)


def p_best_mpjpe(hyps: Tensor, target: Tensor) -> Tensor:
    """ORACLE P2: ``min_h p_mpjpe(hyps_h, target)`` per sample, each hypothesis aligned on its own.
    It looks at the ground truth to choose the hypothesis: not a prediction error.

    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (...); unit of the input.
    """
    _check_hypotheses(hyps, target)
    return p_mpjpe(hyps, target.expand_as(hyps)).amin(dim=0)


def jointwise_best_mpjpe(hyps: Tensor, target: Tensor) -> Tensor:
    """ORACLE P1 per joint: ``mean_j min_h ||hyps_h,j - target_j||``, each joint from whichever
    hypothesis is closest to the ground truth (D3DP's "J-Best"); never above ``j_best_mpjpe``.

    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (...); unit of the input.
    """
    _check_hypotheses(hyps, target)
    return joint_errors(hyps, target.expand_as(hyps)).amin(dim=0).mean(dim=-1)


def joint_spread(hyps: Tensor) -> Tensor:
    """Per-joint spread of the hypotheses: ``mean_h ||hyps_h,j - mean_h' hyps_h',j||``.

    The mean Euclidean distance of each hypothesis to the hypothesis mean, per joint; 0 for H = 1.
    Shapes (H, ..., J, 3) -> (..., J); unit of the input.
    """
    if hyps.dim() < 3 or hyps.shape[-1] != 3:
        raise ValueError(f"hypotheses must be (H, ..., J, 3), got {tuple(hyps.shape)}")
    centre = hyps.mean(dim=0, keepdim=True)
    return torch.linalg.vector_norm(hyps - centre, dim=-1).mean(dim=0)


# ---- the reliability of the hypotheses: calibration, energy score, coverage and sharpness ------------------

CALIBRATION_LEVELS = tuple(round(0.05 * i, 2) for i in range(21))  # q = 0, 0.05, ..., 1


def median_distances(hyps: Tensor) -> Tensor:
    """Distance of each hypothesis to the per-joint, coordinate-wise median of the hypotheses (the mean of the
    two middle values for an even H): (H, ..., J, 3) -> (H, ..., J)."""
    if hyps.dim() < 3 or hyps.shape[-1] != 3:
        raise ValueError(f"hypotheses must be (H, ..., J, 3), got {tuple(hyps.shape)}")
    return torch.linalg.vector_norm(hyps - aggregate_hypotheses(hyps, "median"), dim=-1)


def quantile_radii(hyps: Tensor, levels: Tensor) -> Tensor:
    """Per joint, the q-quantiles (linear interpolation, as numpy's default) of the hypotheses' distances to
    their median: the radius of the sphere that holds a fraction q of them. (H, ..., J, 3) -> (Q, ..., J)."""
    ordered = median_distances(hyps).sort(dim=0).values                       # (H, ..., J)
    position = levels.to(torch.float64) * (ordered.shape[0] - 1)               # (Q,)
    lo, hi = position.floor().long(), position.ceil().long()
    w = (position - lo).to(ordered.dtype).reshape(-1, *([1] * (ordered.dim() - 1)))
    return ordered[lo] * (1.0 - w) + ordered[hi] * w


def calibration_curve(hyps: Tensor, target: Tensor, levels: Tensor | None = None) -> Tensor:
    """Quantile calibration per joint (Pierzchlewicz et al. 2022, cGNF): for each level q, the fraction of
    (sample, joint) pairs whose target lies inside the sphere around the hypotheses' median holding a fraction
    q of the hypotheses (strictly inside, as cGNF counts). Calibrated hypotheses give fraction(q) = q;
    overconfident ones fall below the diagonal. Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (Q,).
    (cGNF takes the median over joints of per-joint fractions; this pools the pairs, one number per q.)"""
    _check_hypotheses(hyps, target)
    if levels is None:
        levels = torch.tensor(CALIBRATION_LEVELS, dtype=torch.float64, device=hyps.device)
    radii = quantile_radii(hyps, levels)                                     # (Q, ..., J)
    inside = torch.linalg.vector_norm(target - aggregate_hypotheses(hyps, "median"), dim=-1) < radii
    return inside.flatten(1).to(torch.float64).mean(dim=1)


def calibration_error(curve: Tensor, levels: Tensor | None = None) -> Tensor:
    """The mean over the levels of |fraction(q) - q|: 0 for calibrated hypotheses, up to 0.5."""
    if levels is None:
        levels = torch.tensor(CALIBRATION_LEVELS, dtype=curve.dtype, device=curve.device)
    return (curve - levels).abs().mean()


def energy_score(hyps: Tensor, target: Tensor) -> Tensor:
    """Per joint, the energy score (the multivariate CRPS, Gneiting and Raftery 2007) of the N hypotheses as
    a sample of the predictive distribution, unbiased:
        ES = 1/N sum_i ||X_i - y|| - 1/(2 N (N-1)) sum_{i != j} ||X_i - X_j||,
    lower is better, 0 for a point mass at the target; with N = 1 the second term is 0 (ES is the error).
    Shapes hyps (H, ..., J, 3), target (..., J, 3) -> (..., J); unit of the input."""
    _check_hypotheses(hyps, target)
    n = hyps.shape[0]
    accuracy = torch.linalg.vector_norm(hyps - target, dim=-1).mean(dim=0)
    if n < 2:
        return accuracy
    pairs = sum(torch.linalg.vector_norm(hyps[i] - hyps, dim=-1).sum(dim=0) for i in range(n))  # i == j adds 0
    return accuracy - pairs / (2 * n * (n - 1))


def reliability(hyps: Tensor, target: Tensor, exact: Sequence[int] = ()) -> dict[str, Tensor]:
    """Every number of the hypotheses' reliability, metres where a length: ``calibration`` (the curve over
    CALIBRATION_LEVELS) and ``calibration_error``; ``energy_score``; ``coverage_50`` / ``coverage_90``
    (fraction of targets inside the 50 % / 90 % spheres) and ``sharpness_90`` (the 90 % spheres' mean radius),
    each averaged over the (sample, joint) pairs of the joints not in ``exact``; and, over every joint as P1
    is, the P1 of the ``mean`` and ``median`` hypothesis (fair: no ground truth used) and of the
    ``oracle_best`` (:func:`j_best_mpjpe`) and ``oracle_worst`` hypothesis per pose (ORACLE: chosen by the
    ground truth). ``exact``: joints every hypothesis gets exactly right by construction (the root of a
    root-relative pose): their spheres have radius 0, so they would count as outside at every level and add
    zeros to the energy score and the sharpness."""
    per_hypothesis = mpjpe(hyps, target.expand_as(hyps))                   # (H, ...), every joint
    fair = {f"{how}_hypothesis_p1": j_agg_mpjpe(hyps, target, how).mean() for how in ("mean", "median")}
    if exact:
        kept = [j for j in range(target.shape[-2]) if j not in exact]
        hyps, target = hyps[..., kept, :], target[..., kept, :]
    levels = torch.tensor(CALIBRATION_LEVELS, dtype=torch.float64, device=hyps.device)
    curve = calibration_curve(hyps, target, levels)
    radius_90 = quantile_radii(hyps, torch.tensor([0.9], dtype=torch.float64, device=hyps.device))[0]
    return {
        "calibration": curve,
        "calibration_error": calibration_error(curve, levels),
        "energy_score": energy_score(hyps, target).mean(),
        "coverage_50": curve[CALIBRATION_LEVELS.index(0.5)],
        "coverage_90": curve[CALIBRATION_LEVELS.index(0.9)],
        "sharpness_90": radius_90.mean(),
        **fair,
        "oracle_best_p1": per_hypothesis.amin(dim=0).mean(),
        "oracle_worst_p1": per_hypothesis.amax(dim=0).mean(),
    }


def per_action_means(errors: Tensor, actions: Tensor, num_actions: int) -> Tensor:
    """Mean error per action: ``means_a = sum_{i: actions_i = a} errors_i / #{i: actions_i = a}``.

    errors (N,) float, actions (N,) integer codes in [0, num_actions) -> (num_actions,) in the dtype
    of ``errors`` (accumulated in float64), NaN for actions without samples.
    """
    if errors.dim() != 1 or actions.shape != errors.shape:
        raise ValueError(
            f"errors and actions must both be (N,), got {tuple(errors.shape)}, {tuple(actions.shape)}"
        )
    if actions.dtype.is_floating_point or actions.dtype == torch.bool:
        raise ValueError(f"actions must be integer codes, got {actions.dtype}")
    if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= num_actions):
        raise ValueError(
            f"action codes must lie in [0, {num_actions}), got {int(actions.min())}..{int(actions.max())}"
        )
    actions = actions.long()
    wide = _wide_dtype(errors.device)
    sums = torch.zeros(num_actions, dtype=wide, device=errors.device)
    sums.index_add_(0, actions, errors.to(wide))
    counts = torch.bincount(actions, minlength=num_actions).to(wide)  # (num_actions,)
    means = torch.where(counts > 0, sums / counts.clamp_min(1.0), torch.nan)
    return means.to(errors.dtype)


def mean_of_action_means(errors: Tensor, actions: Tensor, num_actions: int) -> Tensor:
    """The reported Human3.6M number: the mean over present actions of ``per_action_means``.

    Every action weighs the same whatever its number of frames (VideoPose3D protocol). Scalar tensor;
    NaN when no action has samples.
    """
    return per_action_means(errors, actions, num_actions).nanmean()
