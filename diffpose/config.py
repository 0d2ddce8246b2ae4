"""One typed configuration: frozen dataclasses, loaded from TOML, overridden by dotted keys, never mutated.

``Config.from_toml(path).override({"diffusion.steps": 5})`` returns a new validated object. ``flatten()``
gives the dotted keys that become MLflow params and report columns. Unknown keys and wrong types raise
:class:`ConfigError` naming the key (and the file, when there is one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    draw_kernels: bool = True             # training 2D input: a GMM kernel drawn per joint from pi
    flip_augment: bool = True             # random left/right mirroring in training
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
    """The lifter being trained. Unset architecture keys take the lifter's published defaults."""

    lifter: str = "diffpose"              # a key of diffpose.lifters.LIFTERS
    hidden: int = 96
    blocks: int = 5
    heads: int = 4
    dropout: float = 0.25


@dataclass(frozen=True)
class Encoder:
    """DiffPose's context encoder: trained first as a lifter (cached by its config hash), then frozen.
    Unset architecture keys take the encoder lifter's published defaults, as for the model."""

    lifter: str = "graformer"
    hidden: int = 96
    blocks: int = 5
    heads: int = 4
    dropout: float = 0.25
    epochs: int = 0                       # 0 = train.epochs
    lr: float = 0.0                       # 0 = train.lr


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
    hypotheses: int = 1                   # N
    eta: float = 0.0                      # DDIM eta: 0 deterministic, 1 DDPM-like
    # What the denoiser predicts: "x0" (default: well conditioned when abar_T ~ 0, where recovering x0 from a
    # predicted eps divides by sqrt(abar_T) ~ 5e-5 on the cosine schedule), "eps" (whitened noise) or
    # "noise" (sigma * eps, the released code's target).
    predict: str = "x0"
    aggregate: str = "mean"               # "mean" | "median" over hypotheses (J-Agg)
    t_start: int = -1                     # step the reverse process starts at; -1 = train_steps - 1
    depth_kernels: int = 1                # kernels of the per-joint depth prior


