"""Human3.6M as VideoPose3D distributes it, and the generic reader for any source in that format.

Files (dicts in pickled object arrays, read as plain data by :mod:`diffpose.data.npz`):

- ``data_3d_h36m.npz``: ``positions_3d`` = subject -> action -> (T, 32, 3) world metres (z up).
- ``data_2d_h36m_<detector>.npz``: ``positions_2d`` = subject -> action -> list of per-camera (T, 17, 2)
  pixels; ``metadata`` = {layout_name, num_joints, keypoints_symmetry}.
- ``data_2d_h36m_<detector>_gmm.npz`` (DiffPose): ``positions_2d`` = same dict of per-camera
  (T, 17, M, 5) = (pi, mu_u, mu_v, sigma_u, sigma_v), pixels.
- cameras: the public numbers of VideoPose3D's ``common/h36m_dataset.py``, shipped as
  ``h36m_cameras.json`` (translations in metres).

:func:`read_h36m_format` turns such files into :class:`~diffpose.data.source.Clip` s; :func:`read_h36m`
is Human3.6M's file names, cameras and split on top of it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpose.data import npz
from diffpose.data.camera import world_to_camera
from diffpose.data.skeleton import H36M32_TO_17, LEFT, NUM_JOINTS, RIGHT
from diffpose.data.source import Clip, DataError, SourceInfo, check_finite, check_gmm, single_kernel_gmm

log = logging.getLogger(__name__)

# 2D uncertainty given to sources without a GMM file: one kernel of this standard deviation (pixels) per
# joint. A nominal value for a good detector on ~1000-pixel frames; every reader records it in notes.
DEFAULT_SIGMA_PX = 5.0

ACTIONS: tuple[str, ...] = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases", "Sitting",
    "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether",
)
# Human3.6M's own file names for two classes; VideoPose3D's converter renames them, its archive path does not.
ACTION_ALIASES: dict[str, str] = {"TakingPhoto": "Photo", "WalkingDog": "WalkDog"}

H36M_SPLITS: dict[str, tuple[str, ...]] = {"train": ("S1", "S5", "S6", "S7", "S8"), "test": ("S9", "S11")}
H36M_FPS = 50.0


def action_class(key: str) -> str:
    """The action class of a sequence key: the text before the first space, aliases resolved.

    ``"Directions 1" -> "Directions"``, ``"TakingPhoto 1" -> "Photo"``, ``"Walking 07_03" -> "Walking"``.
    """
    head = key.split(" ", 1)[0]
    return ACTION_ALIASES.get(head, head)


# ----------------------------------------------------------------------------------------------- cameras


@dataclass(frozen=True, eq=False)
class CameraParams:
    """One calibrated camera (float64 arrays; treat them as read-only).

    focal, center (2,) pixels; radial (k1, k2, k3); tangential (p1, p2); orientation (4,) unit quaternion
    (w, x, y, z) rotating camera coordinates into world coordinates; translation (3,) camera centre in
    world coordinates, metres.
    """

    id: str
    width: int
    height: int
    focal: np.ndarray
    center: np.ndarray
    radial: np.ndarray
    tangential: np.ndarray
    orientation: np.ndarray
    translation: np.ndarray


def _vector(path: Path, value: Any, size: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(path, f"{where}: not a list of numbers ({e})") from e
    if arr.shape != (size,):
        raise DataError(path, f"{where}: expected {size} numbers, got shape {arr.shape}")
    check_finite(path, arr, where)
    return arr


def _pixels(path: Path, value: Any, where: str) -> int:
    """An image size: a positive whole number of pixels."""
    whole = isinstance(value, int) or isinstance(value, float) and value.is_integer()
    if isinstance(value, bool) or not whole or value <= 0:
        raise DataError(path, f"{where}: must be a positive whole number of pixels, got {value!r}")
    return int(value)


def read_cameras(path: str | Path) -> dict[str, list[CameraParams]]:
    """Cameras from a json file: subject -> its cameras in index order.

    Layout (that of ``cameras_cmu_mocap17.json``): ``{"convention": str, "intrinsics": [per camera index:
    {id, res_w, res_h, focal_length, center, radial_distortion, tangential_distortion, ...}],
    "extrinsics": {subject: [per camera index: {orientation, translation (metres)}]}}``. A subject whose
    list is empty (no published extrinsics, e.g. Human3.6M's S2-S4) is left out.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(path, "camera file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read camera json: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("intrinsics"), list) or not isinstance(
        doc.get("extrinsics"), dict
    ):
        raise DataError(path, "expected an object with 'intrinsics' (list) and 'extrinsics' (object)")
    intrinsics = doc["intrinsics"]
    if not intrinsics:
        raise DataError(path, "no intrinsics")
    for i, cam in enumerate(intrinsics):
        required = {"id", "res_w", "res_h", "focal_length", "center"}
        missing = required - set(cam) if isinstance(cam, dict) else required
        if missing:
            raise DataError(path, f"intrinsics[{i}]: missing {sorted(missing)}")
    out: dict[str, list[CameraParams]] = {}
    for subject, cams in doc["extrinsics"].items():
        if not isinstance(cams, list):
            raise DataError(path, f"extrinsics[{subject}]: expected a list of cameras")
        if not cams:
            continue
        if len(cams) != len(intrinsics):
            raise DataError(path, f"extrinsics[{subject}]: {len(cams)} cameras, {len(intrinsics)} intrinsics")
        pairs = enumerate(zip(intrinsics, cams, strict=True))
        out[subject] = [_camera(path, subject, i, intr, ext) for i, (intr, ext) in pairs]
    return out


