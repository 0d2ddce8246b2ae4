"""Runs a suite on Ray Tune: stages, resources, storage, failures, resuming, the summary; and the set-up that
every driver (a suite's, a search's) shares: stores, MLflow experiment, a local Ray, per-trial resources.

Stage 1 trains what others depend on or nothing depends on (the shared context encoders and the baselines);
stage 2 the DiffPose variants, which load the cached encoders; stage 3 evaluates the inference-only variants and
axis values (K steps, N hypotheses, the probabilistic baselines) on the weights stages 1 and 2 trained. A trial
whose encoder or weights an earlier invocation trained waits for no stage: it runs in stage 1 (:func:`stages`).
Every training lives once in the results' cache (``trainings/<identity>``, diffpose.train.trained), whichever
trials need it. A trial is identified by its training's identity (the store's content, not its path), its evaluation
and its stage; trials FINISHED in MLflow are skipped, so running the suite again after an interruption runs only
what is missing, and interrupted trainings resume from their last epoch checkpoint.

Multi-node clusters need ``results_dir`` on storage every node sees (e.g. NFS): the trainings live there.
Tune's own state goes to ``storage`` (a path or ``s3://...``).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from benchmark import tracking
from benchmark.suite import DatasetSpec, Suite, Trial, load_suite
from benchmark.trial import run_trial
from diffpose.config import Config
from diffpose.data.store import prepare
from diffpose.train import TRAININGS, is_trained
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
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report_dir: Path | None = None

    @property
    def efficiency(self) -> float:
        """Sum of trial times / (wall time x slots) over the scheduled stages."""
        busy = sum(self.stage_seconds.values())
        return self.trial_seconds / (busy * self.slots) if busy and self.slots else float("nan")

    def lines(self) -> list[str]:
        out = [f"suite {self.suite}: {self.done} trials done, {self.skipped} already finished, "
               f"{len(self.failed)} failed, of {self.trials}; wall time {self.wall_seconds / 60:.1f} min",
               f"  scheduling efficiency {self.efficiency:.2f} (trial time {self.trial_seconds:.0f} s over "
               f"{self.slots} slots x {sum(self.stage_seconds.values()):.0f} s of stages)",
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


def stages(todo: list[Trial], encoders: list[Trial], trained: Callable[[Config], bool]
           ) -> tuple[list[Trial], list[Trial], list[Trial]]:
    """The trials of an invocation's three stages, each in order. 1: the context encoders to train, then every
    trial whose needs are trained (a baseline or a DiffPose without an encoder; a DiffPose whose encoder, a
    trial whose own weights, an earlier invocation trained); 2: the other DiffPose trainings, on the encoders
    of stage 1; 3: the other evaluations (inference-only variants and axis values), of the weights of stages 1
    and 2. ``trained``: whether a config's training is finished in the cache. So a suite run in pieces does
    not hold back, behind the slowest training of a stage, what an earlier piece made ready."""
    def ready(t: Trial) -> bool:
        if trained(t.config):
            return True
        return not t.eval_only and (not t.config.uses_encoder or trained(t.config.encoder_config()))

    waits = {t.id: not ready(t) for t in todo}
    trainings = [t for t in todo if not t.eval_only]
    evaluations = [t for t in todo if t.eval_only]
    first = encoders + [t for t in trainings if not waits[t.id]] + [t for t in evaluations if not waits[t.id]]
    return first, [t for t in trainings if waits[t.id]], [t for t in evaluations if waits[t.id]]


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


def _run_stage(name: str, trials: list[Trial], ctx: dict[str, Any], suite: Suite, res: dict[str, float],
               storage: str, verbose: int, clock: WallClock) -> tuple[list[str], float, float]:
    """One Tuner over ``trials``; returns (failed trial names, sum of trial seconds, wall seconds)."""
    if not trials:
        return [], 0.0, 0.0
    specs = {f"{t.name}#{t.id[:6]}": {"trial": t.to_dict(), "context": ctx} for t in trials}

    def trainable(config: dict[str, Any]) -> None:
        run_trial(specs[config["trial"]])

    tuner = tune.Tuner(
        tune.with_resources(trainable, res),
        param_space={"trial": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{name}-{int(time.time())}", storage_path=storage, verbose=verbose,
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
    return failed, busy, wall


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
    setup = set_up(suite.name, suite.datasets.values(), results_dir, tracking_uri)
    client, experiment_id = setup.client, setup.experiment_id
    trials = suite.trials(suite.fingerprints())
    encoders = suite.encoder_trials(trials)
    stale = tracking.close_stale_suite_runs(client, experiment_id)
    if stale:
        log.info("marked %d suite run(s) of an interrupted invocation as KILLED", stale)
    known = tracking.find_finished(client, experiment_id)
    finished = known.among(t.id for t in trials + encoders)
    parent = tracking.start_parent_run(client, experiment_id, "suite", suite.name, suite.file, setup.commit)
    # the suite as it is now: its report leaves out the runs of trials an edit of the suite has since replaced
    client.log_dict(parent, sorted(t.id for t in trials), SUITE_TRIALS)
    cache = setup.cache
    ctx = setup.context(parent)

    todo_encoders = [e for e in encoders if e.id not in finished and not is_trained(e.config, cache)]
    todo = [t for t in trials if t.id not in finished]
    first, second, third = stages(todo, todo_encoders, lambda cfg: is_trained(cfg, cache))
    skipped = len(trials) - len(todo)
    log.info("suite %s: %d trials (%d already finished), %d context encoders to train; stages of %d, %d and %d "
             "trials", suite.name, len(trials), skipped, len(todo_encoders), len(first), len(second), len(third))

    init_ray(address, setup.results)
    res, slots = resources(suite.cpu, suite.gpu)
    storage = storage or str(setup.results / "ray")
    failed: list[str] = []
    summary = SuiteSummary(suite=suite.name, trials=len(trials), done=0, skipped=skipped, failed=failed,
                           wall_seconds=0.0, trial_seconds=0.0, slots=slots, tracking_uri=setup.tracking_uri,
                           experiment_id=experiment_id, results_dir=setup.results)
    clock = WallClock(setup.tracking_uri, parent, t_start)
    try:
        for stage, items in (("stage1", first), ("stage2", second), ("stage3", third)):
            f, busy, wall = _run_stage(stage, items, ctx, suite, res, storage, verbose, clock)
            failed += f
            summary.trial_seconds += busy
            summary.stage_seconds[stage] = wall
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
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    return summary
