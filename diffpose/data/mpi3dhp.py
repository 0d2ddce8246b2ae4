"""MPI-INF-3DHP in the preprocessed npz files that P-STMO, D3DP and MixSTE use.

Layout (from P-STMO ``common/data_to_npz_3dhp.py`` / ``data_to_npz_3dhp_test.py`` and its loader
``common/load_data_3dhp_mae.py``; D3DP ``main_3dhp.py`` reads the same layout):

- train ``data["S1 Seq1"] = [{camera: {"data_3d": (T, 17, 3), "data_2d": (T, 17, 2)}}, fps]``, cameras
  "0" "1" "2" "4" "5" "6" "7" "8" (the chest- and knee-height ones), images 2048x2048.
- test ``data["TS1"] = {"data_3d": (T, 17, 3), "data_2d": (T, 17, 2), "valid": (T,)}``; TS1-TS4 2048x2048,
  TS5-TS6 1920x1080; ``valid`` is the test set's ``valid_frame`` (1 = evaluated).

``data_3d`` is camera-frame, absolute (the loaders subtract joint 14 themselves), millimetres (MPI's
test README: "3D annotations in mm"; P-STMO reports MPJPE on it unscaled). ``data_2d`` is MPI's ``annot2``,
the ground-truth projection, in pixels. Which 3D annotation a file holds is fixed by who wrote it:

- ``univ_annot3`` (P-STMO's ``data_train_3dhp.npz`` / ``data_test_3dhp.npz``): poses rescaled to the
  height of Human3.6M's universal skeleton; they do not reproject exactly onto ``data_2d``.
- ``annot3`` (D3DP's ``data_train_3dhp_ori.npz`` / ``data_test_3dhp_ori.npz``): the metric poses.

The joints are MPI's ``mpii_get_joints('relevant')`` set, in its order (``MPI_JOINT_NAMES``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffpose.data import npz
from diffpose.data.h36m import DEFAULT_SIGMA_PX
from diffpose.data.skeleton import NUM_JOINTS
from diffpose.data.source import Clip, DataError, SourceInfo, check_finite, single_kernel_gmm

log = logging.getLogger(__name__)

# MPI's 17 "relevant" joints, 1-based indices [8 6 15 16 17 10 11 12 24 25 26 19 20 21 5 4 7] of its 28.
MPI_JOINT_NAMES: tuple[str, ...] = (
    "head_top", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "pelvis",
    "spine", "head",
)
MPI_ROOT = 14
# Kinematic tree of MPI's order: its 'relevant' parents (mpii_get_joints.m, o1), except that head_top hangs
# from head (as P-STMO draws it) rather than from neck, which is the chain Human3.6M's 17 joints have.
MPI_PARENTS: tuple[int, ...] = (16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1)
MPI_LEFT: tuple[int, ...] = (5, 6, 7, 11, 12, 13)
MPI_RIGHT: tuple[int, ...] = (2, 3, 4, 8, 9, 10)

# ours[j] = mpi[MPI_TO_OURS[j]]: the limbs, pelvis and spine by name; thorax <- neck, neck_nose <- head,
# head <- head_top.
MPI_TO_OURS: tuple[int, ...] = (14, 8, 9, 10, 11, 12, 13, 15, 1, 16, 0, 5, 6, 7, 2, 3, 4)

# The official evaluation (mpii_compute_3d_pck.m) counts PCK and AUC over 14 joints, leaving out the pelvis,
# spine and head (MPJPE uses all 17). In our joint order:
PCK_JOINTS: tuple[int, ...] = tuple(
    j for j in range(17) if MPI_JOINT_NAMES[MPI_TO_OURS[j]] not in ("pelvis", "spine", "head"))

ANNOTATION_FILES: dict[str, tuple[str, str]] = {
    "univ_annot3": ("data_train_3dhp.npz", "data_test_3dhp.npz"),
    "annot3": ("data_train_3dhp_ori.npz", "data_test_3dhp_ori.npz"),
}
TRAIN_SUBJECTS: tuple[str, ...] = tuple(f"S{i}" for i in range(1, 9))
TEST_SUBJECTS: tuple[str, ...] = tuple(f"TS{i}" for i in range(1, 7))
TEST_RESOLUTION: dict[str, tuple[int, int]] = {
    "TS1": (2048, 2048), "TS2": (2048, 2048), "TS3": (2048, 2048), "TS4": (2048, 2048),
    "TS5": (1920, 1080), "TS6": (1920, 1080),
}
TRAIN_RESOLUTION = (2048, 2048)
# Nominal frame rate: the train file records 25 or 50 per sequence (kept in notes); the test file none.
MPI_FPS = 25.0


def _joints(path: Path, arr: Any, where: str, dim: int) -> np.ndarray:
    """A numeric (T, 17, dim) array in MPI order -> float64 in ours."""
    numeric = isinstance(arr, np.ndarray) and np.issubdtype(arr.dtype, np.number)
    if not numeric or arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, dim) or arr.shape[0] < 1:
        shape = arr.shape if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataError(path, f"{where}: {shape}, expected (T, {NUM_JOINTS}, {dim})")
    return arr[:, list(MPI_TO_OURS)].astype(np.float64)


def _poses(path: Path, entry: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``data_2d`` (T, 17, 2) px and ``data_3d`` (T, 17, 3) mm in MPI order -> ours, pixels and metres."""
    if not isinstance(entry, dict) or not {"data_2d", "data_3d"} <= set(entry):
        raise DataError(path, f"{where}: expected a dict with 'data_2d' and 'data_3d'")
    pose_2d = _joints(path, entry["data_2d"], f"{where} data_2d", 2)  # (T, 17, 2) px
    pose_3d = _joints(path, entry["data_3d"], f"{where} data_3d", 3)  # (T, 17, 3) mm
    if pose_2d.shape[0] != pose_3d.shape[0]:
        raise DataError(path, f"{where}: data_2d has {pose_2d.shape[0]} frames, data_3d {pose_3d.shape[0]}")
    return pose_2d.astype(np.float32), (pose_3d / 1000.0).astype(np.float32)


