"""Writers of tiny files in the exact formats of the real dataset files, for tests.

Human3.6M / VideoPose3D: ``positions_3d`` (world metres, 32 or 17 joints), ``positions_2d`` + ``metadata``
(per-camera pixels), DiffPose's GMM 2D (per-camera (T, 17, M, 5)). MPI-INF-3DHP: P-STMO's
``data_train_3dhp.npz`` / ``data_test_3dhp.npz`` (MPI joint order, camera-frame millimetres).

The 2D is the 3D projected through the cameras with numpy code written here (quaternion -> matrix,
VideoPose3D's distortion), independent of ``diffpose.data.camera``, so a reader's 3D and 2D can be checked
against each other. Every writer returns what a correct reader must give back. Corrupt variants: write
the returned dicts back with :func:`save_npz` after changing them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffpose.data.h36m import CameraParams
from diffpose.data.skeleton import H36M32_TO_17, JOINT_NAMES, LEFT, RIGHT

H36M_METADATA: dict[str, Any] = {
    "layout_name": "h36m",
    "num_joints": 17,
    "keypoints_symmetry": [list(LEFT), list(RIGHT)],
}

# A standing body in our joint order, metres, z up, facing -y, pelvis above the origin.
TEMPLATE = np.array(
    [
        [0.0, 0.0, 0.95], [-0.13, 0.0, 0.93], [-0.13, -0.02, 0.50], [-0.13, 0.0, 0.08],
        [0.13, 0.0, 0.93], [0.13, -0.02, 0.50], [0.13, 0.0, 0.08], [0.0, 0.0, 1.18],
        [0.0, 0.0, 1.45], [0.0, -0.05, 1.55], [0.0, 0.0, 1.70], [0.17, 0.0, 1.42],
        [0.20, 0.0, 1.15], [0.22, -0.05, 0.90], [-0.17, 0.0, 1.42], [-0.20, 0.0, 1.15],
        [-0.22, -0.05, 0.90],
    ]
)

# MPI's 17 'relevant' joints in its order, and the name of each in ours (by anatomy, not by index).
MPI_NAMES = (
    "head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "pelvis",
    "spine", "head",
)
MPI_NAME_TO_OURS = {
    "head_top": "head", "neck": "thorax", "head": "neck_nose", "pelvis": "pelvis", "spine": "spine",
    **{f"{side}_{part}": f"{side[0]}_{part}" for side in ("left", "right")
       for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")},
}
MPI_FROM_OURS = np.array([JOINT_NAMES.index(MPI_NAME_TO_OURS[n]) for n in MPI_NAMES])


def save_npz(path: str | Path, **members: Any) -> Path:
    """``np.savez_compressed`` as VideoPose3D and P-STMO call it: dicts become pickled 0-d object arrays."""
    np.savez_compressed(path, **members)
    return Path(path)


def random_poses(frames: int, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    """(T, 17, 3) world metres: the template turned about z, moved up to ``spread`` m, jittered by 2 cm."""
    yaw = rng.uniform(-np.pi, np.pi, frames)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.zeros((frames, 3, 3))
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1.0
    shift = np.concatenate([rng.uniform(-spread, spread, (frames, 2)), np.zeros((frames, 1))], axis=1)
    body = np.einsum("tij,kj->tki", rot, TEMPLATE)  # (T, 17, 3)
    return body + shift[:, None] + rng.normal(0.0, 0.02, body.shape)


def quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion (w, x, y, z)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def to_camera(world: np.ndarray, cam: CameraParams) -> np.ndarray:
    """World (..., 3) -> camera (..., 3): ``R^T (X - t)`` with R = matrix(orientation)."""
    return (world - cam.translation) @ quaternion_matrix(cam.orientation)


def to_pixels(x_cam: np.ndarray, cam: CameraParams, distort: bool = True) -> np.ndarray:
    """VideoPose3D's ``project_to_2d`` in pixels: (..., 3) -> (..., 2)."""
    xy = x_cam[..., :2] / x_cam[..., 2:3]
    if distort:
        xy = np.clip(xy, -1.0, 1.0)
        r2 = (xy**2).sum(-1, keepdims=True)
        k, p = cam.radial, cam.tangential
        xy = xy * (1 + k[0] * r2 + k[1] * r2**2 + k[2] * r2**3 + (p * xy).sum(-1, keepdims=True)) + p * r2
    return cam.focal * xy + cam.center


