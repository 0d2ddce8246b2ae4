"""The canonical store every model reads, and the vectorised batch sampler over it.

A store is a directory with ``poses.parquet`` (one row per subject, action, camera, frame; rows of a clip
contiguous and in frame order) and ``meta.json`` (dataset facts, splits, schema version, fingerprint).

Columns (J = 17, M = GMM kernels; 2D in VideoPose3D's normalised screen units, see camera.normalize_screen):

    subject, action, action_class, split : dictionary<string>
    camera  int8     frame  int32     clip  int32 (contiguous id)     valid  bool (frames to evaluate)
    pose_2d   fixed_size_list<float32>[J*2]    detected 2D, normalised
    gmm_2d    fixed_size_list<float32>[J*M*5]  (pi, mu_u, mu_v, sigma_u, sigma_v) per kernel, heaviest first,
                                               mu and sigma normalised (pixels * 2 / width)
    pose_3d   fixed_size_list<float32>[J*3]    camera frame, root-relative (root = 0), metres
    root_3d   fixed_size_list<float32>[3]      camera frame root position, metres
    world_3d  fixed_size_list<float32>[J*3]    world frame, metres; null where the source has none
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from diffpose.data import camera
from diffpose.data.h36m import action_class
from diffpose.data.skeleton import NUM_JOINTS, flip_permutation
from diffpose.data.source import Clip, DataError, SourceInfo

SCHEMA_VERSION = 1
# Smallest 2D kernel std the sampler hands out (normalised units; 0.5 px on a 1000 px frame): some GMM files
# hold point kernels, and the diffusion divides by sigma.
SIGMA_FLOOR = 1e-3
POSES_FILE = "poses.parquet"
META_FILE = "meta.json"
# What PoseStore.open and the loop read from meta.json.
_META_KEYS = ("dataset", "detector", "kernels", "splits", "default_val", "rows", "fingerprint")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
# Held-out training subjects used for validation (model selection) unless a config names others.
DEFAULT_VAL: dict[str, tuple[str, ...]] = {"h36m": ("S8",), "mpi3dhp": ("S8",), "mocap17": ("cmu08",)}


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    detector: str | None = None,
    annotation: str = "univ_annot3",
    seed: int = 0,
) -> dict:
    """Read a source with its reader and write its store. For the mocap stand-in the default detector
    "synth" first synthesises detections and 2D GMMs (seeded) in VideoPose3D's and DiffPose's formats;
    those files are kept in the store's ``sources/``. Returns the store's meta."""
    from diffpose.data.detections import SynthConfig, synthesize_files
    from diffpose.data.h36m import read_h36m
    from diffpose.data.mocap import check_mocap17, read_mocap17
    from diffpose.data.mpi3dhp import read_mpi3dhp

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "no such directory")
    check_replaceable(Path(out))
    check_writable(Path(out))
    if dataset == "h36m":
        info, clips = read_h36m(root, detector=detector or "cpn_ft_h36m_dbb")
    elif dataset == "mpi3dhp":
        info, clips = read_mpi3dhp(root, annotation=annotation)
    elif dataset == "mocap17":
        detector = detector or "synth"
        if detector != "synth":
            info, clips = read_mocap17(root, detector=detector)
        else:
            check_mocap17(root)  # the user's files first: a mistake is one line, not one after the synthesis
            with tempfile.TemporaryDirectory() as tmp:
                synth = SynthConfig(seed=seed)
                log.info("synthesising detections with GMMs (seed %d)", seed)
                files = synthesize_files(root / "data_2d_cmu_mocap17_gt.npz", tmp, "cmu_mocap17", "synth", synth)
                try:
                    info, clips = read_mocap17(root, detector="synth", detections_dir=tmp)
                except DataError as e:
                    if Path(e.path).parent == Path(tmp):  # the detections mirror the ground truth's arrays
                        raise DataError(root / "data_2d_cmu_mocap17_gt.npz", e.message) from None
                    raise
                info.notes["synth_seed"] = str(seed)
                info.notes["synth_kernels"] = str(synth.kernels)
                return write_store(info, clips, out, DEFAULT_VAL[dataset], extra_files=files)
    else:
        raise ValueError(f"unknown dataset {dataset!r} (known: h36m, mpi3dhp, mocap17)")
    return write_store(info, clips, out, DEFAULT_VAL[dataset])


def write_store(
    info: SourceInfo,
    clips: list[Clip],
    out: str | Path,
    default_val: tuple[str, ...],
    extra_files: tuple[Path, ...] = (),
) -> dict:
    """Normalise ``clips`` and write the store to ``out`` atomically (a temp dir renamed into place).
    ``extra_files`` (e.g. synthesised detections) are kept in ``out/sources``.

    Returns the meta dict (also written as meta.json).
    """
    out = Path(out)
    if not clips:
        raise DataError(out, "no clips to write")
    kernels = max(c.gmm.shape[2] for c in clips)
    split_of = {s: split for split, subjects in info.splits.items() for s in subjects}
    columns = _columns(clips, kernels, split_of)
    table = _table(columns, kernels)
    content = hashlib.sha256()
    for name in ("pose_2d", "gmm_2d", "pose_3d", "root_3d"):
        content.update(np.ascontiguousarray(columns[name]).tobytes())
    content.update(json.dumps([columns["subject"], columns["action"]]).encode())

    rows_per_split = {split: int(sum(c.frames for c in clips if split_of.get(c.subject) == split))
                      for split in info.splits}
    meta = {
        "schema_version": SCHEMA_VERSION,
        "dataset": info.dataset,
        "detector": info.detector,
        "fps": info.fps,
        "joints": NUM_JOINTS,
        "kernels": kernels,
        "splits": {k: list(v) for k, v in info.splits.items()},
        "default_val": list(default_val),
        "rows": int(sum(c.frames for c in clips)),
        "rows_per_split": rows_per_split,
        "clips": len(clips),
        "subjects": sorted({c.subject for c in clips}),
        "has_world_3d": all(c.world_3d is not None for c in clips),
        "fingerprint": content.hexdigest(),
        "source_files": [{"path": str(p), "bytes": os.path.getsize(p)} for p in info.files],
        "kept_files": [f"sources/{Path(p).name}" for p in extra_files],
        "notes": dict(info.notes),
    }
    unknown_val = set(default_val) - set(info.splits.get("train", ()))
    if unknown_val:
        raise DataError(out, f"validation subjects {sorted(unknown_val)} are not training subjects")

    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise DataError(out, f"cannot write the store here: {e.strerror or e}") from e
    try:
        tmp.chmod(0o755)
        pq.write_table(table, tmp / POSES_FILE, compression="zstd", row_group_size=1 << 16)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if extra_files:
            (tmp / "sources").mkdir()
            for p in extra_files:
                shutil.copy2(p, tmp / "sources" / Path(p).name)
        _swap_into_place(tmp, out)
    except OSError as e:
        raise DataError(out, f"cannot write the store: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta


def written_store(path: Path) -> bool:
    """Whether ``path`` is a store this program wrote: its meta.json carries our schema version and a
    content fingerprint, and it holds nothing but the files :func:`write_store` writes."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        names = set(os.listdir(path))
        kept = set(os.listdir(path / "sources")) if (path / "sources").is_dir() else set()
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(meta, dict) or not isinstance(meta.get("schema_version"), int):
        return False
    fingerprint, listed = meta.get("fingerprint"), meta.get("kept_files", [])
    if not (isinstance(fingerprint, str) and len(fingerprint) == 64 and isinstance(listed, list)):
        return False
    return names <= {POSES_FILE, META_FILE, "sources"} and {f"sources/{k}" for k in kept} <= set(map(str, listed))