def _clip(
    path: Path, subject: str, action: str, camera: int, size: tuple[int, int], entry: Any, sigma_px: float,
    valid: np.ndarray | None = None,
) -> Clip:
    where = f"{subject}/{action}/cam{camera}"
    pose_2d, pose_3d = _poses(path, entry, where)
    frames = pose_2d.shape[0]
    if valid is None:
        valid = np.ones(frames, dtype=bool)
    if valid.shape != (frames,):
        raise DataError(path, f"{where}: valid has shape {valid.shape}, expected ({frames},)")
    # Frames outside the evaluation mask may hold junk; only frames that are used must be finite.
    check_finite(path, pose_2d[valid], f"{where} data_2d (valid frames)")
    check_finite(path, pose_3d[valid], f"{where} data_3d (valid frames)")
    junk = ~np.isfinite(pose_2d).all((1, 2)) | ~np.isfinite(pose_3d).all((1, 2))
    if junk.any():
        log.info("%s: %s: %d invalid frames hold NaN/inf, set to 0", path, where, int(junk.sum()))
        pose_2d[junk], pose_3d[junk] = 0.0, 0.0
    return Clip(
        subject=subject, action=action, camera=camera, width=size[0], height=size[1], pose_2d=pose_2d,
        gmm=single_kernel_gmm(pose_2d, sigma_px), pose_3d=pose_3d, world_3d=None, valid=valid,
    )


