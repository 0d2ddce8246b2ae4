"""A user's 2D keypoint files (diffpose.data.keypoints): the COCO-17 mapping, MMPose's JSON layouts, the
low-score rule, npz / CSV / VideoPose3D files and store clips, each read into known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpose.data.camera import normalize_screen
from diffpose.data.detections import h36m_metadata, write_detections
from diffpose.data.keypoints import (
    COCO_NAMES,
    COCO_SYMMETRY,
    FILLED_SIGMA_FACTOR,
    coco_gmm_to_ours,
    coco_matrix,
    coco_to_ours,
    detect_format,
    read_keypoints,
)
from diffpose.data.store import PoseStore

# COCO joint <- our joint, one to one (the limbs); the face is built around our neck/nose and head below.
COCO_FROM_OURS = {5: 11, 6: 14, 7: 12, 8: 15, 9: 13, 10: 16, 11: 4, 12: 1, 13: 5, 14: 2, 15: 6, 16: 3}


def ours_to_coco(pose: np.ndarray) -> np.ndarray:
    """Our 17 joints (T, 17, 2) as COCO-17: nose = our neck/nose; eyes = head -/+ e, ears = head -/+ 2e with
    e = 0.1 (l_shoulder - r_shoulder), so that the mean of the eyes is our head; the limbs one to one. Mapped
    back (COCO_SOURCES), every joint returns exactly but pelvis, spine and thorax, which become the means of
    the hips and of the shoulders (the rig's own joints are not those means)."""
    coco = np.zeros((pose.shape[0], len(COCO_NAMES), 2))
    e = 0.1 * (pose[:, 11] - pose[:, 14])
    coco[:, 0] = pose[:, 9]
    coco[:, 1], coco[:, 2] = pose[:, 10] + e, pose[:, 10] - e
    coco[:, 3], coco[:, 4] = pose[:, 10] + 2 * e, pose[:, 10] - 2 * e
    for i, j in COCO_FROM_OURS.items():
        coco[:, i] = pose[:, j]
    return coco


def instance(points: np.ndarray, scores: np.ndarray, box_score: float | None = 0.9) -> dict:
    """One person as MMPose's split_instances writes it (bbox nested in a list)."""
    lo, hi = points.min(0), points.max(0)
    out = {"keypoints": points.tolist(), "keypoint_scores": scores.tolist(), "bbox": [[*lo.tolist(), *hi.tolist()]]}
    if box_score is not None:
        out["bbox_score"] = box_score
    return out


def mmpose_video(points: np.ndarray, scores: np.ndarray, first: int = 0) -> list:
    """MMPoseInferencer's video file: [{frame_id, instances}] from COCO points (T, 17, 2), scores (T, 17)."""
    return [{"frame_id": first + t, "instances": [instance(points[t], scores[t])]} for t in range(len(points))]


def walking(frames: int, rng: np.random.Generator) -> np.ndarray:
    """COCO points (T, 17, 2) moving linearly in time, pixels: interpolation in time is exact on them."""
    start = rng.uniform(300, 700, (len(COCO_NAMES), 2))
    velocity = rng.uniform(-5, 5, (len(COCO_NAMES), 2))
    return start + np.arange(frames)[:, None, None] * velocity


def test_the_coco_table_is_mmposes_formulae():
    rng = np.random.default_rng(0)
    coco = rng.uniform(0, 1000, (4, 17, 2))
    ours, _ = coco_to_ours(coco)
    assert np.allclose(coco_matrix().sum(1), 1.0)                    # translation-equivariant
    pelvis, thorax = (coco[:, 11] + coco[:, 12]) / 2, (coco[:, 5] + coco[:, 6]) / 2
    assert np.allclose(ours[:, 0], pelvis) and np.allclose(ours[:, 8], thorax)
    assert np.allclose(ours[:, 7], (pelvis + thorax) / 2)
    assert np.allclose(ours[:, 9], coco[:, 0]) and np.allclose(ours[:, 10], (coco[:, 1] + coco[:, 2]) / 2)
    ours_index = [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]
    coco_index = [12, 14, 16, 11, 13, 15, 5, 7, 9, 6, 8, 10]       # MMPose's index list, the limbs
    assert np.array_equal(ours[:, ours_index], coco[:, coco_index])
    scores = rng.uniform(0, 1, (4, 17))
    _, s = coco_to_ours(coco, scores)
    assert np.allclose(s[:, 7], scores[:, [5, 6, 11, 12]].min(1)) and np.allclose(s[:, 3], scores[:, 16])


def test_our_joints_through_coco_come_back_but_for_the_rig_joints():
    pose = np.random.default_rng(1).uniform(0, 1000, (5, 17, 2))
    back, _ = coco_to_ours(ours_to_coco(pose))
    exact = [j for j in range(17) if j not in (0, 7, 8)]
    assert np.allclose(back[:, exact], pose[:, exact], atol=1e-9)
    pelvis, thorax = (pose[:, 1] + pose[:, 4]) / 2, (pose[:, 11] + pose[:, 14]) / 2
    assert np.allclose(back[:, 0], pelvis) and np.allclose(back[:, 8], thorax)
    assert np.allclose(back[:, 7], (pelvis + thorax) / 2)


def test_mmpose_video_json_with_several_people_an_empty_frame_and_low_scores(tmp_path):
    rng = np.random.default_rng(2)
    coco = walking(9, rng)
    scores = np.full((9, 17), 0.9)
    scores[3:5, 9] = 0.1                                             # left wrist unsure in frames 3 and 4
    doc = mmpose_video(coco, scores)
    doc[6]["instances"] = []                                         # nobody in frame 6
    for f in doc:                                                    # a bystander, less sure of its box
        if f["instances"]:
            f["instances"].insert(0, instance(coco[0] + 300.0, np.full(17, 0.99), box_score=0.5))
    path = tmp_path / "video.json"
    path.write_text(json.dumps(doc))
    assert detect_format(path) == "coco"
    kp = read_keypoints(path, width=1920, height=1080)
    expect = coco_to_ours(coco)[0]                                   # interpolation is exact on linear motion
    assert np.allclose(kp.pixels(), expect, atol=1e-3)
    norm = normalize_screen(torch.from_numpy(expect.astype(np.float32)), 1920.0, 1080.0).numpy()
    assert np.allclose(kp.pose_2d, norm, atol=1e-6)
    filled = np.zeros((9, 17), bool)
    filled[3:5, 13] = True                                           # our l_wrist = COCO left wrist
    filled[6] = True
    assert np.array_equal(kp.filled, filled)
    assert np.array_equal(kp.frame_id, np.arange(9)) and (kp.width, kp.height) == (1920, 1080)
    sigma = kp.gmm_2d[..., 0, 3] * 1920 / 2
    assert np.allclose(sigma[~filled], 5.0) and np.allclose(sigma[filled], 5.0 * FILLED_SIGMA_FACTOR)
    assert kp.notes["frames_without_person"] == "1"


def test_mmpose_demo_file_frames_from_one_with_its_size(tmp_path):
    coco = walking(4, np.random.default_rng(3))
    meta = {"dataset_name": "coco", "num_keypoints": 17, "keypoint_id2name": {"0": "nose"}}
    doc = {"width": 1280, "height": 720, "meta_info": meta,
           "instance_info": mmpose_video(coco, np.full((4, 17), 0.8), first=1)}
    path = tmp_path / "results_clip.json"
    path.write_text(json.dumps(doc, indent="\t"))
    kp = read_keypoints(path, "coco")
    assert (kp.width, kp.height) == (1280, 720) and np.array_equal(kp.frame_id, [1, 2, 3, 4])
    assert np.allclose(kp.pixels(), coco_to_ours(coco)[0], atol=1e-3)
    assert read_keypoints(path, width=640, height=360).width == 640  # the flags take precedence


def test_a_directory_of_per_image_files_in_natural_order(tmp_path):
    coco = walking(11, np.random.default_rng(4))
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(11):                                             # 0.json ... 10.json: 10 after 9, not after 1
        (folder / f"{t}.json").write_text(json.dumps([instance(coco[t], np.full(17, 0.9))]))
    assert detect_format(folder) == "coco"
    kp = read_keypoints(folder, width=1000, height=1000)
    assert np.allclose(kp.pixels(), coco_to_ours(coco)[0], atol=1e-3)


def test_flat_coco_results_and_the_mean_score_choice(tmp_path):
    coco = walking(2, np.random.default_rng(5))
    frames = []
    for t in range(2):
        good = np.concatenate([coco[t], np.full((17, 1), 0.9)], 1).ravel().tolist()
        poor = np.concatenate([coco[t] + 50, np.full((17, 1), 0.4)], 1).ravel().tolist()
        frames.append({"frame_id": t, "instances": [{"keypoints": poor}, {"keypoints": good}]})  # no bbox_score
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(frames))
    kp = read_keypoints(path, width=1000, height=1000)
    assert np.allclose(kp.pixels(), coco_to_ours(coco)[0], atol=1e-3)


