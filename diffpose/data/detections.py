"""Detector-like 2D keypoints with per-joint GMM uncertainty, synthesised from ground-truth 2D.

Some sources hold only exact 2D projections (the CMU stand-in). This module turns them into the two files a
Human3.6M run reads next to CPN detections: plain detections ``data_2d_<name>_<detector>.npz`` and
DiffPose-style mixtures ``data_2d_<name>_<detector>_gmm.npz`` (VideoPose3D layout, pixels).

One joint ``j`` in frame ``t`` is a heatmap with four candidate modes, each a mass ``m`` and an isotropic
Gaussian; the ``M`` heaviest are kept, weights ``pi = m / sum(m)``, sorted descending:

    mode     mass m                   mean                            sigma (both axes)
    main     1                        x_tj + e_tj                     s_tj
    tail     tail_weight              x_tj + e_tj                     tail_scale * s_tj
    swap     ambiguity, or a win      x_tk + e_tk, k = flip(j)        s_tk
    outlier  0, weak, or a win        x_tj + e_tj + d_tj, |d| ~ 50 px  outlier_sigma_scale * s_tj

with ``x`` the ground truth, ``e`` a temporally correlated error (AR(1) per axis, unit variance scaled by
``s_tj``) and the per-axis error scale

    s_tj = base_sigma_px * f_j * (size_t / reference_size_px + speed_factor * v_tj)

where ``f_j`` is 1 at the torso, ``limb_factor`` at elbows and knees, ``extremity_factor`` at wrists and
ankles, ``size_t`` is the larger side of the ground-truth bounding box (px) and ``v_tj`` the joint's 2D speed
(px/frame). Doubling the person's size in the image doubles every error (same relative error at any camera
distance). A "win" gives a mode a mass above 1, so for a run of frames it is the detection: the pair's labels
are swapped, or the joint jumps to an outlier. No kernel mean depends on the ground truth except through
``x + e``, so the GMM does not leak the true position.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from diffpose.data import npz
from diffpose.data.skeleton import EXTREMITIES, LEFT, NUM_JOINTS, PARENTS, RIGHT, flip_permutation
from diffpose.data.source import DataError

CANDIDATES = 4  # main, tail, swap, outlier


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the synthetic detector. Pixel values hold for a person of ``reference_size_px``.

    Defaults give, on the CMU stand-in (50 Hz, 1000 px images, person size 235-490 px from the 5th to the
    95th percentile), a mean detection error of 5.4 px (torso 3.7, elbows and knees 5.9, wrists and ankles
    8.8): the few pixels of CPN on Human3.6M (an estimate, not a measured match; to imitate a measured
    detector, scale ``base_sigma_px``).
    """

    kernels: int = 3                    # M, kernels per joint written to the GMM file
    seed: int = 0                       # combined with a hash of (subject, action, camera) per clip
    base_sigma_px: float = 2.8          # per-axis error std at torso joints of a still person, px
    reference_size_px: float = 400.0    # person size (bbox larger side, px) at which pixel values hold
    limb_factor: float = 1.5            # error multiplier at elbows and knees
    extremity_factor: float = 2.2       # error multiplier at wrists and ankles (skeleton.EXTREMITIES)
    speed_factor: float = 0.06          # error growth per px/frame of 2D joint speed, frames/px
    error_correlation: float = 0.85     # AR(1) coefficient of the error from one frame to the next
    tail_weight: float = 0.15           # mass of the broad tail kernel, relative to the main mode's 1
    tail_scale: float = 3.0             # tail sigma / main sigma
    swap_ambiguity: float = 0.3         # mass of the mirror-joint mode when the pair coincides in 2D
    swap_proximity: float = 0.15        # distance (fraction of person size) over which that mass decays by e
    swap_rate: float = 0.01             # fraction of frames in which a left/right pair's labels are swapped
    swap_length: tuple[int, int] = (3, 12)            # frames per swap run, uniform inclusive
    outlier_rate: float = 0.002         # fraction of joint-frames in which an outlier mode is the detection
    outlier_length: tuple[int, int] = (1, 4)          # frames per winning-outlier run
    outlier_mode_rate: float = 0.05     # fraction of joint-frames holding a weak (losing) outlier mode
    outlier_mode_length: tuple[int, int] = (5, 25)    # frames per weak-outlier run
    outlier_mode_weight: tuple[float, float] = (0.05, 0.3)  # mass of a weak outlier mode, uniform
    outlier_distance_px: tuple[float, float] = (20.0, 80.0)  # outlier offset from the main mode, uniform
    outlier_sigma_scale: float = 1.5    # outlier sigma / main sigma
    win_weight: tuple[float, float] = (1.3, 2.5)     # mass of a winning swap/outlier mode (main is 1)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SynthConfig.{name}={getattr(self, name)!r}: {why}")

        if self.kernels < 1:
            raise bad("kernels", "need at least one kernel")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        for name in ("base_sigma_px", "reference_size_px", "tail_scale", "outlier_sigma_scale"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")
        if not self.swap_proximity > 0:
            raise bad("swap_proximity", "must be > 0")
        for name in ("limb_factor", "extremity_factor", "speed_factor"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not 0 <= self.error_correlation < 1:
            raise bad("error_correlation", "must be in [0, 1)")
        for name in ("swap_rate", "outlier_rate", "outlier_mode_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "a rate must be in [0, 1]")
        for name in ("tail_weight", "swap_ambiguity"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "a losing mode's mass must be in [0, 1)")
        for name in ("swap_length", "outlier_length", "outlier_mode_length"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise bad(name, "need 1 <= min <= max frames")
        for name in ("outlier_mode_weight", "outlier_distance_px", "win_weight"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise bad(name, "need 0 <= min <= max")
        if self.outlier_mode_weight[1] >= 1:
            raise bad("outlier_mode_weight", "a losing mode's mass must stay below the main mode's 1")
        if self.win_weight[0] <= 1:
            raise bad("win_weight", "a winning mode's mass must exceed the main mode's 1")


def h36m_metadata() -> dict:
    """VideoPose3D's ``metadata`` entry for the 17-joint layout."""
    return {"layout_name": "h36m", "num_joints": NUM_JOINTS, "keypoints_symmetry": [list(LEFT), list(RIGHT)]}


def clip_rng(seed: int, subject: str, action: str, camera: int) -> np.random.Generator:
    """One clip's generator, seeded by ``seed`` and sha256 of (subject, action, camera), never ``hash()``."""
    key = json.dumps([str(subject), str(action), int(camera)]).encode()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def joint_factors(cfg: SynthConfig) -> np.ndarray:
    """Per-joint error multiplier f_j (17,): extremities, their parents (elbows, knees), 1 elsewhere."""
    f = np.ones(NUM_JOINTS)
    f[[PARENTS[j] for j in EXTREMITIES]] = cfg.limb_factor
    f[list(EXTREMITIES)] = cfg.extremity_factor
    return f


def person_size(gt_2d: np.ndarray) -> np.ndarray:
    """Larger side of the joints' bounding box per frame, px: (T, 17, 2) -> (T,), at least 1 px."""
    extent = gt_2d.max(axis=1) - gt_2d.min(axis=1)  # (T, 2)
    return np.maximum(extent.max(axis=-1), 1.0)


def joint_speed(gt_2d: np.ndarray) -> np.ndarray:
    """2D speed of every joint, px/frame, central differences: (T, 17, 2) -> (T, 17); zero for T < 2."""
    if gt_2d.shape[0] < 2:
        return np.zeros(gt_2d.shape[:2])
    return np.linalg.norm(np.gradient(gt_2d, axis=0), axis=-1)


def error_sigma(gt_2d: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Per-axis std of the main mode's error (T, 17) px: s_tj = sigma_0 f_j (size_t / size_ref + k_v v_tj)."""
    scale = person_size(gt_2d)[:, None] / cfg.reference_size_px  # (T, 1)
    return cfg.base_sigma_px * joint_factors(cfg) * (scale + cfg.speed_factor * joint_speed(gt_2d))


def ar1_noise(rng: np.random.Generator, frames: int, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary unit-variance AR(1) noise (frames, *shape): e_t = rho e_{t-1} + sqrt(1 - rho^2) n_t.

    White noise convolved (FFT) with the impulse response rho^k, truncated where it falls below 1e-6 and
    renormalised to unit variance; the noise starts ``taps - 1`` frames early, so frame 0 is stationary.
    """
    taps = 1 if rho == 0 else int(np.ceil(np.log(1e-6) / np.log(rho))) + 1
    white = rng.standard_normal((frames + taps - 1, *shape))
    response = rho ** np.arange(taps)
    response /= np.sqrt((response**2).sum())
    n = frames + 2 * taps - 2
    spectrum = np.fft.rfft(white, n, axis=0) * np.fft.rfft(response, n).reshape(-1, *[1] * len(shape))
    return np.fft.irfft(spectrum, n, axis=0)[taps - 1 : taps - 1 + frames]


def runs(
    rng: np.random.Generator, frames: int, width: int, rate: float, length: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Random runs of frames, independently per column: a mask covering about ``rate`` of the frames.

    A run starts with probability rate / mean(length) per frame and lasts ``length`` (uniform, inclusive)
    frames; a later start cuts an earlier run short. Returns (mask (T, W) bool, start (T, W) int: the frame
    where the covering run began, -1 before any start), so per-run values are ``v[start]``.
    """
    p = min(rate / (0.5 * (length[0] + length[1])), 1.0)
    begins = rng.random((frames, width)) < p
    lengths = rng.integers(length[0], length[1] + 1, (frames, width))
    t = np.arange(frames)[:, None]
    start = np.maximum.accumulate(np.where(begins, t, -1), axis=0)
    run_length = np.take_along_axis(lengths, np.maximum(start, 0), axis=0)
    return (start >= 0) & (t - start < run_length), start


def per_run(values: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``values[start]`` column-wise: one value per run, (T, W)."""
    return np.take_along_axis(values, np.maximum(start, 0), axis=0)


def synthesize_clip(
    gt_2d: np.ndarray, rng: np.random.Generator, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One clip's detector GMM and detections from its ground-truth 2D.

    gt_2d (T, 17, 2) pixels -> (gmm (T, 17, M, 5) float32 = (pi, mu_u, mu_v, sigma_u, sigma_v) px, kernels
    sorted by weight descending; detections (T, 17, 2) float32 = the top kernel's mean). The model is in the
    module docstring; all draws come from ``rng`` in a fixed order.
    """
    gt = np.asarray(gt_2d, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"gt_2d has shape {gt.shape}, expected (T, {NUM_JOINTS}, 2)")
    if not np.isfinite(gt).all():
        raise ValueError("gt_2d holds NaN or inf")
    frames, m = gt.shape[0], cfg.kernels
    if frames == 0:
        return np.zeros((0, NUM_JOINTS, m, 5), np.float32), np.zeros((0, NUM_JOINTS, 2), np.float32)
    left, right, flip = list(LEFT), list(RIGHT), flip_permutation()
    size = person_size(gt)[:, None]  # (T, 1)
    scale = size / cfg.reference_size_px  # (T, 1)

    sigma = error_sigma(gt, cfg)  # (T, 17)
    noise = ar1_noise(rng, frames, (NUM_JOINTS, 2), cfg.error_correlation)  # (T, 17, 2), unit variance
    main = gt + sigma[..., None] * noise

    gap = np.linalg.norm(gt[:, left] - gt[:, right], axis=-1)  # (T, 6)
    ambiguity = cfg.swap_ambiguity * np.exp(-gap / (cfg.swap_proximity * size))
    swapped, swap_start = runs(rng, frames, len(left), cfg.swap_rate, cfg.swap_length)
    win = per_run(rng.uniform(*cfg.win_weight, (frames, len(left))), swap_start)
    swap_mass = np.zeros((frames, NUM_JOINTS))
    swap_mass[:, left] = swap_mass[:, right] = np.where(swapped, win, ambiguity)

    weak, weak_start = runs(rng, frames, NUM_JOINTS, cfg.outlier_mode_rate, cfg.outlier_mode_length)
    strong, strong_start = runs(rng, frames, NUM_JOINTS, cfg.outlier_rate, cfg.outlier_length)
    outlier_start = np.where(strong, strong_start, weak_start)
    distance = per_run(rng.uniform(*cfg.outlier_distance_px, (frames, NUM_JOINTS)), outlier_start) * scale
    angle = per_run(rng.uniform(0.0, 2.0 * np.pi, (frames, NUM_JOINTS)), outlier_start)
    weak_mass = per_run(rng.uniform(*cfg.outlier_mode_weight, (frames, NUM_JOINTS)), weak_start)
    strong_mass = per_run(rng.uniform(*cfg.win_weight, (frames, NUM_JOINTS)), strong_start)
    outlier_mass = np.where(strong, strong_mass, np.where(weak, weak_mass, 0.0))
    outlier = main + distance[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)

    mass = np.stack([np.ones_like(sigma), np.full_like(sigma, cfg.tail_weight), swap_mass, outlier_mass], -1)
    mean = np.stack([main, main, main[:, flip], outlier], axis=2)  # (T, 17, 4, 2)
    spread = np.stack([sigma, cfg.tail_scale * sigma, sigma[:, flip], cfg.outlier_sigma_scale * sigma], -1)
    if m > CANDIDATES:  # zero-weight copies of the main mode pad the mixture
        pad = m - CANDIDATES
        mass = np.concatenate([mass, np.zeros((*mass.shape[:2], pad))], -1)
        mean = np.concatenate([mean, np.repeat(mean[:, :, :1], pad, axis=2)], 2)
        spread = np.concatenate([spread, np.repeat(spread[..., :1], pad, axis=-1)], -1)

    order = np.argsort(-mass, axis=-1, kind="stable")[..., :m]  # (T, 17, M)
    mass = np.take_along_axis(mass, order, -1)
    gmm = np.empty((frames, NUM_JOINTS, m, 5), np.float32)
    gmm[..., 0] = mass / mass.sum(-1, keepdims=True)
    gmm[..., 1:3] = np.take_along_axis(mean, order[..., None], 2)
    gmm[..., 3] = gmm[..., 4] = np.take_along_axis(spread, order, -1)
    return gmm, gmm[:, :, 0, 1:3].copy()


def synthesize(
    positions_2d_gt: Mapping[str, Mapping[str, Sequence[np.ndarray]]], cfg: SynthConfig = SynthConfig()
) -> tuple[dict, dict]:
    """Detections and GMMs for every clip: subject -> action -> list per camera of (T, 17, 2) px.

    Returns (detections, gmm) in the same nesting, (T, 17, 2) and (T, 17, M, 5) float32. Camera ``i`` of a
    clip draws from :func:`clip_rng` (cfg.seed, subject, action, i), so its output does not depend on others.
    """
    detections: dict = {}
    gmm: dict = {}
    for subject, actions in positions_2d_gt.items():
        detections[subject], gmm[subject] = {}, {}
        for action, cameras in actions.items():
            rngs = [clip_rng(cfg.seed, subject, action, c) for c in range(len(cameras))]
            out = [synthesize_clip(x, rng, cfg) for x, rng in zip(cameras, rngs, strict=True)]
            gmm[subject][action] = [o[0] for o in out]
            detections[subject][action] = [o[1] for o in out]
    return detections, gmm


def detection_paths(out_dir: str | Path, name: str, detector: str) -> tuple[Path, Path]:
    """``data_2d_<name>_<detector>.npz`` and ``data_2d_<name>_<detector>_gmm.npz`` in ``out_dir``."""
    for label, value in (("name", name), ("detector", detector)):
        if not value or any(c in value for c in "/\\") or value in (".", ".."):
            raise ValueError(f"{label} {value!r} must be a plain file-name part")
    out = Path(out_dir)
    return out / f"data_2d_{name}_{detector}.npz", out / f"data_2d_{name}_{detector}_gmm.npz"


def save_npz(file: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """Write what ``np.savez_compressed`` writes (a zip of ``<key>.npy`` entries), at deflate level 1.

    Float noise hardly compresses: level 1 writes the stand-in's GMMs in half the time for 3% more bytes.
    """
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, arr in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, arr, allow_pickle=True)


def write_detections(
    out_dir: str | Path, name: str, detector: str, detections: dict, gmm: dict, metadata: dict | None = None
) -> tuple[Path, Path]:
    """Write both files in VideoPose3D / DiffPose layout; each goes to a temporary file, then ``os.replace``.

    ``positions_2d`` and ``metadata`` are pickled dicts (object arrays), as in the released files
    (:func:`diffpose.data.npz.read` reads them back).
    """
    plain_path, gmm_path = detection_paths(out_dir, name, detector)
    plain_path.parent.mkdir(parents=True, exist_ok=True)
    meta = np.array(h36m_metadata() if metadata is None else metadata, dtype=object)
    temps: list[tuple[Path, Path]] = []
    try:
        for positions, path in ((detections, plain_path), (gmm, gmm_path)):
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            temps.append((tmp, path))
            with open(tmp, "xb") as f:
                save_npz(f, {"positions_2d": np.array(positions, dtype=object), "metadata": meta})
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return plain_path, gmm_path


def is_h36m_layout(metadata: object) -> bool:
    """True for a VideoPose3D ``metadata`` dict with our 17 joints and left/right lists."""
    if not isinstance(metadata, dict):
        return False
    symmetry = [list(side) for side in metadata.get("keypoints_symmetry", [])]
    return metadata.get("num_joints") == NUM_JOINTS and symmetry == [list(LEFT), list(RIGHT)]


def read_gt_2d(path: str | Path) -> dict:
    """Ground-truth 2D from a VideoPose3D ``data_2d_*.npz`` (its dicts read as plain data only).

    Checks the layout (subject -> action -> list of finite (T, 17, 2) arrays, metadata with our 17 joints and
    left/right lists) and raises :class:`DataError` naming the file otherwise.
    """
    path = Path(path)
    positions = npz.read(path, "positions_2d")
    metadata = npz.read(path, "metadata") if "metadata" in npz.members(path) else None
    if metadata is not None and not is_h36m_layout(metadata):
        raise DataError(path, f"metadata {metadata} is not the 17-joint h36m layout")
    if not isinstance(positions, dict) or not positions:
        raise DataError(path, "positions_2d is not a non-empty dict subject -> action -> cameras")
    for subject, actions in positions.items():
        if not isinstance(actions, dict):
            raise DataError(path, f"{subject}: expected a dict action -> cameras")
        for action, cameras in actions.items():
            if not isinstance(cameras, list | tuple):
                raise DataError(path, f"{subject}/{action}: expected a list of per-camera arrays")
            for c, arr in enumerate(cameras):
                where = f"{subject}/{action}/cam{c}"
                if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 2):
                    raise DataError(path, f"{where}: expected a (T, {NUM_JOINTS}, 2) array")
                if not np.isfinite(arr).all():
                    raise DataError(path, f"{where}: holds NaN or inf")
    return positions


def synthesize_files(
    gt_path: str | Path,
    out_dir: str | Path,
    name: str,
    detector: str = "synth",
    cfg: SynthConfig = SynthConfig(),
) -> tuple[Path, Path]:
    """Read a ground-truth 2D npz, synthesise detections and GMMs, write both files; returns their paths."""
    plain_path, _ = detection_paths(out_dir, name, detector)
    if plain_path.resolve() == Path(gt_path).resolve():
        raise ValueError(f"{plain_path} would overwrite the ground truth it is made from")
    detections, gmm = synthesize(read_gt_2d(gt_path), cfg)
    return write_detections(out_dir, name, detector, detections, gmm)
