"""A user's 2D keypoint files, read into one sequence in our 17-joint order, ready to lift.

Formats (``diffpose-bench lift --format``; ``auto`` tells them apart by content: a directory holding
``meta.json`` is a store, one holding ``*.json`` files is a COCO image sequence, a zip archive is ``npz`` or,
with a ``positions_2d`` member, ``videopose3d``, text starting with ``[`` or ``{`` is ``coco``, other text
``csv``):

    coco         MMPose / RTMPose JSON, COCO-17 with scores. A video file (``MMPoseInferencer``):
                 ``[{"frame_id": k, "instances": [{"keypoints": [[x, y]] * 17, "keypoint_scores": [s] * 17,
                 "bbox": [[x1, y1, x2, y2]], "bbox_score": b}, ...]}, ...]``; the older demo's
                 ``{"meta_info": {...}, "instance_info": [...]}`` (frames or instances); one image's file (a
                 list of instances) or a directory of them (one frame each, in natural name order). A flat
                 ``"keypoints": [x, y, s] * 17`` (COCO results, AlphaPose) is read too.
    npz          an array (T, 17, 2) of pixels in our joint order: member ``keypoints`` (or the only member);
                 optional ``scores`` (T, 17) and ``image_size`` (2,) = (width, height).
    csv          one line per frame, 34 numbers x0, y0, ..., x16, y16 (pixels, our joint order), or 51 with a
                 score after each joint; an optional header line; ``#`` comments.
    videopose3d  a VideoPose3D / DiffPose npz: ``positions_2d`` = subject -> action -> per-camera (T, 17, 2)
                 or GMM (T, 17, M, 5) pixels; our layout, or VideoPose3D's custom COCO layout
                 (``data_2d_custom_*.npz``: metadata ``layout_name`` "coco", mapped as below). The clip is
                 chosen by subject, action and camera (each may be left out where the file holds one);
                 the image size comes from ``metadata["image_sizes"][subject][action][camera]`` (``fit-gmm``
                 writes it) or ``metadata["video_metadata"][subject]`` ({"w", "h"}) when present.
    store        a store's clip (``diffpose-bench prepare``), chosen by subject, action and camera: the
                 detections and GMMs evaluation reads, already normalised.

COCO-17 -> our 17 joints (:data:`COCO_SOURCES`, the formulae of MMPose's ``convert_keypoint_definition`` and
MotionBERT's ``coco2h36m``): pelvis = mean of the hips, thorax = mean of the shoulders, spine = mean of pelvis
and thorax, neck/nose = the nose, head = mean of the eyes, the limbs one to one; the ears are unused. A
derived joint's score is the lowest of its sources'.

Low scores: a COCO joint whose score is below ``min_score`` (default 0.3, MMPose's demo threshold; RTMPose's
SimCC scores are not probabilities, so it is a heuristic), or that is absent (a frame with nobody in it, a
frame id the file skips), is *filled*: linearly interpolated in time between the same joint's nearest
confident frames, held at the first / last confident value before / after them. An our-joint is filled when
any of its sources is. A used COCO joint that is confident in no frame is an error. Several persons in a
frame: the one with the highest ``bbox_score``, or, where instances have none, the highest mean keypoint
score.

Uncertainty: a source without a GMM gets one kernel per joint of standard deviation ``sigma_px`` (default
5 px, as ``prepare`` gives plain detections), ``FILLED_SIGMA_FACTOR`` times wider at filled joints.

The image size (the normalisation is VideoPose3D's ``x / w * 2 - [1, h / w]``) is given (``width``,
``height``), else read from the file (npz ``image_size``; a COCO JSON object's top-level ``"width"`` and
``"height"``: MMPose writes none, so add them or pass them; VideoPose3D's ``video_metadata``); a store's rows
are normalised already.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffpose.config import ConfigError
from diffpose.data import npz
from diffpose.data.camera import image_coordinates, normalize_screen
from diffpose.data.h36m import DEFAULT_SIGMA_PX, read_gmm_2d, read_poses_2d, strongest_kernel_mean
from diffpose.data.skeleton import JOINT_NAMES, NUM_JOINTS
from diffpose.data.source import DataError, check_gmm, single_kernel_gmm
from diffpose.data.store import META_FILE, PoseStore

FORMATS = ("auto", "coco", "npz", "csv", "videopose3d", "store")

COCO_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# VideoPose3D's ``coco_metadata["keypoints_symmetry"]`` (left, right): how its custom files name the layout.
COCO_SYMMETRY = ([1, 3, 5, 7, 9, 11, 13, 15], [2, 4, 6, 8, 10, 12, 14, 16])

# Each of our joints as a weighted sum of COCO joints: our index -> {COCO index: weight}.
COCO_SOURCES: dict[int, dict[int, float]] = {
    0: {11: 0.5, 12: 0.5},                        # pelvis = mean(l_hip, r_hip)
    1: {12: 1.0}, 2: {14: 1.0}, 3: {16: 1.0},     # r_hip, r_knee, r_ankle
    4: {11: 1.0}, 5: {13: 1.0}, 6: {15: 1.0},     # l_hip, l_knee, l_ankle
    7: {11: 0.25, 12: 0.25, 5: 0.25, 6: 0.25},    # spine = mean(pelvis, thorax)
    8: {5: 0.5, 6: 0.5},                          # thorax = mean(l_shoulder, r_shoulder)
    9: {0: 1.0},                                  # neck/nose = nose
    10: {1: 0.5, 2: 0.5},                         # head = mean(l_eye, r_eye)
    11: {5: 1.0}, 12: {7: 1.0}, 13: {9: 1.0},     # l_shoulder, l_elbow, l_wrist
    14: {6: 1.0}, 15: {8: 1.0}, 16: {10: 1.0},    # r_shoulder, r_elbow, r_wrist
}
USED_COCO = tuple(sorted({i for sources in COCO_SOURCES.values() for i in sources}))  # all but the ears

DEFAULT_MIN_SCORE = 0.3
FILLED_SIGMA_FACTOR = 3.0
MAX_FRAMES = 1_000_000  # a frame-id span beyond this is a damaged file, not a video


@dataclass(frozen=True)
class Keypoints:
    """One 2D sequence in our 17 joints, in the store's units.

    pose_2d   (T, 17, 2) float32  normalised screen units (camera.normalize_screen)
    gmm_2d    (T, 17, M, 5) float32  (pi, mu_u, mu_v, sigma_u, sigma_v), mu and sigma normalised (px * 2 / w),
              kernels heaviest first, pi summing to 1
    filled    (T, 17) bool     joints filled in by the low-score rule, not detected
    frame_id  (T,) int64       the file's frame numbers
    width, height              image size in pixels; None for a store's rows (normalised already)
    """

    pose_2d: np.ndarray
    gmm_2d: np.ndarray
    filled: np.ndarray
    frame_id: np.ndarray
    width: int | None
    height: int | None
    path: Path
    format: str
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return self.pose_2d.shape[0]

    def pixels(self) -> np.ndarray:
        """(T, 17, 2) float64 pixels (the normalised units where the image size is unknown)."""
        uv = torch.from_numpy(self.pose_2d.astype(np.float64))
        if self.width is None or self.height is None:
            return uv.numpy()
        return image_coordinates(uv, self.width, self.height).numpy()

    def sigma_pixels(self) -> np.ndarray:
        """(T, 17) the heaviest kernel's mean sigma (of u and v), pixels (normalised units if no size)."""
        sigma = self.gmm_2d[:, :, 0, 3:5].astype(np.float64).mean(-1)
        return sigma if self.width is None else sigma * self.width / 2.0