def check_replaceable(out: Path) -> None:
    """Raise :class:`DataError` unless ``out`` may become a store: absent, an empty directory, or a store
    this program wrote (which is then replaced). Anything else is the user's and is never touched."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DataError(out, "exists and is not a directory; refusing to replace it")
    if any(out.iterdir()) and not written_store(out):
        raise DataError(out, "exists and is not a store written by `diffpose-bench prepare` (it holds other "
                             "files); refusing to replace it: choose another --out")


def check_writable(out: Path) -> None:
    """Raise :class:`DataError` unless a store can be written at ``out``: probed with an empty directory made and
    removed in its nearest existing ancestor, before any reading or synthesis."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a directory")
        Path(tempfile.mkdtemp(prefix=".diffpose-write-probe.", dir=parent)).rmdir()
    except OSError as e:
        raise DataError(out, f"cannot write the store here: {e.strerror or e}") from None


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished store ``tmp`` at ``out``. An old store there is renamed aside first and deleted only
    once the new one is in place (restored if that fails), so ``out`` never holds a half-written store."""
    check_replaceable(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    try:
        os.replace(out, old / "store")
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / "store", out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)  # the old store, or nothing once it was put back


def _columns(clips: list[Clip], kernels: int, split_of: dict[str, str]) -> dict:
    pose_2d, gmm, pose_3d, root_3d, world_3d = [], [], [], [], []
    for c in clips:
        w, h = float(c.width), float(c.height)
        pose_2d.append(camera.normalize_screen(torch.from_numpy(c.pose_2d.astype(np.float32)), w, h).numpy())
        g = _sorted_padded(c.gmm.astype(np.float32), kernels)
        g[..., 1:3] = camera.normalize_screen(torch.from_numpy(g[..., 1:3].copy()), w, h).numpy()
        g[..., 3:5] *= 2.0 / w
        gmm.append(g)
        p = c.pose_3d.astype(np.float32)
        root_3d.append(p[:, 0])
        pose_3d.append(p - p[:, :1])
        world_3d.append(c.world_3d.astype(np.float32) if c.world_3d is not None else None)
    n = [c.frames for c in clips]
    return {
        "subject": [c.subject for c in clips], "action": [c.action for c in clips], "frames": n,
        "action_class": [action_class(c.action) for c in clips],
        "split": [split_of.get(c.subject, "none") for c in clips],
        "camera": np.repeat([c.camera for c in clips], n).astype(np.int8),
        "frame": np.concatenate([np.arange(k, dtype=np.int32) for k in n]),
        "clip": np.repeat(np.arange(len(clips), dtype=np.int32), n),
        "valid": np.concatenate([c.valid.astype(bool) for c in clips]),
        "pose_2d": np.concatenate(pose_2d), "gmm_2d": np.concatenate(gmm),
        "pose_3d": np.concatenate(pose_3d), "root_3d": np.concatenate(root_3d),
        "world_3d": world_3d,
    }


def _sorted_padded(g: np.ndarray, kernels: int) -> np.ndarray:
    """Kernels sorted by weight, descending, padded with zero-weight kernels to ``kernels``."""
    order = np.argsort(-g[..., 0], axis=-1, kind="stable")
    g = np.take_along_axis(g, order[..., None], axis=-2)
    if g.shape[2] < kernels:
        pad = np.repeat(g[:, :, :1], kernels - g.shape[2], axis=2)
        pad[..., 0] = 0.0
        g = np.concatenate([g, pad], axis=2)
    return g


def _table(col: dict, kernels: int) -> pa.Table:
    def fixed(a: np.ndarray, width: int) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1).astype(np.float32)), width)

    def per_clip_strings(values: list[str]) -> pa.Array:
        names = sorted(set(values))
        codes = np.repeat([names.index(v) for v in values], col["frames"]).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names))

    n_rows = int(sum(col["frames"]))
    world = col["world_3d"]
    if all(w is None for w in world):
        world_arr = pa.nulls(n_rows, pa.list_(pa.float32(), NUM_JOINTS * 3))
    else:
        filled = np.concatenate([w if w is not None else np.full((k, NUM_JOINTS, 3), np.nan, np.float32)
                                 for w, k in zip(world, col["frames"], strict=True)])
        mask = np.repeat([w is None for w in world], col["frames"])
        world_arr = pa.FixedSizeListArray.from_arrays(
            pa.array(filled.reshape(-1)), NUM_JOINTS * 3, mask=pa.array(mask))
    return pa.table({
        "subject": per_clip_strings(col["subject"]),
        "action": per_clip_strings(col["action"]),
        "action_class": per_clip_strings(col["action_class"]),
        "split": per_clip_strings(col["split"]),
        "camera": col["camera"], "frame": col["frame"], "clip": col["clip"], "valid": col["valid"],
        "pose_2d": fixed(col["pose_2d"], NUM_JOINTS * 2),
        "gmm_2d": fixed(col["gmm_2d"], NUM_JOINTS * kernels * 5),
        "pose_3d": fixed(col["pose_3d"], NUM_JOINTS * 3),
        "root_3d": fixed(col["root_3d"], 3),
        "world_3d": world_arr,
    })


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
def store_meta(path: str | Path) -> dict:
    """A store's meta.json (its facts and content fingerprint), checked; without reading its rows."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise DataError(path, "not a store (no meta.json); run `diffpose-bench prepare` first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(meta_path, f"unreadable ({e}); prepare the store again") from e
    if not isinstance(meta, dict):
        raise DataError(meta_path, f"not a JSON object (a {type(meta).__name__}); prepare the store again")
    if meta.get("schema_version") != SCHEMA_VERSION:
        version = meta.get("schema_version")
        raise DataError(meta_path, f"schema version {version} != {SCHEMA_VERSION}; prepare the store again")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise DataError(meta_path, f"missing {missing}; prepare the store again")
    return meta