def _expand_32(poses: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, 17, 3) -> (T, 32, 3): our joints at ``H36M32_TO_17``, the other 15 near the pelvis."""
    full = poses[:, :1] + rng.normal(0.0, 0.1, (poses.shape[0], 32, 3))
    full[:, list(H36M32_TO_17)] = poses
    return full


def write_h36m_3d(
    path: str | Path,
    subjects_actions_frames: Mapping[str, Mapping[str, int]],
    joints: int = 32,
    rng: np.random.Generator | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``data_3d_h36m.npz``: float32 world metres with 32 (or 17) joints; returns the 17-joint poses."""
    rng = rng if rng is not None else np.random.default_rng(0)
    poses: dict[str, dict[str, np.ndarray]] = {}
    stored: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in subjects_actions_frames.items():
        poses[subject], stored[subject] = {}, {}
        for action, frames in actions.items():
            p = random_poses(frames, rng).astype(np.float32)
            poses[subject][action] = p
            stored[subject][action] = (_expand_32(p, rng) if joints == 32 else p).astype(np.float32)
    save_npz(path, positions_3d=stored)
    return poses


def _resize(arr: np.ndarray, extra_frames: int) -> np.ndarray:
    """Append ``extra_frames`` copies of the last frame, or drop that many from the end if negative."""
    if extra_frames >= 0:
        return np.concatenate([arr, np.repeat(arr[-1:], extra_frames, axis=0)])
    return arr[:extra_frames]


def project_poses(
    poses: Mapping[str, Mapping[str, np.ndarray]], cameras: Mapping[str, Sequence[CameraParams]]
) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per-camera (T, 17, 2) pixels of world poses, with each camera's distortion."""
    return {
        s: {a: [to_pixels(to_camera(np.float64(p), c), c) for c in cameras[s]] for a, p in acts.items()}
        for s, acts in poses.items()
    }


def write_h36m_2d(
    path: str | Path,
    poses: Mapping[str, Mapping[str, np.ndarray]],
    cameras: Mapping[str, Sequence[CameraParams]],
    *,
    extra_frames: int = 0,
    noise_px: float = 0.0,
    metadata: dict[str, Any] | None = H36M_METADATA,
    rng: np.random.Generator | None = None,
) -> dict[str, dict[str, list[np.ndarray]]]:
    """``data_2d_h36m_<detector>.npz``: projections of ``poses`` (plus noise), ``extra_frames`` longer
    (shorter if negative) than the 3D; ``metadata=None`` leaves the member out. Returns what was written."""
    rng = rng if rng is not None else np.random.default_rng(1)
    noisy = {
        s: {a: [uv + rng.normal(0.0, noise_px, uv.shape) for uv in uvs] for a, uvs in acts.items()}
        for s, acts in project_poses(poses, cameras).items()
    }
    out = {
        s: {a: [_resize(uv.astype(np.float32), extra_frames) for uv in uvs] for a, uvs in acts.items()}
        for s, acts in noisy.items()
    }
    members: dict[str, Any] = {"positions_2d": out}
    if metadata is not None:
        members["metadata"] = metadata
    save_npz(path, **members)
    return out


def write_h36m_gmm(
    path: str | Path,
    poses: Mapping[str, Mapping[str, np.ndarray]],
    cameras: Mapping[str, Sequence[CameraParams]],
    *,
    kernels: int = 3,
    weights: Sequence[float] | None = None,
    sigma_px: float = 4.0,
    extra_frames: int = 0,
    rng: np.random.Generator | None = None,
) -> dict[str, dict[str, list[np.ndarray]]]:
    """DiffPose's ``..._gmm.npz``: per-camera (T, 17, M, 5) = (pi, mu_u, mu_v, sigma_u, sigma_v), pixels.

    Default weights (1, 0, ..., 0) as in the released files; kernel 0 sits on the projection, the others
    up to 20 px away; zero-weight kernels get sigma 0 (as in the released files), the others ``sigma_px``.
    """
    rng = rng if rng is not None else np.random.default_rng(2)
    pi = np.asarray(weights if weights is not None else [1.0] + [0.0] * (kernels - 1), dtype=np.float64)
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for s, acts in project_poses(poses, cameras).items():
        out[s] = {}
        for a, cams in acts.items():
            out[s][a] = []
            for uv in cams:
                g = np.zeros((*uv.shape[:2], len(pi), 5))
                g[..., 0] = pi
                g[..., 1:3] = uv[:, :, None] + rng.uniform(-20.0, 20.0, (*uv.shape[:2], len(pi), 2))
                g[:, :, 0, 1:3] = uv
                g[..., 3:5] = np.where(pi[:, None] > 0, sigma_px, 0.0)
                out[s][a].append(_resize(g.astype(np.float32), extra_frames))
    save_npz(path, positions_2d=out)
    return out


# ------------------------------------------------------------------------------------------- MPI-INF-3DHP


def camera_poses(frames: int, rng: np.random.Generator, depth: float = 4.0) -> np.ndarray:
    """(T, 17, 3) camera-frame metres (x right, y down, z forward), a body about ``depth`` m away."""
    world = random_poses(frames, rng, spread=0.5)
    return np.stack([world[..., 0], 0.9 - world[..., 2], depth + world[..., 1]], axis=-1)


