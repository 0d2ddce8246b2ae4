"""Lifting a user's 2D sequence with a trained checkpoint, exactly as evaluation lifts a store's rows.

The sequence (:class:`diffpose.data.keypoints.Keypoints`, in the store's units) becomes a one-clip store in
memory (:func:`sequence_store`), so the lifter reads it through the same :class:`Sampler` and
:func:`diffpose.train.predict_rows` as evaluation: windows of ``data.frames`` edge-padded at the clip's ends,
``data.eval_mode`` (sliding or chunks), ``data.flip_test``, ``data.kernels``, ``sample.*`` and the seed of the
checkpoint's config. Its output is therefore the evaluation's on the same 2D, to numerical precision.

GMM: a source without mixtures carries one kernel per joint around the detection (``Keypoints`` says which
sigma); a lifter trained on M kernels gets the input's kernels heaviest first, padded with zero-weight kernels
(as ``prepare`` pads) or cut to ``data.kernels``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffpose import metrics
from diffpose.config import Config
from diffpose.data.keypoints import Keypoints
from diffpose.data.skeleton import JOINT_NAMES, NUM_JOINTS
from diffpose.data.source import DataError
from diffpose.data.store import PoseStore, Sampler
from diffpose.train import load_lifter, pick_device, predict_rows, process_settings


def sequence_store(kp: Keypoints, kernels: int = 0) -> PoseStore:
    """A one-clip in-memory store of ``kp`` (no 3D: its targets are zero), with at least ``kernels`` GMM
    kernels (zero-weight copies of the heaviest pad it)."""
    t = kp.frames
    gmm = kp.gmm_2d.astype(np.float32)
    if gmm.shape[2] < kernels:
        pad = np.repeat(gmm[:, :, :1], kernels - gmm.shape[2], axis=2)
        pad[..., 0] = 0.0
        gmm = np.concatenate([gmm, pad], axis=2)
    zeros = np.zeros(t, np.int32)
    return PoseStore(
        path=kp.path, meta={"dataset": "keypoints", "detector": kp.format, "kernels": gmm.shape[2], "rows": t,
                            "splits": {}, "default_val": [], "fingerprint": ""},
        subject=zeros, subjects=("keypoints",), action=zeros, actions=("keypoints",), action_class=zeros,
        action_classes=("keypoints",), camera=np.zeros(t, np.int8), frame=np.arange(t, dtype=np.int32),
        clip=zeros, valid=np.ones(t, bool), pose_2d=np.ascontiguousarray(kp.pose_2d, np.float32),
        gmm_2d=np.ascontiguousarray(gmm), pose_3d=np.zeros((t, NUM_JOINTS, 3), np.float32),
        clip_start=np.zeros(t, np.int64), clip_len=np.full(t, t, np.int64),
    )


@dataclass(frozen=True)
class Lifted:
    """The 3D of a lifted sequence: root-relative metres in the camera's axes (x right, y down, z forward)."""

    pose: np.ndarray               # (T, 17, 3)
    spread: np.ndarray | None      # (T, 17) metres: the hypotheses' per-joint spread (metrics.joint_spread)
    hypotheses: int                # N (1 for a lifter that does not sample)
    config: Config
    checkpoint: Path
    device: str


def lift(checkpoint: str | Path, kp: Keypoints, *, device: str = "auto", threads: int | None = None,
         config: Config | None = None) -> Lifted:
    """Lift ``kp`` with the checkpoint's lifter on ``device`` (``auto``: CUDA, then MPS, else the CPU), with
    ``threads`` torch CPU threads for the run (None: as they are; 0: the CPUs this process may use; the
    caller's threads and random state are restored after, :func:`diffpose.train.process_settings`), as
    ``config`` says (default: the checkpoint's own; :func:`diffpose.train.load_lifter`)."""
    dev = pick_device(device)
    with process_settings(threads) if threads is not None else contextlib.nullcontext():
        lifter, cfg = load_lifter(checkpoint, dev, config)
        store = sequence_store(kp, cfg.data.kernels)
        sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels, device=dev)
        pred = predict_rows(lifter, sampler, np.arange(kp.frames), cfg, generator_seed=cfg.train.seed)
    hyps = pred.get("hypotheses")
    spread = metrics.joint_spread(hyps).cpu().numpy() if hyps is not None and hyps.shape[0] > 1 else None
    return Lifted(pose=pred["pose"].cpu().numpy(), spread=spread,
                  hypotheses=1 if hyps is None else int(hyps.shape[0]), config=cfg, checkpoint=Path(checkpoint),
                  device=str(dev))


def summary(lifted: Lifted, kp: Keypoints) -> dict[str, Any]:
    """What was lifted and how, for ``lifted.json``."""
    cfg = lifted.config
    return {
        "checkpoint": str(lifted.checkpoint), "lifter": cfg.model.lifter, "config_hash": cfg.hash(),
        "device": lifted.device, "keypoints": str(kp.path), "format": kp.format, "frames": kp.frames,
        "image_size": None if kp.width is None else [kp.width, kp.height],
        "filled_joint_frames": int(kp.filled.sum()), "notes": kp.notes, "hypotheses": lifted.hypotheses,
        "protocol": {"frames": cfg.data.frames, "eval_mode": cfg.data.eval_mode, "flip_test": cfg.data.flip_test,
                     "kernels": cfg.data.kernels, "sampling": cfg.sample.method,
                     "aggregation": cfg.sample.aggregate, "seed": cfg.train.seed},
        "units": "pose: metres, root-relative (pelvis = 0), camera axes x right, y down, z forward; "
                 "spread: metres; pose_2d: pixels (normalised screen units where the image size is unknown)",
    }


def write_outputs(out_dir: Path, files: dict[str, Any]) -> list[Path]:
    """Write ``files`` (name -> a callable writing that path) into ``out_dir``: all into a temporary folder
    beside it first, then each renamed into place, so a failure leaves ``out_dir`` as it was."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "--out is a file; give a directory")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
        tmp.chmod(0o755)
    except OSError as e:
        raise DataError(out_dir, f"cannot write here ({e.strerror or e})") from None
    try:
        for name, write in files.items():
            write(tmp / name)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
        else:
            for name in files:
                os.replace(tmp / name, out_dir / name)
    except OSError as e:
        raise DataError(out_dir, f"cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
    return [out_dir / name for name in files]


def save_npz(path: Path, lifted: Lifted, kp: Keypoints) -> None:
    """``pose`` (T, 17, 3) metres, ``spread`` (T, 17) where the lifter samples, the 2D input ``pose_2d``
    (T, 17, 2) pixels, ``filled`` (T, 17), ``frame_id`` (T,) and ``joint_names``."""
    arrays = {"pose": lifted.pose.astype(np.float32), "pose_2d": kp.pixels().astype(np.float32),
              "filled": kp.filled, "frame_id": kp.frame_id, "joint_names": np.array(JOINT_NAMES)}
    if lifted.spread is not None:
        arrays["spread"] = lifted.spread.astype(np.float32)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def save_json(path: Path, lifted: Lifted, kp: Keypoints) -> None:
    path.write_text(json.dumps(summary(lifted, kp), indent=1))
