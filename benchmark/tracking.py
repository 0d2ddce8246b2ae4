"""MLflow tracking: one experiment per suite or search, a parent run per invocation, one child run per trial.

A trial's run is found again by its ``trial.id`` tag, so a retried or resumed trial logs into the same run
and a finished trial is never logged twice. Everything goes through ``MlflowClient`` with explicit run ids
(no global active run), which is safe in Ray workers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from benchmark.suite import Trial
from diffpose.metrics import CALIBRATION_LEVELS
from diffpose.train import FitResult
from reports.results import CHECKPOINT_TAG, artifact_text, local_path, search_all

log = logging.getLogger(__name__)

ROLE = "diffpose.role"


def tracking_uri(results_dir: str | Path, override: str | None = None) -> str:
    """``override``, else ``MLFLOW_TRACKING_URI``, else a SQLite file under ``results_dir`` (absolute)."""
    uri = override or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_exists(uri: str, name: str) -> bool:
    return MlflowClient(uri).get_experiment_by_name(name) is not None


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created (with artifacts under ``artifact_root`` for a local store) if new."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location)


def start_parent_run(client: MlflowClient, experiment_id: str, role: str, name: str, file: Path, commit: str,
                     tags: dict[str, str] | None = None) -> str:
    """The parent run of one invocation of a suite or search (``role``): tagged ``<role>.name``, ``<role>.file``,
    the commit and ``tags``; its trials' runs are its children."""
    run = client.create_run(experiment_id, run_name=f"{name} {role}", tags={
        ROLE: role, f"{role}.name": name, f"{role}.file": str(file), "git.commit": commit, **(tags or {})})
    return run.info.run_id


def close_stale_suite_runs(client: MlflowClient, experiment_id: str) -> int:
    """Mark suite runs left RUNNING by a killed driver as KILLED; returns how many."""
    query = f"tags.`{ROLE}` = 'suite' and attributes.status = 'RUNNING'"
    runs = list(search_all(client, experiment_id, query))
    for r in runs:
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(runs)


def close_replaced_trial_runs(client: MlflowClient, experiment_id: str, trial_ids: Iterable[str]) -> int:
    """Mark the RUNNING runs of trials the suite no longer has (a killed driver's, before an edit of the suite
    replaced their trials) as KILLED; returns how many. A trial the suite still has resumes in its run."""
    keep = set(trial_ids)
    runs = [r for r in search_all(client, experiment_id, "attributes.status = 'RUNNING'")
            if r.data.tags.get(ROLE) in ("trial", "encoder") and r.data.tags.get("trial.id") not in keep]
    for r in runs:
        client.set_terminated(r.info.run_id, status="KILLED")
    return len(runs)


# ---- which trials have finished ---------------------------------------------------------------------------
# Paging through every finished run costs 2-7 ms a run (MLflow loads each run's params, metrics and tags: 40 s
# at 10,000 runs), and MLflow's filters have no IN on tags. So each suite invocation leaves on its parent run an
# index of every finished trial run it knows of: the artifact INDEX_FILE, and the time the lookup behind it
# began as the metric INDEX_TIME (logged last: an index without it is never read). A lookup reads the newest
# index and pages only the runs that ended since its time, less INDEX_SLACK_MS (the clocks of the machines that
# end runs, and a run ended a moment before the index's lookup but stored after it).
INDEX_FILE = "finished_trials.json"
INDEX_TIME = "finished_trials.looked_up_at"
INDEX_SLACK_MS = 15 * 60 * 1000


@dataclass
class Finished:
    """trial.id -> run id of every FINISHED trial (or encoder) run of an experiment, as of ``looked_up_at`` (ms
    since the epoch, the driver's clock, before the lookup's first query)."""

    runs: dict[str, str]
    looked_up_at: int

    def among(self, trial_ids: Iterable[str]) -> dict[str, str]:
        return {t: self.runs[t] for t in trial_ids if t in self.runs}


