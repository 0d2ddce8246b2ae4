"""Human3.6M (VideoPose3D format) readers on tiny files written in the real formats."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from formats import (
    H36M_METADATA,
    project_poses,
    quaternion_matrix,
    save_npz,
    to_camera,
    to_pixels,
    write_h36m_2d,
    write_h36m_3d,
    write_h36m_gmm,
)

from diffpose.data.camera import project, world_to_camera
from diffpose.data.h36m import (
    ACTIONS,
    DEFAULT_SIGMA_PX,
    H36M_SPLITS,
    action_class,
    h36m_cameras,
    read_cameras,
    read_gmm_2d,
    read_h36m,
    read_h36m_format,
    read_poses_2d,
    read_poses_3d,
)
from diffpose.data.skeleton import H36M32_TO_17
from diffpose.data.source import DataError

LAYOUT = {"S1": {"Directions 1": 12, "TakingPhoto": 8}, "S9": {"Walking": 10}}


@pytest.fixture(scope="module")
def cameras():
    return h36m_cameras()


@pytest.fixture
def files(tmp_path, cameras):
    """A 32-joint 3D file, plain 2D (3 frames longer, as CPN's are for some sequences) and a GMM file."""
    root = tmp_path
    poses = write_h36m_3d(root / "data_3d_h36m.npz", LAYOUT, joints=32, rng=np.random.default_rng(0))
    plain = write_h36m_2d(root / "data_2d_h36m_det.npz", poses, cameras, extra_frames=3)
    gmm = write_h36m_gmm(root / "data_2d_h36m_det_gmm.npz", poses, cameras, extra_frames=3)
    return root, poses, plain, gmm


def read(root, cameras, plain=True, gmm=True, **kw):
    return read_h36m_format(
        root / "data_3d_h36m.npz",
        root / "data_2d_h36m_det.npz" if plain else None,
        root / "data_2d_h36m_det_gmm.npz" if gmm else None,
        cameras,
        dataset="h36m",
        detector="det",
        splits=H36M_SPLITS,
        fps=50.0,
        **kw,
    )


# ------------------------------------------------------------------------------------------------ cameras


def test_packaged_cameras_are_videopose3d_numbers(cameras):
    assert sorted(cameras) == ["S1", "S11", "S5", "S6", "S7", "S8", "S9"]  # S2-S4 have no extrinsics
    assert all(len(c) == 4 for c in cameras.values())
    c0 = cameras["S1"][0]
    assert c0.id == "54138969" and (c0.width, c0.height) == (1000, 1002)
    np.testing.assert_array_equal(c0.focal, [1145.0494384765625, 1143.7811279296875])
    np.testing.assert_array_equal(c0.center, [512.54150390625, 515.4514770507812])
    np.testing.assert_array_equal(
        c0.radial, [-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043]
    )
    mm = np.array([1841.1070556640625, 4955.28466796875, 1563.4454345703125])
    np.testing.assert_allclose(c0.translation, mm / 1000, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(
        c0.orientation, [0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088]
    )
    s11 = cameras["S11"][3]
    assert s11.id == "60457274"
    mm = np.array([-1590.738037109375, -3854.1689453125, 1578.017578125])
    np.testing.assert_allclose(s11.translation, mm / 1000, rtol=0, atol=1e-12)
    assert [c.id for c in cameras["S9"]] == ["54138969", "55011271", "58860488", "60457274"]


def test_camera_centre_maps_to_camera_origin_and_optical_axis_to_z(cameras):
    for cams in cameras.values():
        for cam in cams:
            q, t = torch.from_numpy(cam.orientation), torch.from_numpy(cam.translation)
            assert world_to_camera(t, q, t).abs().max() < 1e-12
            # The world point 3 m straight ahead of the camera projects onto the principal point.
            ahead = torch.from_numpy(cam.translation + 3.0 * quaternion_matrix(cam.orientation)[:, 2])
            # (the published quaternions are unit only to float32 precision)
            np.testing.assert_allclose(world_to_camera(ahead, q, t).numpy(), [0, 0, 3], atol=1e-6)
    # Every Human3.6M camera looks roughly at the capture volume: the world origin is ~5 m ahead of it.
    for cams in cameras.values():
        for cam in cams:
            origin = world_to_camera(torch.zeros(3, dtype=torch.float64), torch.from_numpy(cam.orientation),
                                     torch.from_numpy(cam.translation))
            assert 3.5 < origin[2] < 7.0 and abs(origin[0]) < 1.0


def test_read_cameras_rejects_bad_json(tmp_path):
    bad = tmp_path / "cams.json"
    intr = {"id": "a", "res_w": 10, "res_h": 10, "focal_length": [1, 1], "center": [5, 5]}
    ext = {"orientation": [2, 0, 0, 0], "translation": [0, 0, 0]}
    bad.write_text(json.dumps({"intrinsics": [intr], "extrinsics": {"S1": [ext]}}))
    with pytest.raises(DataError, match="cams.json.*unit quaternion"):
        read_cameras(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cams.json"):
        read_cameras(bad)
    with pytest.raises(DataError, match="missing.json"):
        read_cameras(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ actions


def test_action_class():
    assert ACTIONS == (
        "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
        "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
    )
    assert action_class("Directions 1") == "Directions"
    assert action_class("TakingPhoto 1") == "Photo"
    assert action_class("WalkingDog") == "WalkDog"
    assert action_class("SittingDown 2") == "SittingDown"
    assert action_class("Walking 07_03") == "Walking"
    assert {action_class(a) for a in ACTIONS} == set(ACTIONS)


# ------------------------------------------------------------------------------------------- single files


def test_32_joints_reduce_to_the_17_kept(tmp_path):
    marked = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None], (4, 32, 3)).copy()
    save_npz(tmp_path / "p.npz", positions_3d={"S1": {"Walking": marked}})
    out = read_poses_3d(tmp_path / "p.npz")["S1"]["Walking"]
    assert out.shape == (4, 17, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27])


def test_17_joint_3d_file_loads_as_is(tmp_path):
    poses = write_h36m_3d(tmp_path / "p.npz", LAYOUT, joints=17)
    out = read_poses_3d(tmp_path / "p.npz")
    np.testing.assert_array_equal(out["S9"]["Walking"], poses["S9"]["Walking"])


def test_32_joint_file_matches_its_17(files):
    root, poses, _, _ = files
    out = read_poses_3d(root / "data_3d_h36m.npz")
    for s, acts in poses.items():
        for a, p in acts.items():
            np.testing.assert_array_equal(out[s][a], p)


def test_read_2d_and_gmm(files):
    root, _, plain, gmm = files
    p2d = read_poses_2d(root / "data_2d_h36m_det.npz")
    g2d = read_gmm_2d(root / "data_2d_h36m_det_gmm.npz")
    assert len(p2d["S1"]["TakingPhoto"]) == 4 and p2d["S1"]["TakingPhoto"][2].shape == (11, 17, 2)
    np.testing.assert_array_equal(p2d["S9"]["Walking"][1], plain["S9"]["Walking"][1])
    assert g2d["S1"]["Directions 1"][0].shape == (15, 17, 3, 5)
    np.testing.assert_array_equal(g2d["S1"]["Directions 1"][3], gmm["S1"]["Directions 1"][3])


# ------------------------------------------------------------------------------------------------- clips


def test_clips_from_2d_and_gmm(files, cameras, caplog):
    root, poses, plain, gmm = files
    with caplog.at_level(logging.INFO, logger="diffpose.data.h36m"):
        info, clips = read(root, cameras)
    assert len(clips) == 3 * 4
    assert "cut to the 3D" in caplog.text
    assert info.dataset == "h36m" and info.detector == "det" and info.fps == 50.0
    assert info.splits == H36M_SPLITS
    assert info.files == tuple(str(root / n) for n in ("data_3d_h36m.npz", "data_2d_h36m_det.npz",
                                                      "data_2d_h36m_det_gmm.npz"))
    assert info.notes["trimmed_2d"].startswith("12 ")
    by_key = {(c.subject, c.action, c.camera): c for c in clips}
    c = by_key[("S1", "Directions 1", 2)]
    assert c.frames == 12 and c.valid.all() and (c.width, c.height) == (1000, 1000)
    np.testing.assert_array_equal(c.pose_2d, plain["S1"]["Directions 1"][2][:12])  # trimmed, head kept
    np.testing.assert_array_equal(c.gmm, gmm["S1"]["Directions 1"][2][:12])
    np.testing.assert_array_equal(c.world_3d, poses["S1"]["Directions 1"])
    cam = cameras["S1"][2]
    np.testing.assert_allclose(c.pose_3d, to_camera(np.float64(c.world_3d), cam), atol=1e-5)
    assert by_key[("S1", "Directions 1", 0)].height == 1002


def test_camera_frame_3d_reprojects_onto_the_2d(files, cameras):
    root, *_ = files
    _, clips = read(root, cameras, gmm=False)
    for c in clips:
        cam = cameras[c.subject][c.camera]
        uv = project(torch.from_numpy(c.pose_3d).double(), *(torch.from_numpy(v) for v in
                     (cam.focal, cam.center, cam.radial, cam.tangential)))
        np.testing.assert_allclose(uv.numpy(), c.pose_2d, atol=1e-3)


def test_gmm_only_takes_2d_from_the_strongest_kernel(files, cameras, tmp_path):
    root, poses, _, _ = files
    gmm = write_h36m_gmm(root / "data_2d_h36m_det_gmm.npz", poses, cameras, weights=(0.2, 0.7, 0.1))
    info, clips = read(root, cameras, plain=False)
    c = next(c for c in clips if (c.subject, c.action, c.camera) == ("S9", "Walking", 1))
    np.testing.assert_array_equal(c.pose_2d, gmm["S9"]["Walking"][1][:, :, 1, 1:3])
    assert c.gmm.shape == (10, 17, 3, 5)
    assert "highest-weight kernel" in info.notes["pose_2d"]


def test_plain_only_gets_a_single_kernel(files, cameras):
    root, *_ = files
    info, clips = read(root, cameras, gmm=False, sigma_px=7.5)
    c = clips[0]
    assert c.gmm.shape == (c.frames, 17, 1, 5)
    np.testing.assert_array_equal(c.gmm[..., 0, 1:3], c.pose_2d)
    assert (c.gmm[..., 0, 0] == 1).all() and (c.gmm[..., 0, 3:] == 7.5).all()
    assert info.notes["gmm"] == "single kernel at pose_2d, sigma 7.5 px"


def test_subjects_filter(files, cameras):
    root, *_ = files
    _, clips = read(root, cameras, subjects=["S9"])
    assert {c.subject for c in clips} == {"S9"} and len(clips) == 4


def test_read_h36m_finds_files_by_detector(files):
    root, *_ = files
    info, clips = read_h36m(root, detector="det")
    assert len(clips) == 12 and info.fps == 50.0 and info.splits["test"] == ("S9", "S11")
    assert DEFAULT_SIGMA_PX > 0


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="data_3d_h36m.npz"):
        read_h36m(tmp_path)
    write_h36m_3d(tmp_path / "data_3d_h36m.npz", LAYOUT)
    with pytest.raises(DataError, match="data_2d_h36m_cpn_ft_h36m_dbb.npz.*_gmm.npz"):
        read_h36m(tmp_path)
    with pytest.raises(DataError, match="nothere.npz: file not found"):
        read_poses_3d(tmp_path / "nothere.npz")