def _camera(path: Path, subject: str, index: int, intr: dict, ext: Any) -> CameraParams:
    where = f"camera {index} of {subject}"
    if not isinstance(ext, dict) or not {"orientation", "translation"} <= set(ext):
        raise DataError(path, f"{where}: extrinsics need 'orientation' and 'translation'")
    orientation = _vector(path, ext["orientation"], 4, f"{where} orientation")
    norm = float(np.linalg.norm(orientation))
    if abs(norm - 1.0) > 1e-4:
        raise DataError(path, f"{where}: orientation is not a unit quaternion (norm {norm:.6f})")
    focal = _vector(path, intr["focal_length"], 2, f"{where} focal_length")
    if (focal <= 0).any():
        raise DataError(path, f"{where}: focal_length must be positive, got {focal.tolist()}")
    return CameraParams(
        id=str(intr["id"]),
        width=_pixels(path, intr["res_w"], f"{where} res_w"),
        height=_pixels(path, intr["res_h"], f"{where} res_h"),
        focal=focal,
        center=_vector(path, intr["center"], 2, f"{where} center"),
        radial=_vector(path, intr.get("radial_distortion", [0.0] * 3), 3, f"{where} radial"),
        tangential=_vector(path, intr.get("tangential_distortion", [0.0] * 2), 2, f"{where} tangential"),
        orientation=orientation,
        translation=_vector(path, ext["translation"], 3, f"{where} translation"),
    )


def h36m_cameras() -> dict[str, list[CameraParams]]:
    """Human3.6M's published cameras (VideoPose3D's numbers, metres), from the packaged json."""
    ref = resources.files("diffpose.data").joinpath("h36m_cameras.json")
    with resources.as_file(ref) as p:
        return read_cameras(p)


# ------------------------------------------------------------------------------------------------ files


def _nested(path: Path, value: Any, key: str) -> dict[str, dict[str, Any]]:
    """Check ``subject -> action -> value`` with string keys."""
    if not isinstance(value, dict):
        raise DataError(path, f"{key}: expected a dict subject -> action, got {type(value).__name__}")
    if not value:
        raise DataError(path, f"{key}: holds no subjects")
    for subject, actions in value.items():
        if not isinstance(subject, str) or not isinstance(actions, dict):
            raise DataError(path, f"{key}: subject {subject!r} does not map to a dict action -> data")
        if not actions:
            raise DataError(path, f"{key}: subject {subject} holds no actions")
        for action in actions:
            if not isinstance(action, str):
                raise DataError(path, f"{key}: {subject}: action key {action!r} is not a string")
    return value


