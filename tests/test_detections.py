from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffpose.data.detections import (
    SynthConfig,
    ar1_noise,
    clip_rng,
    error_sigma,
    h36m_metadata,
    read_gt_2d,
    runs,
    synthesize,
    synthesize_clip,
    synthesize_files,
    write_detections,
)
from diffpose.data.skeleton import EXTREMITIES, LEFT, NUM_JOINTS, RIGHT, flip_permutation
from diffpose.data.source import DataError, check_gmm

STAND_IN = Path(__file__).resolve().parents[2] / "shared" / "data" / "mocap17" / "data_2d_cmu_mocap17_gt.npz"
TORSO = (0, 7, 8, 9, 10)
# Swaps and outliers off: every detection is the main mode.
CLEAN = SynthConfig(swap_rate=0.0, outlier_rate=0.0)

# A front-facing person, 340 px tall, pelvis at (500, 500); left/right partners 50-260 px apart.
TEMPLATE = np.array(
    [
        [0, 0], [-25, 0], [-30, 90], [-35, 180], [25, 0], [30, 90], [35, 180], [0, -50], [0, -110],
        [0, -130], [0, -160], [40, -105], [90, -70], [130, -30], [-40, -105], [-90, -70], [-130, -30],
    ],
    dtype=np.float64,
) + [500.0, 500.0]


def still_clip(frames: int) -> np.ndarray:
    return np.repeat(TEMPLATE[None], frames, axis=0)  # (T, 17, 2)


def moving_clip(frames: int, speed: float) -> np.ndarray:
    """The template translated along u at ``speed`` px/frame: every joint moves at exactly that speed."""
    shift = np.stack([speed * np.arange(frames), np.zeros(frames)], -1)  # (T, 2)
    return still_clip(frames) + shift[:, None]


def clip(gt: np.ndarray, cfg: SynthConfig | None = None, key: tuple = ("S", "a", 0)):
    cfg = cfg or SynthConfig()
    return synthesize_clip(gt, clip_rng(cfg.seed, *key), cfg)


