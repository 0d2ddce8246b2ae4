"""The search file: ``ablations/search_*.toml`` -> a validated :class:`Search` (nothing is created or started).

A search names one dataset and variant, the fixed config ([base]), the space of config keys to sample, the
objective (a validation metric: the test split is never looked at), the budget (trials, time), concurrency and
early stopping (ASHA, that is Optuna's successive-halving pruner, or its median pruner, on the per-epoch
validation metric). The study (:mod:`benchmark.search.study`) lives in an RDB storage: SQLite under the results
by default, a PostgreSQL URL when several drivers share one search.

Example::

    [search]
    name = "search_demo"
    dataset = "mocap17"
    variant = "full"            # a name of diffpose.config.VARIANTS
    seed = 0                    # train.seed of every trial
    metric = "val_p1"           # or "val_p2"; minimised (its best epoch, as model selection keeps it)
    trials = 12                 # the study's budget: COMPLETE + PRUNED trials, over every driver
    time_budget_s = 540         # no trial starts later than this after the driver started; 0 = no limit
    concurrency = 2             # trials at once per driver; 0 = as many as the cluster's CPUs allow
    sampler_seed = 0
    pruner = "asha"             # "asha" | "median" | "none"
    grace_period = 1            # epochs every trial runs before it may be stopped

    [datasets.mocap17]          # exactly as in suites
    store = "stores/mocap17"

    [resources]
    cpu = 1

    [base]
    train.epochs = 3

    [space]
    train.lr = { type = "logfloat", low = 2e-4, high = 5e-3 }
    model.hidden = { type = "categorical", choices = [64, 96, 128] }
    model.dropout = { type = "float", low = 0.0, high = 0.4 }
    diffusion.steps = { type = "int", low = 1, high = 10 }
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from benchmark.suite import DatasetSpec, SuiteError, Trial, dataset_spec, parse_resources, table_of, typed
from diffpose.config import VARIANTS, Config, ConfigError, compose, merge, read_toml

METRICS = ("val_p1", "val_p2")
KINDS = ("float", "logfloat", "int", "categorical")
PRUNERS = ("asha", "median", "none")
# Keys a search sets itself: the store, the seed, the threads (from [resources]) and the selection metric.
RESERVED = ("data.store", "train.seed", "train.threads", "train.metric")

_SEARCH_KEYS = {"name", "description", "study", "dataset", "variant", "seed", "metric", "mode", "trials",
                "time_budget_s", "concurrency", "sampler_seed", "random_trials", "pruner", "grace_period",
                "reduction_factor", "startup_trials", "stale_after_s", "start_from_default", "storage",
                "max_failures"}
_TOP_KEYS = {"search", "datasets", "resources", "base", "space"}
_DIM_KEYS = {"float": {"type", "low", "high", "step"}, "logfloat": {"type", "low", "high"},
             "int": {"type", "low", "high", "step"}, "categorical": {"type", "choices"}}


class SearchError(SuiteError):
    """A search file is invalid; one line naming the file and the key."""


class _Fail:
    """``fail(key, msg)`` -> SearchError naming the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, key: str, msg: str) -> SearchError:
        return SearchError(f"{self.path}: {key}: {msg}")

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Dimension:
    """One sampled config key: ``float`` uniform on [low, high] (on a grid of ``step`` when given),
    ``logfloat`` log-uniform, ``int`` uniform on {low, low + step, ..., high}, ``categorical`` one of ``choices``."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> BaseDistribution:
        if self.kind == "categorical":
            return CategoricalDistribution(choices=self.choices)
        if self.kind == "int":
            return IntDistribution(low=int(self.low), high=int(self.high), step=int(self.step or 1))
        return FloatDistribution(low=float(self.low), high=float(self.high), log=self.kind == "logfloat",
                                 step=None if self.step is None else float(self.step))

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this key: sampled (the default config's for trial 0), or the one enqueued for it."""
        d = self.distribution()
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.key, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high, step=d.step)
        return trial.suggest_float(self.key, d.low, d.high, step=d.step, log=d.log)

    def contains(self, value: Any) -> bool:
        """Whether the dimension can sample ``value`` (on the step grid when there is one)."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if not self.low <= value <= self.high:
            return False
        return self.step is None or math.isclose((value - self.low) / self.step,
                                                 round((value - self.low) / self.step), abs_tol=1e-9)

    def values(self) -> list[Any]:
        """The values that bound the dimension (each must give a valid config)."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "step": self.step,
                "choices": list(self.choices)}


