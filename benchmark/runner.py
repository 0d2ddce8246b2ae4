"""Runs a suite on Ray Tune: scheduling, resources, storage, failures, resuming, the summary; and the set-up that
every driver (a suite's, a search's) shares: stores, MLflow experiment, a local Ray, per-trial resources.

One Tuner runs an invocation's trials. Each starts once what it needs is trained (:func:`needs`,
:class:`WhenReady`): a DiffPose training its context encoder (a shared encoder trial, or the baseline that is
the same training), an evaluation of an inference-only variant or axis value (K steps, N hypotheses, the
probabilistic baselines) the training of its weights; the trainings others wait for go first, the evaluations
of weights trained before go last. A need that an
earlier invocation trained is no need; a trial whose need failed is not run, and counted as failed.
Every training lives once in the results' cache (``trainings/<identity>``, diffpose.train.trained), whichever
trials need it. A trial is identified by its training's identity (the store's content, not its path), its evaluation
and its stage; trials FINISHED in MLflow are skipped, so running the suite again after an interruption runs only
what is missing, and interrupted trainings resume from their last epoch checkpoint.

Multi-node clusters need ``results_dir`` on storage every node sees (e.g. NFS): the trainings live there.
Tune's own state goes to ``storage`` (a path or ``s3://...``).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from benchmark import tracking
from benchmark.suite import DatasetSpec, Suite, SuiteError, Trial, load_suite
from benchmark.trial import machine_tags, run_trial
from diffpose.carry import carry_in, carry_out
from diffpose.config import Config
from diffpose.data.store import prepare
from diffpose.train import TRAININGS, is_trained
from reports.invocations import carried_invocations, carry_invocations
from reports.results import SUITE_TRIALS

log = logging.getLogger(__name__)


@dataclass
class SuiteSummary:
    suite: str
    trials: int
    done: int
    skipped: int
    failed: list[str]
    wall_seconds: float
    trial_seconds: float
    slots: int
    tracking_uri: str
    experiment_id: str
    results_dir: Path
    scheduled_seconds: float = 0.0   # the wall time of the Tuner that ran the trials
    report_dir: Path | None = None
    carry: Path | None = None        # the folder the suite's trainings and invocations travel in, if any

    @property
    def efficiency(self) -> float:
        """Sum of trial times / (wall time x slots) while trials were scheduled."""
        busy = self.scheduled_seconds
        return self.trial_seconds / (busy * self.slots) if busy and self.slots else float("nan")

    def lines(self) -> list[str]:
        out = [f"suite {self.suite}: {self.done} trials done, {self.skipped} already finished, "
               f"{len(self.failed)} failed, of {self.trials}; wall time {self.wall_seconds / 60:.1f} min",
               f"  scheduling efficiency {self.efficiency:.2f} (trial time {self.trial_seconds:.0f} s over "
               f"{self.slots} slots x {self.scheduled_seconds:.0f} s)",
               f"  MLflow: {self.tracking_uri} (experiment {self.experiment_id}); results in {self.results_dir}"]
        if self.report_dir is not None:
            out.append(f"  report: {self.report_dir}")
        out += [f"  FAILED: {name}" for name in self.failed]
        return out


def prepare_stores(datasets: Iterable[DatasetSpec]) -> None:
    """Prepare every dataset store that does not exist yet (in the driver, once)."""
    for ds in datasets:
        if not (ds.store / "meta.json").exists():
            assert ds.prepare is not None  # load_suite and load_search checked this
            log.info("preparing the %s store at %s", ds.key, ds.store)
            p = ds.prepare
            prepare(p["dataset"], p["root"], ds.store, detector=p.get("detector"),
                    annotation=p.get("annotation", "univ_annot3"), seed=p.get("seed", 0))


@dataclass
class Setup:
    """What a driver (of a suite or a search) works with: the results folder, its MLflow experiment, the commit."""

    results: Path
    tracking_uri: str
    client: MlflowClient
    experiment_id: str
    commit: str

    @property
    def cache(self) -> Path:
        """The trainings' cache (diffpose.train.trained), shared by every suite and search of the results."""
        return self.results / TRAININGS

    def context(self, parent_run_id: str) -> dict[str, str]:
        """What a trial worker needs to log under ``parent_run_id`` and find the trainings."""
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id,
                "parent_run_id": parent_run_id, "results_dir": str(self.results), "cache": str(self.cache),
                "git_commit": self.commit}


