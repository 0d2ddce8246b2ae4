"""One typed configuration: frozen dataclasses, loaded from TOML, overridden by dotted keys, never mutated.

``Config.from_toml(path).override({"diffusion.steps": 5})`` returns a new validated object. ``flatten()``
gives the dotted keys that become MLflow params and report columns. Unknown keys and wrong types raise
:class:`ConfigError` naming the key (and the file, when there is one).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpose import convergence


class ConfigError(ValueError):
    """A config key is unknown or has the wrong type or value. One line, naming the key and the source."""


def read_toml(path: str | Path, error: type[Exception] = ConfigError, what: str = "file") -> dict[str, Any]:
    """A TOML file as a dict; a file that is missing, not a file, not UTF-8 text or not valid TOML raises
    ``error`` with one line naming it. Every TOML file the package reads (configs, suites, searches,
    override files) is read here."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (not UTF-8)") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML ({e})") from None


@dataclass(frozen=True)
class Data:
    store: str = "stores/mocap17"         # a store written by `diffpose-bench prepare`
    train_subjects: tuple[str, ...] = ()  # () = the store's training split minus the validation subjects
    val_subjects: tuple[str, ...] = ()    # () = the store's default validation subjects (training subjects)
    test_subjects: tuple[str, ...] = ()   # () = the store's test split
    frames: int = 1                       # window length T; 1 = frame-based (VideoPose3D: 27, 81 or 243)
    kernels: int = 0                      # 2D GMM kernels kept, heaviest first; 0 = all in the store
    flip_test: bool = False               # average with the mirrored prediction at evaluation
    train_stride: int = 1                 # every n-th training frame
    eval_stride: int = 1                  # every n-th validation/test frame
    # "sliding": every evaluated frame is the centre of its own edge-padded window. "chunks": the released
    # MixSTE/DiffPose-video protocol, consecutive windows of T frames per clip (the last one ending at the
    # clip's end), every frame predicted once from the window it falls in; lifters with one output per window
    # (VideoPose3D, whose released full-sequence evaluation equals "sliding") are evaluated sliding.
    eval_mode: str = "sliding"


@dataclass(frozen=True)
class Model:
    """The lifter being trained. Unset keys take the lifter's published defaults (``LIFTER_DEFAULTS``); the
    dataclass defaults are DiffPose's."""

    lifter: str = "diffpose"              # a key of diffpose.lifters.LIFTERS
    hidden: int = 96
    blocks: int = 5
    heads: int = 4
    dropout: float = 0.25


@dataclass(frozen=True)
class Encoder:
    """DiffPose's context encoder: a lifter trained first by its own published recipe, then frozen. Its
    architecture and the recipe keys of its training (``ENCODER_TRAIN_KEYS``, named as in [train]); every other
    training setting (seed, device, steps per epoch, validation) is the run's. Unset keys take the encoder
    lifter's defaults; the dataclass defaults are GraFormer's."""

    lifter: str = "graformer"
    hidden: int = 96
    blocks: int = 5
    heads: int = 4
    dropout: float = 0.25
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "steps"
    lr_gamma: float = 0.9
    lr_step: int = 50_000
    grad_clip: float = 1.0
    bn_momentum_end: float = 0.0
    flip_augment: bool = False
    draw_kernels: bool = False
    precise_bn: int = 0


@dataclass(frozen=True)
class Diffusion:
    """DiffPose switches. ``mode = "paper"`` is the method of the paper; ``"refiner"`` the released code."""

    mode: str = "paper"                   # "paper" | "refiner"
    gmm: bool = True                      # GMM-based forward diffusion; False: plain DDPM noise N(0, I)
    context: bool = True                  # condition on the context encoder; False: on the 2D input alone
    heatmap_init: bool = True             # sample from the 2D-uncertainty GMM; False: from N(0, I)
    schedule: str = "cosine"              # "linear" | "cosine"
    train_steps: int = 50                 # T of the forward process
    beta_start: float = 1e-4              # linear schedule only
    beta_end: float = 0.02                # linear schedule only
    steps: int = 5                        # K: DDIM steps (denoiser calls) at inference
    eta: float = 0.0                      # DDIM eta: 0 deterministic, 1 DDPM-like
    # What the denoiser predicts: "x0" (default: well conditioned when abar_T ~ 0, where recovering x0 from a
    # predicted eps divides by sqrt(abar_T) ~ 5e-5 on the cosine schedule), "eps" (whitened noise) or
    # "noise" (sigma * eps, the released code's target).
    predict: str = "x0"
    t_start: int = -1                     # step the reverse process starts at; -1 = train_steps - 1
    depth_kernels: int = 1                # kernels of the per-joint depth prior


