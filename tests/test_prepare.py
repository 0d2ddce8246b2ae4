"""`diffpose-bench prepare` end to end: real formats in, a store out, and clear errors with exit 2."""

import json

import numpy as np
import pytest
from formats import save_npz, write_h36m_2d, write_h36m_3d, write_h36m_gmm

from benchmark.cli import main
from diffpose.data.h36m import h36m_cameras
from diffpose.data.store import PoseStore

LAYOUT = {"S1": {"Directions 1": 12, "TakingPhoto 1": 8}, "S8": {"Eating": 6}, "S9": {"Walking 1": 10}}


@pytest.fixture
def h36m_root(tmp_path):
    cameras = h36m_cameras()
    root = tmp_path / "h36m"
    root.mkdir()
    poses = write_h36m_3d(root / "data_3d_h36m.npz", LAYOUT, joints=32)
    write_h36m_2d(root / "data_2d_h36m_cpn_ft_h36m_dbb.npz", poses, cameras, extra_frames=2, noise_px=3.0)
    write_h36m_gmm(root / "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz", poses, cameras, extra_frames=2)
    return root, poses


def test_prepare_h36m_writes_a_store_and_prints_row_counts(h36m_root, tmp_path, capsys):
    root, _ = h36m_root
    out = tmp_path / "store"
    assert main(["prepare", "--dataset", "h36m", "--root", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "144 rows" in printed  # (12 + 8 + 6 + 10) frames x 4 cameras
    assert "train       104 rows" in printed and "test         40 rows" in printed
    store = PoseStore.open(out)
    assert store.meta["dataset"] == "h36m" and store.meta["detector"] == "cpn_ft_h36m_dbb"
    assert set(store.action_classes) == {"Directions", "Photo", "Eating", "Walking"}
    assert store.gmm_2d.shape == (144, 17, 3, 5)


def _bad_inputs(root, poses):
    cams = h36m_cameras()
    det = root / "data_2d_h36m_cpn_ft_h36m_dbb.npz"
    gmm = root / "data_2d_h36m_cpn_ft_h36m_dbb_gmm.npz"
    p3d = root / "data_3d_h36m.npz"
    stored = np.load(p3d, allow_pickle=True)["positions_3d"].item()
    return {
        "missing file": (lambda: p3d.unlink(), "data_3d_h36m.npz"),
        "wrong npz key": (lambda: save_npz(p3d, poses_3d=stored), "positions_3d"),
        "wrong joint count": (
            lambda: save_npz(p3d, positions_3d={s: {a: v[:, :20] for a, v in acts.items()}
                                                for s, acts in stored.items()}),
            "data_3d_h36m.npz"),
        "NaN in 3D": (lambda: save_npz(p3d, positions_3d={
            s: {a: np.where(np.arange(len(v))[:, None, None] == 1, np.nan, v) for a, v in acts.items()}
            for s, acts in stored.items()}), "NaN"),
        "2D shorter than 3D": (lambda: (write_h36m_2d(det, poses, cams, extra_frames=-1),
                                        write_h36m_gmm(gmm, poses, cams, extra_frames=-1)), "data_2d_h36m"),
        "GMM weights do not sum to 1": (lambda: write_h36m_gmm(gmm, poses, cams, weights=(0.5, 0.2, 0.1),
                                                               extra_frames=2), "sum to"),
        "unknown subject": (lambda: write_h36m_3d(p3d, {**LAYOUT, "S42": {"Walking": 5}}), "S42"),
    }


@pytest.mark.parametrize("case", ["missing file", "wrong npz key", "wrong joint count", "NaN in 3D",
                                  "2D shorter than 3D", "GMM weights do not sum to 1", "unknown subject"])
def test_bad_input_exits_2_with_one_line_naming_the_file_and_writes_nothing(h36m_root, tmp_path, capsys, case):
    root, poses = h36m_root
    corrupt, needle = _bad_inputs(root, poses)[case]
    corrupt()
    out = tmp_path / "store"
    code = main(["prepare", "--dataset", "h36m", "--root", str(root), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(root) in err
    assert needle in err
    assert not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".store")] == []  # no temp dir left


def test_missing_root_directory(tmp_path, capsys):
    assert main(["prepare", "--dataset", "mocap17", "--root", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "s")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.slow
def test_stand_in_prepared_end_to_end(mocap_store):
    """The shipped CMU stand-in with synthesised detections: counts from its README, splits, sources kept."""
    store = PoseStore.open(mocap_store)
    meta = store.meta
    assert meta["rows"] == 26374 * 4 and meta["rows_per_split"]["test"] == 7407 * 4
    assert meta["dataset"] == "mocap17" and meta["detector"] == "synth" and meta["kernels"] == 3
    assert meta["default_val"] == ["cmu08"]
    assert {p.name for p in (mocap_store / "sources").iterdir()} == {
        "data_2d_cmu_mocap17_synth.npz", "data_2d_cmu_mocap17_synth_gmm.npz"}
    assert np.allclose(store.gmm_2d[..., 0].sum(-1), 1.0, atol=1e-4)
    # detections differ from the exact projections by a few pixels (normalised units: px * 2 / 1000)
    err_px = np.linalg.norm(store.pose_2d - store.gmm_2d[:, :, 0, 1:3], axis=-1).mean() * 500
    assert err_px < 1.0  # the detection is the heaviest kernel's mean
    assert json.loads((mocap_store / "meta.json").read_text())["fingerprint"] == meta["fingerprint"]