_LAST_OPENED: dict[tuple, PoseStore] = {}   # PoseStore.open's: at most one store


@dataclass(frozen=True)
class PoseStore:
    """A store loaded into memory as numpy arrays (N rows)."""

    path: Path
    meta: dict
    subject: np.ndarray        # (N,) int codes into subjects
    subjects: tuple[str, ...]
    action: np.ndarray         # (N,) int codes into actions
    actions: tuple[str, ...]
    action_class: np.ndarray   # (N,) int codes into action_classes
    action_classes: tuple[str, ...]
    camera: np.ndarray         # (N,) int8
    frame: np.ndarray          # (N,) int32
    clip: np.ndarray           # (N,) int32
    valid: np.ndarray          # (N,) bool
    pose_2d: np.ndarray        # (N, J, 2)
    gmm_2d: np.ndarray         # (N, J, M, 5)
    pose_3d: np.ndarray        # (N, J, 3)
    clip_start: np.ndarray     # (N,) int64 first row of the row's clip
    clip_len: np.ndarray       # (N,) int64 frames in the row's clip

    @classmethod
    def open(cls, path: str | Path) -> PoseStore:
        """The store at ``path``, read once per process while its files stay the same: the last store opened
        is kept (a trial's evaluation reads the store its training read; a Ray worker reused for the next
        trial reads it again). Nothing writes into a store's arrays."""
        path = Path(path)
        meta = store_meta(path)
        try:
            stat = (path / POSES_FILE).stat()
        except OSError as e:
            raise DataError(path / POSES_FILE, f"unreadable ({e.strerror or e}); prepare the store again") from e
        key = (str(path.resolve()), meta["fingerprint"], stat.st_ino, stat.st_size, stat.st_mtime_ns)
        kept = _LAST_OPENED.get(key)
        if kept is not None:
            return kept if kept.path == path else dataclasses.replace(kept, path=path, meta=meta)
        _LAST_OPENED.clear()   # the kept store's memory is freed before another is read
        cols = ["subject", "action", "action_class", "camera", "frame", "clip", "valid",
                "pose_2d", "gmm_2d", "pose_3d"]
        try:
            table = pq.read_table(path / POSES_FILE, columns=cols)
        except (OSError, pa.ArrowException) as e:
            raise DataError(path / POSES_FILE, f"unreadable ({e}); prepare the store again") from e
        try:
            store = cls._from_table(path, meta, table)
        except (pa.ArrowException, ValueError, AttributeError, TypeError) as e:
            raise DataError(path / POSES_FILE, f"does not match meta.json ({e}); prepare the store again") from e
        _LAST_OPENED[key] = store
        return store

    @classmethod
    def _from_table(cls, path: Path, meta: dict, table: pa.Table) -> PoseStore:
        n, m = table.num_rows, int(meta["kernels"])
        if n != meta["rows"]:
            raise ValueError(f"{n} rows, meta.json says {meta['rows']}")

        def codes(name: str) -> tuple[np.ndarray, tuple[str, ...]]:
            arr = table.column(name).combine_chunks()
            return arr.indices.to_numpy().astype(np.int32), tuple(arr.dictionary.to_pylist())

        def floats(name: str, shape: tuple[int, ...]) -> np.ndarray:
            values = table.column(name).combine_chunks().flatten().to_numpy()
            return values.reshape(n, *shape).copy()  # writable, and the Arrow buffers can be freed

        clip = table.column("clip").to_numpy()
        starts = np.flatnonzero(np.r_[True, clip[1:] != clip[:-1]])
        lengths = np.diff(np.r_[starts, n])
        which = np.repeat(np.arange(len(starts)), lengths)
        subject, subjects = codes("subject")
        action, actions = codes("action")
        action_class, action_classes = codes("action_class")
        return cls(
            path=path, meta=meta,
            subject=subject, subjects=subjects, action=action, actions=actions,
            action_class=action_class, action_classes=action_classes,
            camera=table.column("camera").to_numpy(), frame=table.column("frame").to_numpy(), clip=clip,
            valid=table.column("valid").to_numpy(zero_copy_only=False),
            pose_2d=floats("pose_2d", (NUM_JOINTS, 2)),
            gmm_2d=floats("gmm_2d", (NUM_JOINTS, m, 5)),
            pose_3d=floats("pose_3d", (NUM_JOINTS, 3)),
            clip_start=starts[which].astype(np.int64), clip_len=lengths[which].astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.frame)

    def split_subjects(self, split: str) -> tuple[str, ...]:
        """The subjects of ``split`` that the store holds (a source may lack some of its dataset's split)."""
        return tuple(s for s in self.meta["splits"].get(split, ()) if s in self.subjects)

    def rows(self, subjects: tuple[str, ...], stride: int = 1, valid_only: bool = False) -> np.ndarray:
        """Row indices of ``subjects`` (every ``stride``-th frame of each clip), in store order."""
        unknown = [s for s in subjects if s not in self.subjects]
        if unknown:
            raise DataError(self.path, f"unknown subject(s) {unknown} (store has {list(self.subjects)})")
        codes = [self.subjects.index(s) for s in subjects]
        keep = np.isin(self.subject, codes) & (self.frame % stride == 0)
        if valid_only:
            keep &= self.valid
        return np.flatnonzero(keep)


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """A batch of windows of T frames centred on store rows (T = 1 for frame-based models)."""

    pose_2d: torch.Tensor   # (B, T, J, 2) 2D input, normalised screen units
    sigma_2d: torch.Tensor  # (B, T, J, 2) std of the kernel the input came from, normalised units
    gmm_2d: torch.Tensor    # (B, T, J, M, 5) the full 2D GMM
    pose_3d: torch.Tensor   # (B, T, J, 3) target, camera frame, root-relative, metres
    rows: torch.Tensor      # (B,) store row of each window's centre frame
    flipped: torch.Tensor   # (B,) bool, mirrored left/right

    def __len__(self) -> int:
        return self.rows.shape[0]


