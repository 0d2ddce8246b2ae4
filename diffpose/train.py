"""One training and evaluation loop for every lifter: ``fit(cfg, out_dir)`` and ``evaluate(cfg, checkpoint)``.

Lifters differ by model, never by loop. The loop owns the device, threads, seeding, the optimiser and LR
schedule, gradient clipping, EMA weights, mixed precision, validation on held-out training subjects, a
checkpoint every epoch and resuming from it. Orchestrators (Ray Tune) hook in through ``on_epoch``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffpose import metrics
from diffpose.config import Config, ConfigError, Train
from diffpose.convergence import converged, reading
from diffpose.data.source import DataError
from diffpose.data.store import Batch, PoseStore, Sampler, mirror, store_meta
from diffpose.lifters import Lifter, Sampled, build_lifter, encoder_network, sampled

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if available, then Apple MPS, else the CPU. A device named in the config that this
    machine lacks is a :class:`ConfigError` naming ``train.device``."""
    if name != "auto":
        device = torch.device(name)
        cuda_ok = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        if device.type == "cuda" and not cuda_ok:
            raise ConfigError(f"train.device: {name!r} is not available on this machine "
                              f"({torch.cuda.device_count()} CUDA devices)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"train.device: {name!r} is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(threads: int) -> int:
    """Torch intra-op threads: ``threads`` or, if 0, the CPUs this process may run on (Ray sets affinity
    and OMP_NUM_THREADS for a trial's CPU share)."""
    if threads <= 0:
        env = os.environ.get("OMP_NUM_THREADS")
        threads = int(env) if env and env.isdigit() else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


@contextmanager
def process_settings(threads: int) -> Iterator[int]:
    """What a training or an evaluation sets in the process for as long as it runs, and restores after:
    torch's CPU threads (the trial's share, :func:`set_threads`) and torch's global CPU random state (the
    model's initialisation draws from it, and a training seeds it). Yields the threads in use."""
    before = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            yield set_threads(threads)
        finally:
            torch.set_num_threads(before)


@dataclass
class Splits:
    """Row indices of the store for each role; the test rows are never used for selection."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)


def splits(cfg: Config, store: PoseStore) -> Splits:
    """The rows of each role. Subjects unknown to the store, a test subject used for training or validation,
    and ``data.kernels`` above the store's raise :class:`ConfigError` naming the key and the store."""
    d = cfg.data
    val = d.val_subjects or tuple(store.meta["default_val"])
    train = d.train_subjects or tuple(s for s in store.split_subjects("train") if s not in val)
    test = d.test_subjects or store.split_subjects("test")
    for key, subjects in (("data.train_subjects", train), ("data.val_subjects", val),
                          ("data.test_subjects", test)):
        unknown = [s for s in subjects if s not in store.subjects]
        if unknown:
            raise ConfigError(f"{key}: unknown subject(s) {unknown} (the store {store.path} has "
                              f"{list(store.subjects)})")
    for key, subjects in (("data.train_subjects", train), ("data.val_subjects", val)):
        overlap = sorted(set(subjects) & set(test))
        if overlap:
            raise ConfigError(f"{key}: {overlap} also in the test subjects; model selection never sees the "
                              "test set")
    if d.kernels > store.meta["kernels"]:
        raise ConfigError(f"data.kernels: {d.kernels}, but the store {store.path} has {store.meta['kernels']} "
                          "GMM kernels")
    val_rows = store.rows(val, stride=d.eval_stride, valid_only=True)
    if cfg.train.val_max_frames and len(val_rows) > cfg.train.val_max_frames:
        val_rows = val_rows[np.linspace(0, len(val_rows) - 1, cfg.train.val_max_frames).astype(np.int64)]
    out = Splits(
        train=store.rows(train, stride=d.train_stride),
        val=val_rows,
        test=store.rows(test, stride=d.eval_stride, valid_only=True),
        subjects={"train": train, "val": val, "test": test},
    )
    for role in ("train", "val"):
        if not len(getattr(out, role)):
            raise ConfigError(f"data.{role}_subjects: no {role} frames in the store {store.path} for "
                              f"{list(out.subjects[role])}")
    return out


class Ema:
    """Exponential moving average of a module's floating-point parameters and buffers."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].detach() for k in keys], 1.0 - self.decay)

    def swap_into(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights into ``module``; returns the live weights to restore."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items() if k in self.shadow}
        module.load_state_dict(self.shadow, strict=False)
        return live


def _lr_factor(t: Train) -> Callable[[int], float]:
    """The learning rate's factor after n scheduler steps: epochs, or optimiser steps for "steps"."""
    if t.lr_schedule == "exp":
        return lambda n: t.lr_gamma**n
    if t.lr_schedule in ("step", "steps"):
        return lambda n: t.lr_gamma ** (n // t.lr_step)
    return lambda n: 0.5 * (1.0 + math.cos(math.pi * min(n, t.epochs) / t.epochs))


def _optimizer(t: Train, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, amsgrad=t.optimizer == "amsgrad")


BATCH_NORMS = torch.nn.BatchNorm1d | torch.nn.BatchNorm2d  # the batch norms our models use


def set_bn_momentum(module: torch.nn.Module, momentum: float) -> None:
    """Every batch norm's momentum (PyTorch's convention: the weight of the new batch's statistics)."""
    for m in module.modules():
        if isinstance(m, BATCH_NORMS):
            m.momentum = momentum


@torch.no_grad()
def precise_batch_norm(lifter: Lifter, sampler: Sampler, rows: np.ndarray, cfg: Config,
                       generator: torch.Generator) -> None:
    """Every batch norm's statistics re-estimated over ``train.precise_bn`` shuffled training poses (whole
    batches of ``train.batch_size``, at least one), the weights fixed, the forward of a training step (its input
    drawing and augmentation): the mean over the poses, the variance as the batches' own averaged (what
    training normalises by). Each layer keeps its momentum; a frozen module's (an encoder's) are left as they are."""
    t = cfg.train
    lifter.train()
    norms = [m for m in lifter.modules() if isinstance(m, BATCH_NORMS) and m.training]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # PyTorch's cumulative average
    for batch in sampler.epoch(rows, t.batch_size, generator, draw_kernels=t.draw_kernels,
                               flip_augment=t.flip_augment, steps=max(1, math.ceil(t.precise_bn / t.batch_size))):
        lifter.loss(batch, generator)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def bn_momentum(t: Train, epoch: int) -> float:
    """VideoPose3D's batch-norm momentum of ``epoch`` (from 0): 0.1 decayed exponentially to
    ``bn_momentum_end`` at ``train.epochs``."""
    return 0.1 * math.exp(-epoch / t.epochs * math.log(0.1 / t.bn_momentum_end))


def _save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_failure(e: BaseException) -> str:
    """Why torch.load failed, in a few words: its message's first sentence (a bare KeyError from the pickle
    reader, on a file that is not a checkpoint, says only a byte value)."""
    if isinstance(e, KeyError | IndexError) or not str(e).strip():
        return "not a torch file"
    first = str(e).strip().splitlines()[0].split(". ")[0]
    return first if len(first) <= 120 else first[:first.rfind(" ", 0, 120)] + " …"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", *, identity: str | None = None) -> dict:
    """A checkpoint written by :func:`fit` (tensors and plain data only: loaded with weights_only=True).
    A file that is missing, not a torch checkpoint, truncated or not one of ours raises :class:`DataError`, as
    does one of another training than ``identity`` (when given: a cache's folder name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such checkpoint" if not path.exists() else "not a file (a checkpoint is a .pt "
                                                                           "file written by training)")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(path, "not a checkpoint: not a torch file, or one holding more than tensors and plain "
                              "data (refused, not unpickled)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError, TypeError) as e:
        raise DataError(path, f"not a readable checkpoint, truncated or damaged ({_load_failure(e)})") from None
    if not isinstance(state, dict) or not {"config", "config_hash", "model"} <= set(state):
        raise DataError(path, "not a checkpoint written by `diffpose-bench train` (no config and weights)")
    if identity is not None and state["config_hash"] != identity:
        raise DataError(path, f"the checkpoint of training {state['config_hash']}, not of {identity}")
    return state


@dataclass
class FitResult:
    out_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_metric: float
    history: list[dict[str, float]]
    seconds: float  # the training's wall time, summed over its epochs (validation included): the cost of
                    # these weights, the same after a resume or when fit() finds the training already done
    converged: bool = False  # by the project's rule (converged()) on the selection metric's validation curve

    @property
    def epochs(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_metric": self.best_metric, "history": self.history,
                "seconds": self.seconds, "converged": self.converged}

    @classmethod
    def from_dict(cls, out_dir: Path, d: dict[str, Any]) -> FitResult:
        return cls(out_dir=out_dir, best_checkpoint=out_dir / BEST, best_epoch=d["best_epoch"],
                   best_metric=d["best_metric"], history=d["history"], seconds=d["seconds"],
                   converged=d["converged"])

    @classmethod
    def read(cls, out_dir: Path) -> FitResult:
        """The finished training in ``out_dir``, from its record (:data:`DONE`); one that is not a record
        :func:`trained` wrote is a :class:`DataError` naming it."""
        path = out_dir / DONE
        try:
            done = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"not a finished training's record ({e.__class__.__name__})") from None
        keys = {"best_epoch", "best_metric", "history", "seconds", "converged"}
        if not isinstance(done, dict) or not keys <= set(done):
            raise DataError(path, "not a finished training's record (written by diffpose-bench)")
        return cls.from_dict(out_dir, done)


DONE = "done.json"  # in a finished training's folder: its FitResult
TRAININGS = "trainings"  # a results folder's cache of trainings, one folder per Config.identity


def is_trained(cfg: Config, cache: str | Path) -> bool:
    """Whether ``cfg``'s training is finished in ``cache`` (:func:`trained` would only read it)."""
    return (Path(cache) / cfg.identity(store_meta(cfg.data.store)["fingerprint"]) / DONE).exists()


@dataclass(frozen=True)
class TrainingState:
    """Where one training of a cache stands, read from its own files (:func:`training_state`)."""

    identity: str
    state: str                 # "converged" | "unconverged" (finished at its cap) | "part-way" | "not started"
    epochs: int                # epochs done
    cap: int                   # train.epochs: the most it may train
    metric: str                # the selection metric (train.metric)
    best: float | None         # its best validation value, at best_epoch (1-based)
    best_epoch: int | None
    seconds: float             # its own time so far, summed over its epochs
    rule: str = ""             # a part-way training's: what the convergence rule reads on its curve (reading())

    def line(self, width: int = 0) -> str:
        """One line: state, identity (padded to ``width``), epochs of the cap, best validation value, time (and
        its mean over the epochs)."""
        best = f"best {self.metric} {self.best:.2f} at epoch {self.best_epoch}" if self.best is not None else ""
        epochs = f"{self.epochs}/{self.cap}"
        per_epoch = f", {self.seconds / self.epochs:4.0f} s an epoch" if self.epochs else ""
        return (f"{self.state:<11}  {self.identity:<{width}}  {epochs:>7} epochs  {best:<33}  "
                f"{f'{self.seconds / 3600:5.1f} h{per_epoch}':<24}")


def training_state(cfg: Config, cache: str | Path) -> TrainingState:
    """Where ``cfg``'s training in ``cache`` stands: its finished record, else its last epoch's checkpoint
    (read as tensors and plain data; one not of this training is a :class:`DataError`), else not started."""
    t = cfg.train
    out = Path(cache) / cfg.identity(store_meta(cfg.data.store)["fingerprint"])
    if (out / DONE).is_file():
        done = FitResult.read(out)
        return TrainingState(out.name, "converged" if done.converged else "unconverged", done.epochs, t.epochs,
                             t.metric, done.best_metric, done.best_epoch, done.seconds)
    if (out / CHECKPOINT).is_file():
        state = load_checkpoint(out / CHECKPOINT, identity=out.name)
        history = state["history"]
        return TrainingState(out.name, "part-way", len(history), t.epochs, t.metric, state["best_metric"],
                             state["best_epoch"], sum(h["epoch_seconds"] for h in history),
                             reading([h[t.metric] for h in history]) if t.stop_at_convergence else "")
    return TrainingState(out.name, "not started", 0, t.epochs, t.metric, None, None, 0.0)


def trained(cfg: Config, cache: str | Path, *, on_epoch: Callable[[dict[str, float], Path], None] | None = None,
            progress: bool = True) -> FitResult:
    """The training of ``cfg``, in ``cache/<cfg.identity>``: the one done there before (by any trial, suite or
    process: a baseline and a context encoder of one config are one training), else trained there now,
    continuing one of the same config with fewer epochs where there is one (:func:`shorter_training`). A file lock
    makes a second process on a shared cache wait for the first instead of training again.
    ``on_epoch`` sees every epoch of the training once, those done before included."""
    fingerprint = store_meta(cfg.data.store)["fingerprint"]
    out = Path(cache) / cfg.identity(fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / DONE).exists():
            log.info("using the finished training %s", out)
            result = FitResult.read(out)
            for record in result.history if on_epoch is not None else ():
                on_epoch(record, out / CHECKPOINT)
            return result
        shorter = None if (out / CHECKPOINT).exists() else shorter_training(cfg, Path(cache), fingerprint)
        if shorter is not None:  # its files become this training's, which resumes from them
            _continue_from(shorter, out, cfg)
        result = fit(cfg, out, cache=cache, on_epoch=on_epoch, progress=progress)
        tmp = out / f".{DONE}.tmp"
        tmp.write_text(json.dumps(result.to_dict()))
        tmp.replace(out / DONE)
    return result


def shorter_training(cfg: Config, cache: Path, fingerprint: str) -> Path | None:
    """The folder in ``cache`` of the training of ``cfg`` but for a smaller ``train.epochs`` that got furthest,
    finished or stopped part-way, where ``cfg``'s training would repeat it epoch for epoch: its learning rate and
    batch-norm momentum do not depend on the number of epochs (not a "cosine" schedule, no
    ``train.bn_momentum_end``). Its checkpoint is where ``cfg``'s training stands after its epochs, so raising
    the epochs of a training short of convergence continues it instead of starting again. None if none."""
    t = cfg.train
    if t.lr_schedule == "cosine" or t.bn_momentum_end > 0:
        return None
    folders = (cache / cfg.override({"train.epochs": epochs}).identity(fingerprint) for epochs in range(1, t.epochs))
    found = [folder for folder in folders if (folder / CHECKPOINT).is_file() and (folder / BEST).is_file()]
    return max(found, key=lambda folder: load_checkpoint(folder / CHECKPOINT)["epoch"], default=None)


def _continue_from(shorter: Path, out: Path, cfg: Config) -> None:
    """Make ``shorter``'s checkpoint and best weights (:func:`shorter_training`) ``cfg``'s, in ``out``, unless a
    process is training it now."""
    with open(shorter / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("not continuing %s: another process is training it now", shorter)
            return
        states = {name: load_checkpoint(shorter / name) for name in (CHECKPOINT, BEST)}
    for name, state in states.items():
        _save({**state, "config": cfg.to_dict(), "config_hash": out.name}, out / name)
    log.info("continuing %s after epoch %d of %s, the same training with train.epochs = %d", out,
             states[CHECKPOINT]["epoch"] + 1, shorter, states[CHECKPOINT]["config"]["train"]["epochs"])


def load_lifter(path: str | Path, device: torch.device | str = "cpu", cfg: Config | None = None
                ) -> tuple[Lifter, Config]:
    """A trained lifter from its checkpoint, every weight and statistic in place, as ``cfg`` evaluates it (the
    checkpoint's own config, or that with evaluation-only changes: :meth:`Config.for_evaluation`), sampled as
    ``sample.method`` says; a baseline sampled from its residuals measures them on the validation subjects
    first. Returns the lifter and its config."""
    state = load_checkpoint(path, device)
    cfg = cfg if cfg is not None else checkpoint_config(state, path)
    lifter = build_lifter(cfg, encoder_network(cfg) if cfg.uses_encoder else None)
    try:
        lifter.load_state_dict(state["model"])
    except RuntimeError as e:
        raise DataError(path, f"its weights do not fit {cfg.model.lifter} as configured "
                              f"({str(e).splitlines()[0]})") from None
    lifter = sampled(lifter.to(device), cfg)
    if isinstance(lifter, Sampled) and lifter.method == "residual":
        store = PoseStore.open(cfg.data.store)
        sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels, device=device)
        val = predict_rows(lifter.lifter, sampler, splits(cfg, store).val, cfg, generator_seed=cfg.train.seed)
        lifter.fit_residuals(val["target"] - val["pose"])
    return lifter, cfg


def fit(
    cfg: Config,
    out_dir: str | Path,
    *,
    cache: str | Path | None = None,
    on_epoch: Callable[[dict[str, float], Path], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``cfg.model.lifter`` on the store's training subjects, validating each epoch on held-out
    training subjects, until ``train.epochs`` or, with ``train.stop_at_convergence``, until the validation
    curve has converged (:func:`converged`). Resumes from ``out_dir/checkpoint.pt`` when it holds this
    config's training. DiffPose's context encoder is :func:`trained` first in ``cache`` (default
    ``out_dir/../encoders``) and frozen.

    ``on_epoch(metrics, checkpoint_path)`` is called after each epoch's checkpoint is written (and, on a
    resume, for each epoch done before). Threads and torch's global random state are the training's while it
    runs and the caller's again after (:func:`process_settings`).
    """
    with process_settings(cfg.train.threads):
        return _fit(cfg, Path(out_dir), Path(cache) if cache else None, on_epoch, progress)


def _fit(cfg: Config, out_dir: Path, cache: Path | None, on_epoch: Callable[[dict[str, float], Path], None] | None,
         progress: bool) -> FitResult:
    # 1. What is given, checked before anything is built or written.
    device = pick_device(cfg.train.device)
    store = PoseStore.open(cfg.data.store)
    identity = cfg.identity(store.meta["fingerprint"])
    resume = _resume_state(out_dir / CHECKPOINT, identity)
    rows = splits(cfg, store)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(out_dir, f"cannot write the training's output here ({e.strerror or e})") from None

    # 2. The frozen context encoder, trained first (or found) by its own recipe.
    encoder = None
    if cfg.uses_encoder:
        done = trained(cfg.encoder_config(), cache or out_dir.parent / "encoders", progress=progress)
        encoder = load_lifter(done.best_checkpoint)[0].net

    # 3. The lifter with its training-split statistics, the optimiser and its schedule.
    threads = torch.get_num_threads()
    torch.manual_seed(cfg.train.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    t = cfg.train
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels, device=device)
    lifter = build_lifter(cfg, encoder)
    lifter.fit_statistics(store, rows.train, torch.Generator().manual_seed(t.seed))
    lifter.to(device)
    params = [p for p in lifter.parameters() if p.requires_grad]
    optimizer = _optimizer(t, params) if params else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(t)) if optimizer else None
    ema = Ema(lifter, t.ema) if t.ema > 0 and params else None

    # 4. Where a killed training left off.
    history: list[dict[str, float]] = []
    start_epoch, best_metric, best_epoch, stopped = 0, float("inf"), -1, False
    if resume is not None:
        lifter.load_state_dict(resume["model"])
        if optimizer is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        if ema is not None:
            ema.shadow = {k: v.to(device) for k, v in resume["ema"].items()}
        generator.set_state(resume["generator"].to(generator.get_state().device))
        torch.set_rng_state(resume["torch_rng"])
        start_epoch, best_metric, best_epoch = resume["epoch"] + 1, resume["best_metric"], resume["best_epoch"]
        history, stopped = resume["history"], resume.get("stopped", False)
        log.info("resumed %s at epoch %d", out_dir, start_epoch)
        for record in history if on_epoch is not None else ():
            on_epoch(record, out_dir / CHECKPOINT)  # the caller sees every epoch once, the earlier ones too

    # 5. Epochs: train, validate, checkpoint, until train.epochs or convergence.
    log.info("training %s on %s (%d threads): %d train / %d val frames, %d parameters", cfg.model.lifter,
             device, threads, len(rows.train), len(rows.val), sum(p.numel() for p in params))
    last = 0 if stopped else t.epochs if params else 1  # nothing to train: one epoch computes what there is
    for epoch in range(start_epoch, last):
        t_epoch = time.perf_counter()
        loss, seen, lr = 0.0, 0, t.lr
        if optimizer is not None:
            if t.bn_momentum_end > 0:
                set_bn_momentum(lifter, bn_momentum(t, epoch))
            loss, seen = _train_epoch(lifter, sampler, rows.train, cfg, optimizer, scheduler, ema, generator,
                                      device, progress, f"{cfg.model.lifter} epoch {epoch + 1}/{t.epochs}")
            lr = optimizer.param_groups[0]["lr"]
            if t.lr_schedule != "steps":
                scheduler.step()
        train_seconds = time.perf_counter() - t_epoch

        live = ema.swap_into(lifter) if ema is not None else None
        if t.precise_bn and optimizer is not None:
            # its own draws, one stream per epoch: the training's generator goes on as without it
            precise_batch_norm(lifter, sampler, rows.train, cfg,
                               torch.Generator(device=device).manual_seed(t.seed * 100_003 + epoch))
        val = evaluate_rows(lifter, sampler, store, rows.val, cfg, generator_seed=t.seed)
        evaluated = lifter.state_dict()  # the weights and statistics this validation measured
        if live is not None:
            evaluated = {k: v.detach().clone() for k, v in evaluated.items()}
            lifter.load_state_dict(live, strict=False)
        record = {"epoch": epoch + 1, "train_loss": loss, "lr": lr, "val_p1": val["p1"], "val_p2": val["p2"],
                  "train_seconds": train_seconds, "samples_per_second": seen / max(train_seconds, 1e-9),
                  "epoch_seconds": time.perf_counter() - t_epoch}
        history.append(record)
        metric = record[t.metric]
        improved = metric < best_metric
        if improved:
            best_metric, best_epoch = metric, epoch + 1
        stopped = t.stop_at_convergence and converged([h[t.metric] for h in history])
        state = {
            "config": cfg.to_dict(), "config_hash": identity, "lifter": cfg.model.lifter,
            "model": lifter.state_dict(), "optimizer": optimizer.state_dict() if optimizer else {},
            "scheduler": scheduler.state_dict() if scheduler else {}, "ema": ema.shadow if ema is not None else {},
            "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "best_metric": best_metric, "best_epoch": best_epoch, "history": history,
            "stopped": stopped,
        }
        _save(state, out_dir / CHECKPOINT)
        if improved:
            _save({"config": cfg.to_dict(), "config_hash": identity, "lifter": cfg.model.lifter,
                   "model": evaluated, "epoch": epoch + 1, "metric": metric}, out_dir / BEST)
        log.info("epoch %d/%d  loss %.4f  val P1 %.1f mm  P2 %.1f mm  (%.0f samples/s)%s%s", epoch + 1,
                 t.epochs, record["train_loss"], record["val_p1"], record["val_p2"],
                 record["samples_per_second"], "  *" if improved else "", "  converged" if stopped else "")
        if on_epoch is not None:
            on_epoch(record, out_dir / CHECKPOINT)
        if stopped:
            break

    # A lifter with nothing to train (the mean pose) is what it will ever be after its one epoch.
    return FitResult(out_dir=out_dir, best_checkpoint=out_dir / BEST, best_epoch=best_epoch,
                     best_metric=best_metric, history=history,
                     seconds=sum(h["epoch_seconds"] for h in history),
                     converged=not params or converged([h[t.metric] for h in history]))


def _train_epoch(lifter: Lifter, sampler: Sampler, rows: np.ndarray, cfg: Config, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, ema: Ema | None, generator: torch.Generator,
                 device: torch.device, progress: bool, desc: str) -> tuple[float, int]:
    """One pass of optimiser steps over shuffled training batches: (mean loss, samples seen)."""
    t = cfg.train
    amp = t.amp and device.type == "cuda"
    params = [p for p in lifter.parameters() if p.requires_grad]
    batches = max(1, len(rows) // t.batch_size)
    if t.steps_per_epoch:
        batches = min(batches, t.steps_per_epoch)
    lifter.train()
    total, seen = 0.0, 0
    bar = tqdm(total=batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for batch in sampler.epoch(rows, t.batch_size, generator, draw_kernels=t.draw_kernels,
                               flip_augment=t.flip_augment, steps=t.steps_per_epoch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = lifter.loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        if t.lr_schedule == "steps":
            scheduler.step()
        if ema is not None:
            ema.update(lifter)
        total += loss.item() * len(batch)
        seen += len(batch)
        bar.update()
        bar.set_postfix(loss=f"{total / seen:.4f}")
    bar.close()
    return total / max(seen, 1), seen


def _resume_state(ckpt_path: Path, identity: str) -> dict | None:
    """The state to resume from (``ckpt_path`` when it exists), checked to be this training's before anything
    is built or written: an output folder holding another config's training is refused by name."""
    if ckpt_path.parent.is_file():
        raise DataError(ckpt_path.parent, "is a file; the output of a training is a directory")
    if not ckpt_path.exists():
        return None
    state = load_checkpoint(ckpt_path)
    if state["config_hash"] != identity or "optimizer" not in state:
        raise DataError(ckpt_path.parent, f"holds the training of another config ({state['config_hash']}, this one "
                                          f"is {identity}); use a fresh output directory")
    return state


def chunk_windows(store: PoseStore, rows: np.ndarray, frames: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows of the released chunked evaluation that hold ``rows``.

    A clip of L frames is cut into n = ceil(L / T) windows of T = ``frames``: window i starts at frame i*T,
    except the last, which ends at the clip's last frame (it starts at max(L - T, 0)). Window i owns frames
    [i*T, min((i+1)*T, L)): every frame of the clip is owned by exactly one window, and scored once (the
    released code scores the overlap of the last window twice). A window is named by its centre row, which
    must lie in the clip: a clip shorter than T is edge-padded on both sides, where the released code pads
    its end only. Only windows that own one of ``rows`` are returned, in store order.

    Returns (centre rows (C,), first owned frame (C,), end of the owned frames (C,)), int64.
    """
    _, first, clip_of_row = np.unique(store.clip[rows], return_index=True, return_inverse=True)
    start, length = store.clip_start[rows[first]], store.clip_len[rows[first]]          # (clips,)
    count = -(-length // frames)                                                          # ceil(L / T)
    offset = np.cumsum(count) - count                                       # first window of each clip
    needed = np.unique(offset[clip_of_row] + store.frame[rows] // frames)   # the windows owning rows
    clip = np.searchsorted(offset, needed, side="right") - 1                              # (C,)
    index, start, length = needed - offset[clip], start[clip], length[clip]
    window_start = np.minimum(index * frames, np.maximum(length - frames, 0))
    centre = np.minimum(window_start + frames // 2, length - 1)
    lo = index * frames
    hi = np.minimum(lo + frames, length)
    return (start + centre).astype(np.int64), lo.astype(np.int64), hi.astype(np.int64)


def _predict(lifter: Lifter, sampler: Sampler, batch: Batch, generator: torch.Generator, flip_test: bool,
             every_frame: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pose (B, J, 3) of the centre frames, or (B, T, J, 3) of every frame, and the hypotheses (H, ...);
    with ``flip_test`` the mirrored windows' prediction is mirrored back and averaged in (its hypotheses are
    appended)."""
    run = lifter.predict_frames if every_frame else lifter.predict
    out = run(batch, generator)
    pose, h = out.pose, out.hypotheses
    if flip_test:
        out_f = run(sampler.batch(batch.rows, flip=torch.ones_like(batch.flipped)), generator)
        pose = 0.5 * (pose + mirror(out_f.pose, sampler.perm))
        if h is not None and out_f.hypotheses is not None:
            h = torch.cat([h, mirror(out_f.hypotheses, sampler.perm)], dim=0)
    return pose, h


def uses_chunks(lifter: Lifter, cfg: Config) -> bool:
    """Whether ``cfg.data.eval_mode = "chunks"`` applies: windows of T > 1 frames and a lifter that gives a
    pose for every frame (at T = 1 both modes are the same)."""
    return cfg.data.eval_mode == "chunks" and cfg.data.frames > 1 and lifter.predicts_frames


@torch.inference_mode()
def predict_rows(
    lifter: Lifter, sampler: Sampler, rows: np.ndarray, cfg: Config, generator_seed: int = 0
) -> dict[str, torch.Tensor]:
    """Predictions for store ``rows``: pose (N, J, 3) in metres, root-relative; the hypotheses (H, N, J, 3)
    when the lifter samples several; the target (N, J, 3). With ``data.flip_test`` the mirrored input's
    prediction is mirrored back and averaged in.

    ``data.eval_mode`` "sliding": each row is the centre of its own window (``train.eval_batch_size``
    windows per batch). "chunks" (lifters that predict every frame): the windows of :func:`chunk_windows`
    over the rows' clips (``train.eval_batch_size // T`` windows per batch), each row taken from the window
    that owns it.
    """
    lifter.eval()
    generator = torch.Generator(device=sampler.device).manual_seed(generator_seed)
    flip_test = cfg.data.flip_test
    if not uses_chunks(lifter, cfg):
        poses, hyps, targets = [], [], []
        for batch in sampler.sequential(rows, cfg.train.eval_batch_size):
            pose, h = _predict(lifter, sampler, batch, generator, flip_test, every_frame=False)
            poses.append(pose.float())
            targets.append(batch.pose_3d[:, sampler.frames // 2].float())
            if h is not None:
                hyps.append(h.float())
        result = {"pose": torch.cat(poses), "target": torch.cat(targets)}
        if hyps:
            result["hypotheses"] = torch.cat(hyps, dim=1)
        return result

    store, t = sampler.store, sampler.frames
    centres, lo, hi = (torch.from_numpy(a).to(sampler.device) for a in chunk_windows(store, rows, t))
    slot = torch.full((len(store),), -1, dtype=torch.int64, device=sampler.device)       # store row -> output
    slot[torch.from_numpy(rows).to(sampler.device)] = torch.arange(len(rows), device=sampler.device)
    pose_out = torch.zeros(len(rows), *sampler.pose_3d.shape[1:], device=sampler.device)
    hyps_out: torch.Tensor | None = None
    per_batch = max(1, cfg.train.eval_batch_size // t)
    for i in range(0, len(centres), per_batch):
        c = centres[i:i + per_batch]
        batch = sampler.batch(c)
        pose, h = _predict(lifter, sampler, batch, generator, flip_test, every_frame=True)  # (B, T, J, 3)
        frame = sampler.frame[c, None] - t // 2 + torch.arange(t, device=c.device)   # (B, T) unclamped
        owned = (frame >= lo[i:i + per_batch, None]) & (frame < hi[i:i + per_batch, None])
        row = (sampler.clip_start[c, None] + frame).clamp(0, len(store) - 1)          # (B, T)
        target_slot = torch.where(owned, slot[row], -1)
        keep = target_slot >= 0
        pose_out[target_slot[keep]] = pose[keep].float()
        if h is not None:
            if hyps_out is None:
                hyps_out = torch.zeros(h.shape[0], *pose_out.shape, device=sampler.device)
            hyps_out[:, target_slot[keep]] = h[:, keep].float()
    result = {"pose": pose_out, "target": sampler.pose_3d[torch.from_numpy(rows).to(sampler.device)].float()}
    if hyps_out is not None:
        result["hypotheses"] = hyps_out
    return result


def consecutive_pairs(store: PoseStore, rows: np.ndarray) -> np.ndarray:
    """Indices i into ``rows`` such that rows[i] and rows[i + 1] are consecutive frames of one clip (the
    pairs MPJVE is computed over; none at ``data.eval_stride`` > 1)."""
    a, b = rows[:-1], rows[1:]
    return np.flatnonzero((store.clip[a] == store.clip[b]) & (store.frame[b] == store.frame[a] + 1))


def evaluate_rows(
    lifter: Lifter,
    sampler: Sampler,
    store: PoseStore,
    rows: np.ndarray,
    cfg: Config,
    generator_seed: int = 0,
    save_predictions: Path | None = None,
) -> dict[str, Any]:
    """P1/P2 (mm) over ``rows``, overall (mean of the per-action means) and per action class; MPJVE
    (mm/frame, mean of the per-action means over pairs of consecutive frames, when ``rows`` hold any); with
    several hypotheses also the oracle J-Best/P-Best, the spread-error correlation and the hypotheses'
    reliability (metrics.reliability: calibration, energy score, coverage, sharpness); MPI-INF-3DHP adds
    PCK/AUC. ``save_predictions``: an npz with pose, target (metres), action, subject and, with several
    hypotheses, the per-joint spread."""
    pred = predict_rows(lifter, sampler, rows, cfg, generator_seed)
    pose, target = pred["pose"], pred["target"]
    if save_predictions is not None:
        arrays = {"pose": pose.cpu().numpy(), "target": target.cpu().numpy(),
                  "action": np.asarray(store.action_classes)[store.action_class[rows]],
                  "subject": np.asarray(store.subjects)[store.subject[rows]]}
        if "hypotheses" in pred and pred["hypotheses"].shape[0] > 1:
            arrays["spread"] = metrics.joint_spread(pred["hypotheses"]).cpu().numpy()
        np.savez_compressed(save_predictions, **arrays)
    mm = metrics.MM_PER_M
    p1 = metrics.mpjpe(pose, target) * mm
    p2 = metrics.p_mpjpe(pose, target) * mm
    codes = torch.from_numpy(store.action_class[rows].astype(np.int64)).to(p1.device)
    n_actions = len(store.action_classes)
    a1 = metrics.per_action_means(p1, codes, n_actions)
    a2 = metrics.per_action_means(p2, codes, n_actions)
    counts = torch.bincount(codes, minlength=n_actions)
    out: dict[str, Any] = {
        "p1": float(metrics.mean_of_action_means(p1, codes, n_actions)),
        "p2": float(metrics.mean_of_action_means(p2, codes, n_actions)),
        "p1_frames": float(p1.mean()), "p2_frames": float(p2.mean()), "frames": len(rows),
        "per_action": {name: {"p1": float(a1[i]), "p2": float(a2[i]), "frames": int(counts[i])}
                       for i, name in enumerate(store.action_classes) if counts[i] > 0},
    }
    pairs = consecutive_pairs(store, rows)
    if len(pairs):
        idx = torch.from_numpy(pairs).to(pose.device)
        both = torch.stack([idx, idx + 1], dim=1)                              # (P, 2)
        velocity = metrics.mpjve(pose[both], target[both])[:, 0] * mm          # (P,) mm/frame
        pair_codes = codes[idx]
        av = metrics.per_action_means(velocity, pair_codes, n_actions)
        out["mpjve"] = float(metrics.mean_of_action_means(velocity, pair_codes, n_actions))
        out["mpjve_frames"] = float(velocity.mean())
        for i, name in enumerate(store.action_classes):
            if name in out["per_action"] and not torch.isnan(av[i]):
                out["per_action"][name]["mpjve"] = float(av[i])
    if store.meta["dataset"] == "mpi3dhp":
        # The official protocol: PCK/AUC over 14 joints, each metric the mean of the per-sequence values.
        from diffpose.data.mpi3dhp import PCK_JOINTS

        joints = list(PCK_JOINTS)
        seq = torch.from_numpy(store.subject[rows].astype(np.int64)).to(p1.device)
        n_seq = len(store.subjects)
        pck = metrics.pck(pose[:, joints], target[:, joints]) * 100.0
        auc = metrics.auc(pose[:, joints], target[:, joints]) * 100.0
        out["pck"] = float(metrics.mean_of_action_means(pck, seq, n_seq))
        out["auc"] = float(metrics.mean_of_action_means(auc, seq, n_seq))
        out["mpjpe"] = float(metrics.mean_of_action_means(p1, seq, n_seq))
    hyps = pred.get("hypotheses")
    if hyps is not None and hyps.shape[0] > 1:
        out["j_best"] = float(metrics.j_best_mpjpe(hyps, target).mean() * mm)
        out["p_best"] = float(metrics.p_best_mpjpe(hyps, target).mean() * mm)
        spread = metrics.joint_spread(hyps)                                  # (N, J)
        err = (pose - target).norm(dim=-1)                                   # (N, J)
        out["spread_error_corr"] = float(torch.corrcoef(torch.stack([spread.flatten(), err.flatten()]))[0, 1])
        out["hypotheses"] = int(hyps.shape[0])
        # The root of a root-relative pose is exactly known: left out of the distribution's numbers.
        found = metrics.reliability(hyps, target, exact=(0,))
        out["calibration"] = [float(v) for v in found.pop("calibration")]
        out.update({k: float(v) * (1.0 if k in UNITLESS else mm) for k, v in found.items()})
    return out


UNITLESS = ("calibration_error", "coverage_50", "coverage_90")  # the other reliability numbers are in mm


def count_flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of ``fn()`` as torch's FlopCounterMode counts them (a multiply-add is 2),
    with attention counted on the CPU too: the counter knows SDPA's CUDA kernels only, and MixSTE's attention
    runs SDPA's CPU kernel here."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *_, **__) -> int:  # called with the inputs' shapes
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())


def flops_per_pose(lifter: Lifter, sampler: Sampler, row: int, flip_test: bool = False,
                   every_frame: bool = False) -> float:
    """Forward FLOPs of one prediction (every encoder and denoiser call, all hypotheses); ``every_frame``:
    those of one window predicting all of its T frames, divided by T (chunked evaluation)."""
    batch = sampler.batch(torch.tensor([row]))
    run = lifter.predict_frames if every_frame else lifter.predict
    generator = torch.Generator(device=sampler.device).manual_seed(0)
    with torch.inference_mode():
        flops = count_flops(lambda: run(batch, generator))
    per_pose = flops / (sampler.frames if every_frame else 1)
    return per_pose * (2.0 if flip_test else 1.0)


def checkpoint_config(state: dict, path: str | Path) -> Config:
    """The config a checkpoint of :func:`fit` was trained with."""
    try:
        return Config.from_dict(state["config"], source=str(path))
    except (ConfigError, AttributeError, TypeError) as e:
        raise DataError(path, f"its config is not one this version reads ({e})") from None


def evaluate(cfg: Config, checkpoint: str | Path, split: str = "test", *, device: str | None = None,
             save_predictions: Path | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint of :func:`fit` on ``split`` ("test" or "val") as ``cfg`` says (the checkpoint's
    config, evaluation keys aside: :meth:`Config.for_evaluation`): the dict written as JSON by the CLI, with
    per-action P1/P2 (and PCK/AUC on MPI-INF-3DHP), parameters and FLOPs per pose."""
    with process_settings(cfg.train.threads):
        return _evaluate(cfg, Path(checkpoint), split, pick_device(device or cfg.train.device), save_predictions)


def _evaluate(cfg: Config, checkpoint: Path, split: str, dev: torch.device, save_predictions: Path | None
              ) -> dict[str, Any]:
    state = load_checkpoint(checkpoint, dev)
    store = PoseStore.open(cfg.data.store)
    rows = splits(cfg, store)
    sampler = Sampler(store, frames=cfg.data.frames, kernels=cfg.data.kernels, device=dev)
    lifter, _ = load_lifter(checkpoint, dev, cfg)
    t0 = time.perf_counter()
    chosen = {"test": rows.test, "val": rows.val}[split]
    result = evaluate_rows(lifter, sampler, store, chosen, cfg, generator_seed=cfg.train.seed,
                           save_predictions=save_predictions)
    seconds = time.perf_counter() - t0
    result["params"] = sum(p.numel() for p in lifter.parameters())
    chunks = uses_chunks(lifter, cfg)
    result["flops_per_pose"] = flops_per_pose(lifter, sampler, int(chosen[0]), cfg.data.flip_test, chunks)
    result.update({
        "split": split, "subjects": list(rows.subjects[split]), "dataset": store.meta["dataset"],
        "detector": store.meta["detector"], "store_fingerprint": store.meta["fingerprint"],
        "lifter": cfg.model.lifter, "checkpoint": str(checkpoint), "epoch": state.get("epoch"),
        "config_hash": cfg.hash(), "device": str(dev), "seconds": seconds,
        "poses_per_second": len(chosen) / max(seconds, 1e-9),
        "protocol": {"flip_test": cfg.data.flip_test, "frames": cfg.data.frames,
                     "eval_mode": "chunks" if chunks else "sliding",
                     "eval_stride": cfg.data.eval_stride,
                     "mpjve": "mm/frame over consecutive evaluated frames of a clip, mean of per-action "
                              "means",
                     "hypotheses": cfg.sample.hypotheses, "sampling": cfg.sample.method,
                     "aggregation": cfg.sample.aggregate, "p1": "MPJPE, mean of per-action means",
                     "p2": "P-MPJPE (per-sample Procrustes), mean of per-action means"},
    })
    return result