def test_npz_and_csv_of_our_joints(tmp_path):
    rng = np.random.default_rng(6)
    pose = rng.uniform(0, 1000, (6, 17, 2))
    scores = np.full((6, 17), 0.9)
    scores[2, 3] = 0.0
    np.savez(tmp_path / "k.npz", keypoints=pose, scores=scores, image_size=np.array([1000, 1002]))
    np.savez(tmp_path / "only.npz", whatever=pose)
    rows = np.concatenate([pose, scores[..., None]], -1).reshape(6, -1)
    header = ",".join(f"{j}_{c}" for j in range(17) for c in "xys")
    def lines(values: np.ndarray) -> str:
        return "\n".join(",".join(f"{v:.17g}" for v in r) for r in values)

    (tmp_path / "k.csv").write_text(header + "\n# a comment\n" + lines(rows))
    (tmp_path / "plain.csv").write_text(lines(pose.reshape(6, -1)) + "\n")
    expect = pose.copy()
    expect[2, 3] = (pose[1, 3] + pose[3, 3]) / 2                     # the zero score: interpolated
    a = read_keypoints(tmp_path / "k.npz")
    b = read_keypoints(tmp_path / "k.csv", width=1000, height=1002)
    c = read_keypoints(tmp_path / "only.npz", "npz", width=1000, height=1002)
    d = read_keypoints(tmp_path / "plain.csv", "csv", width=1000, height=1002)
    assert [detect_format(tmp_path / n) for n in ("k.npz", "k.csv")] == ["npz", "csv"]
    for kp in (a, b):
        assert np.allclose(kp.pixels(), expect, atol=1e-3) and kp.filled.sum() == 1 and kp.filled[2, 3]
    for kp in (c, d):
        assert np.allclose(kp.pixels(), pose, atol=1e-3) and not kp.filled.any()
    assert np.array_equal(a.pose_2d, b.pose_2d)


