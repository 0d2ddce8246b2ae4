"""GMMs fitted to heatmaps (diffpose.data.heatmaps): known mixtures rendered as heatmaps come back, one peak is
one kernel, one kernel is the mass's mean and covariance, the grid lies where its box or affine says, COCO
heatmaps become our joints, and `diffpose-bench fit-gmm` writes the files `prepare` reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from formats import project_poses, write_h36m_3d

from benchmark.cli import main
from diffpose.data.h36m import h36m_cameras, read_gmm_2d
from diffpose.data.heatmaps import box_affine, cell_positions, fit_clip, fit_heatmaps, read_heatmaps
from diffpose.data.keypoints import COCO_SOURCES
from diffpose.data.store import PoseStore

H, W = 64, 48
BOX = np.array([[100.0, 200.0, 292.0, 456.0]])   # 4 px per cell both ways


def positions(affine: np.ndarray, height: int = H, width: int = W) -> np.ndarray:
    return cell_positions(torch.from_numpy(affine), height, width).numpy()   # (N, K, 2)


def render(x: np.ndarray, pi, mu, sigma, height: int = H, width: int = W) -> np.ndarray:
    """A heatmap (H, W): the mixture's density at each cell's image position ``x`` (K, 2)."""
    d = np.zeros(len(x))
    for p, m, s in zip(pi, np.asarray(mu, float), np.asarray(sigma, float), strict=True):
        d += p * np.exp(-0.5 * (((x - m) / s) ** 2).sum(-1)) / (2 * np.pi * s[0] * s[1])
    return d.reshape(height, width)


# Three mixtures inside BOX (u 100..292, v 200..456), modes 4 sigma or more apart and from the border.
MIXTURES = [
    ([0.6, 0.3, 0.1], [[160, 280], [230, 380], [180, 420]], [[8, 10], [12, 6], [7, 7]]),
    ([0.5, 0.5, 0.0], [[150, 260], [240, 400], [0, 0]], [[6, 6], [9, 12], [1, 1]]),
    ([0.8, 0.15, 0.05], [[200, 330], [140, 240], [260, 430]], [[10, 14], [6, 6], [5, 5]]),
]


def test_known_mixtures_rendered_as_heatmaps_are_recovered():
    x = positions(box_affine(BOX, H, W))[0]
    heatmaps = np.stack([render(x, *m) for m in MIXTURES])
    fitted = fit_heatmaps(heatmaps, np.repeat(box_affine(BOX, H, W), len(MIXTURES), 0), kernels=3)
    errors = {"pi": 0.0, "mu_px": 0.0, "sigma_rel": 0.0}
    for g, (pi, mu, sigma) in zip(fitted, MIXTURES, strict=True):
        live = [k for k in np.argsort(-np.asarray(pi), kind="stable") if pi[k] > 0]
        assert len(live) == (g[:, 0] > 0).sum()                       # one kernel per separate peak
        truth = np.array([[pi[k], *mu[k], *sigma[k]] for k in live])
        got = g[:len(live)]
        errors["pi"] = max(errors["pi"], np.abs(got[:, 0] - truth[:, 0]).max())
        errors["mu_px"] = max(errors["mu_px"], np.abs(got[:, 1:3] - truth[:, 1:3]).max())
        errors["sigma_rel"] = max(errors["sigma_rel"], (np.abs(got[:, 3:5] - truth[:, 3:5]) / truth[:, 3:5]).max())
        assert np.allclose(g[:, 0].sum(), 1.0)
    print("recovery errors (max over kernels):", errors)
    # Measured: pi 8e-7, mu 2e-4 px, sigma 3e-5 relative (EM stopped at a log-likelihood gain < 1e-10; the
    # sampled densities' moments are the continuous ones to that precision at >= 1.25 cells per sigma).
    assert errors["pi"] < 1e-3 and errors["mu_px"] < 0.01 and errors["sigma_rel"] < 1e-3


def test_a_single_peak_gives_one_dominant_kernel():
    # MMPose's MSRA target: an unnormalised Gaussian of peak 1, sigma 2 cells (8 px), plus a bump below 10 %.
    x = positions(box_affine(BOX, H, W))[0]
    peak = np.exp(-0.5 * (((x - [190.0, 330.0]) / 8.0) ** 2).sum(-1)).reshape(H, W)
    bump = 0.05 * np.exp(-0.5 * (((x - [130.0, 240.0]) / 6.0) ** 2).sum(-1)).reshape(H, W)
    fitted = fit_heatmaps(np.stack([peak, peak + bump]), np.repeat(box_affine(BOX, H, W), 2, 0), kernels=3)
    assert fitted[0, 0, 0] == 1.0 and (fitted[0, 1:, 0] == 0).all()
    assert np.allclose(fitted[0, 0, 1:], [190.0, 330.0, 8.0, 8.0], atol=1e-4)
    assert fitted[1, 0, 0] == 1.0                                   # the weak bump seeds no kernel
    assert (fitted[0, 1:, 1:] == fitted[0, :1, 1:]).all()           # padding: the heaviest kernel, weight 0


def test_one_kernel_is_the_mass_mean_and_covariance_diagonal():
    rng = np.random.default_rng(0)
    heat = rng.uniform(-0.2, 1.0, (2, H, W))                        # negative values are no mass
    affine = box_affine(np.array([[10.0, 20.0, 200.0, 300.0], [-50.0, 0.0, 46.0, 128.0]]), H, W)
    fitted = fit_heatmaps(heat, affine, kernels=1)
    x = positions(affine)
    w = np.clip(heat, 0, None).reshape(2, -1)
    w /= w.sum(1, keepdims=True)
    mean = np.einsum("nk,nka->na", w, x)
    var = np.einsum("nk,nka->na", w, (x - mean[:, None]) ** 2)
    assert np.allclose(fitted[:, 0, 0], 1.0)
    assert np.allclose(fitted[:, 0, 1:3], mean, rtol=0, atol=1e-9)
    assert np.allclose(fitted[:, 0, 3:5], np.sqrt(var), rtol=1e-9)


def test_the_grid_lies_where_the_box_and_the_affine_put_it():
    heat = np.zeros((1, H, W))
    heat[0, 10, 7] = 1.0                                            # one cell: row 10, column 7
    g = fit_heatmaps(heat, box_affine(BOX, H, W), kernels=2)[0]
    assert np.allclose(g[0, 1:3], [100.0 + 7 * 4.0, 200.0 + 10 * 4.0])          # u = x1 + j bw / W
    assert np.allclose(g[0, 3:5], 4.0 / np.sqrt(12.0))              # a uniform cell's std: the floor
    # A rotated crop (30 degrees, 3 px cells): the fit is in the image's axes.
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.array([[[3 * c, -3 * s, 400.0], [3 * s, 3 * c, 100.0]]])
    x = positions(affine)[0]
    mix = ([0.7, 0.3], [[430.0, 170.0], [380.0, 240.0]], [[6.0, 9.0], [7.0, 5.0]])
    g = fit_heatmaps(render(x, *mix)[None], affine, kernels=2)[0]
    assert np.allclose(g[:, 0], mix[0], atol=1e-4)
    assert np.allclose(g[:, 1:3], mix[1], atol=1e-2)
    assert np.allclose(g[:, 3:5], mix[2], rtol=1e-3)


def test_coco_heatmaps_become_our_joints_as_mixtures_of_their_sources(tmp_path):
    rng = np.random.default_rng(1)
    t = 2
    centres = rng.uniform([140, 240], [250, 410], (t, 17, 2))
    sigmas = rng.uniform(5.0, 9.0, (t, 17))
    x = positions(box_affine(BOX, H, W))[0]
    heat = np.stack([np.stack([render(x, [1.0], [centres[f, j]], [[sigmas[f, j]] * 2]) for j in range(17)])
                     for f in range(t)])
    path = tmp_path / "coco.npz"
    np.savez(path, heatmaps=heat, boxes=np.repeat(BOX, t, 0))
    ours = fit_clip(read_heatmaps(path), kernels=2, layout="coco")
    assert ours.shape == (t, 17, 2, 5) and ours.dtype == np.float32
    for j, sources in COCO_SOURCES.items():
        idx, w = list(sources), np.array(list(sources.values()))
        mu = (w[:, None] * centres[:, idx]).sum(1)                  # (T, 2)
        sigma = np.sqrt((w**2 * sigmas[:, idx] ** 2).sum(1))        # the weighted sum's std
        assert np.allclose(ours[:, j, 0, 0], 1.0) and np.allclose(ours[:, j, 1, 0], 0.0)
        assert np.allclose(ours[:, j, 0, 1:3], mu, atol=1e-3)
        assert np.allclose(ours[:, j, 0, 3], sigma, rtol=1e-4) and np.allclose(ours[:, j, 0, 4], sigma, rtol=1e-4)


# Human3.6M-named subjects: S1 trains, S8 validates, S9 tests (prepare's split).
LAYOUT = {"S1": {"Directions 1": 2}, "S8": {"Eating": 2}, "S9": {"Walking 1": 2}}
MARGIN, CELLS = 160.0, 64  # each frame's crop: the joints' extent and 160 px, in 64 x 64 cells (<= 15 px)


def known_mixture(uv: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, 17, 2, 5): a main kernel on the projection and a lighter one 45-70 px away, pixels."""
    t = uv.shape[0]
    g = np.zeros((t, 17, 2, 5))
    g[..., 0, 0], g[..., 1, 0] = 0.75, 0.25
    g[..., 0, 1:3] = uv
    angle = rng.uniform(0, 2 * np.pi, (t, 17))
    radius = rng.uniform(45.0, 70.0, (t, 17))
    g[..., 1, 1:3] = uv + radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    g[..., 0, 3:5] = rng.uniform(10.0, 12.0, (t, 17, 1))
    g[..., 1, 3:5] = rng.uniform(11.0, 14.0, (t, 17, 1))
    return g


