"""The CMU stand-in, read from the shipped files (~17 MB)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpose.data.camera import project
from diffpose.data.h36m import read_cameras
from diffpose.data.mocap import read_mocap17
from diffpose.data.source import DataError

ROOT = Path(os.environ.get("MOCAP_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "mocap17"))
pytestmark = pytest.mark.skipif(not (ROOT / "data_3d_cmu_mocap17.npz").is_file(), reason=f"no data at {ROOT}")


@pytest.fixture(scope="module")
def mocap():
    return read_mocap17(ROOT)


def test_counts_and_split(mocap):
    info, clips = mocap
    meta = json.loads((ROOT / "meta_cmu_mocap17.json").read_text())
    frames = sum(c["frames"] for c in meta["clips"])
    assert frames == 26374  # the README's 18967 train + 7407 test
    assert sum(c.frames for c in clips) == frames * 4
    assert len(clips) == 90 * 4
    assert info.splits == {"train": ("cmu01", "cmu05", "cmu06", "cmu07", "cmu08", "cmu09", "cmu12"),
                           "test": ("cmu02", "cmu13")}
    assert info.fps == 50.0 and info.dataset == "mocap17" and info.detector == "gt"
    test_frames = sum(c.frames for c in clips if c.subject in info.splits["test"])
    assert test_frames == 7407 * 4
    assert {c.subject for c in clips} == set(info.splits["train"]) | set(info.splits["test"])


def test_camera_frame_3d_reprojects_onto_the_shipped_gt_2d(mocap):
    """The 2D was made by the fixture's own code (rotation matrices); ours goes through quaternions."""
    _, clips = mocap
    cameras = read_cameras(ROOT / "cameras_cmu_mocap17.json")
    worst = 0.0
    for c in clips:
        cam = cameras[c.subject][c.camera]
        focal, center = torch.from_numpy(cam.focal), torch.from_numpy(cam.center)
        uv = project(torch.from_numpy(c.pose_3d).double(), focal, center).numpy()
        worst = max(worst, float(np.abs(uv - c.pose_2d).max()))
        assert (c.width, c.height) == (cam.width, cam.height)
    assert worst < 0.05


def test_camera_frame_matches_the_shipped_matrices(mocap):
    """x_cam = R_world_to_cam X + t_world_to_cam, the json's redundant form of each camera."""
    _, clips = mocap
    doc = json.loads((ROOT / "cameras_cmu_mocap17.json").read_text())
    c = next(c for c in clips if c.subject == "cmu13" and c.camera == 2)
    ext = doc["extrinsics"]["cmu13"][2]
    expect = c.world_3d @ np.array(ext["R_world_to_cam"]).T + np.array(ext["t_world_to_cam"])
    np.testing.assert_allclose(c.pose_3d, expect, atol=2e-5)


def test_gmm_is_a_single_recorded_kernel(mocap):
    info, clips = mocap
    assert clips[0].gmm.shape[2] == 1
    assert "single kernel" in info.notes["gmm"]


def test_detections_dir_and_missing_detector(tmp_path):
    with pytest.raises(DataError, match="data_2d_cmu_mocap17_synth.npz.*_gmm.npz"):
        read_mocap17(ROOT, detector="synth")
    shutil.copy(ROOT / "data_2d_cmu_mocap17_gt.npz", tmp_path / "data_2d_cmu_mocap17_other.npz")
    info, clips = read_mocap17(ROOT, detector="other", detections_dir=tmp_path, subjects=["cmu09"])
    assert info.files[1] == str(tmp_path / "data_2d_cmu_mocap17_other.npz")
    assert {c.subject for c in clips} == {"cmu09"} and sum(c.frames for c in clips) == 561 * 4


def test_unknown_subject():
    with pytest.raises(DataError, match="data_3d_cmu_mocap17.npz.*S1"):
        read_mocap17(ROOT, subjects=["S1"])
