"""The search's Optuna study: its RDB storage with heartbeats, its sampler and pruner, the budget that several
drivers share, and the best config exported for suites.

The study is the search's state. A driver that is killed and started again, or a second driver on the same
storage and study, counts the COMPLETE and PRUNED trials the study holds toward the budget; a RUNNING trial whose
driver stopped sending heartbeats is failed by Optuna (``fail_stale_trials``) and not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmark.search.spec import Search, SearchError, display_url
from diffpose.config import merge, toml_value

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what the budget counts


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE seeded from (seed, trial number) for each trial: a trial's proposal depends on the seed, its number and
    the trials the study holds, not on which driver asked for it, so drivers sharing a study propose different
    points and a resumed search samples as it would have. Each trial gets a ``TPESampler`` of its own.

    ``first``: the values of trial 0 (the default config). Proposed by the sampler, not enqueued: Optuna's queue
    of waiting trials hands one trial to two threads on SQLite (optuna/optuna#4002), which trained it twice."""

    def __init__(self, *, seed: int, n_startup_trials: int, first: dict[str, Any] | None = None):
        self.seed, self.n_startup_trials, self.first = seed, n_startup_trials, first
        self.per_trial: dict[int, optuna.samplers.TPESampler] = {}

    def of(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number not in self.per_trial:
            seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            self.per_trial[trial.number] = optuna.samplers.TPESampler(seed=seed,
                                                                      n_startup_trials=self.n_startup_trials)
        return self.per_trial[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict:
        if self.first is not None and trial.number == 0:
            return {}
        return self.of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        if self.first is not None and trial.number == 0:
            return self.first[param_name]
        return self.of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.of(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.of(trial).after_trial(study, trial, state, values)
        self.per_trial.pop(trial.number, None)


def pruner(search: Search) -> optuna.pruners.BasePruner:
    """ASHA (Optuna's asynchronous successive halving: past epoch ``grace_period * reduction_factor**k`` a trial
    goes on only among the best 1/reduction_factor there), the median pruner, or none."""
    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.grace_period,
                                                      reduction_factor=search.reduction_factor)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials,
                                           n_warmup_steps=search.grace_period - 1)
    return optuna.pruners.NopPruner()


def open_storage(search: Search) -> optuna.storages.RDBStorage:
    """The study's RDB storage with heartbeats: ``Study.optimize`` beats for each trial it runs, every quarter of
    ``stale_after_s``; a RUNNING trial silent for ``stale_after_s`` is stale."""
    kwargs: dict[str, Any] = {}
    if search.storage.startswith("sqlite"):
        Path(search.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    for attempt in range(3):  # drivers starting together on an empty database race to create its tables
        try:
            return optuna.storages.RDBStorage(search.storage, engine_kwargs=kwargs,
                                              heartbeat_interval=max(1, search.stale_after_s // 4),
                                              grace_period=search.stale_after_s)
        except Exception as e:  # noqa: BLE001 - any connection error: one line naming the storage
            error = e
            time.sleep(1.0 + attempt)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise SearchError(f"{search.file}: search.storage: cannot open {display_url(search.storage)}: {first}")


def open_study(search: Search, storage: optuna.storages.RDBStorage, fingerprint: str) -> optuna.Study:
    """Create or load the study with the search's sampler and pruner; a study made by a different search is an
    error. With ``start_from_default``, the study's trial 0 (whichever driver asks for it) is the default config
    (:class:`TrialSeededSampler`'s ``first``). Trials left RUNNING by a driver that stopped sending heartbeats are
    failed."""
    signature = search.signature(fingerprint)
    first = search.defaults() if search.start_from_default else None
    kwargs: dict[str, Any] = {"storage": storage, "study_name": search.study, "pruner": pruner(search),
                              "sampler": TrialSeededSampler(seed=search.sampler_seed,
                                                            n_startup_trials=search.random_trials, first=first)}
    try:
        study = optuna.create_study(direction="minimize", **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
    else:
        for key, value in (("signature", signature), ("name", search.name), ("metric", search.metric),
                           ("space", [d.to_dict() for d in search.space])):
            study.set_user_attr(f"search.{key}", value)
    found = study.user_attrs.get("search.signature")
    if found is not None and found != signature:
        raise SearchError(f"{search.file}: search.study: the study {search.study!r} in "
                          f"{display_url(search.storage)} was made by a search with another objective or space "
                          f"(signature {found} != {signature}); name another study or storage")
    optuna.storages.fail_stale_trials(study)
    return study


def admission(study: optuna.Study, number: int, budget: int) -> bool | None:
    """Whether trial ``number`` may train: True while fewer than ``budget`` counted or live trials come before it
    (trial numbers are the order the storage created them in, over every driver); False once the study's counted
    trials fill the budget; None while live trials before it fill it (one may still fail and free its slot)."""
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
    if sum(t.state in COUNTED for t in trials) >= budget:
        return False
    return True if sum(t.number < number for t in trials) < budget else None


def census(study: optuna.Study) -> dict[str, int]:
    """Trials of the study per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    out = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return out


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
             f"dataset {search.dataset.key}, variant {search.variant}, seed {search.seed})."]
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