def test_fit_gmm_writes_the_files_prepare_reads(tmp_path, capsys):
    root = tmp_path / "h36m"
    root.mkdir()
    cams = h36m_cameras()
    projected = project_poses(write_h36m_3d(root / "data_3d_h36m.npz", LAYOUT, joints=32), cams)
    rng = np.random.default_rng(2)
    files, truth = [], {}
    for subject, actions in projected.items():
        for action, per_camera in actions.items():
            for c, uv in enumerate(per_camera):
                g = known_mixture(uv, rng)
                boxes = np.concatenate([uv.min(1) - MARGIN, uv.max(1) + MARGIN], 1)  # (T, 4)
                x = positions(box_affine(boxes, CELLS, CELLS), CELLS, CELLS)          # (T, K, 2)
                heat = np.stack([np.stack([render(x[f], g[f, j, :, 0], g[f, j, :, 1:3], g[f, j, :, 3:5], CELLS,
                                                  CELLS) for j in range(17)]) for f in range(len(uv))])
                path = tmp_path / f"{subject}_{action}_{c}.npz".replace(" ", "_")
                cam = cams[subject][c]
                np.savez(path, heatmaps=heat.astype(np.float32), boxes=boxes, subject=subject, action=action,
                         camera=c, image_size=np.array([cam.width, cam.height]))
                files.append(path)
                truth[subject, action, c] = g
    code = main(["fit-gmm", *map(str, files), "--out", str(root), "--name", "h36m", "--detector", "hm",
                 "--layout", "h36m", "--kernels", "2"])
    assert code == 0, capsys.readouterr().err
    assert "2.00 live kernels per joint" in capsys.readouterr().out
    written = read_gmm_2d(root / "data_2d_h36m_hm_gmm.npz")             # the reader prepare uses
    worst = np.zeros(5)
    for (subject, action, c), g in truth.items():
        got = written[subject][action][c]
        assert got.shape == g.shape and got.dtype == np.float32
        worst = np.maximum(worst, np.abs(got - g).reshape(-1, 5).max(0))
    print("fit-gmm through prepare's reader, max |error| (pi, mu_u px, mu_v px, sigma_u px, sigma_v px):", worst)
    # Measured: pi 6e-5, mu 0.010 px, sigma 0.002 px (float32 heatmaps, cells up to 15 px for sigmas of 10-14).
    assert worst[0] < 1e-3 and worst[1:].max() < 0.05
    store = tmp_path / "store"
    assert main(["prepare", "--dataset", "h36m", "--root", str(root), "--detector", "hm", "--out", str(store)]) == 0
    opened = PoseStore.open(store)
    assert opened.meta["kernels"] == 2 and opened.meta["detector"] == "hm"
    first = np.flatnonzero((opened.subject == opened.subjects.index("S9")) & (opened.camera == 0))
    g = truth["S9", "Walking 1", 0]
    width, height = cams["S9"][0].width, cams["S9"][0].height
    expect_mu = g[..., 1:3] / width * 2 - [1, height / width]           # the store's normalised units
    assert np.allclose(opened.gmm_2d[first][..., 1:3], expect_mu, atol=1e-4)
    assert np.allclose(opened.gmm_2d[first][..., 3:5], g[..., 3:5] * 2 / width, atol=1e-4)
    assert np.allclose(opened.pose_2d[first], expect_mu[:, :, 0], atol=1e-4)  # plain file: the heaviest mean


@pytest.mark.parametrize("kernels", [1, 4])
def test_any_number_of_kernels_is_well_formed(kernels):
    x = positions(box_affine(BOX, H, W))[0]
    g = fit_heatmaps(render(x, *MIXTURES[0])[None], box_affine(BOX, H, W), kernels=kernels)[0]
    assert g.shape == (kernels, 5) and np.isclose(g[:, 0].sum(), 1.0)
    assert (np.diff(g[:, 0]) <= 0).all() and (g[:, 3:5] > 0).all()
