"""Ablation suites as data: load and validate ``ablations/*.toml``, expand them into trials.

A suite names the datasets (each a prepared store, or how to prepare it), the base config, the variants
(named presets of ``diffpose.config.VARIANTS``), axes of values (``steps = [1, 2, 5]``), seeds, per-trial
resources, the failure budget and, optionally, a folder its trainings travel in between machines
(``carry``: :mod:`diffpose.carry`, relative to where the suite runs, as the stores). Everything is checked
before anything is scheduled: an unknown key, a wrong type, an unknown lifter or variant, or missing data
raises :class:`SuiteError`, one line naming the file and the key.

Example::

    [suite]
    name = "demo"
    datasets = ["mocap17"]
    variants = ["full", "no_gmm", "refiner", "graformer"]
    seeds = [0, 1]

    [axes]
    steps = [1, 2, 10]

    [resources]
    cpu = 1
    gpu = 0.25            # used when the cluster has GPUs

    [datasets.mocap17]
    store = "stores/mocap17"
    prepare = { dataset = "mocap17", root = "../shared/data/mocap17" }

    [base]                # config overrides for every trial
    train.epochs = 4

    [variant.graformer]   # overrides for one variant, on top of base
    train.lr = 2e-3

    [variant.steps]       # or for every value of an axis (evaluation keys only for steps and hypotheses)
    diffusion.eta = 0.5
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffpose.config import (
    AXES,
    EVALUATES,
    EVALUATION_KEYS,
    INFERENCE_AXES,
    VARIANTS,
    Config,
    ConfigError,
    compose,
    merge,
    read_toml,
    toml_value,
)
from diffpose.data.store import store_meta


class SuiteError(ValueError):
    """A suite file is invalid; one line naming the file and the key."""


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    store: Path                       # absolute
    prepare: dict[str, Any] | None    # {"dataset": ..., "root": ..., "detector": ..., "seed": ...}
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """One (dataset, variant, seed): the config it trains, how it evaluates, where it sits in the ablation."""

    dataset: str
    variant: str
    axis: str
    value: str
    seed: int
    config: Config                    # what is trained (and validated)
    stage: str = "trial"              # "encoder": a shared context encoder; "trial": everything else
    eval_overrides: dict[str, Any] = field(default_factory=dict)  # inference-only changes for the test
    fingerprint: str = ""             # the store's content (set by the runner once the store exists)

    @property
    def training(self) -> str:
        """The identity of the training this trial needs (:meth:`Config.identity`)."""
        return self.config.identity(self.fingerprint)

    @property
    def id(self) -> str:
        """A trial's identity: its training's (the store's content, not its path), its inference-only
        overrides and its stage."""
        blob = json.dumps({"training": self.training, "eval": self.eval_overrides, "stage": self.stage},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def eval_config(self) -> Config:
        """The config the test split is evaluated with."""
        return self.config.override(self.eval_overrides) if self.eval_overrides else self.config

    @property
    def eval_only(self) -> bool:
        """Evaluates weights another trial trains (an inference-only axis value or variant)."""
        return bool(self.eval_overrides)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.variant}/seed{self.seed}"

    def params(self) -> dict[str, Any]:
        """The MLflow params: the flattened config and the trial's place in the suite."""
        return {**self.eval_config.flatten(), "trial.dataset": self.dataset, "trial.variant": self.variant,
                "trial.axis": self.axis, "trial.value": self.value, "trial.seed": self.seed,
                "trial.stage": self.stage, "trial.training": self.training}

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "variant": self.variant, "axis": self.axis, "value": self.value,
                "seed": self.seed, "stage": self.stage, "config": self.config.to_dict(),
                "eval_overrides": self.eval_overrides, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        return cls(dataset=d["dataset"], variant=d["variant"], axis=d["axis"], value=d["value"], seed=d["seed"],
                   stage=d["stage"], config=Config.from_dict(d["config"]), eval_overrides=d["eval_overrides"],
                   fingerprint=d.get("fingerprint", ""))


@dataclass(frozen=True)
class Suite:
    name: str
    file: Path
    description: str
    datasets: dict[str, DatasetSpec]
    variants: tuple[str, ...]
    axes: dict[str, tuple[int, ...]]
    seeds: tuple[int, ...]
    base: dict[str, Any]
    variant_overrides: dict[str, dict[str, Any]]
    cpu: float
    gpu: float
    max_failures: int
    carry: Path | None = None  # absolute: the folder its trainings travel in (diffpose.carry), if it names one

    def fingerprints(self) -> dict[str, str]:
        """Each dataset's store content fingerprint (the stores must exist: prepare them first)."""
        return {key: store_meta(ds.store)["fingerprint"] for key, ds in self.datasets.items()}

    def trials(self, fingerprints: dict[str, str] | None = None) -> list[Trial]:
        """Every trial of the suite, without duplicates (an axis value equal to full's is full itself), with
        its store's ``fingerprints`` (:meth:`fingerprints`) when given: the ids the runner and MLflow use.

        Inference-only variants (``EVALUATES``) and axis values (``INFERENCE_AXES``) evaluate the weights of
        the variant they name (full for the axes): their config is that variant's, their eval overrides the
        rest."""
        trials = self.expanded
        if fingerprints is None:
            return list(trials)
        return [dataclasses.replace(t, fingerprint=fingerprints[t.dataset]) for t in trials]

    @functools.cached_property
    def expanded(self) -> tuple[Trial, ...]:
        """The trials, expanded once (when the suite is loaded, which validates every config)."""
        return tuple(self._trials())

    def _trials(self) -> list[Trial]:
        out: dict[str, Trial] = {}
        for key, ds in self.datasets.items():
            for seed in self.seeds:
                built: dict[str, Config] = {}  # by variant: one build of a config that several trials use
                for variant in self.variants:
                    t = self._variant_trial(ds, variant, seed, built)
                    out.setdefault(t.id, t)
                full = self._config(ds, "full", {}, seed, built)
                full_flat = full.flatten()
                for axis, values in self.axes.items():
                    key_ = AXES[axis]
                    for x in values:
                        name = f"{axis}={x}"
                        if axis in INFERENCE_AXES:
                            extra = self.variant_overrides.get(axis, {})   # [variant.<axis>]: every value's
                            if full_flat[key_] == x and not extra:
                                continue  # that is full itself
                            changes = merge(extra, {key_: x})
                            self._check_eval(full, changes, f"variant.{axis}" if extra else f"axes.{axis}")
                            t = Trial(dataset=key, variant=name, axis=axis, value=str(x), seed=seed, config=full,
                                      eval_overrides=changes)
                        else:
                            cfg = self._config(ds, name, {key_: x}, seed, built)
                            t = Trial(dataset=key, variant=name, axis=axis, value=str(x), seed=seed, config=cfg)
                        out.setdefault(t.id, t)  # the first name wins: "full" over "kernels=3"
        return list(out.values())

    def _variant_trial(self, ds: DatasetSpec, variant: str, seed: int, built: dict[str, Config]) -> Trial:
        axis, value, overrides = VARIANTS[variant]
        parent = EVALUATES.get(variant)
        if parent is None:
            cfg = self._config(ds, variant, overrides, seed, built)
            return Trial(dataset=ds.key, variant=variant, axis=axis, value=value, seed=seed, config=cfg)
        cfg = self._config(ds, parent, VARIANTS[parent][2], seed, built)
        changes = merge({k: v for k, v in overrides.items() if k in EVALUATION_KEYS},
                        self.variant_overrides.get(variant, {}))
        self._check_eval(cfg, changes, f"variant.{variant}")
        return Trial(dataset=ds.key, variant=variant, axis=axis, value=value, seed=seed, config=cfg,
                     eval_overrides=changes)

    def _check_eval(self, cfg: Config, changes: dict[str, Any], where: str) -> None:
        """Inference-only changes: evaluation keys only, and a valid config with them."""
        for k in changes:
            if k not in EVALUATION_KEYS:
                raise SuiteError(f"{self.file}: {where}: {k} changes the training, but this evaluates another "
                                 f"variant's weights (evaluation keys only: {', '.join(sorted(EVALUATION_KEYS))})")
        try:
            cfg.override(changes, source=f"{self.file}: {where}")
        except ConfigError as e:
            raise SuiteError(str(e)) from None

    def encoder_trials(self, trials: list[Trial]) -> list[Trial]:
        """The distinct context encoders the DiffPose trials need: trained once each, before them. An
        encoder that a baseline trial of the suite trains already (the same training) is left to it."""
        trained = {t.training for t in trials if not t.eval_only}
        out: dict[str, Trial] = {}
        for t in trials:
            if t.config.uses_encoder and not t.eval_only:
                enc = t.config.encoder_config()
                trial = Trial(dataset=t.dataset, variant=f"encoder:{enc.model.lifter}", axis="encoder",
                              value=enc.model.lifter, seed=t.seed, config=enc, stage="encoder",
                              fingerprint=t.fingerprint)
                if trial.training not in trained:
                    out.setdefault(trial.id, trial)
        return list(out.values())

    def trainings(self, trials: list[Trial]) -> set[str]:
        """The identities of the trainings ``trials`` need, their context encoders' included: what the suite
        carries (``carry``)."""
        return {t.training for t in trials + self.encoder_trials(trials)}

    def _config(self, ds: DatasetSpec, variant: str, overrides: dict[str, Any], seed: int,
                built: dict[str, Config]) -> Config:
        """The trial's config: [base] and the dataset's set (for every training, its encoder's too), then the
        variant and the suite's overrides for it, then the store, seed and threads. ``built`` holds the
        configs of ``ds`` and ``seed`` built so far, by variant (a variant's name stands for its overrides)."""
        if variant in built:
            return built[variant]
        where = f"{self.file}: variant {variant!r} on dataset {ds.key!r}"
        try:
            changes = compose(merge(self.base, ds.overrides), overrides,
                              self.variant_overrides.get(variant.split("=")[0], {}),
                              {"data.store": str(ds.store), "train.seed": seed, "train.threads": max(1, int(self.cpu))})
            built[variant] = Config().override(changes, source=where)
        except ConfigError as e:
            raise SuiteError(str(e)) from None
        return built[variant]


_SUITE_KEYS = {"name", "description", "datasets", "variants", "seeds", "max_failures", "carry"}
_TOP_KEYS = {"suite", "axes", "resources", "datasets", "base", "variant"}


def parse_resources(res: dict[str, Any], fail: Callable[[str, str], Exception]) -> tuple[float, float]:
    """(cpu, gpu) per trial from a ``[resources]`` table (suites and searches); ``fail(key, msg)`` makes the
    file's error."""
    for key in res:
        if key not in ("cpu", "gpu"):
            raise fail(f"resources.{key}", "unknown key (known: cpu, gpu)")
    cpu = float(typed(res.get("cpu", 1), (int, float), "resources.cpu", fail))
    gpu = float(typed(res.get("gpu", 0), (int, float), "resources.gpu", fail))
    if cpu <= 0 or not 0 <= gpu <= 8:
        raise fail("resources", "cpu must be > 0 and gpu in [0, 8] (a fraction shares one GPU)")
    return cpu, gpu


def load_suite(path: str | Path, *, check_data: bool = True) -> Suite:
    """Read and validate a suite file. With ``check_data``, every dataset's store must exist or be
    preparable from an existing root."""
    path = Path(path)
    raw = read_toml(path, SuiteError, "suite file")

    def fail(key: str, msg: str) -> SuiteError:
        return SuiteError(f"{path}: {key}: {msg}")

    for key in raw:
        if key not in _TOP_KEYS:
            raise fail(key, f"unknown table (known: {', '.join(sorted(_TOP_KEYS))})")
    head = table_of(raw, "suite", fail)
    for key in head:
        if key not in _SUITE_KEYS:
            raise fail(f"suite.{key}", f"unknown key (known: {', '.join(sorted(_SUITE_KEYS))})")
    name = typed(head.get("name", path.stem), str, "suite.name", fail)
    variants = tuple(typed_list(head.get("variants", []), str, "suite.variants", fail))
    for v in variants:
        if v not in VARIANTS:
            raise fail("suite.variants", f"unknown variant {v!r} (known: {', '.join(VARIANTS)})")
    seeds = tuple(typed_list(head.get("seeds", [0]), int, "suite.seeds", fail))
    if not seeds:
        raise fail("suite.seeds", "needs at least one seed")
    axes = {}
    for axis, values in table_of(raw, "axes", fail).items():
        if axis not in AXES:
            raise fail(f"axes.{axis}", f"unknown axis (known: {', '.join(AXES)})")
        axes[axis] = tuple(typed_list(values, int, f"axes.{axis}", fail))
    if not variants and not axes:
        raise fail("suite.variants", "the suite has no variants and no axes: nothing to run")
    cpu, gpu = parse_resources(table_of(raw, "resources", fail), fail)

    datasets = {}
    ds_tables = table_of(raw, "datasets", fail)
    for key in typed_list(head.get("datasets", list(ds_tables)), str, "suite.datasets", fail):
        if key not in ds_tables:
            raise fail("suite.datasets", f"dataset {key!r} has no [datasets.{key}] table")
        datasets[key] = dataset_spec(key, ds_tables[key], path, fail, check_data)
    if not datasets:
        raise fail("suite.datasets", "names no dataset")

    variant_overrides = table_of(raw, "variant", fail)
    for v in variant_overrides:
        if v not in variants and v not in axes:
            raise fail(f"variant.{v}", "overrides for a variant or axis the suite does not run")
    for ds in datasets.values():  # the shared settings as the user wrote them, before encoders follow them
        try:
            Config().override(merge(raw.get("base", {}), ds.overrides), source=str(path))
        except ConfigError as e:
            raise SuiteError(str(e)) from None
    suite = Suite(
        name=name, file=path, description=str(head.get("description", "")), datasets=datasets,
        variants=variants, axes=axes, seeds=seeds, base=table_of(raw, "base", fail),
        variant_overrides=variant_overrides, cpu=cpu, gpu=gpu,
        max_failures=typed(head.get("max_failures", 2), int, "suite.max_failures", fail),
        carry=carry_folder(head, fail),
    )
    if suite.max_failures < 0:
        raise fail("suite.max_failures", f"must be >= 0 (retries of a failed trial), got {suite.max_failures}")
    _ = suite.expanded  # every config validates now, before anything starts
    return suite


def carry_folder(head: dict[str, Any], fail: Any) -> Path | None:
    """``suite.carry``: the folder the suite's trainings travel in (:mod:`diffpose.carry`), or None."""
    if "carry" not in head:
        return None
    value = typed(head["carry"], str, "suite.carry", fail)
    if not value.strip():
        raise fail("suite.carry", "must name a folder (the trainings that travel), got an empty string")
    folder = Path(value).resolve()
    if folder.exists() and not folder.is_dir():
        raise fail("suite.carry", f"{folder} is a file, not a folder")
    return folder


def dataset_spec(key: str, t: Any, path: Path, fail: Any, check_data: bool) -> DatasetSpec:
    if not isinstance(t, dict):
        raise fail(f"datasets.{key}", "must be a table")
    for k in t:
        if k not in ("store", "prepare", "set"):
            raise fail(f"datasets.{key}.{k}", "unknown key (known: store, prepare, set)")
    store = Path(typed(t.get("store", f"stores/{key}"), str, f"datasets.{key}.store", fail)).resolve()
    prep = t.get("prepare")
    if prep is not None:
        if not isinstance(prep, dict):
            raise fail(f"datasets.{key}.prepare", "must be a table like {dataset = ..., root = ...}")
        for k in prep:
            if k not in ("dataset", "root", "detector", "annotation", "seed"):
                raise fail(f"datasets.{key}.prepare.{k}", "unknown key")
        if prep.get("dataset") not in ("h36m", "mpi3dhp", "mocap17"):
            raise fail(f"datasets.{key}.prepare.dataset", "must be h36m, mpi3dhp or mocap17")
        root = typed(prep.get("root"), str, f"datasets.{key}.prepare.root", fail)
        prep = {**prep, "root": str(Path(root).resolve())}
    if check_data and not (store / "meta.json").exists():
        if prep is None:
            raise fail(f"datasets.{key}.store", f"no store at {store} and no prepare table to make it")
        if not Path(prep["root"]).is_dir():
            raise fail(f"datasets.{key}.prepare.root", f"no such directory {prep['root']} (the source data)")
    return DatasetSpec(key=key, store=store, prepare=prep, overrides=typed(t.get("set", {}), dict,
                                                                          f"datasets.{key}.set", fail))


def table_of(raw: dict, key: str, fail: Any) -> dict:
    t = raw.get(key, {})
    if not isinstance(t, dict):
        raise fail(key, "must be a table")
    return t


def typed(value: Any, kind: type | tuple[type, ...], key: str, fail: Any) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise fail(key, f"must be {name}, got {value!r}")
    return value


def typed_list(value: Any, kind: type, key: str, fail: Any) -> list:
    if not isinstance(value, list):
        raise fail(key, f"must be a list, got {value!r}")
    return [typed(v, kind, key, fail) for v in value]


def apply_overrides(suite_path: str | Path, overrides_path: str | Path, out_dir: str | Path) -> Path:
    """Write and validate ``out_dir/<suite name>+<overrides stem>.toml``: the suite with the override file's
    single [base] table merged into its own (the override wins), renamed so its runs get their own experiment.
    An override file is what ``diffpose-bench tune`` exports as the best config of a search."""
    overrides_path = Path(overrides_path)
    over = read_toml(overrides_path, SuiteError)
    for key in over:
        if key != "base":
            raise SuiteError(f"{overrides_path}: {key}: unknown table (an override file holds one [base] table)")
    changes = merge(table_of(over, "base", lambda k, m: SuiteError(f"{overrides_path}: {k}: {m}")))
    try:
        Config().override(changes, source=str(overrides_path))
    except ConfigError as e:
        raise SuiteError(str(e)) from None
    raw = read_toml(suite_path, SuiteError)
    raw["base"] = merge(raw.get("base", {}), changes)
    head = raw.setdefault("suite", {})
    head["name"] = f"{head.get('name', Path(suite_path).stem)}+{overrides_path.stem}"
    out = Path(out_dir) / f"{head['name']}.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {suite_path} with the [base] of {overrides_path} merged in (diffpose-bench ablate --overrides)"]
    for table, body in raw.items():
        lines += ["", f"[{table}]"] + [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]
    out.write_text("\n".join(lines) + "\n")
    load_suite(out, check_data=False)
    return out