@dataclass(frozen=True)
class Train:
    epochs: int = 20
    batch_size: int = 1024
    optimizer: str = "adam"               # "adam" | "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "exp"              # "exp": lr * gamma^epoch | "step": x gamma every lr_step epochs | "cosine"
    lr_gamma: float = 0.95
    lr_step: int = 1
    grad_clip: float = 1.0                # max gradient norm; 0 = off
    ema: float = 0.0                      # EMA decay of the weights, used at evaluation; 0 = off
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
    train: Train = field(default_factory=Train)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Config:
        """Build from nested ``{"train": {"lr": 1e-3}}`` and/or dotted ``{"train.lr": 1e-3}`` keys."""
        nested = _nest(d, source)
        lifter = nested.get("model", {}).get("lifter", Model.lifter)
        model_defaults = dict(LIFTER_MODEL_DEFAULTS.get(lifter, {}))
        encoder_lifter = nested.get("encoder", {}).get("lifter", Encoder.lifter)
        encoder_defaults = dict(LIFTER_MODEL_DEFAULTS.get(encoder_lifter, {}))
        sections = {}
        for f in dataclasses.fields(cls):
            given = nested.pop(f.name, {})
            if not isinstance(given, dict):
                raise ConfigError(f"{source}: [{f.name}] must be a table, got {type(given).__name__}")
            if f.name == "model":
                given = {**model_defaults, **given}
            elif f.name == "encoder":
                given = {**encoder_defaults, **given}
            sections[f.name] = _build(_SECTIONS[f.name], given, f.name, source)
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
        resets the model's (encoder's) architecture to that lifter's defaults, except keys given in
        ``changes`` too."""
        base = self.to_dict()
        flat_changes = _flatten_dict(_nest(changes, source))
        if "model.lifter" in flat_changes and flat_changes["model.lifter"] != self.model.lifter:
            base["model"] = {"lifter": flat_changes["model.lifter"]}
        if "encoder.lifter" in flat_changes and flat_changes["encoder.lifter"] != self.encoder.lifter:
            base["encoder"] = {k: v for k, v in base["encoder"].items() if k not in _ARCHITECTURE}
        merged = _flatten_dict(base)
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
        out = dataclasses.asdict(self)
        return {s: {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()} for s, sec in out.items()}

    def flatten(self) -> dict[str, Any]:
        """Dotted keys -> values (tuples joined by commas), the MLflow params and report columns."""
        return {k: ",".join(v) if isinstance(v, list) else v for k, v in _flatten_dict(self.to_dict()).items()}

    def to_toml(self) -> str:
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    def hash(self) -> str:
        """Stable short hash of the resolved config (identity of a trial or a cached encoder)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def encoder_config(self) -> Config:
        """The context encoder's own config: same data and seed, the encoder as the lifter, no diffusion.
        A frame-based encoder is trained on single frames (data.frames = 1), a temporal one on windows of
        data.frames."""
        e = self.encoder
        frames = self.data.frames if e.lifter in TEMPORAL_LIFTERS else 1
        return Config(
            data=dataclasses.replace(self.data, frames=frames),
            model=Model(lifter=e.lifter, hidden=e.hidden, blocks=e.blocks, heads=e.heads, dropout=e.dropout),
            train=dataclasses.replace(self.train, epochs=e.epochs or self.train.epochs, lr=e.lr or self.train.lr),
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
        need(m.lifter in LIFTER_MODEL_DEFAULTS, "model.lifter",
             f"unknown lifter {m.lifter!r} (known: {', '.join(sorted(LIFTER_MODEL_DEFAULTS))})")
        need(self.encoder.lifter in LIFTER_MODEL_DEFAULTS and self.encoder.lifter != "diffpose",
             "encoder.lifter", f"must be a baseline lifter, got {self.encoder.lifter!r}")
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
        need(df.hypotheses >= 1, "diffusion.hypotheses", "must be >= 1")
        need(df.predict in ("eps", "noise", "x0"), "diffusion.predict", "must be 'eps', 'noise' or 'x0'")
        need(df.aggregate in ("mean", "median"), "diffusion.aggregate", "must be 'mean' or 'median'")
        need(df.depth_kernels >= 1, "diffusion.depth_kernels", "must be >= 1")
        need(0.0 <= df.eta <= 1.0, "diffusion.eta", "must be in [0, 1]")
        need(t.epochs >= 1 and t.batch_size >= 1, "train.epochs/batch_size", "must be >= 1")
        need(t.optimizer in ("adam", "adamw"), "train.optimizer", f"unknown optimizer {t.optimizer!r}")
        need(t.lr_schedule in ("exp", "step", "cosine"), "train.lr_schedule", f"unknown {t.lr_schedule!r}")
        need(t.lr > 0, "train.lr", "must be > 0")
        need(0.0 <= t.ema < 1.0, "train.ema", "must be in [0, 1)")
        need(t.metric in ("val_p1", "val_p2"), "train.metric", "must be 'val_p1' or 'val_p2'")
        need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None, "train.device",
             f"must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {t.device!r}")
        need(t.threads >= 0 and t.steps_per_epoch >= 0 and t.val_max_frames >= 0 and t.eval_batch_size >= 1,
             "train.threads/steps_per_epoch/val_max_frames/eval_batch_size", "must be >= 0 (eval_batch_size >= 1)")
        need(t.weight_decay >= 0 and t.grad_clip >= 0 and t.lr_gamma > 0 and t.lr_step >= 1,
             "train.weight_decay/grad_clip/lr_gamma/lr_step", "must be >= 0 (lr_gamma > 0, lr_step >= 1)")