def error(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.linalg.norm(det - gt, axis=-1)  # (T, 17)


def swapped_frames(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(T, 17): the detection is nearer the mirror joint's ground truth than its own."""
    return error(det, gt[:, flip_permutation()]) < error(det, gt)


# ---- the mixture is well formed ----


def test_gmm_is_a_sorted_normalised_mixture_and_detection_is_its_top_mean():
    gt = moving_clip(600, 3.0)
    cfg = SynthConfig(swap_rate=0.05, outlier_rate=0.02)
    gmm, det = clip(gt, cfg)
    assert gmm.shape == (600, NUM_JOINTS, 3, 5) and det.shape == (600, NUM_JOINTS, 2)
    assert gmm.dtype == np.float32 and det.dtype == np.float32
    check_gmm("synth", gmm, "clip", atol=1e-5)
    assert (gmm[..., 3:5] > 0).all()
    assert (np.diff(gmm[..., 0], axis=-1) <= 0).all()
    np.testing.assert_array_equal(det, gmm[:, :, 0, 1:3])
    assert (gmm[..., 1:2, 0] > 0).any()  # richer than DiffPose's (1, 0, 0)


def test_main_sigma_is_the_expected_error_and_calibrated():
    """Without swaps/outliers, kernel 0 is N(gt, s^2 I): sigma = s and E|det - gt| = s sqrt(pi / 2)."""
    gt = still_clip(4000)
    gmm, det = clip(gt, CLEAN)
    s = error_sigma(gt, CLEAN)  # (T, 17)
    np.testing.assert_allclose(gmm[:, :, 0, 3], s, rtol=1e-6)
    np.testing.assert_allclose(gmm[:, :, 0, 4], s, rtol=1e-6)
    ratio = error(det, gt).mean() / s.mean()
    assert ratio == pytest.approx(np.sqrt(np.pi / 2), rel=0.03)


def test_single_kernel_and_padding():
    gt = moving_clip(200, 2.0)
    cfg = SynthConfig(swap_rate=0.05, outlier_rate=0.02)
    g4, d4 = clip(gt, replace(cfg, kernels=4))
    g1, d1 = clip(gt, replace(cfg, kernels=1))
    g6, _ = clip(gt, replace(cfg, kernels=6))
    assert g1.shape == (200, NUM_JOINTS, 1, 5)
    np.testing.assert_array_equal(g1[..., 0, 0], 1.0)
    np.testing.assert_array_equal(d1, d4)
    np.testing.assert_array_equal(g1[..., 0, 1:], g4[..., 0, 1:])
    np.testing.assert_array_equal(g6[..., :4, 1:], g4[..., 1:])
    np.testing.assert_allclose(g6[..., :4, 0], g4[..., 0], atol=1e-7)
    assert (g6[..., 4:, 0] == 0).all() and (g6[..., 3:5] > 0).all()


def test_affine_equivariance():
    """A person twice as large (twice as near) gets exactly twice the error; a shifted one the same error."""
    gt = moving_clip(300, 4.0)
    cfg = SynthConfig(swap_rate=0.05, outlier_rate=0.02)
    _, det = clip(gt, cfg)
    offset = np.array([-120.0, 35.0])
    _, det2 = clip(2.0 * gt + offset, cfg)
    np.testing.assert_allclose(det2 - (2.0 * gt + offset), 2.0 * (det - gt), atol=2e-3)


# ---- statistics a real detector has ----


def test_error_grows_at_elbows_knees_and_extremities():
    gt = still_clip(3000)
    _, det = clip(gt, CLEAN)
    err = error(det, gt)
    ext, torso = err[:, list(EXTREMITIES)].mean(), err[:, list(TORSO)].mean()
    assert ext / torso == pytest.approx(CLEAN.extremity_factor, rel=0.1)
    limb = err[:, [2, 5, 12, 15]].mean()
    assert limb / torso == pytest.approx(CLEAN.limb_factor, rel=0.1)


def test_error_grows_with_speed():
    speed = 10.0
    still, moving = still_clip(3000), moving_clip(3000, speed)
    _, d_still = clip(still, CLEAN)
    _, d_moving = clip(moving, CLEAN, key=("S", "b", 0))
    scale = 340.0 / CLEAN.reference_size_px
    expect = (scale + CLEAN.speed_factor * speed) / scale
    ratio = error(d_moving, moving).mean() / error(d_still, still).mean()
    assert ratio == pytest.approx(expect, rel=0.1)


def test_error_is_temporally_correlated():
    gt = still_clip(3000)
    _, det = clip(gt, CLEAN)
    e = (det - gt).reshape(3000, -1)  # (T, 34)
    e = e - e.mean(0)
    lag1 = (e[1:] * e[:-1]).sum() / (e * e).sum()
    assert lag1 == pytest.approx(CLEAN.error_correlation, abs=0.03)


def test_swaps_come_in_runs_at_the_configured_rate_and_exchange_the_pair():
    gt = still_clip(4000)
    cfg = SynthConfig(swap_rate=0.05, outlier_rate=0.0)
    gmm, det = clip(gt, cfg)
    swapped = swapped_frames(det, gt)
    assert not swapped[:, list(TORSO)].any()
    np.testing.assert_array_equal(swapped[:, list(LEFT)], swapped[:, list(RIGHT)])  # labels exchanged
    assert swapped[:, list(LEFT)].mean() == pytest.approx(0.05, rel=0.3)
    starts = (swapped[1:] & ~swapped[:-1]).sum()
    assert 6.0 < swapped[1:].sum() / starts < 9.0  # runs of 3..12 frames, mean 7.5 (a later run cuts one)
    mirror = gt[:, flip_permutation()]
    sigma_mirror = error_sigma(gt, cfg)[:, flip_permutation()]
    assert (error(det, mirror)[swapped] < 5.0 * sigma_mirror[swapped]).all()
    # the true position keeps a kernel of weight > 0.1 while the swap wins
    near_true = np.linalg.norm(gmm[..., 1:3] - gt[:, :, None], axis=-1) < 5.0 * gmm[..., 3]
    assert ((gmm[..., 0] > 0.1) & near_true).any(-1)[swapped].all()


def test_outliers_win_rarely_and_weak_outlier_modes_exist():
    gt = still_clip(4000)
    cfg = SynthConfig(swap_rate=0.0, swap_ambiguity=0.0, outlier_rate=0.02, outlier_distance_px=(40.0, 80.0))
    gmm, det = clip(gt, cfg)
    won = error(det, gt) > 25.0  # 40 px at 340/400 scale is 34 px; a main-mode error of 25 px is > 4.8 sigma
    assert won.mean() == pytest.approx(0.02, rel=0.3)
    # a far, light kernel (weak outlier mode) in about outlier_mode_rate of the joint-frames
    far = np.linalg.norm(gmm[..., 1:3] - det[:, :, None], axis=-1) > 25.0
    light = (gmm[..., 0] > 0) & (gmm[..., 0] < 0.3)
    assert ((far & light).any(-1) & ~won).mean() == pytest.approx(cfg.outlier_mode_rate, rel=0.3)


def test_gmm_covers_the_ground_truth():
    gt = moving_clip(3000, 3.0)
    gmm, _ = clip(gt, SynthConfig(swap_rate=0.03, outlier_rate=0.01))
    z = np.linalg.norm((gt[:, :, None] - gmm[..., 1:3]) / gmm[..., 3:5], axis=-1)  # (T, 17, M)
    covered = ((z < 2.0) & (gmm[..., 0] > 0.1)).any(-1)
    assert covered.mean() > 0.97


# ---- determinism ----


def test_clip_output_is_deterministic_and_independent_of_other_clips():
    a, b, c = moving_clip(80, 1.0), moving_clip(90, 2.0), moving_clip(70, 3.0)
    det_ab, gmm_ab = synthesize({"S1": {"Walk": [a, b]}})
    det_all, gmm_all = synthesize({"S0": {"Jump": [c]}, "S1": {"Eat": [c], "Walk": [a, b]}})
    for cam in range(2):
        np.testing.assert_array_equal(det_ab["S1"]["Walk"][cam], det_all["S1"]["Walk"][cam])
        np.testing.assert_array_equal(gmm_ab["S1"]["Walk"][cam], gmm_all["S1"]["Walk"][cam])
    again, _ = synthesize({"S1": {"Walk": [a, b]}})
    np.testing.assert_array_equal(again["S1"]["Walk"][1], det_ab["S1"]["Walk"][1])
    # the same ground truth under another key or seed gets other errors
    assert not np.array_equal(det_all["S1"]["Eat"][0], det_all["S0"]["Jump"][0])
    other_seed, _ = synthesize({"S1": {"Walk": [a, b]}}, SynthConfig(seed=1))
    assert not np.array_equal(other_seed["S1"]["Walk"][0], det_ab["S1"]["Walk"][0])


def test_clip_rng_is_a_stable_hash():
    """Pinned generator states: a change of hash or seeding would silently change every synthesised file."""

    def state(*key) -> int:
        return clip_rng(*key).bit_generator.state["state"]["state"]

    assert state(0, "S1", "Walk", 0) == 305010204102041789752135982333892081788
    assert state(7, "cmu02", "Boxing 02_05", 3) == 215520695308816619431434801242705223920
    assert clip_rng(0, "S1", "Walk", 0).random() != clip_rng(0, "S1", "Walk", 1).random()
    assert clip_rng(0, "S1", "Walk 1", 0).random() != clip_rng(0, "S1 Walk", "1", 0).random()


# ---- helpers ----


def test_ar1_noise_has_unit_variance_and_lag_one_correlation():
    x = ar1_noise(np.random.default_rng(0), 20000, (4,), 0.8)
    assert x.shape == (20000, 4)
    assert x.var() == pytest.approx(1.0, rel=0.05)
    assert (x[1:] * x[:-1]).mean() == pytest.approx(0.8, abs=0.03)
    white = ar1_noise(np.random.default_rng(0), 20000, (4,), 0.0)
    assert abs((white[1:] * white[:-1]).mean()) < 0.03


def test_runs_known_cases():
    rng = np.random.default_rng(0)
    none, start = runs(rng, 50, 3, 0.0, (2, 4))
    assert not none.any() and (start == -1).all()
    every, _ = runs(rng, 50, 3, 1.0, (1, 1))
    assert every.all()
    mask, _ = runs(rng, 20000, 2, 0.1, (5, 5))
    assert mask.mean() == pytest.approx(0.1, rel=0.15)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="kernels"):
        SynthConfig(kernels=0)
    with pytest.raises(ValueError, match="win_weight"):
        SynthConfig(win_weight=(0.5, 2.0))
    with pytest.raises(ValueError, match="error_correlation"):
        SynthConfig(error_correlation=1.0)
    with pytest.raises(ValueError, match="swap_length"):
        SynthConfig(swap_length=(4, 2))


def test_clip_input_is_checked():
    with pytest.raises(ValueError, match="shape"):
        clip(np.zeros((5, 16, 2)))
    bad = still_clip(5)
    bad[2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clip(bad)
    gmm, det = clip(still_clip(1))  # one frame: zero speed, still well formed
    check_gmm("synth", gmm, "one frame", atol=1e-5)


# ---- files ----


def test_files_round_trip_in_videopose3d_layout(tmp_path: Path):
    gt = {"S1": {"Walk 1": [moving_clip(40, 1.0), moving_clip(40, 2.0)]}, "S2": {"Eat": [still_clip(25)]}}
    det, gmm = synthesize(gt)
    plain_path, gmm_path = write_detections(tmp_path, "toy", "synth", det, gmm, h36m_metadata())
    assert plain_path.name == "data_2d_toy_synth.npz" and gmm_path.name == "data_2d_toy_synth_gmm.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plain_path.name, gmm_path.name])  # no temp
    for path, expect, tail in ((plain_path, det, (NUM_JOINTS, 2)), (gmm_path, gmm, (NUM_JOINTS, 3, 5))):
        with np.load(path, allow_pickle=True) as f:
            assert sorted(f.files) == ["metadata", "positions_2d"]
            positions, metadata = f["positions_2d"].item(), f["metadata"].item()
        symmetry = [[4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]]
        assert metadata == {"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": symmetry}
        assert positions.keys() == gt.keys() and positions["S1"].keys() == {"Walk 1"}
        cams = positions["S1"]["Walk 1"]
        assert isinstance(cams, list) and len(cams) == 2
        assert cams[1].dtype == np.float32 and cams[1].shape == (40, *tail)
        np.testing.assert_array_equal(cams[1], expect["S1"]["Walk 1"][1])
        assert positions["S2"]["Eat"][0].shape == (25, *tail)


def test_synthesize_files_reads_gt_and_refuses_to_overwrite_it(tmp_path: Path):
    gt = {"S1": {"Walk": [moving_clip(30, 1.0)] * 4}}
    gt_path = tmp_path / "data_2d_toy_gt.npz"
    np.savez_compressed(gt_path, positions_2d=np.array(gt, dtype=object), metadata=np.array(h36m_metadata()))
    plain_path, gmm_path = synthesize_files(gt_path, tmp_path, "toy", cfg=SynthConfig(kernels=2))
    with np.load(gmm_path, allow_pickle=True) as f:
        assert f["positions_2d"].item()["S1"]["Walk"][3].shape == (30, NUM_JOINTS, 2, 5)
    det, _ = synthesize(gt, SynthConfig(kernels=2))
    with np.load(plain_path, allow_pickle=True) as f:
        np.testing.assert_array_equal(f["positions_2d"].item()["S1"]["Walk"][2], det["S1"]["Walk"][2])
    with pytest.raises(ValueError, match="overwrite"):
        synthesize_files(gt_path, tmp_path, "toy", detector="gt")


def test_read_gt_2d_names_the_file_and_problem(tmp_path: Path):
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, positions_2d=np.array({"S1": {"Walk": [np.zeros((5, 16, 2))]}}, dtype=object))
    with pytest.raises(DataError, match=r"bad\.npz: S1/Walk/cam0: expected a \(T, 17, 2\) array"):
        read_gt_2d(path)
    np.savez_compressed(path, poses=np.zeros(3))
    with pytest.raises(DataError, match="positions_2d"):
        read_gt_2d(path)
    with pytest.raises(DataError, match="not found"):
        read_gt_2d(tmp_path / "missing.npz")
    meta = dict(h36m_metadata(), keypoints_symmetry=[[1, 2, 3], [4, 5, 6]])
    np.savez_compressed(path, positions_2d=np.array({}, dtype=object), metadata=np.array(meta, dtype=object))
    with pytest.raises(DataError, match="h36m layout"):
        read_gt_2d(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an npz archive"):
        read_gt_2d(path)


@pytest.mark.skipif(not STAND_IN.is_file(), reason="CMU stand-in not present")
def test_stand_in_errors_are_in_cpn_range():
    """On real motion (a few clips), the mean detection error is a few px, worst at wrists and ankles."""
    gt_all = read_gt_2d(STAND_IN)
    gt = {s: {a: gt_all[s][a]} for s, a in (("cmu02", "Boxing 02_05"), ("cmu07", "Walking 07_01"))}
    if any(a not in gt_all[s] for s, acts in gt.items() for a in acts):
        pytest.skip("stand-in clips renamed")
    det, gmm = synthesize(gt)
    pairs = [(det[s][a][c], gt[s][a][c]) for s in gt for a in gt[s] for c in range(4)]
    err = np.concatenate([error(d, g) for d, g in pairs])  # (T, 17)
    assert 4.0 < err.mean() < 8.0
    assert err[:, list(EXTREMITIES)].mean() > 1.8 * err[:, list(TORSO)].mean()
    for s in gmm:
        for a in gmm[s]:
            for g in gmm[s][a]:
                check_gmm(STAND_IN, g, f"{s}/{a}", atol=1e-5)