class Sampler:
    """Vectorised batches over a :class:`PoseStore`: kernel draws, flips and windows, all on ``device``.

    The store's arrays are moved to the device once; a batch is pure tensor indexing, so it never waits on
    Python loops over samples, frames or joints. Windows of T frames are gathered by clamped indices inside
    each clip (edge padding by repetition), without copying the dataset per window.
    """

    def __init__(self, store: PoseStore, *, frames: int = 1, kernels: int = 0, device: str | torch.device = "cpu"):
        if frames < 1 or frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1, got {frames}")
        m = store.gmm_2d.shape[2]
        if kernels > m:
            raise ValueError(f"data.kernels={kernels} but the store {store.path} has {m} kernels")
        m = kernels or m
        self.store = store
        self.frames = frames
        self.device = torch.device(device)
        gmm = torch.from_numpy(store.gmm_2d[:, :, :m].copy())
        gmm[..., 0] /= gmm[..., 0].sum(-1, keepdim=True).clamp_min(1e-12)
        gmm[..., 3:5].clamp_(min=SIGMA_FLOOR)
        self.gmm_2d = gmm.to(self.device)                                   # (N, J, M, 5)
        self.pose_2d = torch.from_numpy(store.pose_2d).to(self.device)      # (N, J, 2)
        self.pose_3d = torch.from_numpy(store.pose_3d).to(self.device)      # (N, J, 3)
        self.clip_start = torch.from_numpy(store.clip_start).to(self.device)
        self.clip_len = torch.from_numpy(store.clip_len).to(self.device)
        self.frame = torch.from_numpy(store.frame.astype(np.int64)).to(self.device)
        self.offsets = torch.arange(frames, device=self.device) - frames // 2
        self.perm = torch.from_numpy(flip_permutation()).to(self.device)
        self.joints = torch.arange(NUM_JOINTS, device=self.device)

    def window_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) centre rows -> (B, T) rows of the window, clamped to the clip (edge frames repeated)."""
        f = self.frame[rows, None] + self.offsets[None, :]
        f = torch.minimum(f.clamp_min(0), self.clip_len[rows, None] - 1)
        return self.clip_start[rows, None] + f

    def batch(
        self,
        rows: torch.Tensor,
        *,
        draw_kernels: bool = False,
        flip: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """The batch centred on ``rows`` (B,). ``draw_kernels``: the 2D input of each joint is the mean of a
        kernel drawn from its GMM weights (else the detection and its heaviest kernel's sigma). ``flip``
        (B,) bool mirrors those samples."""
        rows = rows.to(self.device)
        if flip is None:
            flip = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        flip = flip.to(self.device)
        r = self.window_rows(rows)[:, :, None]                               # (B, T, 1)
        j = torch.where(flip[:, None], self.perm, self.joints)[:, None, :]   # (B, 1, J): mirrored labels
        sign = 1.0 - 2.0 * flip.to(self.pose_3d.dtype)[:, None, None]        # (B, 1, 1): x -> -x
        gmm = self.gmm_2d[r, j]                                              # (B, T, J, M, 5)
        gmm[..., 1] *= sign[..., None]
        pose_3d = self.pose_3d[r, j]                                         # (B, T, J, 3)
        pose_3d[..., 0] *= sign
        if draw_kernels:
            u = torch.rand(gmm.shape[:3] + (1,), generator=generator, device=self.device)
            k = (u > gmm[..., 0].cumsum(-1)).sum(-1, keepdim=True).clamp_max(gmm.shape[3] - 1)  # (B, T, J, 1)
            chosen = torch.gather(gmm, 3, k[..., None].expand(*k.shape, 5)).squeeze(3)           # (B, T, J, 5)
            pose_2d, sigma_2d = chosen[..., 1:3], chosen[..., 3:5]
        else:
            pose_2d, sigma_2d = self.pose_2d[r, j], gmm[..., 0, 3:5]
            pose_2d[..., 0] *= sign
        return Batch(pose_2d=pose_2d, sigma_2d=sigma_2d, gmm_2d=gmm, pose_3d=pose_3d, rows=rows, flipped=flip)

    def epoch(
        self,
        rows: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
        *,
        draw_kernels: bool = True,
        flip_augment: bool = True,
        steps: int = 0,
    ) -> Iterator[Batch]:
        """Shuffled training batches over ``rows``; ``steps`` > 0 caps the batches per epoch."""
        rows_t = torch.from_numpy(rows).to(self.device)
        order = rows_t[torch.randperm(len(rows_t), generator=generator, device=self.device)]
        n_batches = max(1, len(order) // batch_size)  # drop the ragged last batch
        if steps:
            n_batches = min(n_batches, steps)
        for i in range(n_batches):
            idx = order[i * batch_size:(i + 1) * batch_size]
            flip = None
            if flip_augment:
                flip = torch.rand(len(idx), generator=generator, device=self.device) < 0.5
            yield self.batch(idx, draw_kernels=draw_kernels, flip=flip, generator=generator)

    def sequential(self, rows: np.ndarray, batch_size: int, *, flip: bool = False) -> Iterator[Batch]:
        """Evaluation batches over ``rows`` in order: detections as input, no randomness."""
        rows_t = torch.from_numpy(rows).to(self.device)
        for i in range(0, len(rows_t), batch_size):
            idx = rows_t[i:i + batch_size]
            yield self.batch(idx, flip=torch.full((len(idx),), flip, device=self.device) if flip else None)


def mirror(pose: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Left/right mirror of (..., J, C) poses in camera or normalised screen coordinates: x -> -x, swap."""
    out = pose[..., perm, :].clone()
    out[..., 0] = -out[..., 0]
    return out

