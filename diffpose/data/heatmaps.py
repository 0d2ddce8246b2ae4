"""DiffPose's 2D GMM files from a detector's heatmaps: an M-kernel Gaussian mixture per frame and joint.

DiffPose's released code reads per-joint 2D mixtures but never published how it made them (GONGJIA0208/
Diffpose #5). Here each heatmap's *mass* is fitted by EM, in the pixel frame of the original image.

Input (``diffpose-bench fit-gmm``), one npz per clip (plain arrays; nothing is unpickled):

    heatmaps    (T, 17, H, W)  a top-down detector's heatmaps of one person per frame, COCO-17 order (MMPose's
                               COCO models) or, with ``layout = "h36m"``, our joint order
    boxes       (T, 4)         x1, y1, x2, y2: the pixels of the original image each frame's heatmaps cover (the
                               crop the network saw: MMPose's bbox_center -/+ bbox_scale / 2, not the person box)
      or affine (T, 2, 3)      heatmap (column j, row i, 1) -> image (u, v) pixels, for any other crop
    image_size  (2,)           optional (width, height) of the image, written to the metadata (``lift`` reads it)
    subject, action (str), camera (int)  optional: the clip's key in the output (else the command's flags)

Grid: with a box, cell (i, j) lies at u = x1 + j (x2 - x1) / W, v = y1 + i (y2 - y1) / H, the index times the
stride as MMPose's MSRA heatmap codec decodes it; UDP-style or rotated crops pass their affine.

The fit (:func:`fit_heatmaps`). Mass w_k = max(h_k, 0) / sum (the negative values a network emits are no
mass) at each cell's image position x_k. Kernels are seeded at the heatmap's separate peaks: 3 x 3 local
maxima at least ``peak_ratio`` (default 0.1) of the highest, each more than 2 cells from a higher one taken
before it, at most M; with fewer peaks the other kernels get zero weight (as the released GMM files hold M = 3
with weights (1, 0, 0)), so a single-peak heatmap gives one kernel. Then weighted EM on the mass,

    r_km  = pi_m N(x_k; mu_m, diag s_m^2) / sum_l pi_l N(x_k; mu_l, diag s_l^2)
    pi_m  = sum_k w_k r_km,   mu_m = sum_k w_k r_km x_k / pi_m,   s_m^2 = sum_k w_k r_km (x_k - mu_m)^2 / pi_m

from s = the whole mass's standard deviation, until the mass's log-likelihood sum_k w_k log p(x_k) gains less
than ``tol`` (at most ``iters`` rounds). Kernels are diagonal in the image axes (DiffPose's format has
sigma_u and sigma_v only): M = 1 is the mass's mean and the diagonal of its covariance. Sigma is a standard
deviation in pixels, floored at a cell's side / sqrt(12) (a uniform cell's). A heatmap without positive mass
is an error naming its frame and joint.

COCO-17 mixtures become ours by :func:`diffpose.data.keypoints.coco_gmm_to_ours` (derived joints: the mixture
of the weighted sum of independent sources, M heaviest kept).

Output: DiffPose's GMM npz in VideoPose3D's layout, ``data_2d_<name>_<detector>_gmm.npz`` (``positions_2d`` =
subject -> action -> per-camera float32 (T, 17, M, 5) = (pi, mu_u, mu_v, sigma_u, sigma_v), pixels, heaviest
first), and beside it the plain detections ``data_2d_<name>_<detector>.npz`` (the heaviest kernel's mean),
with ``metadata`` = our 17-joint layout plus the image sizes where known (``image_sizes`` = subject -> action
-> per camera [w, h]; VideoPose3D's ``video_metadata`` {subject: {"w", "h"}} for subjects of one size). With
``name = "h36m"`` these are the files ``prepare --dataset h36m --detector <detector>`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffpose.data import npz
from diffpose.data.detections import h36m_metadata, write_detections
from diffpose.data.keypoints import COCO_NAMES, USED_COCO, coco_gmm_to_ours
from diffpose.data.skeleton import JOINT_NAMES, NUM_JOINTS
from diffpose.data.source import DataError

LAYOUTS = ("coco", "h36m")
PEAK_RATIO = 0.1       # a peak below this fraction of the highest seeds no kernel
PEAK_DISTANCE = 2.0    # cells: a peak this close to a higher one is the same peak
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class HeatmapClip:
    """One clip's heatmaps (T, J, H, W), the affine (T, 2, 3) of each frame's grid into image pixels, and the
    optional image size and key the file gives."""

    path: Path
    heatmaps: np.ndarray
    affine: np.ndarray
    image_size: tuple[int, int] | None
    subject: str | None
    action: str | None
    camera: int | None


def box_affine(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes (T, 4) x1, y1, x2, y2 -> affines (T, 2, 3) of an H x W grid: u = x1 + j (x2 - x1) / W, etc."""
    a = np.zeros((boxes.shape[0], 2, 3))
    a[:, 0, 0] = (boxes[:, 2] - boxes[:, 0]) / width
    a[:, 1, 1] = (boxes[:, 3] - boxes[:, 1]) / height
    a[:, 0, 2], a[:, 1, 2] = boxes[:, 0], boxes[:, 1]
    return a


