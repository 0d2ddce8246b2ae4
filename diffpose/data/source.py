"""What every dataset reader hands to the canonical store: clips in our 17-joint order.

A reader (``h36m.py``, ``mpi3dhp.py``, ``mocap.py``) checks its files and yields :class:`Clip` s, one per
(subject, action, camera), plus one :class:`SourceInfo`. Readers raise :class:`DataError` naming the file
and what is wrong; nothing downstream reads a source file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffpose.data.skeleton import NUM_JOINTS

GMM_FIELDS = ("pi", "mu_u", "mu_v", "sigma_u", "sigma_v")


class DataError(ValueError):
    """A source file is missing or malformed. ``str()`` is one line naming the file and the problem."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class Clip:
    """One (subject, action, camera) sequence, already in our joint order.

    pose_2d   (T, 17, 2) float32  detected (or ground-truth) 2D keypoints, pixels
    gmm       (T, 17, M, 5) float32  per-joint 2D Gaussian mixture (pi, mu_u, mu_v, sigma_u, sigma_v), pixels;
              pi sums to 1 over M
    pose_3d   (T, 17, 3) float32  camera-frame 3D, metres, absolute (root not subtracted)
    world_3d  (T, 17, 3) float32  world-frame 3D, metres, or None where the source has none (MPI-INF-3DHP)
    valid     (T,) bool            frames to evaluate on (all True but for MPI-INF-3DHP's test masks)
    """

    subject: str
    action: str
    camera: int
    width: int
    height: int
    pose_2d: np.ndarray
    gmm: np.ndarray
    pose_3d: np.ndarray
    world_3d: np.ndarray | None
    valid: np.ndarray

    def __post_init__(self) -> None:
        t = self.pose_2d.shape[0]
        expect = {
            "pose_2d": (self.pose_2d, (t, NUM_JOINTS, 2)),
            "pose_3d": (self.pose_3d, (t, NUM_JOINTS, 3)),
            "valid": (self.valid, (t,)),
        }
        if self.world_3d is not None:
            expect["world_3d"] = (self.world_3d, (t, NUM_JOINTS, 3))
        where = f"clip {self.subject}/{self.action}/cam{self.camera}"
        for name, (arr, shape) in expect.items():
            if arr.shape != shape:
                raise ValueError(f"{where}: {name} {arr.shape} != {shape}")
        g = self.gmm.shape
        if len(g) != 4 or g[0] != t or g[1] != NUM_JOINTS or g[3] != 5:
            raise ValueError(f"{where}: gmm {g} != ({t}, 17, M, 5)")

    @property
    def frames(self) -> int:
        return self.pose_2d.shape[0]


@dataclass(frozen=True)
class SourceInfo:
    """Dataset-level facts the store records next to the rows."""

    dataset: str                      # "h36m" | "mpi3dhp" | "mocap17"
    detector: str                     # 2D source, e.g. "cpn_ft_h36m_dbb", "gt", "synth"
    splits: dict[str, tuple[str, ...]]  # "train" / "test" -> subjects
    fps: float
    files: tuple[str, ...]            # source files read, for the fingerprint
    notes: dict[str, str] = field(default_factory=dict)  # recorded choices, e.g. {"annotation": "univ_annot3"}


def single_kernel_gmm(pose_2d: np.ndarray, sigma_px: float) -> np.ndarray:
    """A one-kernel GMM (T, 17, 1, 5) centred on plain detections, for 2D sources without a GMM file."""
    t = pose_2d.shape[0]
    gmm = np.empty((t, NUM_JOINTS, 1, 5), dtype=np.float32)
    gmm[..., 0, 0] = 1.0
    gmm[..., 0, 1:3] = pose_2d
    gmm[..., 0, 3:5] = sigma_px
    return gmm


def check_gmm(path: str | Path, gmm: np.ndarray, where: str, atol: float = 1e-3) -> None:
    """Raise :class:`DataError` unless ``gmm`` (..., M, 5) is finite, has sigma >= 0 and weights summing to 1.

    A zero sigma is accepted (a point kernel); the sampler floors sigma before it divides by it."""
    if not np.isfinite(gmm).all():
        raise DataError(path, f"{where}: GMM holds NaN or inf")
    pi = gmm[..., 0]
    if (pi < -atol).any():
        raise DataError(path, f"{where}: negative GMM weights")
    s = pi.sum(-1)
    bad = np.abs(s - 1.0) > atol
    if bad.any():
        raise DataError(path, f"{where}: GMM weights sum to {float(s[bad].flat[0]):.4f}, not 1")
    if (gmm[..., 3:5] < 0).any():
        raise DataError(path, f"{where}: negative GMM sigma")


def check_finite(path: str | Path, arr: np.ndarray, where: str) -> None:
    if not np.isfinite(arr).all():
        raise DataError(path, f"{where}: holds NaN or inf")


def fingerprint(paths: Iterable[str | Path]) -> str:
    """sha256 over the bytes of the named files, in the order given (the store's content fingerprint)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