# ---- the COCO-17 mapping ----------------------------------------------------------------------------------
def coco_matrix() -> np.ndarray:
    """(17 ours, 17 COCO) weights: ``ours = W @ coco`` per coordinate."""
    w = np.zeros((NUM_JOINTS, len(COCO_NAMES)))
    for j, sources in COCO_SOURCES.items():
        for i, weight in sources.items():
            w[j, i] = weight
    return w


def coco_to_ours(points: np.ndarray, scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """COCO-17 points (..., 17, C) -> ours (..., 17, C); scores (..., 17) -> ours, the lowest of the sources'."""
    out = np.einsum("jc,...cd->...jd", coco_matrix(), points)
    if scores is None:
        return out, None
    ours = np.stack([scores[..., list(COCO_SOURCES[j])].min(-1) for j in range(NUM_JOINTS)], axis=-1)
    return out, ours


def coco_gmm_to_ours(gmm: np.ndarray, kernels: int | None = None) -> np.ndarray:
    """Per-joint COCO-17 mixtures (..., 17, M, 5) -> ours (..., 17, K, 5), K = ``kernels`` (default M).

    A derived joint sum_i w_i X_i of independent mixtures X_i is the mixture over every choice of one kernel
    per source: weight prod_i pi_i, mean sum_i w_i mu_i, variance sum_i w_i^2 sigma_i^2 per axis. The K
    heaviest are kept and their weights renormalised (zero-weight kernels pad where fewer exist)."""
    m = gmm.shape[-2]
    k = kernels or m
    out = np.zeros((*gmm.shape[:-3], NUM_JOINTS, k, 5))
    for j, sources in COCO_SOURCES.items():
        idx, w = list(sources), np.array(list(sources.values()))
        combos = np.array(list(itertools.product(range(m), repeat=len(idx))))          # (C, S)
        picked = gmm[..., idx, :, :][..., np.arange(len(idx)), combos, :]              # (..., C, S, 5)
        pi = picked[..., 0].prod(-1)                                                   # (..., C)
        mu = (w[:, None] * picked[..., 1:3]).sum(-2)                                   # (..., C, 2)
        sigma = np.sqrt((w[:, None] ** 2 * picked[..., 3:5] ** 2).sum(-2))
        mix = np.concatenate([pi[..., None], mu, sigma], -1)                           # (..., C, 5)
        order = np.argsort(-pi, axis=-1, kind="stable")[..., :k]
        mix = np.take_along_axis(mix, order[..., None], axis=-2)
        if mix.shape[-2] < k:
            pad = np.repeat(mix[..., :1, :], k - mix.shape[-2], axis=-2)
            pad[..., 0] = 0.0
            mix = np.concatenate([mix, pad], axis=-2)
        mix[..., 0] /= np.maximum(mix[..., 0].sum(-1, keepdims=True), 1e-300)
        out[..., j, :, :] = mix
    return out


# ---- the low-score rule ----------------------------------------------------------------------------------
def fill_missing(points: np.ndarray, missing: np.ndarray, path: Path, names: tuple[str, ...],
                 joints: tuple[int, ...]) -> np.ndarray:
    """Points (T, J, 2) with ``missing`` (T, J) joints linearly interpolated in time from the same joint's
    other frames (held constant beyond the first / last). Every joint of ``joints`` needs one frame."""
    out = points.astype(np.float64, copy=True)
    t = np.arange(points.shape[0])
    for j in joints:
        known = ~missing[:, j]
        if not known.any():
            raise DataError(path, f"joint {names[j]} is missing or below the score threshold in every frame "
                                  "(lower --min-score, or check the file)")
        if known.all():
            continue
        for c in range(points.shape[2]):
            out[:, j, c] = np.interp(t, t[known], points[known, j, c])
    return out


# ---- building a sequence -----------------------------------------------------------------------------------
def _size(path: Path, value: Any, what: str) -> int:
    whole = isinstance(value, int | np.integer) or isinstance(value, float | np.floating) and float(value).is_integer()
    if isinstance(value, bool) or not whole or value <= 0:
        raise DataError(path, f"{what}: must be a positive whole number of pixels, got {value!r}")
    return int(value)


def _image_size(path: Path, width: int | None, height: int | None, found: tuple[Any, Any] | None,
                where: str) -> tuple[int, int]:
    """The given size, else the file's; neither is an error naming both ways."""
    if width is not None and height is not None:
        return _size(path, width, "--width"), _size(path, height, "--height")
    if (width is None) != (height is None):
        raise DataError(path, "give both --width and --height (the image size in pixels)")
    if found is None:
        raise DataError(path, f"no image size: give --width and --height ({where})")
    return _size(path, found[0], "image width"), _size(path, found[1], "image height")


def from_pixels(path: Path, fmt: str, pose_px: np.ndarray, width: int, height: int, *,
                gmm_px: np.ndarray | None = None, filled: np.ndarray | None = None,
                frame_id: np.ndarray | None = None, sigma_px: float = DEFAULT_SIGMA_PX,
                notes: dict[str, str] | None = None) -> Keypoints:
    """A :class:`Keypoints` from pixels (T, 17, 2) and optional GMMs (T, 17, M, 5) in pixels, normalised as
    ``prepare`` normalises a clip."""
    t = pose_px.shape[0]
    filled = np.zeros((t, NUM_JOINTS), bool) if filled is None else filled.astype(bool)
    if gmm_px is None:
        gmm_px = single_kernel_gmm(pose_px.astype(np.float32), sigma_px)
        gmm_px[..., 0, 3:5] *= np.where(filled, FILLED_SIGMA_FACTOR, 1.0)[..., None].astype(np.float32)
    order = np.argsort(-gmm_px[..., 0], axis=-1, kind="stable")
    g = np.take_along_axis(gmm_px.astype(np.float32), order[..., None], axis=-2)
    g[..., 1:3] = normalize_screen(torch.from_numpy(g[..., 1:3].copy()), float(width), float(height)).numpy()
    g[..., 3:5] *= 2.0 / float(width)
    pose = normalize_screen(torch.from_numpy(pose_px.astype(np.float32)), float(width), float(height)).numpy()
    return Keypoints(pose_2d=pose, gmm_2d=g, filled=filled,
                     frame_id=np.arange(t, dtype=np.int64) if frame_id is None else frame_id.astype(np.int64),
                     width=width, height=height, path=path, format=fmt, notes=dict(notes or {}))


def _check_points(path: Path, arr: Any, where: str, joints: int = NUM_JOINTS) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise DataError(path, f"{where}: expected a numeric array (T, {joints}, 2), got "
                              f"{type(arr).__name__ if not isinstance(arr, np.ndarray) else arr.dtype}")
    if arr.ndim != 3 or arr.shape[1:] != (joints, 2) or arr.shape[0] < 1:
        raise DataError(path, f"{where}: shape {arr.shape}, expected (T, {joints}, 2) pixels")
    if not np.isfinite(arr).all():
        raise DataError(path, f"{where}: holds NaN or inf")
    return arr.astype(np.float64)


def _scored(path: Path, fmt: str, coco: bool, points: np.ndarray, scores: np.ndarray | None, min_score: float,
            width: int, height: int, sigma_px: float, frame_id: np.ndarray | None = None,
            absent: np.ndarray | None = None, notes: dict[str, str] | None = None) -> Keypoints:
    """Apply the low-score rule (and the COCO mapping) to points (T, 17, 2) with scores (T, 17)."""
    t = points.shape[0]
    missing = np.zeros((t, NUM_JOINTS), bool) if scores is None else scores < min_score
    if absent is not None:
        missing |= absent[:, None]
    names = COCO_NAMES if coco else JOINT_NAMES
    used = USED_COCO if coco else tuple(range(NUM_JOINTS))
    filled_points = fill_missing(points, missing, path, names, used)
    if coco:
        pose, _ = coco_to_ours(filled_points)
        filled = np.stack([missing[:, list(COCO_SOURCES[j])].any(-1) for j in range(NUM_JOINTS)], -1)
    else:
        pose, filled = filled_points, missing
    notes = {**(notes or {}), "low_score_rule": f"score < {min_score:g} or absent: linear interpolation in time",
             "filled_joint_frames": str(int(filled.sum()))}
    if coco:
        notes["mapping"] = "COCO-17 -> Human3.6M-17 (MMPose / MotionBERT formulae)"
    return from_pixels(path, fmt, pose, width, height, filled=filled, frame_id=frame_id, sigma_px=sigma_px,
                       notes=notes)


# ---- COCO JSON (MMPose / RTMPose) ------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(path, "not a text file (not UTF-8); expected MMPose's JSON") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None


def _instance(path: Path, inst: Any, where: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(keypoints (17, 2), scores (17,), bbox_score or None) of one MMPose instance dict."""
    if not isinstance(inst, dict) or "keypoints" not in inst:
        raise DataError(path, f"{where}: expected an instance object with 'keypoints'")
    try:
        kps = np.asarray(inst["keypoints"], dtype=np.float64)
        scores = None if "keypoint_scores" not in inst else np.asarray(inst["keypoint_scores"], dtype=np.float64)
        box_score = inst.get("bbox_score")
        box_score = None if box_score is None else float(np.asarray(box_score, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        raise DataError(path, f"{where}: keypoints, keypoint_scores or bbox_score are not numbers") from None
    n = len(COCO_NAMES)
    if kps.shape == (3 * n,) and scores is None:  # COCO results / AlphaPose: [x, y, s] * 17
        kps, scores = kps.reshape(n, 3)[:, :2], kps.reshape(n, 3)[:, 2]
    if kps.shape == (n, 3) and scores is None:
        kps, scores = kps[:, :2], kps[:, 2]
    if kps.shape != (n, 2):
        raise DataError(path, f"{where}: keypoints have shape {kps.shape}, expected 17 COCO joints [x, y] (COCO-17: "
                              "a model trained on another keypoint set needs its own mapping)")
    if scores is None:
        scores = np.ones(n)
    if scores.shape != (n,):
        raise DataError(path, f"{where}: keypoint_scores have shape {scores.shape}, expected ({n},)")
    if not (np.isfinite(kps).all() and np.isfinite(scores).all()) or (box_score is not None and
                                                                      not np.isfinite(box_score)):
        raise DataError(path, f"{where}: holds NaN or inf")
    return kps, scores, box_score


def _best_person(path: Path, instances: Any, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The chosen person of a frame (the highest bbox_score, else mean keypoint score); None if empty."""
    if not isinstance(instances, list):
        raise DataError(path, f"{where}: 'instances' is not a list")
    people = [_instance(path, inst, f"{where} instance {i}") for i, inst in enumerate(instances)]
    if not people:
        return None
    by_box = all(p[2] is not None for p in people)
    best = max(range(len(people)), key=lambda i: people[i][2] if by_box else float(people[i][1].mean()))
    return people[best][0], people[best][1]


def _coco_frames(path: Path, doc: Any) -> tuple[list[tuple[int, Any]], tuple[Any, Any] | None, str]:
    """(frame id, instances) pairs of an MMPose file, the image size it records, and which layout it is."""
    size = None
    kind = "MMPose inferencer"
    if isinstance(doc, dict):
        if "width" in doc or "height" in doc:
            size = (doc.get("width"), doc.get("height"))
        meta = doc.get("meta_info")
        if isinstance(meta, dict):
            name, count = meta.get("dataset_name"), meta.get("num_keypoints")
            if count is not None and count != len(COCO_NAMES) or name not in (None, "coco", "coco_wholebody"):
                raise DataError(path, f"meta_info: dataset {name!r} with {count} keypoints, expected COCO-17")
        if "instance_info" not in doc:
            raise DataError(path, "a JSON object without 'instance_info' (MMPose's demo); expected MMPose's "
                                  "keypoint JSON")
        doc, kind = doc["instance_info"], "MMPose demo (instance_info)"
    if not isinstance(doc, list) or not doc:
        raise DataError(path, "expected a non-empty JSON list of frames or instances (MMPose's output)")
    if all(isinstance(f, dict) and "instances" in f for f in doc):
        frames = []
        for i, f in enumerate(doc):
            fid = f.get("frame_id", i)
            if isinstance(fid, bool) or not isinstance(fid, int) or fid < 0:
                raise DataError(path, f"frame {i}: frame_id {fid!r} is not a whole number >= 0")
            frames.append((fid, f["instances"]))
        return frames, size, f"{kind}, video"
    if all(isinstance(f, dict) and "keypoints" in f for f in doc):
        return [(0, doc)], size, f"{kind}, image"
    raise DataError(path, "expected a list of frames {frame_id, instances} or of instances {keypoints, "
                          "keypoint_scores} (MMPose's output)")


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def read_coco_json(path: Path, *, width: int | None = None, height: int | None = None,
                   min_score: float = DEFAULT_MIN_SCORE, sigma_px: float = DEFAULT_SIGMA_PX) -> Keypoints:
    """An MMPose / RTMPose COCO-17 JSON file, or a directory of per-image files (see the module docstring)."""
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix == ".json" and p.is_file()),
                       key=lambda p: _natural(p.name))
        if not files:
            raise DataError(path, "a directory without .json files (expected MMPose's per-image JSON files)")
        pairs, size = [], None
        for i, f in enumerate(files):
            frames, found, _ = _coco_frames(f, _load_json(f))
            if len(frames) != 1:
                raise DataError(f, "expected one image's instances (a directory is read as one frame per file)")
            pairs.append((i, frames[0][1]))
            size = size or found
        kind = "MMPose inferencer, images"
    else:
        pairs, size, kind = _coco_frames(path, _load_json(path))
    ids = [fid for fid, _ in pairs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(path, f"frame_id {dup} appears twice")
    first, last = min(ids), max(ids)
    if last - first + 1 > MAX_FRAMES:
        raise DataError(path, f"frame ids span {first}..{last}: more than {MAX_FRAMES} frames")
    t = last - first + 1
    points = np.zeros((t, len(COCO_NAMES), 2))
    scores = np.zeros((t, len(COCO_NAMES)))
    absent = np.ones(t, bool)
    for fid, instances in pairs:
        person = _best_person(path, instances, f"frame_id {fid}")
        if person is not None:
            points[fid - first], scores[fid - first] = person
            absent[fid - first] = False
    if absent.all():
        raise DataError(path, "nobody is detected in any frame")
    w, h = _image_size(path, width, height, size, "MMPose's JSON records none")
    notes = {"source": kind, "person": "highest bbox_score (else mean keypoint score) per frame",
             "frames_without_person": str(int(absent.sum()))}
    return _scored(path, "coco", True, points, scores, min_score, w, h, sigma_px,
                   frame_id=np.arange(first, last + 1), absent=absent, notes=notes)


# ---- npz and CSV of our 17 joints ------------------------------------------------------------------------
def read_npz(path: Path, *, width: int | None = None, height: int | None = None,
             min_score: float = DEFAULT_MIN_SCORE, sigma_px: float = DEFAULT_SIGMA_PX) -> Keypoints:
    """An npz holding (T, 17, 2) pixels in our joint order (see the module docstring)."""
    names = npz.members(path)
    key = "keypoints" if "keypoints" in names else names[0] if len(names) == 1 else None
    if key is None:
        raise DataError(path, f"no member 'keypoints' (members: {names}); expected an array (T, 17, 2) of pixels")
    points = _check_points(path, npz.read(path, key), key)
    scores = None
    if "scores" in names and key != "scores":
        scores = npz.read(path, "scores")
        if not isinstance(scores, np.ndarray) or scores.shape != points.shape[:2] or not np.issubdtype(
                scores.dtype, np.number):
            raise DataError(path, f"scores: expected a numeric array {points.shape[:2]}")
        if not np.isfinite(scores).all():
            raise DataError(path, "scores: holds NaN or inf")
    found = None
    if "image_size" in names:
        size = npz.read(path, "image_size")
        if not isinstance(size, np.ndarray) or size.shape != (2,) or not np.issubdtype(size.dtype, np.number):
            raise DataError(path, "image_size: expected (width, height)")
        found = (size[0].item(), size[1].item())
    w, h = _image_size(path, width, height, found, "the npz has no image_size member")
    return _scored(path, "npz", False, points, scores, min_score, w, h, sigma_px)


def read_csv(path: Path, *, width: int | None = None, height: int | None = None,
             min_score: float = DEFAULT_MIN_SCORE, sigma_px: float = DEFAULT_SIGMA_PX) -> Keypoints:
    """A CSV of one frame per line: 34 numbers (x, y per joint, our order) or 51 (x, y, score)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, "not a text file (not UTF-8); expected a CSV of 34 numbers per line") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    rows: list[list[float]] = []
    width_seen = None
    for number, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            if not rows and width_seen is None:
                width_seen = len(fields)  # a header line
                continue
            raise DataError(path, f"line {number}: not numbers") from None
        if len(values) not in (2 * NUM_JOINTS, 3 * NUM_JOINTS):
            raise DataError(path, f"line {number}: {len(values)} values, expected 34 (x, y of our 17 joints) or "
                                  "51 (x, y, score)")
        if rows and len(values) != len(rows[0]):
            raise DataError(path, f"line {number}: {len(values)} values, earlier lines have {len(rows[0])}")
        rows.append(values)
    if not rows:
        raise DataError(path, "no frames (expected one line of 34 numbers per frame)")
    arr = np.asarray(rows)
    if not np.isfinite(arr).all():
        raise DataError(path, "holds NaN or inf")
    per = 3 if arr.shape[1] == 3 * NUM_JOINTS else 2
    arr = arr.reshape(len(rows), NUM_JOINTS, per)
    scores = arr[..., 2] if per == 3 else None
    w, h = _image_size(path, width, height, None, "a CSV records none")
    return _scored(path, "csv", False, arr[..., :2], scores, min_score, w, h, sigma_px)


# ---- VideoPose3D / DiffPose npz and stores ----------------------------------------------------------------
def _choose(path: Path, what: str, options: list, given: Any) -> Any:
    """``given`` if it is one of ``options``; the only option when none is given."""
    if given is None:
        if len(options) == 1:
            return options[0]
        raise DataError(path, f"holds {len(options)} {what}s {options[:12]}{' ...' if len(options) > 12 else ''}: "
                              f"choose one with --{what}")
    if given not in options:
        raise DataError(path, f"no {what} {given!r} (the file has {options[:12]}"
                              f"{' ...' if len(options) > 12 else ''})")
    return given


def _first_array(positions: dict) -> np.ndarray | None:
    """The first per-camera array of a subject -> action -> cameras dict (whether it holds GMMs)."""
    for actions in positions.values():
        for cams in actions.values() if isinstance(actions, dict) else ():
            if isinstance(cams, list | tuple) and cams and isinstance(cams[0], np.ndarray):
                return cams[0]
    return None


def _recorded_size(metadata: dict, subject: str, action: str, camera: int) -> tuple[Any, Any] | None:
    """A clip's image size in a VideoPose3D file's metadata: ``image_sizes[subject][action][camera]`` (as
    ``fit-gmm`` writes), else ``video_metadata[subject]`` {"w", "h"} (VideoPose3D's custom files)."""
    sizes = metadata.get("image_sizes")
    try:
        found = sizes[subject][action][camera]
        if found is not None:
            return found[0], found[1]
    except (TypeError, KeyError, IndexError):
        pass
    video = metadata.get("video_metadata")
    info = video.get(subject) if isinstance(video, dict) else None
    return (info.get("w"), info.get("h")) if isinstance(info, dict) else None


def read_videopose3d(path: Path, *, subject: str | None = None, action: str | None = None,
                     camera: int | None = None, width: int | None = None, height: int | None = None,
                     sigma_px: float = DEFAULT_SIGMA_PX) -> Keypoints:
    """One clip of a VideoPose3D ``data_2d_*.npz`` or DiffPose GMM file (see the module docstring)."""
    raw = npz.read(path, "positions_2d")
    metadata = npz.read(path, "metadata") if "metadata" in npz.members(path) else {}
    if not isinstance(metadata, dict):
        raise DataError(path, f"metadata: expected a dict, got {type(metadata).__name__}")
    if not isinstance(raw, dict) or not raw:
        raise DataError(path, "positions_2d is not a non-empty dict subject -> action -> cameras")
    coco = metadata.get("layout_name") == "coco"
    if coco:
        symmetry = metadata.get("keypoints_symmetry")
        if symmetry is not None and [list(map(int, s)) for s in symmetry] != [list(s) for s in COCO_SYMMETRY]:
            raise DataError(path, "metadata: layout 'coco' with a keypoints_symmetry that is not COCO-17's")
        data = raw
    else:
        first = _first_array(raw)
        data = read_gmm_2d(path) if first is not None and first.ndim == 4 else read_poses_2d(path)
    s = _choose(path, "subject", sorted(data), subject)
    if not isinstance(data[s], dict) or not data[s]:
        raise DataError(path, f"{s}: expected a dict action -> cameras")
    a = _choose(path, "action", sorted(data[s]), action)
    cams = data[s][a]
    if not isinstance(cams, list | tuple) or not cams:
        raise DataError(path, f"{s}/{a}: expected a per-camera list")
    c = _choose(path, "camera", list(range(len(cams))), camera)
    w, h = _image_size(path, width, height, _recorded_size(metadata, s, a, c),
                       f"its metadata records no image size for {s}/{a}/cam{c}")
    notes = {"clip": f"{s}/{a}/cam{c}"}
    if coco:
        points = _check_points(path, cams[c], f"positions_2d {s}/{a}/cam{c}", len(COCO_NAMES))
        notes["mapping"] = "COCO-17 -> Human3.6M-17 (MMPose / MotionBERT formulae)"
        return from_pixels(path, "videopose3d", coco_to_ours(points)[0], w, h, sigma_px=sigma_px, notes=notes)
    arr = cams[c]
    if arr.ndim == 4:
        check_gmm(path, arr, f"{s}/{a}/cam{c}")
        notes["gmm"] = f"{arr.shape[2]} kernels from the file"
        return from_pixels(path, "videopose3d", strongest_kernel_mean(arr), w, h, gmm_px=arr, notes=notes)
    return from_pixels(path, "videopose3d", arr, w, h, sigma_px=sigma_px, notes=notes)


def read_store_clip(path: Path, *, subject: str | None = None, action: str | None = None,
                    camera: int | None = None, width: int | None = None, height: int | None = None) -> Keypoints:
    """One clip of a store: its detections and GMMs as evaluation reads them. ``width``/``height`` only set
    the pixels the clip is drawn in (a store keeps normalised units)."""
    store = PoseStore.open(path)
    s = _choose(path, "subject", sorted(store.subjects), subject)
    in_subject = store.subject == store.subjects.index(s)
    a = _choose(path, "action", sorted({store.actions[i] for i in np.unique(store.action[in_subject])}), action)
    in_action = in_subject & (store.action == store.actions.index(a))
    c = _choose(path, "camera", sorted(int(i) for i in np.unique(store.camera[in_action])), camera)
    rows = np.flatnonzero(in_action & (store.camera == c))
    if (width is None) != (height is None):
        raise DataError(path, "give both --width and --height (the image size in pixels)")
    size = (None, None) if width is None else (_size(path, width, "--width"), _size(path, height, "--height"))
    return Keypoints(pose_2d=store.pose_2d[rows].copy(), gmm_2d=store.gmm_2d[rows].copy(),
                     filled=np.zeros((len(rows), NUM_JOINTS), bool), frame_id=store.frame[rows].astype(np.int64),
                     width=size[0], height=size[1], path=path, format="store",
                     notes={"clip": f"{s}/{a}/cam{c}", "store_rows": f"{rows[0]}..{rows[-1]}",
                            "store_fingerprint": store.meta["fingerprint"]})


# ---- one entry point ----------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """The format of ``path`` by its content (see the module docstring)."""
    if not path.exists():
        raise DataError(path, "no such keypoint file")
    if path.is_dir():
        if (path / META_FILE).is_file():
            return "store"
        if any(p.suffix == ".json" for p in path.iterdir()):
            return "coco"
        raise DataError(path, "a directory that is neither a store (no meta.json) nor MMPose's per-image JSON")
    if not path.is_file():
        raise DataError(path, "not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    if head.startswith(npz.ZIP_MAGIC):
        return "videopose3d" if "positions_2d" in npz.members(path) else "npz"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"[", b"{"):
        return "coco"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not merely a character cut at the end of the sample
            raise DataError(path, "not a keypoint file (binary, not an npz archive, JSON or CSV)") from None
    return "csv"


def read_keypoints(path: str | Path, fmt: str = "auto", *, width: int | None = None, height: int | None = None,
                   min_score: float = DEFAULT_MIN_SCORE, sigma_px: float = DEFAULT_SIGMA_PX,
                   subject: str | None = None, action: str | None = None, camera: int | None = None) -> Keypoints:
    """The 2D sequence of a keypoint file in format ``fmt`` (``auto``: by content). A file in another format
    than named, or malformed, raises :class:`DataError` naming it."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown keypoint format {fmt!r} (known: {', '.join(FORMATS)})")
    found = detect_format(path)
    if fmt != "auto" and fmt != found:
        raise DataError(path, f"--format {fmt}, but the file reads as {found}")
    fmt = found if fmt == "auto" else fmt
    if not sigma_px > 0:
        raise ConfigError(f"--sigma: must be > 0 pixels, got {sigma_px}")
    selectors = {"subject": subject, "action": action, "camera": camera}
    if fmt not in ("videopose3d", "store") and any(v is not None for v in selectors.values()):
        given = ", ".join(f"--{k}" for k, v in selectors.items() if v is not None)
        raise DataError(path, f"{given} choose a clip of a store or a VideoPose3D file; this file is {fmt}")
    if fmt == "coco":
        return read_coco_json(path, width=width, height=height, min_score=min_score, sigma_px=sigma_px)
    if fmt == "npz":
        return read_npz(path, width=width, height=height, min_score=min_score, sigma_px=sigma_px)
    if fmt == "csv":
        return read_csv(path, width=width, height=height, min_score=min_score, sigma_px=sigma_px)
    if fmt == "videopose3d":
        return read_videopose3d(path, **selectors, width=width, height=height, sigma_px=sigma_px)
    return read_store_clip(path, **selectors, width=width, height=height)