def _array(path: Path, value: Any, where: str, tail: tuple[int | None, ...]) -> np.ndarray:
    """A finite numeric array (T, *tail) with T >= 1; ``None`` in ``tail`` is any size >= 1."""
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        raise DataError(path, f"{where}: expected a numeric array, got {type(value).__name__}")
    shape = value.shape
    ok = len(shape) == 1 + len(tail) and shape[0] >= 1 and all(
        s == t if t is not None else s >= 1 for s, t in zip(shape[1:], tail, strict=False)
    )
    if not ok:
        want = ", ".join("T" if i == 0 else ("M" if t is None else str(t)) for i, t in enumerate((0, *tail)))
        raise DataError(path, f"{where}: shape {shape}, expected ({want})")
    check_finite(path, value, where)
    return value


def _per_camera(path: Path, value: Any, where: str, tail: tuple[int | None, ...]) -> list[np.ndarray]:
    if not isinstance(value, list | tuple) or not value:
        raise DataError(path, f"{where}: expected a non-empty per-camera list, not {type(value).__name__}")
    arrays = (_array(path, v, f"{where}/cam{c}", tail) for c, v in enumerate(value))
    return [a.astype(np.float32, copy=False) for a in arrays]


def read_poses_3d(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``positions_3d``: subject -> action -> (T, 17, 3) float32 world metres.

    A (T, 32, 3) array (Human3.6M's full skeleton) is reduced with ``H36M32_TO_17``; (T, 17, 3) is taken
    as it is (already in our joint order).
    """
    path = Path(path)
    data = _nested(path, npz.read(path, "positions_3d"), "positions_3d")
    out: dict[str, dict[str, np.ndarray]] = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, arr in actions.items():
            where = f"positions_3d {subject}/{action}"
            if isinstance(arr, np.ndarray) and arr.ndim == 3 and arr.shape[1] == 32:
                arr = arr[:, list(H36M32_TO_17)]
            out[subject][action] = _array(path, arr, where, (NUM_JOINTS, 3)).astype(np.float32, copy=False)
    return out


def _check_metadata(path: Path) -> None:
    if "metadata" not in npz.members(path):
        return
    meta = npz.read(path, "metadata")
    if not isinstance(meta, dict):
        raise DataError(path, f"metadata: expected a dict, got {type(meta).__name__}")
    if "num_joints" in meta and meta["num_joints"] != NUM_JOINTS:
        raise DataError(path, f"metadata: num_joints {meta['num_joints']}, expected {NUM_JOINTS}")
    if "keypoints_symmetry" in meta:
        try:
            left, right = ([int(j) for j in side] for side in meta["keypoints_symmetry"])
        except (TypeError, ValueError) as e:
            raise DataError(path, f"metadata: unreadable keypoints_symmetry ({e})") from e
        if (sorted(left), sorted(right)) != (sorted(LEFT), sorted(RIGHT)):
            raise DataError(
                path,
                f"metadata: keypoints_symmetry {left} / {right} is not Human3.6M's 17-joint order "
                f"(left {list(LEFT)}, right {list(RIGHT)}); layout {meta.get('layout_name')!r}",
            )


def read_poses_2d(path: str | Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """``positions_2d``: subject -> action -> per-camera (T, 17, 2) float32 pixels; ``metadata`` checked."""
    path = Path(path)
    data = _nested(path, npz.read(path, "positions_2d"), "positions_2d")
    _check_metadata(path)
    return {
        s: {a: _per_camera(path, v, f"positions_2d {s}/{a}", (NUM_JOINTS, 2)) for a, v in actions.items()}
        for s, actions in data.items()
    }


def read_gmm_2d(path: str | Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """DiffPose's GMM 2D: subject -> action -> per-camera (T, 17, M, 5) float32.

    The last axis is (pi, mu_u, mu_v, sigma_u, sigma_v) in pixels; pi sums to 1 over M and sigma > 0 where
    pi > 0 (the released files hold M = 3 with weights (1, 0, 0), zero sigma on the empty kernels).
    """
    path = Path(path)
    data = _nested(path, npz.read(path, "positions_2d"), "positions_2d")
    _check_metadata(path)
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for subject, actions in data.items():
        out[subject] = {}
        for action, value in actions.items():
            where = f"positions_2d {subject}/{action}"
            arrays = _per_camera(path, value, where, (NUM_JOINTS, None, 5))
            for c, g in enumerate(arrays):
                check_gmm(path, g, f"{where}/cam{c}")
            out[subject][action] = arrays
    return out


# ------------------------------------------------------------------------------------------------ clips


def strongest_kernel_mean(gmm: np.ndarray) -> np.ndarray:
    """Mean of the highest-weight kernel per joint: (T, 17, M, 5) -> (T, 17, 2) pixels."""
    k = gmm[..., 0].argmax(-1)  # (T, 17)
    return np.take_along_axis(gmm[..., 1:3], k[..., None, None], axis=-2)[..., 0, :]


def camera_frame(world: np.ndarray, cameras: Sequence[CameraParams]) -> np.ndarray:
    """World poses (T, J, 3) metres into each camera: (C, T, J, 3) float32, ``R^T (x - t)`` in float64."""
    q = torch.from_numpy(np.stack([c.orientation for c in cameras]))[:, None, None, :]  # (C, 1, 1, 4)
    t = torch.from_numpy(np.stack([c.translation for c in cameras]))[:, None, None, :]  # (C, 1, 1, 3)
    x = torch.from_numpy(world.astype(np.float64))[None].expand(len(cameras), *world.shape)  # (C, T, J, 3)
    return world_to_camera(x, q, t).to(torch.float32).numpy()


def _trim(path: Path, arrays: list[np.ndarray], frames: int, where: str) -> tuple[list[np.ndarray], int]:
    """Trim per-camera 2D arrays longer than the 3D to its length (as VideoPose3D and DiffPose do)."""
    out, trimmed = [], 0
    for c, arr in enumerate(arrays):
        if arr.shape[0] < frames:
            raise DataError(path, f"{where}/cam{c}: {arr.shape[0]} frames, fewer than the 3D's {frames}")
        if arr.shape[0] > frames:
            log.info("%s: %s/cam%d: %d 2D frames cut to the 3D's %d", path, where, c, arr.shape[0], frames)
            trimmed += 1
        out.append(arr[:frames])
    return out, trimmed


def _per_action(
    path: Path, data: Mapping[str, Mapping[str, list[np.ndarray]]], subject: str, action: str, cameras: int
) -> list[np.ndarray]:
    if subject not in data:
        raise DataError(path, f"subject {subject} is missing (file has {sorted(data)})")
    if action not in data[subject]:
        raise DataError(path, f"{subject}/{action}: action is missing")
    arrays = data[subject][action]
    if len(arrays) != cameras:
        raise DataError(path, f"{subject}/{action}: {len(arrays)} cameras, the camera set has {cameras}")
    return arrays


def _check_splits(source: Path, splits: Mapping[str, Sequence[str]], subjects: Sequence[str]) -> None:
    """Every subject read is in exactly one split."""
    seen: dict[str, str] = {}
    for split, members in splits.items():
        for s in members:
            if s in seen:
                raise DataError(source, f"subject {s} is in two splits ({seen[s]} and {split})")
            seen[s] = split
    lost = [s for s in subjects if s not in seen]
    if lost:
        named = ", ".join(f"{k}: {list(v)}" for k, v in splits.items())
        raise DataError(source, f"subject(s) {lost} are in no split ({named})")


def read_h36m_format(
    path_3d: str | Path,
    path_2d: str | Path | None,
    path_gmm: str | Path | None,
    cameras: Mapping[str, Sequence[CameraParams]],
    *,
    dataset: str,
    detector: str,
    splits: Mapping[str, Sequence[str]],
    fps: float,
    subjects: Sequence[str] | None = None,
    sigma_px: float = DEFAULT_SIGMA_PX,
    split_source: str | Path | None = None,
) -> tuple[SourceInfo, list[Clip]]:
    """Clips of every (subject, action, camera) of a VideoPose3D-format source.

    ``pose_2d`` comes from the plain 2D file, else from the GMM's highest-weight kernel mean; ``gmm`` from
    the GMM file, else one kernel of ``sigma_px`` around ``pose_2d``. ``pose_3d = R^T (X_world - t)`` per
    camera. 2D sequences longer than the 3D are cut to its length; anything else inconsistent raises
    :class:`DataError`. ``subjects`` restricts the output (default: every subject of the 3D file); each must
    be in exactly one of ``splits``, which ``split_source`` defines (named in errors; default the 3D file).
    """
    if path_2d is None and path_gmm is None:
        raise ValueError("read_h36m_format needs a 2D file, a GMM file or both")
    # 1. Read and check every file; 2. the subjects to read (read_subjects).
    path_3d = Path(path_3d)
    sources = _Sources(Path(path_2d) if path_2d is not None else None,
                       Path(path_gmm) if path_gmm is not None else None)
    poses_3d, chosen = read_subjects(path_3d, cameras, splits, subjects, split_source)
    # 3. One clip per (subject, action, camera): the 2D of each camera, the 3D in each camera's frame.
    clips: list[Clip] = []
    for subject in chosen:
        cams = cameras[subject]
        for action, world in poses_3d[subject].items():
            pose_2d, gmm = sources.per_camera(subject, action, len(cams), world.shape[0], sigma_px)
            world.setflags(write=False)  # one array shared by the clips of every camera
            pose_3d = camera_frame(world, cams)  # (C, T, 17, 3)
            clips.extend(
                Clip(
                    subject=subject, action=action, camera=c, width=cam.width, height=cam.height,
                    pose_2d=np.ascontiguousarray(pose_2d[c], dtype=np.float32),
                    gmm=np.ascontiguousarray(gmm[c], dtype=np.float32),
                    pose_3d=pose_3d[c], world_3d=world, valid=np.ones(world.shape[0], dtype=bool),
                )
                for c, cam in enumerate(cams)
            )
        sources.note_extra_actions(subject, poses_3d[subject])
    # 4. What was read, recorded in the store.
    info = SourceInfo(
        dataset=dataset, detector=detector, splits={k: tuple(v) for k, v in splits.items()}, fps=float(fps),
        files=(str(path_3d), *sources.files), notes=sources.notes(sigma_px),
    )
    return info, clips


def read_subjects(path_3d: Path, cameras: Mapping[str, Sequence[CameraParams]], splits: Mapping[str, Sequence[str]],
                  subjects: Sequence[str] | None = None, split_source: str | Path | None = None
                  ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """The 3D file's poses and the subjects to read (default: all of the file's): each in the file, with
    cameras, and in exactly one of ``splits`` (defined by ``split_source``, default the 3D file)."""
    poses_3d = read_poses_3d(path_3d)
    chosen = list(poses_3d) if subjects is None else list(subjects)
    for subject in chosen:
        if subject not in poses_3d:
            raise DataError(path_3d, f"subject {subject} is not in the file (it has {sorted(poses_3d)})")
        if not cameras.get(subject):
            raise DataError(path_3d, f"subject {subject}: no cameras (cameras known for {sorted(cameras)})")
    _check_splits(Path(split_source) if split_source is not None else path_3d, splits, chosen)
    return poses_3d, chosen


class _Sources:
    """The 2D files of a VideoPose3D-format source: plain detections, DiffPose's GMMs, or both."""

    def __init__(self, path_2d: Path | None, path_gmm: Path | None):
        self.path_2d, self.path_gmm = path_2d, path_gmm
        self.plain = read_poses_2d(path_2d) if path_2d is not None else None
        self.mixtures = read_gmm_2d(path_gmm) if path_gmm is not None else None
        self.trimmed = 0

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(str(p) for p in (self.path_2d, self.path_gmm) if p is not None)

    def per_camera(self, subject: str, action: str, cameras: int, frames: int, sigma_px: float
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per camera, the 2D (T, 17, 2) and the GMM (T, 17, M, 5) of a sequence of ``frames`` 3D frames:
        ``pose_2d`` from the plain file, else the GMM's highest-weight kernel means; the GMM from its file,
        else one kernel of ``sigma_px`` around ``pose_2d``."""
        where = f"{subject}/{action}"
        pose_2d = gmm = None
        if self.plain is not None:
            pose_2d, n = _trim(self.path_2d, _per_action(self.path_2d, self.plain, subject, action, cameras),
                               frames, where)
            self.trimmed += n
        if self.mixtures is not None:
            raw = _per_action(self.path_gmm, self.mixtures, subject, action, cameras)
            for c, g in enumerate(raw):
                if self.plain is not None and g.shape[0] != self.plain[subject][action][c].shape[0]:
                    n2d = self.plain[subject][action][c].shape[0]
                    raise DataError(self.path_gmm, f"{where}/cam{c}: {g.shape[0]} GMM frames, 2D file {n2d}")
            gmm, n = _trim(self.path_gmm, raw, frames, where)
            self.trimmed += 0 if self.plain is not None else n
        pose_2d = pose_2d if pose_2d is not None else [strongest_kernel_mean(g) for g in gmm]
        gmm = gmm if gmm is not None else [single_kernel_gmm(p, sigma_px) for p in pose_2d]
        return pose_2d, gmm

    def note_extra_actions(self, subject: str, actions_3d: Mapping[str, np.ndarray]) -> None:
        for source, data in ((self.path_2d, self.plain), (self.path_gmm, self.mixtures)):
            extra = sorted(set(data.get(subject, {})) - set(actions_3d)) if data is not None else []
            if extra:
                log.info("%s: %s: actions without 3D skipped: %s", source, subject, extra)

    def notes(self, sigma_px: float) -> dict[str, str]:
        p2d, pgmm = self.path_2d, self.path_gmm
        return {
            "pose_2d": f"positions_2d of {p2d.name}" if p2d else f"highest-weight kernel means of {pgmm.name}",
            "gmm": pgmm.name if pgmm else f"single kernel at pose_2d, sigma {sigma_px:g} px",
            "pose_3d": "world_to_camera of positions_3d per camera (metres, absolute)",
            "trimmed_2d": f"{self.trimmed} per-camera 2D sequences cut to the 3D length",
        }


def read_h36m(
    root: str | Path,
    detector: str = "cpn_ft_h36m_dbb",
    subjects: Sequence[str] | None = None,
    sigma_px: float = DEFAULT_SIGMA_PX,
) -> tuple[SourceInfo, list[Clip]]:
    """Human3.6M from ``root``: ``data_3d_h36m.npz`` plus ``data_2d_h36m_<detector>.npz`` and/or
    ``data_2d_h36m_<detector>_gmm.npz``, the packaged cameras, split S1 S5 S6 S7 S8 / S9 S11, 50 fps."""
    root = Path(root)
    path_3d = root / "data_3d_h36m.npz"
    path_2d = root / f"data_2d_h36m_{detector}.npz"
    path_gmm = root / f"data_2d_h36m_{detector}_gmm.npz"
    if not path_3d.is_file():
        raise DataError(path_3d, "file not found (Human3.6M 3D poses, VideoPose3D format)")
    if not path_2d.is_file() and not path_gmm.is_file():
        raise DataError(path_2d, f"file not found, nor {path_gmm}: need 2D detections, a GMM 2D file or both")
    return read_h36m_format(
        path_3d,
        path_2d if path_2d.is_file() else None,
        path_gmm if path_gmm.is_file() else None,
        h36m_cameras(),
        dataset="h36m",
        detector=detector,
        splits=H36M_SPLITS,
        fps=H36M_FPS,
        subjects=subjects,
        sigma_px=sigma_px,
    )