@dataclass(frozen=True)
class Sample:
    """The N hypotheses of a prediction and how they are made and aggregated (evaluation only)."""

    # "model": the lifter's own (DiffPose samples its reverse diffusion; a baseline gives one pose).
    # "mc_dropout": a baseline run N times with dropout on (Gal and Ghahramani 2016). "residual": a baseline's
    # pose plus Gaussian noise of the per-joint residual covariance measured on the validation subjects.
    method: str = "model"
    hypotheses: int = 1                   # N
    aggregate: str = "mean"               # "mean" | "median" over hypotheses (J-Agg)


@dataclass(frozen=True)
class Train:
    """How a lifter is trained. The recipe keys (``ENCODER_TRAIN_KEYS``) take the lifter's published values
    when unset (``LIFTER_DEFAULTS``); the dataclass defaults are DiffPose's released recipe."""

    epochs: int = 80                      # at most: training stops when it converges (stop_at_convergence)
    batch_size: int = 1024                # samples (windows, for temporal lifters) per optimiser step
    optimizer: str = "adam"               # "adam" | "adamw" | "amsgrad" (Adam with AMSGrad)
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "exp": lr * gamma^epoch | "step": x gamma every lr_step epochs | "steps": x gamma every lr_step optimiser
    # steps (staircase) | "cosine": to 0 at train.epochs
    lr_schedule: str = "step"
    lr_gamma: float = 0.9
    lr_step: int = 60
    grad_clip: float = 1.0                # max gradient norm; 0 = off
    # Batch-norm momentum decayed exponentially per epoch from PyTorch's 0.1 to this at train.epochs
    # (VideoPose3D: 0.001); 0 = the layers' own momentum, unchanged.
    bn_momentum_end: float = 0.0
    # Training poses over which every batch norm's statistics are re-estimated (a plain average, the weights
    # fixed) before each validation, instead of the running averages of training ("precise BN", Wu & Johnson
    # 2021); 0 = the running averages, as every released recipe.
    precise_bn: int = 0
    flip_augment: bool = False            # random left/right mirroring of training samples
    draw_kernels: bool = True             # training 2D input: a GMM kernel's mean drawn per joint from pi
    ema: float = 0.0                      # EMA decay of the weights, used at evaluation; 0 = off
    # Stop once the validation curve has converged by the project's rule (diffpose.convergence).
    stop_at_convergence: bool = True
    seed: int = 0
    device: str = "auto"                  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"
    amp: bool = True                      # mixed precision on GPU (ignored on the CPU)
    threads: int = 0                      # torch CPU threads; 0 = the CPUs this process may use
    steps_per_epoch: int = 0              # 0 = one pass over the training frames
    eval_batch_size: int = 4096
    val_max_frames: int = 20000           # validation subsample per epoch (evenly spaced); 0 = all
    metric: str = "val_p1"                # the validation metric for model selection and search