def find_finished(client: MlflowClient, experiment_id: str, since: Finished | None = None, *,
                  page_size: int = 1000) -> Finished:
    """Every finished trial run of the experiment: ``since`` (an earlier lookup of this process) or else the
    newest index an invocation left, and the runs that ended after it; every run paged through where there is
    neither, or where a run of the index has been deleted since (its trial may have been trained again)."""
    now = _now_ms()
    base = since if since is not None else _newest_index(client, experiment_id)
    if base is not None and base.runs:
        gone = {r.info.run_id for r in search_all(client, experiment_id, deleted=True, page_size=page_size)}
        if gone & set(base.runs.values()):
            log.info("a run the index of finished trials names was deleted since: paging every finished run")
            base = None
    query = "attributes.status = 'FINISHED'"
    runs: dict[str, str] = {}
    if base is not None:
        query += f" and attributes.end_time > {base.looked_up_at - INDEX_SLACK_MS}"
        runs = dict(base.runs)
    for r in search_all(client, experiment_id, query, page_size):
        tid = r.data.tags.get("trial.id")
        if tid is not None and r.data.tags.get(ROLE) in ("trial", "encoder"):
            runs.setdefault(tid, r.info.run_id)
    return Finished(runs, now)


def write_index(client: MlflowClient, parent_run_id: str, finished: Finished) -> None:
    """Leave ``finished`` on an invocation's parent run for the next lookup (:data:`INDEX_FILE`, then
    :data:`INDEX_TIME`)."""
    client.log_dict(parent_run_id, finished.runs, INDEX_FILE)
    client.log_metric(parent_run_id, INDEX_TIME, float(finished.looked_up_at))


def _newest_index(client: MlflowClient, experiment_id: str) -> Finished | None:
    """The index with the newest lookup time among the experiment's suite runs; None where there is none or it
    cannot be read (then every run is paged through, as without an index)."""
    newest = client.search_runs([experiment_id], f"tags.`{ROLE}` = 'suite' and metrics.`{INDEX_TIME}` > 0",
                                order_by=[f"metrics.`{INDEX_TIME}` DESC"], max_results=1)
    if not newest:
        return None
    run = newest[0]
    try:
        text = artifact_text(client, run, INDEX_FILE)
        if text is None:
            raise FileNotFoundError(f"no {INDEX_FILE}")
        runs = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any store or format error: the lookup pages instead
        log.warning("the index of finished trials of run %s cannot be read (%s): paging every finished run",
                    run.info.run_id, e)
        return None
    if not (isinstance(runs, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in runs.items())):
        log.warning("the index of finished trials of run %s is not a JSON object of trial id -> run id: "
                    "paging every finished run", run.info.run_id)
        return None
    return Finished(runs, int(run.data.metrics[INDEX_TIME]))


def trial_tags(trial: Trial, parent_run_id: str, tags: dict[str, str]) -> dict[str, str]:
    """The tags a trial's run is created with: its role, its ``trial.id``, its parent run and ``tags``."""
    return {ROLE: "trial" if trial.stage == "trial" else "encoder", "trial.id": trial.id,
            "mlflow.parentRunId": parent_run_id, **tags}


def trial_params(trial: Trial, extra: dict[str, Any] | None = None) -> list[Param]:
    """The params of a trial's run: the flattened config, the trial's place in the suite and ``extra``."""
    return [Param(k, str(v)) for k, v in {**trial.params(), **(extra or {})}.items()]


def epoch_metrics(record: dict[str, float], timestamp: int) -> list[Metric]:
    """One epoch's record (``diffpose.train.fit``'s ``on_epoch``) as metrics at step = epoch."""
    # "train_seconds" is also a final metric (the whole training); an epoch's own is named apart.
    names = {"train_seconds": "epoch_train_seconds"}
    epoch = int(record["epoch"])
    return [Metric(names.get(k, k), float(v), timestamp, epoch) for k, v in record.items() if k != "epoch"]