def test_a_videopose3d_gmm_file_and_a_custom_coco_file(tmp_path):
    rng = np.random.default_rng(7)
    pose = rng.uniform(100, 900, (5, 17, 2)).astype(np.float32)
    gmm = np.zeros((5, 17, 2, 5), np.float32)
    gmm[..., 0, 0], gmm[..., 1, 0] = 0.3, 0.7                       # stored lighter first: read heaviest first
    gmm[..., 0, 1:3], gmm[..., 1, 1:3] = pose + 20, pose
    gmm[..., 0, 3:5], gmm[..., 1, 3:5] = 9.0, 4.0
    sizes = {"S": {"A": [[1000, 1000], [1000, 1002]]}}
    _, path = write_detections(tmp_path, "custom", "hm", {"S": {"A": [pose, pose]}}, {"S": {"A": [gmm, gmm]}},
                               {**h36m_metadata(), "image_sizes": sizes})
    assert detect_format(path) == "videopose3d"
    kp = read_keypoints(path, camera=1)
    assert (kp.width, kp.height) == (1000, 1002) and kp.notes["clip"] == "S/A/cam1"
    assert np.allclose(kp.pixels(), pose, atol=1e-3)                 # the heaviest kernel's mean
    assert np.allclose(kp.gmm_2d[..., 0], [0.7, 0.3]) and np.allclose(kp.gmm_2d[..., 0, 3:5] * 500, 4.0)
    with pytest.raises(Exception, match="camera"):
        read_keypoints(path)                                         # two cameras: which one?
    coco = walking(5, rng)
    custom = tmp_path / "data_2d_custom_video.npz"
    np.savez_compressed(custom, positions_2d=np.array({"video.mp4": {"custom": [coco.astype(np.float32)]}}),
                        metadata=np.array({"layout_name": "coco", "num_joints": 17,
                                           "keypoints_symmetry": [list(s) for s in COCO_SYMMETRY],
                                           "video_metadata": {"video.mp4": {"w": 1920, "h": 1080}}}))
    kp = read_keypoints(custom)
    assert (kp.width, kp.height) == (1920, 1080)
    assert np.allclose(kp.pixels(), coco_to_ours(coco)[0], atol=1e-3)


def test_a_store_clip_is_its_rows(mocap_store):
    store = PoseStore.open(mocap_store)
    kp = read_keypoints(mocap_store, subject="cmu02", action="Running 02_03", camera=0)
    rows = np.flatnonzero((store.subject == store.subjects.index("cmu02"))
                          & (store.action == store.actions.index("Running 02_03")) & (store.camera == 0))
    assert detect_format(Path(mocap_store)) == "store" and kp.frames == len(rows)
    assert np.array_equal(kp.pose_2d, store.pose_2d[rows]) and np.array_equal(kp.gmm_2d, store.gmm_2d[rows])


def test_coco_mixtures_of_two_kernels_combine_into_the_kernels_of_the_sum():
    g = np.zeros((1, 17, 2, 5))
    g[..., 0] = [0.8, 0.2]
    g[..., 0, 1:3], g[..., 1, 1:3] = [100.0, 200.0], [130.0, 200.0]
    g[..., 3:5] = 3.0
    g[0, 12, :, 1] += 40.0                                           # the right hip 40 px to the right
    ours = coco_gmm_to_ours(g, kernels=3)
    # pelvis = (l_hip + r_hip) / 2: kernels (0, 0) 0.64, (0, 1) and (1, 0) 0.16 each, (1, 1) 0.04; 3 kept
    assert np.allclose(ours[0, 0, :, 0], np.array([0.64, 0.16, 0.16]) / 0.96)
    assert np.allclose(ours[0, 0, 0, 1:3], [120.0, 200.0]) and np.allclose(ours[0, 0, :, 3], 3.0 / np.sqrt(2))
    assert np.allclose(sorted(ours[0, 0, 1:, 1]), [135.0, 135.0])
    assert np.allclose(ours[0, 11], np.concatenate([g[0, 5], np.zeros((1, 5)) + [0, *g[0, 5, 0, 1:]]]))