def cell_positions(affine: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image positions (N, H*W, 2) of every cell of an H x W grid under affines (N, 2, 3), row-major."""
    i, j = torch.meshgrid(torch.arange(height, dtype=affine.dtype, device=affine.device),
                          torch.arange(width, dtype=affine.dtype, device=affine.device), indexing="ij")
    grid = torch.stack([j.flatten(), i.flatten(), torch.ones(height * width, dtype=affine.dtype,
                                                             device=affine.device)], -1)   # (K, 3)
    return torch.einsum("nab,kb->nka", affine, grid)


def _seeds(h: torch.Tensor, kernels: int, peak_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell indices (N, M) of up to M separate peaks per heatmap (N, H, W), highest first, and which are live."""
    n, height, width = h.shape
    pooled = F.max_pool2d(h[:, None], 3, stride=1, padding=1)[:, 0]
    top = h.flatten(1).amax(1)[:, None, None]
    is_peak = (h >= pooled) & (h > 0) & (h >= peak_ratio * top)
    score = torch.where(is_peak, h, torch.full_like(h, -math.inf)).flatten(1)
    value, index = score.topk(min(4 * kernels + 4, height * width), dim=1)                     # (N, C)
    row, col = index // width, index % width
    chosen = torch.zeros(n, kernels, dtype=torch.long)
    live = torch.zeros(n, kernels, dtype=torch.bool)
    count = torch.zeros(n, dtype=torch.long)
    every = torch.arange(n)
    for c in range(index.shape[1]):
        taken_r, taken_c = chosen // width, chosen % width
        d2 = (taken_r - row[:, c:c + 1]) ** 2 + (taken_c - col[:, c:c + 1]) ** 2
        near = ((d2 <= PEAK_DISTANCE**2) & live).any(1)
        take = torch.isfinite(value[:, c]) & ~near & (count < kernels)
        slot = count.clamp(max=kernels - 1)
        chosen[every[take], slot[take]] = index[take, c]
        live[every[take], slot[take]] = True
        count += take.long()
    return chosen, live


def fit_heatmaps(heatmaps: np.ndarray, affine: np.ndarray, kernels: int, *, peak_ratio: float = PEAK_RATIO,
                 iters: int = 500, tol: float = 1e-10, chunk: int = 256) -> np.ndarray:
    """Mixtures (N, M, 5) = (pi, mu_u, mu_v, sigma_u, sigma_v), pixels, heaviest first, fitted by EM to the
    mass of heatmaps (N, H, W) whose cells lie where affines (N, 2, 3) put them (see the module docstring).
    Every heatmap needs positive mass. Works in float64."""
    if kernels < 1:
        raise ValueError(f"kernels must be >= 1, got {kernels}")
    out = np.zeros((heatmaps.shape[0], kernels, 5))
    for lo in range(0, heatmaps.shape[0], chunk):
        out[lo:lo + chunk] = _fit_chunk(torch.from_numpy(np.asarray(heatmaps[lo:lo + chunk], np.float64)),
                                        torch.from_numpy(np.asarray(affine[lo:lo + chunk], np.float64)),
                                        kernels, peak_ratio, iters, tol)
    return out


def _fit_chunk(h: torch.Tensor, affine: torch.Tensor, kernels: int, peak_ratio: float, iters: int,
               tol: float) -> np.ndarray:
    n, height, width = h.shape
    mass = h.clamp(min=0.0)
    total = mass.flatten(1).sum(1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("a heatmap without positive mass")
    w = mass.flatten(1) / total                                                            # (N, K)
    x_image = cell_positions(affine, height, width)                                        # (N, K, 2)
    centre = torch.einsum("nk,nka->na", w, x_image)                                        # (N, 2)
    x = x_image - centre[:, None]              # centred: the squares below stay small, no cancellation
    squares = x**2
    cell = affine[:, :, :2].det().abs().sqrt()                                             # (N,) px per cell
    floor = (cell**2 / 12.0)[:, None, None]                                                # (N, 1, 1) px^2
    seed, live = _seeds(h, kernels, peak_ratio)
    mu = torch.gather(x, 1, seed[..., None].expand(n, kernels, 2))                         # (N, M, 2)
    var_all = torch.einsum("nk,nka->na", w, squares)
    var = var_all[:, None].expand(n, kernels, 2).clamp(min=floor).clone()                 # (N, M, 2)
    log_pi = torch.where(live, -live.sum(1, keepdim=True).double().log(), -math.inf)
    last = torch.full((n,), -math.inf, dtype=torch.float64)
    for _ in range(iters):
        # sum_a (x_a - mu_ma)^2 / var_ma as matrix products, never forming (N, K, M, 2).
        precision = 1.0 / var                                                              # (N, M, 2)
        mahalanobis = (squares @ precision.mT - 2.0 * x @ (mu * precision).mT
                       + (mu**2 * precision).sum(-1)[:, None])                            # (N, K, M)
        joint = log_pi[:, None] - 0.5 * (mahalanobis + var.log().sum(-1)[:, None]) - LOG_2PI
        peak = joint.amax(-1, keepdim=True)
        r = (joint - peak).exp()
        norm = r.sum(-1, keepdim=True)
        wr = w[..., None] * (r / norm)                                                     # (N, K, M)
        log_p = (peak + norm.log())[..., 0]                                                # (N, K)
        pi = wr.sum(1)                                                                     # (N, M)
        alive = live & (pi > 1e-12)
        safe = pi.clamp(min=1e-300)[..., None]
        new_mu = wr.mT @ x / safe                                                          # (N, M, 2)
        new_var = wr.mT @ squares / safe - new_mu**2
        mu = torch.where(alive[..., None], new_mu, mu)
        var = torch.where(alive[..., None], new_var.clamp(min=floor), var)
        log_pi = torch.where(alive, pi.clamp(min=1e-300).log(), -math.inf)
        ll = (w * log_p).sum(1)                                                            # (N,)
        if (ll - last).max() < tol:
            break
        last = ll
    pi = log_pi.exp()
    pi = pi / pi.sum(1, keepdim=True)
    order = torch.argsort(-pi, dim=1, stable=True)
    g = torch.cat([pi[..., None], mu + centre[:, None], var.sqrt()], -1)                   # (N, M, 5)
    g = torch.gather(g, 1, order[..., None].expand(n, kernels, 5))
    dead = g[..., 0] <= 0
    g = torch.where(dead[..., None], torch.cat([torch.zeros_like(g[..., :1]), g[:, :1, 1:].expand_as(g[..., 1:])],
                                               -1), g)                                     # padding: heaviest, pi 0
    return g.numpy()


def fit_clip(clip: HeatmapClip, kernels: int, layout: str = "coco", peak_ratio: float = PEAK_RATIO) -> np.ndarray:
    """Our 17 joints' mixtures (T, 17, M, 5) float32, pixels, of one clip's heatmaps (COCO-17 or ours)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    t, j, height, width = clip.heatmaps.shape
    joints = list(USED_COCO) if layout == "coco" else list(range(NUM_JOINTS))
    names = COCO_NAMES if layout == "coco" else JOINT_NAMES
    picked = clip.heatmaps[:, joints]                                                      # (T, J', H, W)
    empty = np.argwhere(np.clip(picked, 0.0, None).reshape(t, len(joints), -1).sum(-1) <= 0)
    if len(empty):
        f, k = empty[0]
        raise DataError(clip.path, f"frame {f}, joint {names[joints[k]]}: the heatmap has no positive mass")
    affine = np.repeat(clip.affine[:, None], len(joints), axis=1)                         # (T, J', 2, 3)
    fitted = fit_heatmaps(picked.reshape(-1, height, width), affine.reshape(-1, 2, 3), kernels,
                          peak_ratio=peak_ratio).reshape(t, len(joints), kernels, 5)
    if layout == "h36m":
        return fitted.astype(np.float32)
    full = np.zeros((t, j, kernels, 5))
    full[..., 0] = 1.0 / kernels                  # the unused ears: any valid mixture; the mapping ignores them
    full[:, joints] = fitted
    return coco_gmm_to_ours(full, kernels).astype(np.float32)


# ---- files ----------------------------------------------------------------------------------------------------
def _numeric(path: Path, value: object, key: str) -> np.ndarray:
    """A finite real array, as stored (float64 only where it was: heatmaps are large)."""
    if (not isinstance(value, np.ndarray) or value.dtype == bool or not np.issubdtype(value.dtype, np.number)
            or np.issubdtype(value.dtype, np.complexfloating)):
        raise DataError(path, f"{key}: expected a numeric array")
    if not np.isfinite(value).all():
        raise DataError(path, f"{key}: holds NaN or inf")
    return value if np.issubdtype(value.dtype, np.floating) else value.astype(np.float64)


def _text(path: Path, value: object, key: str) -> str:
    if not isinstance(value, np.ndarray) or value.shape != () or value.dtype.kind != "U" or not str(value):
        raise DataError(path, f"{key}: expected a non-empty string")
    return str(value)


def read_heatmaps(path: str | Path) -> HeatmapClip:
    """One clip's heatmap npz (see the module docstring), checked; :class:`DataError` names what is wrong."""
    path = Path(path)
    names = npz.members(path)
    if "heatmaps" not in names:
        raise DataError(path, f"no member 'heatmaps' (members: {names}); expected heatmaps (T, 17, H, W)")
    h = _numeric(path, npz.read(path, "heatmaps"), "heatmaps")
    if h.ndim != 4 or h.shape[1] != NUM_JOINTS or h.shape[0] < 1 or min(h.shape[2:]) < 2:
        raise DataError(path, f"heatmaps: shape {h.shape}, expected (T, 17, H, W) with H, W >= 2")
    t = h.shape[0]
    if ("boxes" in names) == ("affine" in names):
        raise DataError(path, "needs exactly one of 'boxes' (T, 4) and 'affine' (T, 2, 3): where the heatmaps lie "
                              "in the image")
    if "boxes" in names:
        boxes = _numeric(path, npz.read(path, "boxes"), "boxes")
        if boxes.shape != (t, 4):
            raise DataError(path, f"boxes: shape {boxes.shape}, expected ({t}, 4) = x1, y1, x2, y2 per frame")
        bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        if len(bad):
            raise DataError(path, f"boxes: frame {bad[0]} has x2 <= x1 or y2 <= y1 ({boxes[bad[0]].tolist()})")
        affine = box_affine(boxes, h.shape[2], h.shape[3])
    else:
        affine = _numeric(path, npz.read(path, "affine"), "affine")
        if affine.shape != (t, 2, 3):
            raise DataError(path, f"affine: shape {affine.shape}, expected ({t}, 2, 3)")
        singular = np.flatnonzero(np.abs(np.linalg.det(affine[:, :, :2])) < 1e-12)
        if len(singular):
            raise DataError(path, f"affine: frame {singular[0]} maps the grid onto a line (singular)")
    size = None
    if "image_size" in names:
        s = _numeric(path, npz.read(path, "image_size"), "image_size")
        if s.shape != (2,) or (s <= 0).any() or (s != np.round(s)).any():
            raise DataError(path, f"image_size: expected (width, height) in whole pixels, got {s.tolist()}")
        size = (int(s[0]), int(s[1]))
    subject = _text(path, npz.read(path, "subject"), "subject") if "subject" in names else None
    action = _text(path, npz.read(path, "action"), "action") if "action" in names else None
    camera = None
    if "camera" in names:
        c = npz.read(path, "camera")
        if not isinstance(c, np.ndarray) or c.shape != () or c.dtype.kind not in "iu" or int(c) < 0:
            raise DataError(path, "camera: expected a whole number >= 0")
        camera = int(c)
    return HeatmapClip(path=path, heatmaps=h, affine=affine, image_size=size, subject=subject, action=action,
                       camera=camera)


@dataclass(frozen=True)
class FittedClip:
    subject: str
    action: str
    camera: int
    gmm: np.ndarray                    # (T, 17, M, 5) float32, pixels
    image_size: tuple[int, int] | None
    path: Path


def check_keys(keys: Sequence[tuple[tuple[str, str, int], Path]]) -> None:
    """Clip keys (subject, action, camera) with the files they come from: each key once, and every
    (subject, action) with cameras 0..C-1, as VideoPose3D's per-camera lists need."""
    seen: dict[tuple[str, str], dict[int, Path]] = {}
    for (subject, action, camera), path in keys:
        cams = seen.setdefault((subject, action), {})
        if camera in cams:
            raise DataError(path, f"{subject}/{action}/camera {camera} is also {cams[camera]} (name the clips "
                                  "apart: 'subject', 'action', 'camera' members or flags)")
        cams[camera] = path
    for (subject, action), cams in seen.items():
        if sorted(cams) != list(range(len(cams))):
            raise DataError(cams[min(cams)], f"{subject}/{action}: cameras {sorted(cams)}; a VideoPose3D file "
                                             f"lists cameras 0..{len(cams) - 1}")


def collect(clips: Sequence[FittedClip]) -> tuple[dict, dict, dict]:
    """(detections, gmms, metadata) in VideoPose3D's nesting (keys checked by :func:`check_keys`). The
    metadata records each clip's image size where known: ``image_sizes`` = subject -> action -> per camera
    [w, h] (or None), and VideoPose3D's ``video_metadata`` = subject -> {"w", "h"} for subjects of one size."""
    check_keys([((c.subject, c.action, c.camera), c.path) for c in clips])
    nested: dict[str, dict[str, dict[int, FittedClip]]] = {}
    for c in clips:
        nested.setdefault(c.subject, {}).setdefault(c.action, {})[c.camera] = c
    detections: dict = {}
    gmm: dict = {}
    sizes: dict = {}
    for subject, actions in nested.items():
        detections[subject], gmm[subject], sizes[subject] = {}, {}, {}
        for action, cams in actions.items():
            ordered = [cams[i] for i in range(len(cams))]
            gmm[subject][action] = [c.gmm for c in ordered]
            detections[subject][action] = [c.gmm[:, :, 0, 1:3].copy() for c in ordered]
            sizes[subject][action] = [None if c.image_size is None else list(c.image_size) for c in ordered]
    video = {}
    for subject, actions in sizes.items():
        seen = {tuple(s) if s is not None else None for per_camera in actions.values() for s in per_camera}
        if len(seen) == 1 and None not in seen:
            w, h = next(iter(seen))
            video[subject] = {"w": w, "h": h}
    metadata = {**h36m_metadata(), "image_sizes": sizes, **({"video_metadata": video} if video else {})}
    return detections, gmm, metadata


def write_gmm_files(out_dir: str | Path, name: str, detector: str, clips: Sequence[FittedClip]) -> tuple[Path, Path]:
    """Write DiffPose's GMM file and the plain detections (atomically, each a temp file renamed): their paths
    (plain, gmm)."""
    detections, gmm, metadata = collect(clips)
    return write_detections(out_dir, name, detector, detections, gmm, metadata)