def pinhole(x_cam: np.ndarray, width: int, height: int, focal: float = 1500.0) -> np.ndarray:
    """(..., 3) -> (..., 2) pixels, principal point at the image centre."""
    return focal * x_cam[..., :2] / x_cam[..., 2:3] + np.array([width / 2.0, height / 2.0])


def _mpi_entry(
    frames: int, width: int, height: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """An MPI-order {data_2d px, data_3d mm} float64 entry, and the ours-order (pixels, metres) it holds."""
    pose_3d = camera_poses(frames, rng)
    pose_2d = pinhole(pose_3d, width, height)
    entry = {"data_2d": pose_2d[:, MPI_FROM_OURS], "data_3d": pose_3d[:, MPI_FROM_OURS] * 1000.0}
    return entry, pose_2d, pose_3d


def write_mpi3dhp_train(
    path: str | Path,
    sequences: Mapping[str, int],
    cameras: Sequence[int] = (0, 1, 2, 4, 5, 6, 7, 8),
    fps: float = 25.0,
    rng: np.random.Generator | None = None,
) -> dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]]:
    """P-STMO's ``data_train_3dhp.npz``: ``data["S1 Seq1"] = [{"0": {data_2d, data_3d}, ...}, fps]``.

    ``sequences`` maps "S<i> Seq<j>" to frames. Returns (subject, sequence, camera) -> ours-order
    (pose_2d pixels, pose_3d metres).
    """
    rng = rng if rng is not None else np.random.default_rng(3)
    data: dict[str, list] = {}
    expected: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
    for key, frames in sequences.items():
        subject, seq = key.split(" ")
        per_camera = {}
        for cam in cameras:
            per_camera[str(cam)], uv, xyz = _mpi_entry(frames, 2048, 2048, rng)
            expected[(subject, seq, cam)] = (uv, xyz)
        data[key] = [per_camera, fps]
    save_npz(path, data=data)
    return expected


def write_mpi3dhp_test(
    path: str | Path,
    sequences: Mapping[str, int],
    rng: np.random.Generator | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """P-STMO's ``data_test_3dhp.npz``: ``data["TS1"] = {data_2d, data_3d, valid}`` (valid as 0./1.).

    TS1-TS4 are 2048x2048, TS5-TS6 1920x1080. Every third frame is invalid. Returns seq -> ours-order
    (pose_2d pixels, pose_3d metres, valid bool).
    """
    rng = rng if rng is not None else np.random.default_rng(4)
    data: dict[str, dict] = {}
    expected: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for seq, frames in sequences.items():
        width, height = (1920, 1080) if seq in ("TS5", "TS6") else (2048, 2048)
        entry, uv, xyz = _mpi_entry(frames, width, height, rng)
        valid = (np.arange(frames) % 3 != 2).astype(np.float64)
        data[seq] = {**entry, "valid": valid}
        expected[seq] = (uv, xyz, valid.astype(bool))
    save_npz(path, data=data)
    return expected


def write_mocap17_root(
    root: str | Path,
    subjects_actions_frames: Mapping[str, Mapping[str, int]],
    splits: Mapping[str, Sequence[str]],
    cameras: Sequence[CameraParams],
) -> dict[str, dict[str, np.ndarray]]:
    """The CMU stand-in's files (``../shared/data/mocap17``'s layout) for a tiny motion set: the 3D (17
    joints), its exact 2D projections, the cameras json (the same ``cameras`` for every subject) and the meta
    json with ``splits``. Returns the world poses."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    poses = write_h36m_3d(root / "data_3d_cmu_mocap17.npz", subjects_actions_frames, joints=17)
    per_subject = {s: list(cameras) for s in subjects_actions_frames}
    write_h36m_2d(root / "data_2d_cmu_mocap17_gt.npz", poses, per_subject)
    doc = {
        "convention": "VideoPose3D h36m_cameras (orientation w, x, y, z camera-to-world; translation metres)",
        "intrinsics": [{"id": c.id, "res_w": c.width, "res_h": c.height, "focal_length": c.focal.tolist(),
                        "center": c.center.tolist(), "radial_distortion": [0.0] * 3,
                        "tangential_distortion": [0.0] * 2} for c in cameras],
        "extrinsics": {s: [{"orientation": c.orientation.tolist(), "translation": c.translation.tolist()}
                           for c in cameras] for s in subjects_actions_frames},
    }
    (root / "cameras_cmu_mocap17.json").write_text(json.dumps(doc))
    (root / "meta_cmu_mocap17.json").write_text(json.dumps({"split": {k: list(v) for k, v in splits.items()},
                                                            "fps": 50}))
    return poses