class TrialRun:
    """The MLflow run of one trial: found by its ``trial.id`` tag or created under the suite's parent run."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, trial: Trial, tags: dict[str, str],
                 extra_params: dict[str, Any] | None = None, *, run_id: str | None = None):
        self.client = MlflowClient(uri)
        if run_id is not None:  # the run its driver opened for this trial
            found = [self.client.get_run(run_id)]
        else:
            found = self.client.search_runs([experiment_id], filter_string=f"tags.`trial.id` = '{trial.id}'",
                                            max_results=10)
        if found:
            run = sorted(found, key=lambda r: r.info.start_time)[0]
            self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
            self.finished = run.info.status == "FINISHED"
            self.metrics = dict(run.data.metrics)
            if not self.finished:
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            # Its params first, the tags that make it the trial's run last: a driver killed in between leaves a
            # run that no lookup or report takes for a trial, not a trial's run without its config.
            run = self.client.create_run(experiment_id, run_name=trial.name,
                                         tags={"mlflow.parentRunId": parent_run_id})
            self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
            self.finished = False
            self.metrics = {}
            params = trial_params(trial, extra_params)
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.set_tags(trial_tags(trial, parent_run_id, tags))
        self.logged_epochs = self._logged_epochs()

    def _logged_epochs(self) -> int:
        history = self.client.get_metric_history(self.run_id, "val_p1")
        return max((m.step for m in history), default=0)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_epoch(self, record: dict[str, float]) -> None:
        """Per-epoch metrics at step = epoch; epochs logged by an earlier attempt are not logged again."""
        epoch = int(record["epoch"])
        if epoch <= self.logged_epochs:
            return
        self.client.log_batch(self.run_id, metrics=epoch_metrics(record, _now_ms()))
        self.logged_epochs = epoch

    def log_final(self, metrics: dict[str, float], artifacts: list[Path], checkpoint: Path | None = None) -> None:
        """The final metrics and artifacts; the trained weights (``checkpoint``, in the trainings' cache) by
        reference where the run's artifacts are local files (the cache and the artifacts share the results'
        storage: a copy would only double it), else uploaded as an artifact."""
        now = _now_ms()
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])
        if checkpoint is not None and local_path(self.artifact_uri) is not None:
            self.set_tags({CHECKPOINT_TAG: str(Path(checkpoint).resolve())})
        elif checkpoint is not None:
            artifacts = [*artifacts, checkpoint]
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.metrics = metrics

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# The evaluation's numbers a trial logs as test_<name> (with several hypotheses, their reliability too; the
# calibration curve as test_calibration.q000 ... test_calibration.q100).
TEST_METRICS = ("p1", "p2", "p1_frames", "p2_frames", "pck", "auc", "mpjpe", "j_best", "p_best", "spread_error_corr",
                "mpjve", "calibration_error", "energy_score", "coverage_50", "coverage_90", "sharpness_90",
                "mean_hypothesis_p1", "median_hypothesis_p1", "oracle_best_p1", "oracle_worst_p1")


def training_metrics(result: FitResult, metric: str) -> dict[str, float]:
    """What a trial's training logs: its cost, its epochs, whether it converged (1/0, by
    ``diffpose.convergence``) and its selection metric's best validation value under that metric's name."""
    return {"train_seconds": result.seconds, "best_epoch": float(result.best_epoch),
            "epochs_trained": float(result.epochs), "converged": float(result.converged),
            f"best_{metric}": result.best_metric}


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The flat test metrics of ``diffpose.train.evaluate``'s result, named as the reports expect."""
    out = {f"test_{k}": float(v) for k, v in result.items() if k in TEST_METRICS}
    for level, value in zip(CALIBRATION_LEVELS, result.get("calibration", []), strict=False):
        out[f"test_calibration.q{round(100 * level):03d}"] = value
    for action, m in result.get("per_action", {}).items():
        out[f"test_p1.{action}"] = m["p1"]
        out[f"test_p2.{action}"] = m["p2"]
        if "mpjve" in m:
            out[f"test_mpjve.{action}"] = m["mpjve"]
    out["test_poses_per_second"] = float(result["poses_per_second"])
    out["params"] = float(result["params"])
    out["flops_per_pose"] = float(result["flops_per_pose"])
    return out