def set_up(name: str, datasets: Iterable[DatasetSpec], results_dir: str | Path,
           tracking_uri: str | None = None) -> Setup:
    """A driver's set-up: the results folder, the missing stores prepared, the MLflow experiment ``name``
    (artifacts under the results for a local store) created here before any worker could race to create it."""
    results = Path(results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    prepare_stores(datasets)
    uri = tracking.tracking_uri(results, tracking_uri)
    client = MlflowClient(uri)
    local = uri.startswith("sqlite:") or uri.startswith("file:")
    experiment_id = tracking.ensure_experiment(client, name, results / "artifacts" if local else None)
    return Setup(results, uri, client, experiment_id, tracking.git_commit())


def resources(cpu: float, gpu: float) -> tuple[dict[str, float], int]:
    """Per-trial resources (GPU fractions only when the cluster has GPUs) and the number of trial slots."""
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    res = {"cpu": cpu}
    slots = int(cpus // cpu)
    if gpus > 0 and gpu > 0:
        res["gpu"] = gpu
        slots = min(slots, int(gpus // gpu))
    log.info("cluster: %.0f CPUs, %.0f GPUs -> %s per trial, %d slots", cpus, gpus, res, slots)
    return res, max(slots, 1)


LOCAL_RAY = "local-ray"  # in the results folder: one record per driver of the local Ray processes it started


def init_ray(address: str | None, results: Path) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray. A local start first stops what
    killed drivers of the same results folder left running (found by the PIDs and start times they recorded),
    then records its own Ray's processes, for a run after it to do the same if it is killed."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    records = results / LOCAL_RAY
    for record in sorted(records.glob("*.json")):
        stop_leftover_ray(record)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    me = psutil.Process()
    started = [{"pid": p.pid, "started": p.create_time()} for p in me.children(recursive=True)]
    records.mkdir(parents=True, exist_ok=True)
    mine = records / f"{me.pid}.json"
    mine.write_text(json.dumps({"driver": {"pid": me.pid, "started": me.create_time()}, "ray": started}))
    atexit.register(mine.unlink, missing_ok=True)  # a driver that exits shuts its Ray down itself


def _alive(entry: dict[str, float]) -> psutil.Process | None:
    """The process ``entry`` recorded, if it still runs (the same PID with the same start time)."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        return proc if abs(proc.create_time() - float(entry["started"])) < 1e-3 and proc.is_running() else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def stop_leftover_ray(record: Path, grace: float = 5.0) -> int:
    """Stop the local Ray processes a dead driver recorded in ``record``; a live driver's are left alone.
    Returns how many were stopped."""
    try:
        state = json.loads(record.read_text())
        driver, processes = state["driver"], state["ray"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if _alive(driver) is not None:
        return 0  # another driver on these results, still running
    left = [p for p in (_alive(e) for e in processes) if p is not None]
    for proc in left:
        proc.terminate()
    _, still = psutil.wait_procs(left, timeout=grace)
    for proc in still:
        proc.kill()
    record.unlink(missing_ok=True)
    if left:
        log.info("stopped %d Ray processes that a killed driver left running (PIDs %s)", len(left),
                 ", ".join(str(p.pid) for p in left))
    return len(left)


def needs(todo: list[Trial], trained: Callable[[Config], bool]) -> tuple[list[Trial], dict[str, set[str]]]:
    """The order an invocation hands its trials out in, and what each waits for: the trial ids of this
    invocation's trainings it needs (a DiffPose training its context encoder's; an evaluation, inference-only
    variants and axis values, the training of its weights). A need an earlier invocation trained (``trained``:
    whether a config's training is finished in the cache) is no need. The order is the given one, except that
    the trainings another trial waits for come first and the trials whose weights the cache has (evaluations of
    trained weights, trainings with only their evaluation left) come last: on a machine that did not run them
    (a study's trainings carried in, :mod:`diffpose.carry`) their MLflow runs are new, and a study run in pieces
    on machines that do not keep their disks would evaluate them again on each; last, they are evaluated once,
    when the trainings are done, and the slots go to the trainings."""
    trains: dict[str, str] = {}                          # training identity -> the trial id that trains it
    for t in todo:
        if not t.eval_only:
            trains.setdefault(t.training, t.id)
    ready = {t.id: trained(t.config) for t in todo}       # its weights are in the cache
    waits: dict[str, set[str]] = {}
    for t in todo:
        need = None if ready[t.id] else _need(t)
        by = trains.get(need.identity(t.fingerprint)) if need is not None else None
        waits[t.id] = {by} if by is not None and by != t.id and not trained(need) else set()
    needed = set().union(*waits.values())
    return sorted(todo, key=lambda t: (t.id not in needed, ready[t.id])), waits


def _need(t: Trial) -> Config | None:
    """The training a trial needs before it can start, if any: an evaluation its weights', a DiffPose training
    its context encoder's."""
    if t.eval_only:
        return t.config
    return t.config.encoder_config() if t.config.uses_encoder else None


class WhenReady(Searcher):
    """Tune's search algorithm for an invocation's trials (:func:`needs`): each is handed out, in order, once
    the trainings it waits for have finished, so a trial waits for its own needs only and the slots stay busy
    with whatever is ready. A trial whose need failed is never run (``unrunnable``). The config it gives a
    Tune trial is ``{"trial": <name>}``."""

    def __init__(self, names: dict[str, str], order: list[str], waits: dict[str, set[str]]):
        super().__init__()
        self.names, self.waiting, self.waits = names, list(order), waits   # names: trial id -> Tune name
        self.given: dict[str, str] = {}                                     # Tune trial id -> trial id
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.unrunnable: list[str] = []

    def suggest(self, trial_id: str) -> dict[str, str] | str | None:
        lost = self.failed | set(self.unrunnable)
        while blocked := [t for t in self.waiting if self.waits[t] & lost]:
            for t in blocked:
                self.waiting.remove(t)
                self.unrunnable.append(t)
                lost.add(t)
        ready = next((t for t in self.waiting if self.waits[t] <= self.done), None)
        if ready is None:
            return Searcher.FINISHED if not self.waiting else None   # None: asked again later
        self.waiting.remove(ready)
        self.given[trial_id] = ready
        return {"trial": self.names[ready]}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True   # the Tuner's param_space names the trials only for Tune's progress table

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        tid = self.given.get(trial_id)
        if tid is not None:
            (self.failed if error else self.done).add(tid)

    def save(self, checkpoint_path: str) -> None:  # Tune saves its search algorithm with the experiment
        state = {"waiting": self.waiting, "given": self.given, "done": sorted(self.done),
                 "failed": sorted(self.failed), "unrunnable": self.unrunnable}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.waiting, self.given, self.unrunnable = state["waiting"], state["given"], state["unrunnable"]
        self.done, self.failed = set(state["done"]), set(state["failed"])


WALL_EVERY_S = 60.0


class WallClock(tune.Callback):
    """Logs ``wall_seconds`` (since the invocation began) on its suite run at the end of a step of Tune's loop,
    once a minute has passed since the last log. A driver that is killed (a session's end, a lost head node)
    runs no ``finally``; the report sums each invocation's last logged wall time, so a study run in pieces
    still has one. The MLflow client is made where it is used: Tune saves its callbacks with the experiment
    state."""

    def __init__(self, tracking_uri: str, run_id: str, started: float, every: float = WALL_EVERY_S):
        self.tracking_uri, self.run_id, self.started, self.every = tracking_uri, run_id, started, every
        self.logged = time.perf_counter()
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def tick(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if now - self.logged < self.every:
            return
        self._client = self._client or MlflowClient(self.tracking_uri)
        self._client.log_metric(self.run_id, "wall_seconds", now - self.started)
        self.logged = now

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.tick()


def _run_trials(todo: list[Trial], trained: Callable[[Config], bool], ctx: dict[str, Any], suite: Suite,
                res: dict[str, float], storage: str, verbose: int, clock: WallClock
                ) -> tuple[list[str], float, float]:
    """One Tuner over ``todo``, each trial started once its needs are trained (:class:`WhenReady`); returns
    (failed trial names, those not run because a need failed included; sum of trial seconds; wall seconds)."""
    if not todo:
        return [], 0.0, 0.0
    order, waits = needs(todo, trained)
    names = {t.id: f"{t.name}#{t.id[:6]}" for t in order}
    specs = {names[t.id]: {"trial": t.to_dict(), "context": ctx} for t in order}
    log.info("%d trials to run, %d of them waiting for a training of this invocation", len(order),
             sum(bool(w) for w in waits.values()))
    searcher = WhenReady(names, [t.id for t in order], waits)

    def trainable(config: dict[str, Any]) -> None:
        run_trial(specs[config["trial"]])

    tuner = tune.Tuner(
        tune.with_resources(trainable, res),
        param_space={"trial": tune.choice(list(specs))},   # a column of the progress table; the searcher picks
        # The limiter admits every trial: Tune keeps as many pending as it allows (1 for a bare custom searcher,
        # which would start one trial at a time), so whatever is ready is queued and starts once it fits.
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=len(order)),
                                    num_samples=len(order), reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{int(time.time())}", storage_path=storage, verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=suite.max_failures), callbacks=[clock],
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    failed, busy = [], 0.0
    for result in grid:
        trial_name = result.config["trial"] if result.config else "?"
        if result.error is not None:
            failed.append(trial_name)
        busy += float((result.metrics or {}).get("time_total_s", 0.0))
    for tid in searcher.unrunnable:
        log.warning("%s was not run: a training it needs failed", names[tid])
        failed.append(f"{names[tid]} (not run: a training it needs failed)")
    return failed, busy, wall


RUNNING = "running"  # in the results folder: one lock file per suite, held by the invocation running it


@contextmanager
def running(results: Path, suite: str) -> Iterator[None]:
    """Hold the lock of ``suite`` on ``results`` while an invocation runs it. A second invocation of the same
    suite on the same results is refused (its suite run would close the first's as killed, and both would run
    the same trials): :class:`SuiteError`, naming the driver that holds it. The lock goes with its driver's
    process, killed or not; a lock file left behind holds nothing. (Drivers on different machines that share
    an MLflow server but not a results folder are not seen.)"""
    folder = results / RUNNING
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{hashlib.sha1(suite.encode()).hexdigest()[:16]}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "a driver"
            raise SuiteError(f"{results}: suite {suite} is already running on these results ({holder}); wait "
                             "for it to end, or stop it, before running it again") from None
        lock.truncate(0)
        lock.write(f"driver PID {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
        lock.flush()
        yield


def run_suite(
    suite_path: str | Path,
    results_dir: str | Path = "results",
    *,
    address: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> SuiteSummary:
    """Run (or resume) a suite: validate it, prepare missing stores, schedule the missing trials on Ray Tune,
    log them to MLflow. The report is built by the caller (``reports``)."""
    t_start = time.perf_counter()
    suite = load_suite(suite_path)
    results = Path(results_dir).resolve()
    if suite.carry is not None and suite.carry.is_dir():  # its files checked before anything is written
        carried_invocations(suite.carry)
        carried = carry_in(suite.carry, results / TRAININGS)  # leaves what another process trains
        log.info("%s from %s", carried.line("carried in"), suite.carry)
    with running(results, suite.name):
        return _invoke(suite, results, address, storage, tracking_uri, verbose, t_start)


def _invoke(suite: Suite, results: Path, address: str | None, storage: str | None, tracking_uri: str | None,
            verbose: int, t_start: float) -> SuiteSummary:
    """:func:`run_suite` once it holds the suite's lock on the results."""
    setup = set_up(suite.name, suite.datasets.values(), results, tracking_uri)
    client, experiment_id = setup.client, setup.experiment_id
    trials = suite.trials(suite.fingerprints())
    encoders = suite.encoder_trials(trials)
    stale = tracking.close_stale_suite_runs(client, experiment_id)
    if stale:
        log.info("marked %d suite run(s) of an interrupted invocation as KILLED", stale)
    replaced = tracking.close_replaced_trial_runs(client, experiment_id, (t.id for t in trials + encoders))
    if replaced:
        log.info("marked %d RUNNING run(s) of trials the suite no longer has as KILLED", replaced)
    known = tracking.find_finished(client, experiment_id)
    finished = known.among(t.id for t in trials + encoders)
    parent = tracking.start_parent_run(client, experiment_id, "suite", suite.name, suite.file, setup.commit,
                                       machine_tags())     # the driver's machine, for the suite's invocations
    # the suite as it is now: its report leaves out the runs of trials an edit of the suite has since replaced
    client.log_dict(parent, sorted(t.id for t in trials), SUITE_TRIALS)
    cache = setup.cache
    ctx = setup.context(parent)

    todo_encoders = [e for e in encoders if e.id not in finished and not is_trained(e.config, cache)]
    todo = [t for t in trials if t.id not in finished]
    skipped = len(trials) - len(todo)
    log.info("suite %s: %d trials (%d already finished), %d context encoders to train", suite.name, len(trials),
             skipped, len(todo_encoders))

    init_ray(address, setup.results)
    res, slots = resources(suite.cpu, suite.gpu)
    storage = storage or str(setup.results / "ray")
    failed: list[str] = []
    summary = SuiteSummary(suite=suite.name, trials=len(trials), done=0, skipped=skipped, failed=failed,
                           wall_seconds=0.0, trial_seconds=0.0, slots=slots, tracking_uri=setup.tracking_uri,
                           experiment_id=experiment_id, results_dir=setup.results, carry=suite.carry)
    clock = WallClock(setup.tracking_uri, parent, t_start)
    try:
        f, busy, wall = _run_trials(todo_encoders + todo, lambda cfg: is_trained(cfg, cache), ctx, suite, res,
                                    storage, verbose, clock)
        failed += f
        summary.trial_seconds, summary.scheduled_seconds = busy, wall
    finally:
        # what ended since the first lookup (this invocation's trials, others' too), left for the next lookup
        known = tracking.find_finished(client, experiment_id, known)
        tracking.write_index(client, parent, known)
        summary.done = len(known.among(t.id for t in todo))
        summary.wall_seconds = time.perf_counter() - t_start
        for key, value in (("trials_done", summary.done), ("trials_failed", len(failed)),
                           ("wall_seconds", summary.wall_seconds), ("scheduling_efficiency", summary.efficiency)):
            if not math.isnan(value):
                client.log_metric(parent, key, float(value))
        if suite.carry is not None:  # after its wall time, which it carries too
            carried = carry_out(suite.trainings(trials), cache, suite.carry)
            log.info("%s to %s", carried.line("carried out"), suite.carry)
            carry_invocations(setup.tracking_uri, suite.name, suite.carry)
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    return summary