@dataclass(frozen=True)
class Config:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    encoder: Encoder = field(default_factory=Encoder)
    diffusion: Diffusion = field(default_factory=Diffusion)
    sample: Sample = field(default_factory=Sample)
    train: Train = field(default_factory=Train)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Config:
        """Build from nested ``{"train": {"lr": 1e-3}}`` and/or dotted ``{"train.lr": 1e-3}`` keys. Keys not
        given take the published defaults of the lifter (``LIFTER_DEFAULTS``) and of the encoder's lifter."""
        nested = _nest(d, source)
        for name in ("model", "encoder"):   # read for their lifters before the sections are built
            if not isinstance(nested.get(name, {}), dict):
                raise ConfigError(f"{source}: [{name}] must be a table, got {type(nested[name]).__name__}")
        lifter = _lifter_name(nested.get("model", {}).get("lifter", Model.lifter), "model.lifter", source)
        encoder_lifter = _lifter_name(nested.get("encoder", {}).get("lifter", Encoder.lifter), "encoder.lifter",
                                      source)
        defaults = _lifter_defaults(lifter, encoder_lifter)
        sections = {}
        # [encoder] last: its recipe keys may be copies of [train]'s (encoder_follows), and an invalid value is
        # then named by the key the user gave, train.lr, not by its copy.
        for f in sorted(dataclasses.fields(cls), key=lambda f: f.name == "encoder"):
            given = nested.pop(f.name, {})
            if not isinstance(given, dict):
                raise ConfigError(f"{source}: [{f.name}] must be a table, got {type(given).__name__}")
            sections[f.name] = _build(_SECTIONS[f.name], {**defaults.get(f.name, {}), **given}, f.name, source)
        if nested:
            raise ConfigError(f"{source}: unknown section {sorted(nested)[0]!r} "
                              f"(known: {', '.join(_SECTIONS)})")
        cfg = cls(**sections)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        return cls.from_dict(read_toml(path, what="config file"), source=str(path))

    def override(self, changes: dict[str, Any], source: str = "override") -> Config:
        """A new Config with dotted-key ``changes`` applied. Changing ``model.lifter`` (``encoder.lifter``)
        resets what has per-lifter defaults (architecture and training recipe; the encoder's section) to the
        new lifter's, except keys given in ``changes`` too."""
        merged = self._dotted()
        flat_changes = _flatten_dict(_nest(changes, source))
        new_lifter = _lifter_name(flat_changes.get("model.lifter", self.model.lifter), "model.lifter", source)
        if new_lifter != self.model.lifter:
            reset = set(LIFTER_DEFAULTS.get(self.model.lifter, {})) | set(LIFTER_DEFAULTS.get(new_lifter, {}))
            merged = {k: v for k, v in merged.items() if k not in reset}
        if flat_changes.get("encoder.lifter", self.encoder.lifter) != self.encoder.lifter:
            merged = {k: v for k, v in merged.items() if not k.startswith("encoder.")}
        merged.update(flat_changes)
        return Config.from_dict(merged, source=source)

    def for_evaluation(self, changes: dict[str, Any], source: str = "override") -> Config:
        """This (a checkpoint's) config with evaluation-only ``changes`` (:data:`EVALUATION_KEYS`); changing a
        key the trained weights depend on raises :class:`ConfigError` naming it."""
        new = self.override(changes, source=source)
        old_flat, new_flat = self.flatten(), new.flatten()
        for key, value in new_flat.items():
            if value != old_flat[key] and key not in EVALUATION_KEYS:
                raise ConfigError(f"{source}: {key}: the checkpoint's weights were trained with {key} = "
                                  f"{old_flat[key]!r}; an evaluation may change only "
                                  f"{', '.join(sorted(EVALUATION_KEYS))}")
        return new

    # ---- views ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Section -> key -> value (tuples as lists)."""
        flat = self._dotted()
        return {name: {k: flat[dotted] for k, dotted in _keys(name)} for name in _SECTIONS}

    def flatten(self, sections: Iterable[str] | None = None) -> dict[str, Any]:
        """Dotted keys -> values (tuples joined by commas), the MLflow params and report columns; of
        ``sections`` only where given."""
        return {k: ",".join(v) if isinstance(v, list) else v for k, v in self._dotted(sections).items()}

    def _dotted(self, sections: Iterable[str] | None = None) -> dict[str, Any]:
        """Dotted key (``train.lr``) -> value (tuples as lists) in field order, of ``sections`` only where given:
        a walk over the field names resolved once per section. The values are immutable, so nothing is
        deep-copied (``dataclasses.asdict`` was most of a suite's expansion)."""
        out = {}
        for name in _SECTIONS if sections is None else sections:
            section = getattr(self, name)
            for k, dotted in _keys(name):
                v = getattr(section, k)
                out[dotted] = list(v) if isinstance(v, (tuple, list)) else v  # (tuple, list): a union is slower
        return out

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    def identity(self, fingerprint: str) -> str:
        """What a training computes, wherever it runs: ``<lifter>-<hash>`` of the config without its machine
        keys (``MACHINE_KEYS``: the store's path, the device, threads) and the sections the lifter does not use,
        with the store's content fingerprint, and the convergence rule of a training that stops by it. Two
        trainings of one identity are one training (a baseline and an encoder included). Computed once per
        fingerprint: a suite asks it of each config several times (its trials, their encoders, their ids)."""
        known = self._identities
        key = (fingerprint, convergence.RULE)   # everything it depends on besides the frozen fields
        if key not in known:
            unused = () if self.uses_encoder else ("encoder",)
            unused += () if self.model.lifter == "diffpose" else ("diffusion",)
            used = [s for s in _SECTIONS if s not in unused]
            flat = {k: v for k, v in self.flatten(used).items() if k not in MACHINE_KEYS and not _unset_late(k, v)}
            if self.train.stop_at_convergence:  # where it stops depends on the rule
                flat["train.convergence_rule"] = convergence.RULE
            blob = json.dumps({"config": flat, "store": fingerprint}, sort_keys=True, separators=(",", ":"))
            known[key] = f"{self.model.lifter}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
        return known[key]

    @functools.cached_property
    def _identities(self) -> dict[tuple[str, str], str]:
        """:meth:`identity` by store fingerprint and convergence rule, as computed so far. It cannot go stale:
        a Config and its sections are frozen, their values immutable, and a changed config is a new object."""
        return {}

    @property
    def uses_encoder(self) -> bool:
        """Whether this is a DiffPose with a context encoder (conditioning, or the refiner's start)."""
        return self.model.lifter == "diffpose" and (self.diffusion.context or self.diffusion.mode == "refiner")

    def hash(self) -> str:
        """Stable short hash of the resolved config (identity of a trial or a cached encoder)."""
        resolved = {name: {k: v for k, v in keys.items() if not _unset_late(f"{name}.{k}", v)}
                    for name, keys in self.to_dict().items()}
        blob = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def encoder_config(self) -> Config:
        """The context encoder's own config: the run's data, seed and machine settings, the encoder as the
        lifter with its own recipe (``ENCODER_TRAIN_KEYS``), nothing of DiffPose. A frame-based encoder is
        trained on single frames (data.frames = 1), a temporal one on windows of data.frames; data.kernels is
        DiffPose's (an M axis keeps one encoder). It equals the config of that lifter's baseline trained with
        the same settings: one training serves both."""
        e = self.encoder
        frames = self.data.frames if e.lifter in TEMPORAL_LIFTERS else 1
        recipe = {k.removeprefix("train."): getattr(e, k.removeprefix("train.")) for k in ENCODER_TRAIN_KEYS}
        base = Config.from_dict({"model.lifter": e.lifter})
        return dataclasses.replace(
            base,
            data=dataclasses.replace(self.data, frames=frames, kernels=Data.kernels),
            model=Model(lifter=e.lifter, hidden=e.hidden, blocks=e.blocks, heads=e.heads, dropout=e.dropout),
            train=dataclasses.replace(self.train, **recipe),
        )

    def validate(self, source: str = "<config>") -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: {key} {msg}")

        d, m, df, t = self.data, self.model, self.diffusion, self.train
        need(d.frames >= 1 and d.frames % 2 == 1, "data.frames", f"must be odd and >= 1, got {d.frames}")
        need(d.kernels >= 0, "data.kernels", "must be >= 0")
        need(d.train_stride >= 1 and d.eval_stride >= 1, "data.*_stride", "must be >= 1")
        need(d.eval_mode in ("sliding", "chunks"), "data.eval_mode", f"must be 'sliding' or 'chunks', got "
                                                                     f"{d.eval_mode!r}")
        if m.lifter == "videopose3d":
            need(d.frames in VIDEOPOSE3D_FRAMES, "data.frames",
                 f"must be a receptive field of VideoPose3D ({', '.join(map(str, VIDEOPOSE3D_FRAMES))}) for "
                 f"model.lifter 'videopose3d', got {d.frames}")
        need(m.lifter in LIFTER_DEFAULTS, "model.lifter",
             f"unknown lifter {m.lifter!r} (known: {', '.join(sorted(LIFTER_DEFAULTS))})")
        need(self.encoder.lifter in ENCODER_LIFTERS, "encoder.lifter",
             f"must be a lifter with per-joint features ({', '.join(ENCODER_LIFTERS)}), got "
             f"{self.encoder.lifter!r}")
        need(m.hidden > 0 and m.blocks > 0 and m.heads > 0, "model.hidden/blocks/heads", "must be > 0")
        need(m.hidden % m.heads == 0, "model.hidden", f"{m.hidden} must be divisible by model.heads {m.heads}")
        e = self.encoder
        need(e.hidden > 0 and e.blocks > 0 and e.heads > 0, "encoder.hidden/blocks/heads", "must be > 0")
        need(e.hidden % e.heads == 0, "encoder.hidden",
             f"{e.hidden} must be divisible by encoder.heads {e.heads}")
        need(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        need(df.mode in ("paper", "refiner"), "diffusion.mode", f"must be 'paper' or 'refiner', got {df.mode!r}")
        need(df.schedule in ("linear", "cosine"), "diffusion.schedule", f"unknown schedule {df.schedule!r}")
        need(df.train_steps >= 2, "diffusion.train_steps", "must be >= 2")
        need(1 <= df.steps <= df.train_steps, "diffusion.steps",
             f"K={df.steps} must be in [1, diffusion.train_steps={df.train_steps}]")
        need(df.t_start == -1 or 0 <= df.t_start < df.train_steps, "diffusion.t_start",
             f"must be -1 or in [0, {df.train_steps - 1}]")
        need(df.predict in ("eps", "noise", "x0"), "diffusion.predict", "must be 'eps', 'noise' or 'x0'")
        need(df.depth_kernels >= 1, "diffusion.depth_kernels", "must be >= 1")
        need(0.0 <= df.eta <= 1.0, "diffusion.eta", "must be in [0, 1]")
        sm = self.sample
        need(sm.method in ("model", "mc_dropout", "residual"), "sample.method",
             f"must be 'model', 'mc_dropout' or 'residual', got {sm.method!r}")
        need(sm.method == "model" or m.lifter not in ("diffpose", "mean_pose"), "sample.method",
             f"{sm.method!r} samples a deterministic baseline; {m.lifter} needs 'model'")
        need(sm.method == "mc_dropout" or m.lifter == "diffpose" or sm.method == "residual" or sm.hypotheses == 1,
             "sample.hypotheses", f"{sm.hypotheses} hypotheses of the deterministic {m.lifter} would all be the "
                                  "same; set sample.method = 'mc_dropout' or 'residual'")
        need(sm.method != "mc_dropout" or m.dropout > 0, "sample.method", "'mc_dropout' needs model.dropout > 0")
        need(sm.hypotheses >= 1, "sample.hypotheses", "must be >= 1")
        need(sm.aggregate in ("mean", "median"), "sample.aggregate", "must be 'mean' or 'median'")
        e = self.encoder
        for key, value in (("train", t), ("encoder", e)):
            need(value.epochs >= 1 and value.batch_size >= 1, f"{key}.epochs/batch_size", "must be >= 1")
            need(value.optimizer in OPTIMIZERS, f"{key}.optimizer",
                 f"unknown optimizer {value.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
            need(value.lr_schedule in LR_SCHEDULES, f"{key}.lr_schedule",
                 f"unknown {value.lr_schedule!r} (known: {', '.join(LR_SCHEDULES)})")
            need(value.lr > 0, f"{key}.lr", "must be > 0")
            need(value.weight_decay >= 0 and value.grad_clip >= 0 and value.lr_gamma > 0 and value.lr_step >= 1,
                 f"{key}.weight_decay/grad_clip/lr_gamma/lr_step", "must be >= 0 (lr_gamma > 0, lr_step >= 1)")
            need(0.0 <= value.bn_momentum_end <= 1.0, f"{key}.bn_momentum_end", "must be in [0, 1]")
            need(value.precise_bn >= 0, f"{key}.precise_bn", "must be >= 0")
        need(0.0 <= t.ema < 1.0, "train.ema", "must be in [0, 1)")
        need(t.metric in ("val_p1", "val_p2"), "train.metric", "must be 'val_p1' or 'val_p2'")
        need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None, "train.device",
             f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {t.device!r}")
        need(t.threads >= 0 and t.steps_per_epoch >= 0 and t.val_max_frames >= 0 and t.eval_batch_size >= 1,
             "train.threads/steps_per_epoch/val_max_frames/eval_batch_size", "must be >= 0 (eval_batch_size >= 1)")


OPTIMIZERS = ("adam", "adamw", "amsgrad")
LR_SCHEDULES = ("exp", "step", "steps", "cosine")

# Each lifter's published architecture and training recipe: the defaults of every key it does not set. The
# sources were read in the released training code at the commits named; where we depart, the line says why.
# Across lifters the recipe differs in these [train] keys, which an [encoder] section repeats for its lifter:
ENCODER_TRAIN_KEYS = ("train.epochs", "train.batch_size", "train.optimizer", "train.lr", "train.weight_decay",
                      "train.lr_schedule", "train.lr_gamma", "train.lr_step", "train.grad_clip",
                      "train.bn_momentum_end", "train.precise_bn", "train.flip_augment", "train.draw_kernels")
_FRAME_BASELINE = {"train.flip_augment": False, "train.draw_kernels": False, "train.bn_momentum_end": 0.0,
                   "train.weight_decay": 0.0, "data.flip_test": False}  # their released code: no flips, detections
LIFTER_DEFAULTS: dict[str, dict[str, Any]] = {
    # GONGJIA0208/Diffpose @9a15bf8, main_diffpose_frame.py, configs/human36m_diffpose_uvxyz_cpn.yml, runners/
    # diffpose_frame.py: gcndiff 96 wide, 5 blocks, 4 heads, dropout 0.25; Adam at 1e-3 (the command line's
    # default --lr overwrites the yml's 2e-5), batch 1024, 80 epochs, lr x0.9 at epoch 60, gradient norm 1.
    # It draws a GMM kernel per joint for the 2D input; EMA is tracked but not used, so off here.
    "diffpose": {"model.hidden": 96, "model.blocks": 5, "model.heads": 4, "model.dropout": 0.25,
                 "train.epochs": 80, "train.batch_size": 1024, "train.optimizer": "adam", "train.lr": 1e-3,
                 "train.weight_decay": 0.0, "train.lr_schedule": "step", "train.lr_gamma": 0.9, "train.lr_step": 60,
                 "train.grad_clip": 1.0, "train.bn_momentum_end": 0.0, "train.flip_augment": False,
                 "train.draw_kernels": True, "data.flip_test": False},
    # Graformer/GraFormer @af2152e, main_GraFormer.py: 96 wide, 5 layers, 4 heads, dropout 0.25; MSE in metres,
    # Adam 1e-3, batch 64, 100 epochs, lr x0.9 every 50k steps (staircase); gradient norm 1 (what the script
    # means: its max_norm argument is referenced but never defined, so as shipped it stops there).
    "graformer": {**_FRAME_BASELINE, "model.hidden": 96, "model.blocks": 5, "model.heads": 4,
                  "model.dropout": 0.25, "train.epochs": 100, "train.batch_size": 64, "train.optimizer": "adam",
                  "train.lr": 1e-3, "train.lr_schedule": "steps", "train.lr_gamma": 0.9, "train.lr_step": 50_000,
                  "train.grad_clip": 1.0},
    # una-dinosauria/3d-pose-baseline @666080d, src/predict_3dpose.py, src/linear_model.py, with the README's
    # --residual --batch_norm --dropout 0.5 --max_norm: 1024 wide, 2 residual blocks, dropout 0.5; z-scored
    # input and target, MSE on the z-scores (diffpose.lifters); Adam 1e-3, batch 64, 200 epochs, lr x0.96 per
    # 100k steps (the official decay is continuous, the PyTorch ports' staircase: at most 4% apart); no
    # gradient clipping: the weight max-norm constraint is in the model (diffpose.models.baselines).
    "simple_baseline": {**_FRAME_BASELINE, "model.hidden": 1024, "model.blocks": 2, "model.heads": 1,
                        "model.dropout": 0.5, "train.epochs": 200, "train.batch_size": 64,
                        "train.optimizer": "adam", "train.lr": 1e-3, "train.lr_schedule": "steps",
                        "train.lr_gamma": 0.96, "train.lr_step": 100_000, "train.grad_clip": 0.0},
    # garyzhao/SemGCN @916aabd, main_gcn.py: 128 wide, 4 residual blocks, no dropout; MSE in metres, Adam 1e-3,
    # batch 64, 50 epochs (the README's command), lr x0.96 per 100k steps (staircase), gradient norm 1.
    "semgcn": {**_FRAME_BASELINE, "model.hidden": 128, "model.blocks": 4, "model.heads": 1, "model.dropout": 0.0,
               "train.epochs": 50, "train.batch_size": 64, "train.optimizer": "adam", "train.lr": 1e-3,
               "train.lr_schedule": "steps", "train.lr_gamma": 0.96, "train.lr_step": 100_000,
               "train.grad_clip": 1.0},
    # JinluZhang1126/MixSTE @72a36be, run.py, common/arguments.py: 512 wide, depth 8, 8 heads, no dropout
    # (stochastic depth 0.1); weighted MPJPE + 0.5 temporal consistency + 2 MPJVE in metres (diffpose.lifters);
    # AdamW 4e-5, weight decay 0.1, lr x0.99 per epoch, 120 epochs, 1024 frames per batch (4 windows of 243:
    # set batch_size to 1024 // data.frames for other windows), no clipping; flips in training and test.
    "mixste": {"model.hidden": 512, "model.blocks": 8, "model.heads": 8, "model.dropout": 0.0,
               "train.epochs": 120, "train.batch_size": 4, "train.optimizer": "adamw", "train.lr": 4e-5,
               "train.weight_decay": 0.1, "train.lr_schedule": "exp", "train.lr_gamma": 0.99, "train.lr_step": 1,
               "train.grad_clip": 0.0, "train.bn_momentum_end": 0.0, "train.flip_augment": True,
               "train.draw_kernels": False, "data.flip_test": True},
    # facebookresearch/VideoPose3D @1afb1ca, run.py, common/arguments.py: 1024 channels, dropout 0.25 (blocks is
    # unused: the depth follows data.frames); MPJPE in metres, Adam with AMSGrad 1e-3, lr x0.95 per epoch,
    # batch 1024, 80 epochs (the README's 243-frame command), no clipping; batch-norm momentum 0.1 -> 0.001
    # over the epochs; flips in training and test.
    "videopose3d": {"model.hidden": 1024, "model.blocks": 1, "model.heads": 1, "model.dropout": 0.25,
                    "train.epochs": 80, "train.batch_size": 1024, "train.optimizer": "amsgrad", "train.lr": 1e-3,
                    "train.weight_decay": 0.0, "train.lr_schedule": "exp", "train.lr_gamma": 0.95,
                    "train.lr_step": 1, "train.grad_clip": 0.0, "train.bn_momentum_end": 0.001,
                    "train.flip_augment": True, "train.draw_kernels": False, "data.flip_test": True},
    # The reference a lifter must beat: the mean root-relative training pose, whatever the input. Nothing to
    # train: one epoch computes the mean.
    "mean_pose": {**_FRAME_BASELINE, "train.epochs": 1, "train.grad_clip": 0.0},
}
# Every lifter's name as tables print it (the keys are the registry's: diffpose.lifters.LIFTERS and DiffPose).
LIFTER_NAMES: dict[str, str] = {
    "diffpose": "DiffPose", "graformer": "GraFormer", "simple_baseline": "SimpleBaseline", "semgcn": "SemGCN",
    "videopose3d": "VideoPose3D", "mixste": "MixSTE", "mean_pose": "Mean training pose (reference)",
}
# Lifters whose per-joint features can condition DiffPose (its context encoder).
ENCODER_LIFTERS: tuple[str, ...] = ("graformer", "mixste")


def encoder_follows(changes: dict[str, Any]) -> dict[str, Any]:
    """The [encoder] keys that follow ``changes``' recipe keys (``train.lr`` -> ``encoder.lr``) where the
    changes do not set them: what a suite's or a search's [base], or the CLI's --config and --set, ask of every
    training, encoders included (``compose``)."""
    flat = _flatten_dict(_nest(changes, "changes"))
    if "encoder" in flat:  # [encoder] given as a value, not a table: nothing to follow into (the config says so)
        return {}
    follow = {f"encoder.{k.removeprefix('train.')}": flat[k] for k in ENCODER_TRAIN_KEYS if k in flat}
    return {k: v for k, v in follow.items() if k not in flat}


def compose(base: dict[str, Any], *changes: dict[str, Any], source: str = "changes") -> dict[str, Any]:
    """The one change a training's config is made of, the same for a suite, a search and the CLI: ``base`` (a
    suite's or search's [base] with its dataset's keys; the CLI's --config and --set), whose recipe keys the
    context encoder follows (``encoder_follows``), then ``changes`` in order (a variant, its overrides), later
    ones winning key by key."""
    shared = merge(base, source=source)
    return merge(shared, encoder_follows(shared), *changes, source=source)


def merge(*changes: dict[str, Any], source: str = "changes") -> dict[str, Any]:
    """Dotted-key changes merged in order (later ones win), nested tables and dotted keys alike."""
    out: dict[str, Any] = {}
    for c in changes:
        out.update(_flatten_dict(_nest(c, source)))
    return out


def encoder_defaults(lifter: str) -> dict[str, Any]:
    """The [encoder] keys a lifter's defaults give: its architecture and recipe, as ``encoder.<key>``."""
    own = LIFTER_DEFAULTS.get(lifter, {})
    return {f"encoder.{k.split('.', 1)[1]}": v for k, v in own.items()
            if k in ENCODER_TRAIN_KEYS or k.startswith("model.")}


# Lifters that read the whole window of data.frames (the others read its centre frame).
TEMPORAL_LIFTERS: frozenset[str] = frozenset({"mixste", "videopose3d"})
# VideoPose3D's released receptive fields (diffpose.models.temporal.FILTER_WIDTHS).
VIDEOPOSE3D_FRAMES: tuple[int, ...] = (27, 81, 243)

# The released code: start from the encoder's pose at step 12 of 51 (linear betas 1e-4..1e-3), two DDIM calls,
# training noise scaled by the 2D sigma only and predicted as such.
_REFINER: dict[str, Any] = {
    "diffusion.mode": "refiner", "diffusion.gmm": False, "diffusion.schedule": "linear",
    "diffusion.train_steps": 51, "diffusion.beta_start": 1e-4, "diffusion.beta_end": 1e-3,
    "diffusion.steps": 2, "diffusion.t_start": 12, "diffusion.predict": "noise",
}
# Named variants: config overrides applied on top of a suite's base config. (axis, value) say which
# ablation axis a variant belongs to; "full" is the reference every axis is compared with.
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full": ("full", "paper", {}),
    "no_gmm": ("gmm", "false", {"diffusion.gmm": False}),
    "no_context": ("context", "false", {"diffusion.context": False}),
    # Sampling starts from N(0, I) instead of the 2D-uncertainty GMM; the training is full's.
    "no_heatmap_init": ("heatmap_init", "false", {"diffusion.heatmap_init": False}),
    "refiner": ("mode", "refiner", _REFINER),
    "graformer": ("baseline", "graformer", {"model.lifter": "graformer"}),
    "semgcn": ("baseline", "semgcn", {"model.lifter": "semgcn"}),
    "simple_baseline": ("baseline", "simple_baseline", {"model.lifter": "simple_baseline"}),
    # Temporal baselines: they take data.frames from the base config (VideoPose3D: 27, 81 or 243).
    "videopose3d": ("baseline", "videopose3d", {"model.lifter": "videopose3d"}),
    "mixste": ("baseline", "mixste", {"model.lifter": "mixste"}),
    "mean_pose": ("reference", "mean_pose", {"model.lifter": "mean_pose"}),
    # Probabilistic baselines for the reliability of DiffPose's hypotheses: GraFormer's trained weights sampled
    # with dropout on, or its pose plus Gaussian noise of its validation residuals (N: sample.hypotheses).
    "mc_dropout": ("probabilistic", "mc_dropout", {"model.lifter": "graformer", "sample.method": "mc_dropout"}),
    "gaussian_residual": ("probabilistic", "gaussian_residual",
                          {"model.lifter": "graformer", "sample.method": "residual"}),
    # The refiner's weights with N hypotheses: its DDIM steps sample (eta = 1), since at the released eta = 0
    # from the encoder's pose without added noise every hypothesis would be the same pose.
    "refiner_sampled": ("probabilistic", "refiner_sampled", {**_REFINER, "diffusion.eta": 1.0}),
}
# Variants that only change how another variant's trained weights are evaluated: a suite evaluates those
# weights (selected with that variant's own settings on the validation subjects) instead of training again.
EVALUATES: dict[str, str] = {"no_heatmap_init": "full", "mc_dropout": "graformer", "gaussian_residual": "graformer",
                             "refiner_sampled": "refiner"}

# Axes whose values a suite lists ("steps = [1, 2, 5]"): each value is a variant of "full".
AXES: dict[str, str] = {"steps": "diffusion.steps", "kernels": "data.kernels", "hypotheses": "sample.hypotheses"}
# The config key each ablation axis varies: the listed axes' and the switch variants' (gmm, context, ...).
ABLATION_KEYS: dict[str, str] = {**{axis: next(iter(o)) for _, (axis, _, o) in VARIANTS.items()
                                    if axis in ("gmm", "context", "heatmap_init")},
                                 "mode": "diffusion.mode", **AXES}

# Where the run happens, never what it computes: left out of a training's identity (Config.portable).
MACHINE_KEYS: frozenset[str] = frozenset({"data.store", "train.device", "train.threads", "train.eval_batch_size"})
# Keys added after trainings were first cached, in a training's identity and a config's hash only when set away
# from these values, which compute what the trainings before them did: those keep their identity and weights.
HASHED_IF_SET: dict[str, Any] = {"train.precise_bn": 0, "encoder.precise_bn": 0}


def _unset_late(key: str, value: Any) -> bool:
    """Whether ``key`` is one of ``HASHED_IF_SET`` at the value it is left out of hashes with."""
    return key in HASHED_IF_SET and value == HASHED_IF_SET[key]

# Keys that change how trained weights are evaluated, never the weights: `diffpose-bench evaluate` may override
# them on top of a checkpoint's own config (Config.for_evaluation); every other key is what the weights depend on.
EVALUATION_KEYS: frozenset[str] = MACHINE_KEYS | {
    "data.test_subjects", "data.eval_stride", "data.eval_mode", "data.flip_test", "diffusion.steps",
    "diffusion.eta", "diffusion.t_start", "diffusion.heatmap_init", "sample.method", "sample.hypotheses",
    "sample.aggregate", "train.amp",
}
# Axes that change only inference: their trials evaluate full's trained weights (selected with full's own
# inference settings on the validation set), so each K or N is compared on the same model.
INFERENCE_AXES: frozenset[str] = frozenset(axis for axis, key in AXES.items() if key in EVALUATION_KEYS)

_SECTIONS = {"data": Data, "model": Model, "encoder": Encoder, "diffusion": Diffusion, "sample": Sample,
             "train": Train}


def _nest(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge dotted keys ("train.lr") into nested tables; deep-copies tables."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            if p not in node:
                node[p] = node = {}
                continue
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r} conflicts with a non-table value")
        if isinstance(value, dict):
            node.setdefault(leaf, {})
            node[leaf].update(_nest(value, source))
        else:
            node[leaf] = value
    return out


def _flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """A section's field names and their resolved type hints (resolving them is the slow part of a build)."""
    return typing.get_type_hints(cls)


def _lifter_name(value: Any, key: str, source: str) -> str:
    """A lifter's name as given, checked to be a string before it is looked up (its validity is checked with
    the rest of the config)."""
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string (a lifter's name), got {type(value).__name__}")
    return value


@functools.cache
def _lifter_defaults(lifter: str, encoder_lifter: str) -> types.MappingProxyType:
    """Section -> key -> default of a DiffPose or baseline ``lifter`` with an ``encoder_lifter``, read-only
    (``LIFTER_DEFAULTS`` and :func:`encoder_defaults` are constants)."""
    nested = _nest({**LIFTER_DEFAULTS.get(lifter, {}), **encoder_defaults(encoder_lifter)}, "defaults")
    return types.MappingProxyType({k: types.MappingProxyType(v) for k, v in nested.items()})


@functools.cache
def _keys(section: str) -> tuple[tuple[str, str], ...]:
    """A section's (field name, dotted key) pairs, in order."""
    return tuple((k, f"{section}.{k}") for k in _fields(_SECTIONS[section]))


def _build(cls: type, given: dict[str, Any], section: str, source: str) -> Any:
    hints = _fields(cls)
    names = hints.keys()
    kwargs = {}
    for key, value in given.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if type(value) is hint and (hint is not float or math.isfinite(value)):
            kwargs[key] = value  # of the field's type already: every value of a Config being overridden
        else:
            kwargs[key] = _coerce(value, hint, f"{section}.{key}", source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(hint, types.UnionType):
        raise ConfigError(f"{source}: {key}: unsupported type {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")


def toml_value(value: Any) -> str:
    """A value as TOML writes it (lists and tables inline): what every TOML file the package writes uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)