@dataclass(frozen=True)
class Search:
    name: str
    file: Path
    description: str
    study: str                          # the Optuna study name (default: the search's name)
    storage: str                        # an SQLAlchemy URL; SQLite paths absolute
    dataset: DatasetSpec
    variant: str
    seed: int
    metric: str                         # "val_p1" | "val_p2"
    trials: int
    time_budget_s: float                # 0 = none
    concurrency: int                    # 0 = the cluster's slots
    sampler_seed: int
    random_trials: int                  # trials TPE samples at random before it models the history
    pruner: str
    grace_period: int
    reduction_factor: int
    startup_trials: int                 # median pruner: complete trials before it prunes
    stale_after_s: int                  # a RUNNING trial without a heartbeat for this long is failed (s)
    start_from_default: bool            # the study's first trial is the unsearched config (the reference)
    max_failures: int                   # retries of a trial whose Ray task failed
    cpu: float
    gpu: float
    base: dict[str, Any]
    space: tuple[Dimension, ...]
    fixed: Config = field(repr=False)   # base + dataset set + variant + store/seed/threads/metric
    changes: dict[str, Any] = field(repr=False)   # those, as the one change that makes ``fixed``

    @property
    def objective(self) -> str:
        """What Optuna minimises: the best validation metric over the epochs so far (mm)."""
        return f"best_{self.metric}"

    @property
    def epochs(self) -> int:
        return self.fixed.train.epochs

    def config(self, values: dict[str, Any], source: str | None = None) -> Config:
        """The config of a trial that sampled ``values``: with the fixed config's change, as one change (a lifter
        sampled takes its recipe for the keys neither gives, never for those [base] gives)."""
        return Config().override(merge(self.changes, values), source=source or f"{self.file}: space")

    def defaults(self) -> dict[str, Any]:
        """The searched keys' values without the search: what the study's first trial runs."""
        flat = self.fixed.flatten()
        return {d.key: flat[d.key] for d in self.space}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.key: d.distribution() for d in self.space}

    def trial(self, values: dict[str, Any], fingerprint: str = "") -> Trial:
        """The suite-style trial (identity, MLflow params) of one sampled point on the store ``fingerprint``."""
        value = ",".join(f"{k}={short(values[k])}" for k in sorted(values))
        return Trial(dataset=self.dataset.key, variant=self.variant, axis="search", value=value,
                     seed=self.seed, config=self.config(values), fingerprint=fingerprint)

    def signature(self, fingerprint: str) -> str:
        """What drivers sharing a study must agree on: the objective (fixed config without paths, the store's
        content, the metric) and the space. Budget, concurrency and pruning may differ between drivers."""
        portable = self.fixed.override({"data.store": "", "train.device": "auto"}).to_dict()
        blob = json.dumps({"config": portable, "store": fingerprint, "metric": self.metric,
                           "space": [d.to_dict() for d in self.space]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def short(value: Any) -> str:
    """A sampled value for logs and run names (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- loading and validation --------------------------------------------------------------------------------

def storage_url(given: str | None, results_dir: str | Path) -> str:
    """An SQLAlchemy URL with SQLite paths made absolute; ``None`` -> ``sqlite:///<results>/optuna.db``."""
    if not given:
        return f"sqlite:///{(Path(results_dir) / 'optuna.db').resolve()}"
    if given.startswith("sqlite:///") and not given.startswith("sqlite:////"):
        return f"sqlite:///{Path(given[len('sqlite:///'):]).resolve()}"
    return given


def display_url(url: str) -> str:
    """The URL with any password hidden (for logs, tags and reports)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _check_storage(url: str, fail: _Fail) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise fail("search.storage", f"not a database URL {url!r} ({e})") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise fail("search.storage", f"{parsed.get_backend_name()!r}: use sqlite:///PATH or postgresql://...")
    try:
        dialect.import_dbapi()
    except ImportError as e:
        package = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary"}.get(getattr(e, "name", ""), "")
        hint = f" (pip install {package})" if package else ""
        raise fail("search.storage", f"no database driver for {parsed.drivername}: {e}{hint}") from None


def _dimensions(raw: dict, fixed: dict[str, Any], base_keys: set[str], fail: _Fail) -> tuple[Dimension, ...]:
    """The [space] table's dimensions; each bound or choice must give a valid config with ``fixed`` (the fixed
    config's change)."""
    flat_types = {k: type(v) for k, v in Config().flatten().items()}
    dims = []
    for key, spec in _space_items(raw, fail):
        where = f"space.{key}"
        if key not in flat_types:
            raise fail(where, f"unknown config key (known: {', '.join(sorted(flat_types))})")
        if key in RESERVED:
            raise fail(where, f"set by the search itself ({', '.join(RESERVED)}), not searchable")
        if key in base_keys:
            raise fail(where, "is fixed in [base] too; drop it from one of them")
        dim = _dimension(key, spec, flat_types[key], fail)
        for value in dim.values():
            try:
                Config().override(merge(fixed, {key: value}), source=f"{fail}: {where} = {value!r}")
            except ConfigError as e:
                raise SearchError(str(e)) from None
        dims.append(dim)
    if not dims:
        raise fail("space", "is empty: nothing to search")
    return tuple(dims)


def _dimension(key: str, spec: dict[str, Any], declared: type, fail: _Fail) -> Dimension:
    """One ``{type = ..., low, high, step | choices}`` table of a config key whose type is ``declared``."""
    where = f"space.{key}"
    kind = spec.get("type")
    if kind not in KINDS:
        raise fail(f"{where}.type", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    for k in spec:
        if k not in _DIM_KEYS[kind]:
            raise fail(f"{where}.{k}", f"unknown key for type {kind!r} (known: {', '.join(sorted(_DIM_KEYS[kind]))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{where}.choices", "must be a non-empty list")
        for c in choices:
            if not isinstance(c, str | int | float | bool):
                raise fail(f"{where}.choices", f"{c!r}: choices are strings, numbers or booleans")
        if len(set(map(repr, choices))) != len(choices):
            raise fail(f"{where}.choices", "repeats a value")
        return Dimension(key=key, kind=kind, choices=tuple(choices))
    if declared is not (int if kind == "int" else float):
        want = "int" if declared is int else "categorical"
        raise fail(f"{where}.type", f"{key} is {declared.__name__}: use type = {want!r}")
    number = int if kind == "int" else (int, float)
    low = typed(spec.get("low"), number, f"{where}.low", fail)
    high = typed(spec.get("high"), number, f"{where}.high", fail)
    if not low < high:
        raise fail(where, f"low ({low}) must be below high ({high})")
    if kind == "logfloat" and low <= 0:
        raise fail(f"{where}.low", f"must be > 0 on a log scale, got {low}")
    step = spec.get("step")
    if step is not None:
        step = typed(step, number, f"{where}.step", fail)
        if not 0 < step <= high - low:
            raise fail(f"{where}.step", f"must be in (0, high - low], got {step}")
        if kind == "int" and (high - low) % step:
            raise fail(f"{where}.step", f"high - low ({high - low}) is not a multiple of {step}")
    return Dimension(key=key, kind=kind, low=low, high=high, step=step)


def _space_items(raw: Any, fail: _Fail, prefix: str = "") -> list[tuple[str, dict]]:
    """``train.lr = {type = ...}`` parses as nested tables: (dotted key, distribution table) pairs."""
    if not isinstance(raw, dict):
        raise fail(f"space.{prefix.rstrip('.')}" if prefix else "space", "must be a table like {type = ...}")
    out = []
    for k, v in raw.items():
        if isinstance(v, dict) and "type" in v:
            out.append((prefix + k, v))
        else:
            out += _space_items(v, fail, f"{prefix}{k}.")
    return out


def load_search(path: str | Path, *, results_dir: str | Path = "results", storage: str | None = None,
                check_data: bool = True) -> Search:
    """Read and validate a search file; nothing is created or started. The study storage is ``storage``,
    else ``OPTUNA_STORAGE``, else the file's ``search.storage``, else SQLite under ``results_dir``."""
    # 1. The file's tables and the [search] table's keys.
    path = Path(path)
    raw = read_toml(path, SearchError, "search file")
    fail = _Fail(path)
    for key in raw:
        if key not in _TOP_KEYS:
            raise fail(key, f"unknown table (known: {', '.join(sorted(_TOP_KEYS))})")
    head = table_of(raw, "search", fail)
    if not head:
        raise fail("search", "missing: a search file needs a [search] table")
    for key in head:
        if key not in _SEARCH_KEYS:
            raise fail(f"search.{key}", f"unknown key (known: {', '.join(sorted(_SEARCH_KEYS))})")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return typed(head.get(key, default), kind, f"search.{key}", fail)

    # 2. The search's own settings: objective, budget, pruner, sampler.
    settings = _settings(get, fail, path.stem)
    # 3. The one dataset, the resources, and the config every trial starts from.
    ds_tables = table_of(raw, "datasets", fail)
    key = get("dataset", str, next(iter(ds_tables), ""))
    if key not in ds_tables:
        raise fail("search.dataset", f"dataset {key!r} has no [datasets.{key}] table")
    if len(ds_tables) > 1:
        raise fail("datasets", f"a search runs on one dataset; drop the tables other than [datasets.{key}]")
    dataset = dataset_spec(key, ds_tables[key], path, fail, check_data)
    cpu, gpu = parse_resources(table_of(raw, "resources", fail), fail)
    seed = get("seed", int, 0)
    base = table_of(raw, "base", fail)
    changes, fixed = _fixed_config(path, base, dataset, settings["variant"], seed, cpu, settings["metric"], fail)
    if settings["grace_period"] >= fixed.train.epochs and settings["pruner"] != "none":
        raise fail("search.grace_period", f"{settings['grace_period']} leaves nothing to prune in "
                                          f"{fixed.train.epochs} epochs (train.epochs); lower it or set "
                                          "pruner = \"none\"")
    # 4. The space, over keys the file does not fix, and the study's storage.
    space = _dimensions(raw.get("space", {}), changes, set(merge(base)) | set(merge(dataset.overrides)), fail)
    url = storage_url(storage or os.environ.get("OPTUNA_STORAGE") or get("storage", str, ""), results_dir)
    _check_storage(url, fail)
    search = Search(
        file=path, description=get("description", str, ""), study=get("study", str, settings["name"]),
        storage=url, dataset=dataset, seed=seed, sampler_seed=get("sampler_seed", int, 0),
        start_from_default=get("start_from_default", bool, True), max_failures=get("max_failures", int, 1),
        cpu=cpu, gpu=gpu, base=base, space=space, fixed=fixed, changes=changes, **settings)
    if search.max_failures < 0:
        raise fail("search.max_failures", f"must be >= 0 (retries of a failed trial), got {search.max_failures}")
    # 5. The default config, the first trial, must lie inside the space.
    if search.start_from_default:
        defaults = search.defaults()
        for dim in space:
            if not dim.contains(defaults[dim.key]):
                raise fail(f"space.{dim.key}", f"the default {dim.key} = {defaults[dim.key]!r} is outside the "
                                               "space; widen it or set search.start_from_default = false")
    return search


def _settings(get: Callable[[str, Any, Any], Any], fail: _Fail, stem: str) -> dict[str, Any]:
    """The [search] table's settings of the objective, budget, pruner and sampler, validated (the name defaults
    to the file's ``stem``)."""
    name = get("name", str, stem)
    metric = get("metric", str, "val_p1")
    if metric.startswith("test"):
        raise fail("search.metric", f"{metric!r} is a test-split metric; a search selects on validation only "
                                    f"({', '.join(METRICS)})")
    if metric not in METRICS:
        raise fail("search.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    if get("mode", str, "min") != "min":
        raise fail("search.mode", f"{metric} is an error in mm: the mode is 'min'")
    variant = get("variant", str, "full")
    if variant not in VARIANTS:
        raise fail("search.variant", f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    trials = get("trials", int, 20)
    if trials < 1:
        raise fail("search.trials", f"must be >= 1, got {trials}")
    time_budget = float(get("time_budget_s", (int, float), 0))
    concurrency = get("concurrency", int, 0)
    if time_budget < 0 or concurrency < 0:
        raise fail("search.time_budget_s" if time_budget < 0 else "search.concurrency", "must be >= 0")
    pruner = get("pruner", str, "asha")
    if pruner not in PRUNERS:
        raise fail("search.pruner", f"must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    grace, factor = get("grace_period", int, 1), get("reduction_factor", int, 2)
    if grace < 1 or factor < 2:
        raise fail("search.grace_period" if grace < 1 else "search.reduction_factor",
                   "grace_period must be >= 1 epoch and reduction_factor >= 2")
    stale = get("stale_after_s", int, 60)
    random_trials, startup = get("random_trials", int, 5), get("startup_trials", int, 2)
    if stale < 2 or random_trials < 0 or startup < 0:
        raise fail("search", "stale_after_s must be >= 2, random_trials and startup_trials >= 0")
    return {"name": name, "metric": metric, "variant": variant, "trials": trials, "time_budget_s": time_budget,
            "concurrency": concurrency, "pruner": pruner, "grace_period": grace, "reduction_factor": factor,
            "stale_after_s": stale, "random_trials": random_trials, "startup_trials": startup}


def _fixed_config(path: Path, base: dict[str, Any], dataset: DatasetSpec, variant: str, seed: int, cpu: float,
                  metric: str, fail: _Fail) -> tuple[dict[str, Any], Config]:
    """The change every trial starts from, and its config: [base], the dataset's overrides, the variant, and what
    the search sets itself (which [base] may not), on the defaults."""
    reserved = sorted(set(merge(base)) & set(RESERVED))
    if reserved:
        raise fail(f"base.{reserved[0]}", "is set by the search itself (the store, search.seed, "
                                         "resources.cpu, search.metric)")
    try:
        changes = compose(merge(base, dataset.overrides), VARIANTS[variant][2], {
            "data.store": str(dataset.store), "train.seed": seed, "train.threads": max(1, int(cpu)),
            "train.metric": metric})
        return changes, Config().override(changes, source=f"{path}: variant {variant!r}")
    except ConfigError as e:
        raise SearchError(str(e)) from None
