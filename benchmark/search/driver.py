"""Running a search: Optuna's ``Study.optimize`` drives it, and each trial trains as a Ray task.

Optuna asks for the trials (the default config first, then TPE), sends each one's heartbeats while it runs, fails
the trials of drivers that stopped beating, and stops at the study's budget (``MaxTrialsCallback`` over the
COMPLETE and PRUNED trials of every driver) or the time budget, with ``concurrency`` trials at once in its
threads. A trial waits for a slot of the budget before it trains (:func:`~benchmark.search.study.admission`), so
drivers sharing a study never train more than the budget. Its training is a Ray task that yields each epoch's
metrics as it logs them to the trial's MLflow run (a child of this driver's parent run; experiment: the search's
name). The objective is the best validation metric so far, reported per epoch; the study's pruner (ASHA or
median) stops a trial through ``trial.should_prune()``, never the default config (the reference runs all its
epochs) nor at the last epoch. The best trial's sampled values are exported as an override TOML that
``diffpose-bench ablate --overrides`` merges into a suite's [base].
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from benchmark import tracking
from benchmark.runner import init_ray, resources, set_up
from benchmark.search.spec import Search, display_url, load_search, short
from benchmark.search.study import (
    COUNTED,
    Outcome,
    admission,
    census,
    default_trial,
    export_best,
    open_storage,
    open_study,
)
from benchmark.trial import open_run, train_logged
from diffpose.config import Config
from diffpose.data.store import store_meta
from reports.results import search_all

log = logging.getLogger(__name__)

TRIAL_TAG = "optuna.trial"  # the MLflow tag of a trial's run: its Optuna trial number (beside "optuna.study")

# A trial's training: (trial number, sampled values) -> its epochs' records ({"epoch", "val_p1", ...}) as they
# come; closing the generator stops the training.
Execute = Callable[[int, dict[str, Any]], Generator[dict[str, float], None, None]]


class Rejected(Exception):
    """The study's budget, or this driver's time, ran out before the trial could start training."""


@dataclass
class Objective:
    """Optuna's objective for one driver: wait for a slot of the budget, train the trial's values through
    ``execute``, report the best validation metric so far per epoch, let the study's pruner stop the trial."""

    search: Search
    execute: Execute
    driver: str = ""
    deadline: float = math.inf                         # time.time() after which no trial starts
    started: list[int] = field(default_factory=list)   # the trials this driver trained (Optuna numbers)
    failed: int = 0                                    # of them, those that failed

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.search
        if trial.number == 0 and s.start_from_default:
            trial.set_user_attr("default", True)  # the sampler proposes the default config as trial 0
        params = {d.key: d.suggest(trial) for d in s.space}
        while (slot := admission(trial.study, trial.number, s.trials)) is None and time.time() < self.deadline:
            time.sleep(0.5)
        if not slot:
            why = "other trials filled the budget first" if slot is False else "the time budget was spent"
            trial.set_user_attr("search.rejected", why)
            trial.study.stop()
            raise Rejected(f"trial {trial.number} did not train: {why}")
        trial.set_user_attr("search.driver", self.driver)
        self.started.append(trial.number)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={short(v)}" for k, v in params.items()))
        keep = bool(trial.user_attrs.get("default"))  # the reference runs all its epochs
        best, epoch = math.inf, 0
        records = self.execute(trial.number, params)
        try:
            for record in records:
                epoch = int(record["epoch"])
                best = min(best, float(record[s.metric]))
                trial.report(best, epoch)
                # asked at every epoch, so that ASHA ranks this trial at its rungs even where it may not stop it
                if trial.should_prune() and not keep and epoch < s.epochs:
                    raise optuna.TrialPruned(f"{s.objective} {best:.2f} mm after epoch {epoch}")
        finally:
            records.close()
            trial.set_user_attr("search.epochs", epoch)
        if not epoch:
            raise RuntimeError(f"trial {trial.number}: its training ended before its first epoch")
        return best

    def count_failures(self, study: optuna.Study, t: FrozenTrial) -> None:
        """An ``optimize`` callback: a driver whose trials keep failing stops after as many as its budget."""
        if t.state == TrialState.FAIL and t.number in self.started:
            self.failed += 1
            if self.failed >= self.search.trials:
                log.error("%d trials of this driver failed: stopping", self.failed)
                study.stop()

    def optimize(self, study: optuna.Study, *, concurrency: int = 1,
                 callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        """Run trials of ``study``, ``concurrency`` at once, until its budget is full or the time budget is spent;
        an error of a trial fails that trial, not the search."""
        done = sum(census(study)[state.name] for state in COUNTED)
        if done >= self.search.trials or time.time() >= self.deadline:
            log.info("nothing to run: %d of %d trials counted, %s", done, self.search.trials,
                     "time left" if time.time() < self.deadline else "the time budget spent")
            return
        timeout = None if math.isinf(self.deadline) else self.deadline - time.time()
        study.optimize(self, n_jobs=concurrency, timeout=timeout, catch=(Exception,), callbacks=[
            optuna.study.MaxTrialsCallback(self.search.trials, states=COUNTED), self.count_failures, *callbacks])


# ---- trials on Ray -----------------------------------------------------------------------------------------

def on_ray(search: Search, context: dict[str, str], res: dict[str, float]) -> Execute:
    """Each trial's training as a Ray task with ``res`` (``{"cpu": ..., "gpu": ...}``), retried ``max_failures``
    times (it resumes from its last epoch checkpoint); each epoch is yielded once. Closing the generator (a pruned
    trial) kills the task.

    The trial's MLflow run is opened here, in the trial's own thread of the driver, before any task: one run per
    trial however many attempts train it (an attempt given up may still be starting when the next one does)."""
    task = train_remote.options(num_cpus=res["cpu"], num_gpus=res.get("gpu", 0), max_retries=0)
    fingerprint = store_meta(search.dataset.store)["fingerprint"]

    def execute(number: int, params: dict[str, Any]) -> Generator[dict[str, float], None, None]:
        tags = {"search.name": search.name, "optuna.study": search.study, TRIAL_TAG: str(number)}
        run = open_run(search.trial(params, fingerprint), context, tags)  # the worker tags where it trains
        if run.finished:
            run.set_tags(tags)  # the same config, trained by an earlier trial: its run belongs to this trial now
        last = 0
        for attempt in range(search.max_failures + 1):
            refs = task.remote(search, context, number, params, run.run_id)
            try:
                for ref in refs:
                    record = ray.get(ref)
                    if record["epoch"] > last:
                        last = record["epoch"]
                        yield record
                return
            except ray.exceptions.RayError as e:
                if attempt == search.max_failures:
                    raise
                log.warning("trial %d failed (%s); retry %d of %d", number, str(e).strip().splitlines()[0],
                            attempt + 1, search.max_failures)
            finally:
                ray.cancel(refs, force=True)

    return execute


@ray.remote
def train_remote(search: Search, context: dict[str, str], number: int, params: dict[str, Any],
                 run_id: str) -> Iterator[dict[str, float]]:
    """A Ray generator task: :func:`train_values` in a thread of the worker, its epochs yielded as they come."""
    records: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            train_values(search, context, number, params, run_id, records.put)
            records.put(None)
        except BaseException as e:  # noqa: BLE001 - raised again in the task, for the driver to see
            records.put(e)

    threading.Thread(target=work, name=f"trial-{number}", daemon=True).start()
    while (item := records.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def train_values(search: Search, context: dict[str, str], number: int, params: dict[str, Any], run_id: str,
                 emit: Callable[[dict[str, float]], None]) -> None:
    """Train the config of trial ``number``'s sampled ``params`` (a worker of :mod:`benchmark.trial`): every epoch
    logged to the trial's MLflow run ``run_id`` and passed to ``emit``, then the final metrics and the config; the
    test split is never evaluated. ``context``: :meth:`benchmark.runner.Setup.context`."""
    trial = search.trial(params, store_meta(search.dataset.store)["fingerprint"])
    run = open_run(trial, context, {TRIAL_TAG: str(number)}, run_id=run_id)
    result = train_logged(trial, run, Path(context["cache"]), emit)
    if run.finished:
        return
    out_dir = result.out_dir / trial.id
    out_dir.mkdir(exist_ok=True)
    (out_dir / "config.toml").write_text(trial.config.to_toml())
    run.log_final({**tracking.training_metrics(result, search.metric),
                   "best_val_p1": min(h["val_p1"] for h in result.history),
                   "best_val_p2": min(h["val_p2"] for h in result.history)}, [out_dir / "config.toml"])
    run.finish()


# ---- the driver --------------------------------------------------------------------------------------------

def end_runs(client: MlflowClient, experiment_id: str, study: optuna.Study) -> None:
    """Tell the MLflow runs of the study's ended trials (tags ``optuna.study``, ``optuna.trial``) how they ended:
    tag ``search.state``; a pruned trial's run KILLED (its task was killed), a failed one's FAILED (a stale
    trial's worker died with its driver), whatever the run's status was: a worker may end its training just
    before its driver stops the trial, or dies. A complete trial's worker ends its own run."""
    ended = {t.number: t for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        for r in search_all(client, experiment_id, f"tags.`optuna.study` = '{study.study_name}'"):
            t = ended.get(int(r.data.tags.get(TRIAL_TAG, -1)))
            if t is None:
                continue
            if r.data.tags.get("search.state") != t.state.name.lower():
                client.set_tag(r.info.run_id, "search.state", t.state.name.lower())
            status = {"PRUNED": "KILLED", "FAIL": "FAILED"}.get(t.state.name)
            if status is not None and r.info.status != status:
                client.set_terminated(r.info.run_id, status=status)
    except Exception as e:  # noqa: BLE001 - a tracking hiccup must not stop the search
        log.warning("could not update the trials' MLflow runs (%s)", e)


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

    @classmethod
    def of(cls, search: Search, study: optuna.Study, started: list[int], **kwargs: Any) -> SearchSummary:
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        default = default_trial(study)
        return cls(search=search.name, study=search.study, storage=display_url(search.storage),
                   metric=search.metric, epochs=search.epochs, budget=search.trials, counts=census(study),
                   started=list(started), outcomes={t.number: Outcome.of(t) for t in trials},
                   best=Outcome.of(min(complete, key=lambda t: t.value)) if complete else None,
                   default=Outcome.of(default) if default is not None else None, **kwargs)

    def mine(self, state: str) -> int:
        """How many of the trials this driver ran ended in ``state``."""
        return sum(1 for n in self.started if n in self.outcomes and self.outcomes[n].state == state)

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"search {self.search}: {len(self.started)} trials run now ({self.mine('COMPLETE')} complete, "
               f"{self.mine('PRUNED')} pruned, {self.mine('FAIL')} failed); "
               f"wall time {self.wall_seconds / 60:.1f} min",
               f"  study {self.study}: {c['COMPLETE']} complete + {c['PRUNED']} pruned of a budget of "
               f"{self.budget}, {c['FAIL']} failed, {c['RUNNING']} running ({self.storage})"]
        label = f"best val {self.metric[4:].upper()}"
        if self.best is not None:
            params = ", ".join(f"{k}={short(v)}" for k, v in sorted(self.best.params.items()))
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


def pretrain_encoder(search: Search, cache: Path) -> None:
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
    study_storage: str | None = None,
    tracking_uri: str | None = None,
) -> SearchSummary:
    """Run (or resume, or join) a search: validate the file, prepare the store, open the study, train the
    shared context encoder, run trials on Ray until the study's budget is full or the time budget is spent,
    log them to MLflow, export the best config to ``<results>/<name>.best.toml``.

    ``study_storage``: the Optuna storage URL; a search's whole state is its study (no Ray Tune storage)."""
    t_start = time.perf_counter()
    results = Path(results_dir).resolve()
    search = load_search(search_path, results_dir=results, storage=study_storage)
    setup = set_up(search.name, [search.dataset], results, tracking_uri)
    study = open_study(search, open_storage(search), store_meta(search.dataset.store)["fingerprint"])
    before = census(study)
    log.info("study %s in %s: %d complete, %d pruned, %d failed; budget %d", search.study,
             display_url(search.storage), before["COMPLETE"], before["PRUNED"], before["FAIL"], search.trials)
    client, driver = setup.client, uuid.uuid4().hex[:12]
    parent = tracking.start_parent_run(client, setup.experiment_id, "search", search.name, search.file,
                                       setup.commit, {"optuna.study": search.study,
                                                      "optuna.storage": display_url(search.storage),
                                                      "search.driver": driver, "search.metric": search.metric})
    end_runs(client, setup.experiment_id, study)  # those a killed driver left RUNNING, failed as stale now
    pretrain_encoder(search, setup.cache)
    init_ray(address, setup.results)
    res, slots = resources(search.cpu, search.gpu)
    objective = Objective(search, on_ray(search, setup.context(parent), res), driver=driver,
                          deadline=time.time() + search.time_budget_s if search.time_budget_s else math.inf)
    status = "FAILED"
    try:
        objective.optimize(study, concurrency=search.concurrency or slots,
                           callbacks=[lambda study, _trial: end_runs(client, setup.experiment_id, study)])
        status = "FINISHED"
    finally:
        end_runs(client, setup.experiment_id, study)
        summary = SearchSummary.of(search, study, objective.started, wall_seconds=time.perf_counter() - t_start,
                                   tracking_uri=setup.tracking_uri, experiment_id=setup.experiment_id)
        summary.export = export_best(study, search, results / f"{search.name}.best.toml")
        for key, value in (("trials_run", len(summary.started)), ("trials_pruned", summary.mine("PRUNED")),
                           ("trials_failed", summary.mine("FAIL")), ("study_complete", summary.counts["COMPLETE"]),
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
