"""Hyperparameter searches as data: ``ablations/search_*.toml`` -> an Optuna study driven by Ray Tune.

A search names one dataset and variant, the fixed config ([base]), the space of config keys to sample, the
objective (a validation metric: the test split is never looked at), the budget (trials, time), concurrency and
early stopping. Ray Tune runs the trials with :class:`StudySearch` (Ray's ``OptunaSearch``, TPE, seeded) as the
search algorithm and ASHA or Optuna's median pruner stopping trials on the per-epoch validation metric.

The study lives in an RDB storage (SQLite under the results by default, a PostgreSQL URL on clusters): it is the
search's state. A driver that is killed and started again, or a second driver on the same storage and study,
counts the COMPLETE and PRUNED trials the study holds toward the budget; a RUNNING trial whose driver stopped
sending heartbeats is marked FAIL and not counted. Every trial is an MLflow child run of the driver's parent
run (experiment: the search's name); the best trial's sampled values are exported as an override TOML that
``diffpose-bench ablate --overrides`` merges into a suite's [base].

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

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from benchmark.suite import DatasetSpec, SuiteError, Trial, _dataset, _table, _typed, parse_resources
from diffpose.config import VARIANTS, Config, ConfigError, encoder_follows, merge, read_toml, toml_value

log = logging.getLogger(__name__)

METRICS = ("val_p1", "val_p2")
KINDS = ("float", "logfloat", "int", "categorical")
PRUNERS = ("asha", "median", "none")
# Keys a search sets itself: the store, the seed, the threads (from [resources]) and the selection metric.
RESERVED = ("data.store", "train.seed", "train.threads", "train.metric")
# Tune config keys that carry the Optuna trial to the trainable, beside the sampled values.
TRIAL_NUMBER, TRIAL_ID = "optuna.trial", "optuna.trial_id"

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
    stale_after_s: int                  # a RUNNING trial without a heartbeat for this long is failed
    start_from_default: bool            # the study's first trial is the unsearched config (the reference)
    max_failures: int
    cpu: float
    gpu: float
    base: dict[str, Any]
    space: tuple[Dimension, ...]
    fixed: Config = field(repr=False)   # base + dataset set + variant + store/seed/threads/metric

    @property
    def objective(self) -> str:
        """What Tune and Optuna see: the best validation metric over the epochs so far (mm)."""
        return f"best_{self.metric}"

    @property
    def datasets(self) -> dict[str, DatasetSpec]:
        return {self.dataset.key: self.dataset}

    @property
    def epochs(self) -> int:
        return self.fixed.train.epochs

    def config(self, values: dict[str, Any], source: str | None = None) -> Config:
        """The config of a trial that sampled ``values``."""
        return self.fixed.override(values, source=source or f"{self.file}: space")

    def defaults(self) -> dict[str, Any]:
        """The searched keys' values without the search: what the study's first trial runs."""
        flat = self.fixed.flatten()
        return {d.key: flat[d.key] for d in self.space}

    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.key: d.distribution() for d in self.space}

    def trial(self, values: dict[str, Any]) -> Trial:
        """The suite-style trial (identity, MLflow params) of one sampled point."""
        cfg = self.config(values)
        value = ",".join(f"{k}={_short(values[k])}" for k in sorted(values))
        return Trial(dataset=self.dataset.key, variant=self.variant, axis="search", value=value,
                     seed=self.seed, config=cfg)

    def signature(self, fingerprint: str) -> str:
        """What drivers sharing a study must agree on: the objective (fixed config without paths, the store's
        content, the metric) and the space. Budget, concurrency and pruning may differ between drivers."""
        portable = self.fixed.override({"data.store": "", "train.device": "auto"}).to_dict()
        blob = json.dumps({"config": portable, "store": fingerprint, "metric": self.metric,
                           "space": [d.to_dict() for d in self.space]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _short(value: Any) -> str:
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


def _dimensions(raw: dict, fixed: Config, base_keys: set[str], fail: _Fail) -> tuple[Dimension, ...]:
    """The [space] table's dimensions; each bound or choice must give a valid config on top of ``fixed``."""
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
                fixed.override({key: value}, source=f"{fail}: {where} = {value!r}")
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
    low = _typed(spec.get("low"), number, f"{where}.low", fail)
    high = _typed(spec.get("high"), number, f"{where}.high", fail)
    if not low < high:
        raise fail(where, f"low ({low}) must be below high ({high})")
    if kind == "logfloat" and low <= 0:
        raise fail(f"{where}.low", f"must be > 0 on a log scale, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _typed(step, number, f"{where}.step", fail)
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
    path = Path(path)
    raw = read_toml(path, SearchError, "search file")
    fail = _Fail(path)
    for key in raw:
        if key not in _TOP_KEYS:
            raise fail(key, f"unknown table (known: {', '.join(sorted(_TOP_KEYS))})")
    head = _table(raw, "search", fail)
    if not head:
        raise fail("search", "missing: a search file needs a [search] table")
    for key in head:
        if key not in _SEARCH_KEYS:
            raise fail(f"search.{key}", f"unknown key (known: {', '.join(sorted(_SEARCH_KEYS))})")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        return _typed(head.get(key, default), kind, f"search.{key}", fail)

    name = get("name", str, path.stem)
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

    ds_tables = _table(raw, "datasets", fail)
    key = get("dataset", str, next(iter(ds_tables), ""))
    if key not in ds_tables:
        raise fail("search.dataset", f"dataset {key!r} has no [datasets.{key}] table")
    if len(ds_tables) > 1:
        raise fail("datasets", f"a search runs on one dataset; drop the tables other than [datasets.{key}]")
    dataset = _dataset(key, ds_tables[key], path, fail, check_data)
    cpu, gpu = parse_resources(_table(raw, "resources", fail), fail)
    seed = get("seed", int, 0)
    base = _table(raw, "base", fail)
    reserved = sorted(set(merge(base)) & set(RESERVED))
    if reserved:
        raise fail(f"base.{reserved[0]}", "is set by the search itself (the store, search.seed, "
                                         "resources.cpu, search.metric)")
    try:
        shared = merge(base, dataset.overrides)
        fixed = Config().override(merge(shared, encoder_follows(shared), VARIANTS[variant][2], {
            "data.store": str(dataset.store), "train.seed": seed, "train.threads": max(1, int(cpu)),
            "train.metric": metric}), source=f"{path}: variant {variant!r}")
    except ConfigError as e:
        raise SearchError(str(e)) from None
    if grace >= fixed.train.epochs and pruner != "none":
        raise fail("search.grace_period", f"{grace} leaves nothing to prune in {fixed.train.epochs} epochs "
                                          "(train.epochs); lower it or set pruner = \"none\"")
    space = _dimensions(raw.get("space", {}), fixed, set(merge(base)) | set(merge(dataset.overrides)), fail)

    url = storage_url(storage or os.environ.get("OPTUNA_STORAGE") or get("storage", str, ""), results_dir)
    _check_storage(url, fail)
    search = Search(
        name=name, file=path, description=get("description", str, ""), study=get("study", str, name),
        storage=url, dataset=dataset, variant=variant, seed=seed, metric=metric, trials=trials,
        time_budget_s=time_budget, concurrency=concurrency, sampler_seed=get("sampler_seed", int, 0),
        random_trials=random_trials, pruner=pruner, grace_period=grace, reduction_factor=factor,
        startup_trials=startup, stale_after_s=stale,
        start_from_default=get("start_from_default", bool, True), max_failures=get("max_failures", int, 1),
        cpu=cpu, gpu=gpu, base=base, space=space, fixed=fixed)
    if search.max_failures < 0:
        raise fail("search.max_failures", f"must be >= 0 (retries of a failed trial), got {search.max_failures}")
    if search.start_from_default:
        defaults = search.defaults()
        for dim in space:
            if not dim.contains(defaults[dim.key]):
                raise fail(f"space.{dim.key}", f"the default {dim.key} = {defaults[dim.key]!r} is outside the "
                                               "space; widen it or set search.start_from_default = false")
    return search


# ---- the study ---------------------------------------------------------------------------------------------

class TrialSeededSampler(optuna.samplers.TPESampler):
    """TPE whose random state is reset from (seed, trial number) before each trial, so that a trial's proposal
    depends on the seed, its number and the trials the study holds, not on which driver asked for it: drivers
    sharing a study propose different points, and a resumed search samples as it would have."""

    def __init__(self, *, seed: int, n_startup_trials: int):
        super().__init__(seed=seed, n_startup_trials=n_startup_trials)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        super().before_trial(study, trial)
        state = int(np.random.SeedSequence([self._base_seed, trial.number]).generate_state(1)[0])
        # TPESampler keeps its RandomState in private attributes (optuna 5); reseeding them is the only way to
        # make the proposal a function of the trial number.
        self._rng.rng.seed(state)
        self._random_sampler._rng.rng.seed(state)


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's heartbeat API is experimental, and it expects ``Study.optimize`` to send the beats; here the
    driver sends them for the trials it asked for (:meth:`StudySearch.beat`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def fail_stale(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose driver sent no heartbeat for ``stale_after_s``."""
    with _quiet():
        optuna.storages.fail_stale_trials(study)


def open_storage(search: Search) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats: a RUNNING trial silent for ``stale_after_s`` is stale."""
    kwargs: dict[str, Any] = {}
    if search.storage.startswith("sqlite"):
        Path(search.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    interval = max(1, search.stale_after_s // 4)
    for attempt in range(3):  # drivers starting together on an empty database race to create its tables
        try:
            with _quiet():
                return optuna.storages.RDBStorage(search.storage, engine_kwargs=kwargs,
                                                  heartbeat_interval=interval, grace_period=search.stale_after_s)
        except Exception as e:  # noqa: BLE001 - any connection error: one line naming the storage
            error = e
            time.sleep(1.0 + attempt)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise SearchError(f"{search.file}: search.storage: cannot open {display_url(search.storage)}: {first}")


def open_study(search: Search, storage: optuna.storages.RDBStorage, fingerprint: str) -> optuna.Study:
    """Create or load the study; a study made by a different search is an error. The driver that creates the
    study (the database makes that one driver) enqueues the default config as its trial 0."""
    signature = search.signature(fingerprint)
    try:
        study = optuna.create_study(storage=storage, study_name=search.study, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=search.study)
    else:
        for key, value in (("signature", signature), ("name", search.name), ("metric", search.metric),
                           ("space", [d.to_dict() for d in search.space])):
            study.set_user_attr(f"search.{key}", value)
        if search.start_from_default:
            study.enqueue_trial(search.defaults(), user_attrs={"default": True})
    found = study.user_attrs.get("search.signature")
    if found is not None and found != signature:
        raise SearchError(f"{search.file}: search.study: the study {search.study!r} in "
                          f"{display_url(search.storage)} was made by a search with another objective or space "
                          f"(signature {found} != {signature}); name another study or storage")
    fail_stale(study)
    return study


def census(study: optuna.Study) -> dict[str, int]:
    """Trials of the study per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


class StudySearch(OptunaSearch):
    """Ray's ``OptunaSearch`` on a shared, resumable study with a budget counted over every driver.

    - ``suggest`` asks only while COMPLETE + PRUNED + live RUNNING trials stay under ``budget``; a trial another
      driver asked for at the same moment that would exceed it is told FAIL (reason in its user attrs).
    - Intermediate values are reported per epoch (the ``epoch`` of the result, not Tune's iteration count, so a
      retried trial reports each epoch once).
    - A trial that ends before its last epoch without an error was stopped by the scheduler: PRUNED (its value
      is its last intermediate value), not COMPLETE as ``OptunaSearch`` records it. An errored trial is FAIL.
    """

    def __init__(self, *, space: dict[str, BaseDistribution], objective: str, study_name: str,
                 storage: optuna.storages.RDBStorage, sampler: optuna.samplers.BaseSampler, budget: int,
                 epochs: int, deadline: float = math.inf, driver: str = "",
                 on_end: Callable[[FrozenTrial], None] | None = None):
        super().__init__(space=space, metric=objective, mode="min", sampler=sampler, study_name=study_name,
                         storage=storage)
        self.budget, self.epochs, self.deadline, self.driver = budget, epochs, deadline, driver
        self.on_end = on_end
        self.defaults: set[str] = set()       # Tune trial ids running the default config
        self.started: list[int] = []          # Optuna trial numbers this driver ran
        self._steps: dict[str, int] = {}      # Tune trial id -> last epoch reported to Optuna
        self._live: dict[str, int] = {}       # Tune trial id -> Optuna trial id, for heartbeats
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["on_end"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment checkpoint: this search resumes from its study, so only picklable state goes."""
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    # ---- the budget ------------------------------------------------------------------------------------------
    def _counted(self) -> tuple[int, int]:
        """(COMPLETE + PRUNED, live RUNNING) trials of the study, after failing stale ones."""
        running = {t._trial_id for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        fail_stale(self._ot_study)
        trials = self._ot_study.get_trials(deepcopy=False)
        if self.on_end is not None:
            for t in trials:
                if t._trial_id in running and t.state == TrialState.FAIL:
                    log.warning("trial %d: its driver stopped sending heartbeats; marked FAIL", t.number)
                    self.on_end(t)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        return done, sum(t.state == TrialState.RUNNING for t in trials)

    def _rank(self, trial_id: int) -> int:
        """1 + the counted or live trials created before ``trial_id`` (ids are the storage's creation order)."""
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return 1 + sum(t._trial_id < trial_id for t in self._ot_study.get_trials(deepcopy=False, states=states))

    def suggest(self, trial_id: str) -> dict | str | None:
        if time.time() > self.deadline:
            log.info("time budget spent: no new trials")
            return Searcher.FINISHED
        done, running = self._counted()
        if done >= self.budget:
            return Searcher.FINISHED
        if done + running >= self.budget:
            time.sleep(0.5)  # every slot is taken by a live trial that may still fail: ask again soon
            return None
        with _quiet():
            params = super().suggest(trial_id)
        ot = self._ot_trials[trial_id]
        self._ot_study._storage.record_heartbeat(ot._trial_id)
        if self._rank(ot._trial_id) > self.budget:
            ot.set_user_attr("search.rejected", "another driver filled the budget first")
            self._ot_study.tell(ot, state=TrialState.FAIL, skip_if_finished=True)
            del self._ot_trials[trial_id]
            return None
        ot.set_user_attr("search.driver", self.driver)
        if ot.user_attrs.get("default"):
            self.defaults.add(trial_id)
        with self._lock:
            self._live[trial_id] = ot._trial_id
        self.started.append(ot.number)
        log.info("trial %d: %s", ot.number, ", ".join(f"{k}={_short(v)}" for k, v in params.items()))
        return {**params, TRIAL_NUMBER: ot.number, TRIAL_ID: ot._trial_id}

    def beat(self) -> None:
        """Record a heartbeat for each live trial of this driver."""
        with self._lock:
            ids = list(self._live.values())
        for i in ids:
            self._ot_study._storage.record_heartbeat(i)

    # ---- results ---------------------------------------------------------------------------------------------
    def report(self, trial_id: str, result: dict) -> None:
        """The intermediate value of ``result``'s epoch, once per epoch."""
        ot = self._ot_trials.get(trial_id)
        if ot is None or self.metric not in result or "epoch" not in result:
            return
        step = int(result["epoch"])
        if step > self._steps.get(trial_id, 0):
            ot.report(float(result[self.metric]), step)
            self._steps[trial_id] = step

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            self.report(trial_id, result)

    def prunable(self, trial_id: str, result: dict) -> bool:
        """Whether a scheduler may stop the trial now: not the default config, not at its last epoch."""
        return trial_id not in self.defaults and int(result.get("epoch", 0)) < self.epochs

    def should_prune(self, trial_id: str, result: dict, pruner: optuna.pruners.BasePruner) -> bool:
        """``pruner``'s decision on the study's stored intermediate values."""
        self.report(trial_id, result)
        ot = self._ot_trials.get(trial_id)
        return ot is not None and pruner.prune(self._ot_study, self._ot_study._storage.get_trial(ot._trial_id))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot = self._ot_trials.get(trial_id)
        if ot is None or trial_id in self._completed_trials:
            return
        epoch = int(result.get("epoch", 0)) if result else 0
        value = None
        if error:
            state = TrialState.FAIL
        elif not result or self.metric not in result:
            state = TrialState.FAIL  # ended before its first epoch
            ot.set_user_attr("search.reason", "no epoch finished")
        else:
            self.report(trial_id, result)
            state = TrialState.COMPLETE if epoch >= self.epochs else TrialState.PRUNED
            value = float(result[self.metric]) if state == TrialState.COMPLETE else None
        ot.set_user_attr("search.epochs", epoch)
        frozen = self._ot_study.tell(ot, values=value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)
        with self._lock:
            self._live.pop(trial_id, None)
        if self.on_end is not None:
            self.on_end(frozen)


class SearchASHA(ASHAScheduler):
    """ASHA that never stops the default config (the reference runs all its epochs) nor a trial at its last
    epoch (nothing is saved by it, and the trial would lose its final MLflow metrics)."""

    def __init__(self, searcher: StudySearch, **kwargs: Any):
        super().__init__(**kwargs)
        self.searcher = searcher

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return decision if self.searcher.prunable(trial.trial_id, result) else TrialScheduler.CONTINUE


class PrunerScheduler(FIFOScheduler):
    """Stops a trial when an Optuna pruner, judging the study's stored intermediate values, says so (never the
    default config, never at the last epoch)."""

    def __init__(self, searcher: StudySearch, pruner: optuna.pruners.BasePruner):
        super().__init__()
        self.searcher, self.pruner = searcher, pruner

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self.searcher.prunable(trial.trial_id, result):
            return TrialScheduler.CONTINUE
        stop = self.searcher.should_prune(trial.trial_id, result, self.pruner)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE


def scheduler(search: Search, searcher: StudySearch) -> TrialScheduler:
    """ASHA on the objective per epoch, Optuna's median pruner, or none (every trial runs all epochs)."""
    if search.pruner == "asha":
        return SearchASHA(searcher, time_attr="epoch", metric=search.objective, mode="min", max_t=search.epochs,
                          grace_period=search.grace_period, reduction_factor=search.reduction_factor,
                          stop_last_trials=False)
    if search.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials,
                                             n_warmup_steps=search.grace_period - 1)
        return PrunerScheduler(searcher, pruner)
    return FIFOScheduler()


# ---- one trial (runs in a Ray worker) ----------------------------------------------------------------------

def run_search_trial(search: Search, context: dict[str, Any], params: dict[str, Any]) -> None:
    """Tune function trainable of one search trial: train the sampled config, report the objective per epoch,
    log everything to the trial's MLflow run (:class:`~benchmark.tracking.TrialRun`); the test split is never
    evaluated. ``context``: tracking URI, experiment and parent run ids, results directory, encoder cache, git
    commit; ``params``: the sampled values and the Optuna trial (number and id)."""
    from benchmark.tracking import TrialRun, training_metrics
    from benchmark.trial import _device_tags
    from diffpose.data.store import PoseStore
    from diffpose.train import trained

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    trial = search.trial({d.key: params[d.key] for d in search.space})
    cfg = trial.config
    store = PoseStore.open(cfg.data.store)
    trial = dataclasses.replace(trial, fingerprint=store.meta["fingerprint"])
    tags = {"git.commit": context["git_commit"], "data.fingerprint": store.meta["fingerprint"],
            **_device_tags(cfg.train.device), "search.name": search.name, "optuna.study": search.study,
            "optuna.trial": str(params[TRIAL_NUMBER]), "optuna.trial_id": str(params[TRIAL_ID])}
    run = TrialRun(context["tracking_uri"], context["experiment_id"], context["parent_run_id"], trial, tags)
    run.set_tags(tags)  # a run found again (the same config, an earlier trial) belongs to this trial now
    best = math.inf

    def on_epoch(record: dict[str, float], _checkpoint: Path | None = None) -> None:
        nonlocal best
        run.log_epoch(record)
        best = min(best, float(record[search.metric]))
        tune.report({**record, search.objective: best})

    try:
        # A concurrent trial of the same config waits for its training, then reads it (every epoch reported).
        result = trained(cfg, Path(context["cache"]), on_epoch=on_epoch, progress=False)
    except Exception:
        run.finish("FAILED")
        raise
    if run.finished:
        return
    out_dir = result.out_dir / trial.id
    out_dir.mkdir(exist_ok=True)
    (out_dir / "config.toml").write_text(cfg.to_toml())
    run.log_final({**training_metrics(result, search.metric),
                   "best_val_p1": min(h["val_p1"] for h in result.history),
                   "best_val_p2": min(h["val_p2"] for h in result.history)}, [out_dir / "config.toml"])
    run.finish()


# ---- the driver --------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One trial as the summary and the export tell it."""

    number: int
    state: str                          # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None                 # the objective (mm); a pruned trial's at its last epoch
    epochs: int
    params: dict[str, Any]

    @classmethod
    def of(cls, t: FrozenTrial) -> Outcome:
        value = t.value if t.value is not None else (t.intermediate_values[t.last_step]
                                                     if t.last_step is not None else None)
        return cls(number=t.number, state=t.state.name, value=value,
                   epochs=int(t.user_attrs.get("search.epochs", t.last_step or 0)), params=dict(t.params))


@dataclass
class SearchSummary:
    search: str
    study: str
    storage: str                        # the URL without its password
    metric: str
    epochs: int
    budget: int
    counts: dict[str, int]              # the study's trials per state, every driver's
    started: list[int]                  # Optuna numbers of the trials this driver ran
    outcomes: dict[int, Outcome]        # every trial of the study
    wall_seconds: float
    tracking_uri: str
    experiment_id: str
    best: Outcome | None = None
    default: Outcome | None = None
    export: Path | None = None
    report_dir: Path | None = None

    def _mine(self, state: str) -> int:
        return sum(1 for n in self.started if n in self.outcomes and self.outcomes[n].state == state)

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"search {self.search}: {len(self.started)} trials run now ({self._mine('COMPLETE')} complete, "
               f"{self._mine('PRUNED')} pruned, {self._mine('FAIL')} failed); "
               f"wall time {self.wall_seconds / 60:.1f} min",
               f"  study {self.study}: {c['COMPLETE']} complete + {c['PRUNED']} pruned of a budget of "
               f"{self.budget}, {c['FAIL']} failed, {c['RUNNING']} running ({self.storage})"]
        label = f"best val {self.metric[4:].upper()}"
        if self.best is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.best.params.items()))
            out.append(f"  best:    trial {self.best.number}, {label} {self.best.value:.2f} mm over {self.epochs} "
                       f"epochs: {params}")
        else:
            out.append("  no trial completed: nothing to export")
        if self.default is not None and self.default.value is not None:
            note = "" if self.default.state == "COMPLETE" else f" ({self.default.state.lower()})"
            out.append(f"  default: trial {self.default.number}, {label} {self.default.value:.2f} mm{note}")
            if self.best is not None and self.best.value is not None:
                gain = self.default.value - self.best.value
                out.append(f"  the best config is {gain:.2f} mm ({100 * gain / self.default.value:.1f} %) "
                           f"{'below' if gain >= 0 else 'above'} the default on validation")
        if self.export is not None:
            out.append(f"  best config: {self.export} (diffpose-bench ablate --suite SUITE --overrides {self.export})")
        out.append(f"  MLflow: {self.tracking_uri} (experiment {self.experiment_id})")
        if self.report_dir is not None:
            out.append(f"  report: {self.report_dir}")
        return out


def default_trial(study: optuna.Study) -> FrozenTrial | None:
    found = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("default")
             and t.state != TrialState.FAIL]
    return found[0] if found else None


def export_best(study: optuna.Study, search: Search, path: Path) -> Path | None:
    """Write the best trial's sampled values as an override file (one [base] table) that
    ``diffpose-bench ablate --overrides`` merges into a suite; None when no trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    default = default_trial(study)
    lines = [f"# The best trial of the search {search.name!r} (file {search.file}; study {search.study!r} in "
             f"{display_url(search.storage)}):",
             f"# trial {best.number}, {search.objective} = {best.value:.3f} mm (the best of {search.epochs} epochs; "
             f"dataset {search.dataset.key}, variant {search.variant}, seed {search.seed}).",]
    if default is not None:
        d = Outcome.of(default)
        lines.append(f"# The default config (trial {d.number}, {d.state.lower()}): {d.value:.3f} mm.")
    lines += ["# Use: diffpose-bench ablate --suite SUITE --overrides THIS_FILE (merged into the suite's [base]).",
              "# The search also fixed these keys (not exported):"]
    lines += [f"#   {k} = {toml_value(v)}" for k, v in sorted(merge(search.base).items())]
    lines += ["", "[base]"] + [f"{k} = {toml_value(v)}" for k, v in sorted(best.params.items())] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _run_ender(client: Any, experiment_id: str) -> Callable[[FrozenTrial], None]:
    """Closes the MLflow run of an ended Optuna trial: tag ``search.state``; a pruned trial's run KILLED, a
    failed one's FAILED (the worker was stopped before it could end its run). A complete trial's worker ends
    its own run after logging the final metrics."""
    status = {"PRUNED": "KILLED", "FAIL": "FAILED"}

    def end(t: FrozenTrial) -> None:
        try:
            runs = client.search_runs([experiment_id], filter_string=f"tags.`optuna.trial_id` = '{t._trial_id}'",
                                      max_results=10)
            for r in runs:
                client.set_tag(r.info.run_id, "search.state", t.state.name.lower())
                if r.info.status == "RUNNING" and t.state.name in status:
                    client.set_terminated(r.info.run_id, status=status[t.state.name])
        except Exception as e:  # noqa: BLE001 - a tracking hiccup must not stop the search
            log.warning("trial %d: could not update its MLflow run (%s)", t.number, e)

    return end


def _close_stale_runs(client: Any, experiment_id: str, study: optuna.Study,
                      end_run: Callable[[FrozenTrial], None]) -> None:
    """Close the MLflow runs a killed driver left RUNNING whose Optuna trials have ended (failed as stale)."""
    trials = {str(t._trial_id): t for t in study.get_trials(deepcopy=False)}
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000)
    for r in runs:
        t = trials.get(r.data.tags.get("optuna.trial_id", ""))
        if t is not None and t.state.is_finished():
            end_run(t)


def _pretrain_encoder(search: Search, cache: Path) -> None:
    """Train the context encoder in the driver when every point of the space shares it (the usual case: the
    space holds no encoder or data key), so that concurrent trials do not wait for one another to train it."""
    from diffpose.train import trained

    def encoder(cfg: Config) -> str | None:
        return cfg.encoder_config().identity("") if cfg.uses_encoder else None

    shared = encoder(search.fixed)
    changing = sorted({d.key for d in search.space for v in d.values()
                       if encoder(search.config({d.key: v})) != shared})
    if changing:
        log.warning("%s change the context encoder: each trial trains its own", ", ".join(changing))
    elif shared is not None:
        trained(search.fixed.encoder_config(), cache, progress=False)


def run_search(
    search_path: str | Path,
    results_dir: str | Path = "results",
    *,
    address: str | None = None,
    storage: str | None = None,
    study_storage: str | None = None,
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> SearchSummary:
    """Run (or resume, or join) a search: validate the file, prepare the store, open the study, train the
    shared context encoder, run trials on Ray Tune until the study's budget is full or the time budget is
    spent, log them to MLflow, export the best config to ``<results>/<name>.best.toml``.

    ``storage``: Ray Tune's storage (default ``<results>/ray``); ``study_storage``: the Optuna storage URL."""
    import uuid

    from mlflow.tracking import MlflowClient

    from benchmark import tracking
    from benchmark.runner import _resources, init_ray, prepare_stores
    from diffpose.data.store import PoseStore
    from diffpose.train import TRAININGS

    t_start = time.perf_counter()
    results = Path(results_dir).resolve()
    search = load_search(search_path, results_dir=results, storage=study_storage)
    results.mkdir(parents=True, exist_ok=True)
    prepare_stores(search)  # type: ignore[arg-type] - needs only .datasets
    store = PoseStore.open(search.dataset.store)
    optuna_storage = open_storage(search)
    study = open_study(search, optuna_storage, store.meta["fingerprint"])
    before = census(study)
    log.info("study %s in %s: %d complete, %d pruned, %d failed; budget %d", search.study,
             display_url(search.storage), before["COMPLETE"], before["PRUNED"], before["FAIL"], search.trials)

    uri = tracking.tracking_uri(results, tracking_uri)
    client = MlflowClient(uri)
    local = uri.startswith("sqlite:") or uri.startswith("file:")
    experiment_id = tracking.ensure_experiment(client, search.name, results / "artifacts" if local else None)
    commit = tracking.git_commit()
    driver = uuid.uuid4().hex[:12]
    parent = client.create_run(experiment_id, run_name=f"{search.name} search", tags={
        tracking.ROLE: "search", "search.name": search.name, "search.file": str(search.file), "git.commit": commit,
        "optuna.study": search.study, "optuna.storage": display_url(search.storage), "search.driver": driver,
        "search.metric": search.metric}).info.run_id
    end_run = _run_ender(client, experiment_id)
    _close_stale_runs(client, experiment_id, study, end_run)

    cache = results / TRAININGS
    _pretrain_encoder(search, cache)
    init_ray(address, results)
    res, slots = _resources(search)  # type: ignore[arg-type] - needs only .cpu and .gpu
    ctx = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent,
           "results_dir": str(results), "cache": str(cache), "git_commit": commit}

    def trainable(params: dict[str, Any]) -> None:
        run_search_trial(search, ctx, params)

    searcher = StudySearch(
        space=search.distributions(), objective=search.objective, study_name=search.study, storage=optuna_storage,
        sampler=TrialSeededSampler(seed=search.sampler_seed, n_startup_trials=search.random_trials),
        budget=search.trials, epochs=search.epochs, driver=driver, on_end=end_run,
        deadline=time.time() + search.time_budget_s if search.time_budget_s else math.inf)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(max(1, search.stale_after_s // 4)):
            try:
                searcher.beat()
            except Exception as e:  # noqa: BLE001 - a missed beat is retried; stale_after_s allows several
                log.warning("heartbeat failed: %s", e)

    beats = threading.Thread(target=heartbeat, name="optuna-heartbeat", daemon=True)
    beats.start()
    tuner = tune.Tuner(
        tune.with_resources(trainable, res),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler(search, searcher), num_samples=-1,
                                    max_concurrent_trials=search.concurrency or slots, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{search.name}-{int(time.time())}", verbose=verbose,
                                  storage_path=storage or str(results / "ray"),
                                  failure_config=tune.FailureConfig(max_failures=search.max_failures)),
    )
    status = "FAILED"
    try:
        tuner.fit()
        status = "FINISHED"
    finally:
        stop.set()
        beats.join(timeout=5)
        summary = _summary(search, study, searcher, time.perf_counter() - t_start, uri, experiment_id)
        summary.export = export_best(study, search, results / f"{search.name}.best.toml")
        for key, value in (("trials_run", len(summary.started)), ("trials_pruned", summary._mine("PRUNED")),
                           ("trials_failed", summary._mine("FAIL")), ("study_complete", summary.counts["COMPLETE"]),
                           ("study_pruned", summary.counts["PRUNED"]), ("wall_seconds", summary.wall_seconds)):
            client.log_metric(parent, key, float(value))
        if summary.best is not None:
            client.log_metric(parent, f"best_{search.metric}", float(summary.best.value))
            client.set_tag(parent, "search.best_trial", str(summary.best.number))
        if summary.default is not None and summary.default.value is not None:
            client.log_metric(parent, f"default_{search.metric}", float(summary.default.value))
        if summary.export is not None:
            client.log_artifact(parent, str(summary.export))
        client.set_terminated(parent, status=status)
    return summary


def _summary(search: Search, study: optuna.Study, searcher: StudySearch, wall: float, uri: str,
             experiment_id: str) -> SearchSummary:
    trials = study.get_trials(deepcopy=False)
    outcomes = {t.number: Outcome.of(t) for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    default = default_trial(study)
    return SearchSummary(
        search=search.name, study=search.study, storage=display_url(search.storage), metric=search.metric,
        epochs=search.epochs, budget=search.trials, counts=census(study), started=list(searcher.started),
        outcomes=outcomes, wall_seconds=wall, tracking_uri=uri, experiment_id=experiment_id,
        best=Outcome.of(min(complete, key=lambda t: t.value)) if complete else None,
        default=Outcome.of(default) if default is not None else None)