def _mask(path: Path, value: Any, where: str) -> np.ndarray:
    """MPI's ``valid_frame`` flags (T,) of 0/1 (any numeric or bool dtype) -> bool."""
    arr = np.asarray(value)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(path, f"{where}: valid must be a (T,) array of 0/1, got {arr.dtype} {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise DataError(path, f"{where}: valid holds values other than 0 and 1")
    return arr.astype(bool)


def read_train(path: str | Path, sigma_px: float = DEFAULT_SIGMA_PX) -> tuple[list[Clip], dict[str, float]]:
    """Clips of a train file (subject "S1", action "Seq1", camera from the file) and each sequence's fps."""
    path = Path(path)
    data = npz.read(path, "data")
    if not isinstance(data, dict):
        raise DataError(path, f"data: want a dict 'S<i> Seq<j>' -> [cameras, fps], not {type(data).__name__}")
    clips, fps = [], {}
    for key, value in data.items():
        parts = key.split(" ") if isinstance(key, str) else []
        if len(parts) != 2:
            raise DataError(path, f"sequence key {key!r} is not '<subject> <sequence>'")
        subject, action = parts
        if not isinstance(value, list | tuple) or not value or not isinstance(value[0], dict) or not value[0]:
            raise DataError(path, f"{key}: expected [dict camera -> poses, fps]")
        if len(value) > 1:
            if not isinstance(value[1], int | float | np.number):
                raise DataError(path, f"{key}: element 1 should be the frame rate, got {value[1]!r}")
            fps[key] = float(value[1])
        for cam, entry in value[0].items():
            try:
                camera = int(cam)
            except (TypeError, ValueError) as e:
                raise DataError(path, f"{key}: camera key {cam!r} is not an index") from e
            clips.append(_clip(path, subject, action, camera, TRAIN_RESOLUTION, entry, sigma_px))
    return clips, fps


def read_test(path: str | Path, sigma_px: float = DEFAULT_SIGMA_PX) -> list[Clip]:
    """Clips of a test file: subject and action "TS<i>", camera 0, ``valid`` from the file."""
    path = Path(path)
    data = npz.read(path, "data")
    if not isinstance(data, dict):
        raise DataError(path, f"data: expected a dict 'TS<i>' -> poses, got {type(data).__name__}")
    clips = []
    for seq, entry in data.items():
        if seq not in TEST_RESOLUTION:
            raise DataError(path, f"unknown test sequence {seq!r} (expected {list(TEST_RESOLUTION)})")
        if not isinstance(entry, dict) or "valid" not in entry:
            raise DataError(path, f"{seq}: expected a dict with 'data_2d', 'data_3d' and 'valid'")
        valid = _mask(path, entry["valid"], seq)
        clips.append(_clip(path, seq, seq, 0, TEST_RESOLUTION[seq], entry, sigma_px, valid))
    return clips


def read_mpi3dhp(
    root: str | Path,
    annotation: str = "univ_annot3",
    subjects: Sequence[str] | None = None,
    sigma_px: float = DEFAULT_SIGMA_PX,
) -> tuple[SourceInfo, list[Clip]]:
    """MPI-INF-3DHP from ``root``: train S1-S8 and test TS1-TS6 clips, 3D in camera frame, metres.

    ``annotation`` picks the files (``ANNOTATION_FILES``): ``"univ_annot3"`` reads P-STMO's files,
    ``"annot3"`` D3DP's ``*_ori`` files. The reader cannot tell the two apart from the numbers; it
    records the assumption in ``SourceInfo.notes``. Only the files the chosen ``subjects`` need are read.
    """
    if annotation not in ANNOTATION_FILES:
        raise ValueError(f"annotation must be one of {sorted(ANNOTATION_FILES)}, got {annotation!r}")
    root = Path(root)
    train_path, test_path = (root / name for name in ANNOTATION_FILES[annotation])
    chosen = None if subjects is None else set(subjects)
    unknown = sorted((chosen or set()) - set(TRAIN_SUBJECTS) - set(TEST_SUBJECTS))
    if unknown:
        named = test_path if unknown[0].startswith("TS") else train_path
        raise DataError(named, f"unknown subjects {unknown}: MPI-INF-3DHP has S1-S8 and TS1-TS6")
    clips: list[Clip] = []
    files: list[str] = []
    fps: dict[str, float] = {}
    if chosen is None or chosen & set(TRAIN_SUBJECTS):
        train, fps = read_train(train_path, sigma_px)
        clips += train
        files.append(str(train_path))
    if chosen is None or chosen & set(TEST_SUBJECTS):
        clips += read_test(test_path, sigma_px)
        files.append(str(test_path))
    if chosen is not None:
        missing = sorted(chosen - {c.subject for c in clips})
        if missing:
            path = train_path if missing[0] in TRAIN_SUBJECTS else test_path
            raise DataError(path, f"subjects {missing} are not in the file")
        clips = [c for c in clips if c.subject in chosen]
    notes = {
        "annotation": annotation,
        "annotation_source": (
            f"data_3d assumed to be MPI's {annotation} ({', '.join(ANNOTATION_FILES[annotation])}); "
            "univ_annot3 is rescaled to Human3.6M's universal skeleton, annot3 is metric"
        ),
        "pose_3d": "data_3d, camera frame, absolute, mm -> m; joints mapped with MPI_TO_OURS",
        "pose_2d": "data_2d (MPI annot2, ground-truth projection), pixels",
        "gmm": f"single kernel at pose_2d, sigma {sigma_px:g} px",
        "fps": f"nominal {MPI_FPS:g}; per train sequence: " + ", ".join(f"{k}={v:g}" for k, v in fps.items()),
        "world_3d": "none (the preprocessed files hold camera-frame poses only)",
    }
    info = SourceInfo(
        dataset="mpi3dhp",
        detector="gt",
        splits={"train": TRAIN_SUBJECTS, "test": TEST_SUBJECTS},
        fps=MPI_FPS,
        files=tuple(files),
        notes=notes,
    )
    return info, clips