# Published architecture defaults per lifter (model and encoder sections); every key of the registry has one.
LIFTER_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "diffpose": {"hidden": 96, "blocks": 5, "heads": 4, "dropout": 0.25},        # released gcndiff
    "graformer": {"hidden": 96, "blocks": 5, "heads": 4, "dropout": 0.25},       # released gcnpose
    "simple_baseline": {"hidden": 1024, "blocks": 2, "heads": 1, "dropout": 0.5},  # Martinez et al. 2017
    "semgcn": {"hidden": 128, "blocks": 4, "heads": 1, "dropout": 0.0},          # Zhao et al. 2019
    # Zhang et al. 2022 / DiffPose video: width 512, depth 8, 8 heads, no dropout (stochastic depth 0.1).
    "mixste": {"hidden": 512, "blocks": 8, "heads": 8, "dropout": 0.0},
    # Pavllo et al. 2019: 1024 channels, dropout 0.25. blocks is unused: the depth follows data.frames.
    "videopose3d": {"hidden": 1024, "blocks": 1, "heads": 1, "dropout": 0.25},
}
# Lifters that read the whole window of data.frames (the others read its centre frame).
TEMPORAL_LIFTERS: frozenset[str] = frozenset({"mixste", "videopose3d"})
# VideoPose3D's released receptive fields (diffpose.models.temporal.FILTER_WIDTHS).
VIDEOPOSE3D_FRAMES: tuple[int, ...] = (27, 81, 243)

# Named variants: config overrides applied on top of a suite's base config. (axis, value) say which
# ablation axis a variant belongs to; "full" is the reference every axis is compared with.
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "full": ("full", "paper", {}),
    "no_gmm": ("gmm", "false", {"diffusion.gmm": False}),
    "no_context": ("context", "false", {"diffusion.context": False}),
    "no_heatmap_init": ("heatmap_init", "false", {"diffusion.heatmap_init": False}),
    # The released code: start from the encoder's pose at step 12 of 51 (linear betas 1e-4..1e-3), two DDIM
    # calls, one hypothesis, training noise scaled by the 2D sigma only and predicted as such.
    "refiner": ("mode", "refiner", {
        "diffusion.mode": "refiner", "diffusion.gmm": False, "diffusion.schedule": "linear",
        "diffusion.train_steps": 51, "diffusion.beta_start": 1e-4, "diffusion.beta_end": 1e-3,
        "diffusion.steps": 2, "diffusion.t_start": 12, "diffusion.hypotheses": 1, "diffusion.predict": "noise",
    }),
    "graformer": ("baseline", "graformer", {"model.lifter": "graformer"}),
    "semgcn": ("baseline", "semgcn", {"model.lifter": "semgcn"}),
    "simple_baseline": ("baseline", "simple_baseline", {"model.lifter": "simple_baseline"}),
    # Temporal baselines: they take data.frames from the base config (VideoPose3D: 27, 81 or 243).
    "videopose3d": ("baseline", "videopose3d", {"model.lifter": "videopose3d"}),
    "mixste": ("baseline", "mixste", {"model.lifter": "mixste"}),
}

# Axes whose values a suite lists ("steps = [1, 2, 5]"): each value is a variant of "full".
AXES: dict[str, str] = {"steps": "diffusion.steps", "kernels": "data.kernels", "hypotheses": "diffusion.hypotheses"}
# Axes that change only inference: their trials evaluate full's trained weights (selected with full's own
# inference settings on the validation set), so each K or N is compared on the same model.
INFERENCE_AXES: frozenset[str] = frozenset({"steps", "hypotheses"})


# Keys that change how trained weights are evaluated, never the weights: `diffpose-bench evaluate` may override
# them on top of a checkpoint's own config (Config.for_evaluation); every other key is what the weights depend on.
EVALUATION_KEYS: frozenset[str] = frozenset({
    "data.store", "data.test_subjects", "data.val_subjects", "data.eval_stride", "data.eval_mode",
    "data.flip_test", "diffusion.steps", "diffusion.hypotheses", "diffusion.eta", "diffusion.aggregate",
    "diffusion.t_start", "diffusion.heatmap_init", "train.device", "train.amp", "train.threads",
    "train.eval_batch_size",
})

_ARCHITECTURE = ("hidden", "blocks", "heads", "dropout")
_SECTIONS = {"data": Data, "model": Model, "encoder": Encoder, "diffusion": Diffusion, "train": Train}


def _nest(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge dotted keys ("train.lr") into nested tables; deep-copies tables."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {key!r} conflicts with a non-table value")
        leaf = parts[-1]
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


def _build(cls: type, given: dict[str, Any], section: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in given.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key {section}.{key} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", source)
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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return repr(v)