def test_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="junk.npz.*not an npz"):
        read_poses_3d(tmp_path / "junk.npz")


def test_wrong_key(tmp_path):
    save_npz(tmp_path / "p.npz", poses_3d={"S1": {"Walking": np.zeros((3, 32, 3))}})
    with pytest.raises(DataError, match="p.npz.*positions_3d"):
        read_poses_3d(tmp_path / "p.npz")


def test_not_a_dict(tmp_path):
    save_npz(tmp_path / "p.npz", positions_3d=np.zeros((3, 32, 3)))
    with pytest.raises(DataError, match="p.npz.*expected a dict"):
        read_poses_3d(tmp_path / "p.npz")


@pytest.mark.parametrize("shape", [(5, 16, 3), (5, 17, 2), (5, 32), (0, 17, 3)])
def test_wrong_3d_shape(tmp_path, shape):
    save_npz(tmp_path / "p.npz", positions_3d={"S1": {"Walking 1": np.zeros(shape, np.float32)}})
    with pytest.raises(DataError, match=r"p.npz.*S1/Walking 1.*shape"):
        read_poses_3d(tmp_path / "p.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_3d(tmp_path, bad):
    arr = np.zeros((5, 32, 3), np.float32)
    arr[2, 0, 1] = bad
    save_npz(tmp_path / "p.npz", positions_3d={"S5": {"Eating": arr}})
    with pytest.raises(DataError, match="p.npz.*S5/Eating.*NaN or inf"):
        read_poses_3d(tmp_path / "p.npz")


def test_non_finite_2d(files, cameras):
    root, _, plain, _ = files
    plain["S9"]["Walking"][3][4, 5, 0] = np.inf
    save_npz(root / "data_2d_h36m_det.npz", positions_2d=plain, metadata=H36M_METADATA)
    with pytest.raises(DataError, match="data_2d_h36m_det.npz.*S9/Walking/cam3.*NaN or inf"):
        read(root, cameras)


def test_wrong_2d_joints(tmp_path):
    save_npz(tmp_path / "d.npz", positions_2d={"S1": {"Walking": [np.zeros((4, 16, 2))] * 4}})
    with pytest.raises(DataError, match="d.npz.*S1/Walking/cam0.*shape"):
        read_poses_2d(tmp_path / "d.npz")


def test_2d_not_per_camera_list(tmp_path):
    save_npz(tmp_path / "d.npz", positions_2d={"S1": {"Walking": np.zeros((4, 17, 2))}})
    with pytest.raises(DataError, match="d.npz.*per-camera"):
        read_poses_2d(tmp_path / "d.npz")


def test_metadata_checked(files):
    root, _, plain, _ = files
    save_npz(root / "x.npz", positions_2d=plain, metadata={**H36M_METADATA, "num_joints": 16})
    with pytest.raises(DataError, match="x.npz.*num_joints 16"):
        read_poses_2d(root / "x.npz")
    coco = {"layout_name": "coco", "num_joints": 17,
            "keypoints_symmetry": [[1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16]]}
    save_npz(root / "x.npz", positions_2d=plain, metadata=coco)
    with pytest.raises(DataError, match="x.npz.*keypoints_symmetry.*coco"):
        read_poses_2d(root / "x.npz")
    save_npz(root / "x.npz", positions_2d=plain)  # no metadata: fine
    assert read_poses_2d(root / "x.npz")["S9"]["Walking"][0].shape == (13, 17, 2)


def test_2d_shorter_than_3d(files, cameras):
    root, poses, _, _ = files
    write_h36m_2d(root / "data_2d_h36m_det.npz", poses, cameras, extra_frames=-1)
    with pytest.raises(DataError, match="data_2d_h36m_det.npz.*S1/Directions 1/cam0: 11 frames, fewer.* 12"):
        read(root, cameras, gmm=False)


def test_2d_and_gmm_frame_counts_differ(files, cameras):
    root, poses, _, _ = files
    write_h36m_gmm(root / "data_2d_h36m_det_gmm.npz", poses, cameras, extra_frames=1)
    with pytest.raises(DataError, match="det_gmm.npz.*S1/Directions 1/cam0: 13 GMM frames, 2D file 15"):
        read(root, cameras)


def test_missing_action_in_2d(files, cameras):
    root, _, plain, _ = files
    del plain["S1"]["TakingPhoto"]
    save_npz(root / "data_2d_h36m_det.npz", positions_2d=plain, metadata=H36M_METADATA)
    with pytest.raises(DataError, match="data_2d_h36m_det.npz.*S1/TakingPhoto: action is missing"):
        read(root, cameras)


def test_missing_subject_in_2d(files, cameras):
    root, _, plain, _ = files
    del plain["S9"]
    save_npz(root / "data_2d_h36m_det.npz", positions_2d=plain, metadata=H36M_METADATA)
    with pytest.raises(DataError, match="data_2d_h36m_det.npz.*subject S9 is missing"):
        read(root, cameras)


def test_camera_count_mismatch(files, cameras):
    root, _, plain, _ = files
    plain["S9"]["Walking"] = plain["S9"]["Walking"][:3]
    save_npz(root / "data_2d_h36m_det.npz", positions_2d=plain, metadata=H36M_METADATA)
    with pytest.raises(DataError, match="data_2d_h36m_det.npz.*S9/Walking: 3 cameras, the camera set has 4"):
        read(root, cameras)


def test_unknown_subject(files, cameras, tmp_path):
    root, *_ = files
    with pytest.raises(DataError, match="data_3d_h36m.npz.*subject S7 is not in the file"):
        read(root, cameras, subjects=["S7"])
    # S2 has no published cameras.
    poses = write_h36m_3d(tmp_path / "x3.npz", {"S2": {"Walking": 4}})
    write_h36m_2d(tmp_path / "x2.npz", poses, {"S2": cameras["S1"]})
    with pytest.raises(DataError, match="x3.npz.*subject S2: no cameras"):
        read_h36m_format(tmp_path / "x3.npz", tmp_path / "x2.npz", None, cameras, dataset="h36m",
                         detector="d", splits=H36M_SPLITS, fps=50.0)


def test_gmm_weights_must_sum_to_one(files, cameras):
    root, poses, _, _ = files
    write_h36m_gmm(root / "data_2d_h36m_det_gmm.npz", poses, cameras, weights=(0.5, 0.3, 0.1))
    with pytest.raises(DataError, match="data_2d_h36m_det_gmm.npz.*sum to 0.9"):
        read(root, cameras)


def test_gmm_wrong_last_axis(tmp_path):
    save_npz(tmp_path / "g.npz", positions_2d={"S1": {"Walking": [np.zeros((4, 17, 3, 4))] * 4}})
    with pytest.raises(DataError, match="g.npz.*S1/Walking/cam0.*shape"):
        read_gmm_2d(tmp_path / "g.npz")


def test_needs_some_2d(files, cameras):
    root, *_ = files
    with pytest.raises(ValueError, match="2D"):
        read(root, cameras, plain=False, gmm=False)


def test_projection_helpers_agree_with_camera_module(cameras):
    """formats.py's numpy projection (used to write the 2D) equals diffpose.data.camera's."""
    rng = np.random.default_rng(5)
    cam = cameras["S5"][1]
    world = rng.normal(0, 0.5, (20, 17, 3)) + [0, 0, 1]
    ours = project(world_to_camera(torch.from_numpy(world), torch.from_numpy(cam.orientation),
                                   torch.from_numpy(cam.translation)),
                   *(torch.from_numpy(v) for v in (cam.focal, cam.center, cam.radial, cam.tangential)))
    np.testing.assert_allclose(ours.numpy(), to_pixels(to_camera(world, cam), cam), atol=1e-9)
    assert project_poses({"S5": {"a": world}}, cameras)["S5"]["a"][1].shape == (20, 17, 2)
    assert len(H36M32_TO_17) == 17
