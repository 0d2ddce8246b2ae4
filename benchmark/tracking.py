"""MLflow tracking: one experiment per suite or search, a parent run per invocation, one child run per trial.

A trial's run is found again by its ``trial.id`` tag, so a retried or resumed trial logs into the same run
and a finished trial is never logged twice. Everything goes through ``MlflowClient`` with explicit run ids
(no global active run), which is safe in Ray workers.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from benchmark.suite import Trial
from diffpose.metrics import CALIBRATION_LEVELS
from diffpose.train import FitResult
from reports.results import search_all

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


# Up to this many trial ids are looked up one by one (one indexed query each: 13-80 ms at 6,000-10,000 runs on
# SQLite) rather than by paging every run of the experiment (MLflow loads each run's params, metrics and tags:
# 2-7 ms a run). MLflow's filters have no IN on tags and no OR, so a larger set pages.
BY_ID_UP_TO = 50


def finished_trials(client: MlflowClient, experiment_id: str, trial_ids: Iterable[str] | None = None, *,
                    page_size: int = 1000, by_id_up_to: int = BY_ID_UP_TO) -> dict[str, str]:
    """trial.id -> run id of every FINISHED trial (or encoder) run of the experiment (only those of
    ``trial_ids`` when given): each id by its own query when there are at most ``by_id_up_to``, else page by
    page through every finished run. Both ways read every page MLflow returns, so nothing is missed."""
    wanted = set(trial_ids) if trial_ids is not None else None
    if wanted is not None and len(wanted) <= by_id_up_to and all(_ID.fullmatch(t) for t in wanted):
        out: dict[str, str] = {}
        for tid in sorted(wanted):
            out |= _finished_runs(client, experiment_id, f"tags.`trial.id` = '{tid}' and attributes.status = "
                                  "'FINISHED'", page_size, {tid})
        return out
    return _finished_runs(client, experiment_id, "attributes.status = 'FINISHED'", page_size, wanted)


_ID = re.compile(r"[\w.-]+")   # an id that can stand in a filter string's quotes as it is


def _finished_runs(client: MlflowClient, experiment_id: str, query: str, page_size: int,
                   wanted: set[str] | None) -> dict[str, str]:
    """trial.id -> run id of the trial and encoder runs ``query`` finds (the first of each id MLflow returns)."""
    out: dict[str, str] = {}
    for r in search_all(client, experiment_id, query, page_size):
        tid = r.data.tags.get("trial.id")
        if tid is not None and r.data.tags.get(ROLE) in ("trial", "encoder") and (wanted is None or tid in wanted):
            out.setdefault(tid, r.info.run_id)
    return out


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
            self.run_id = run.info.run_id
            self.finished = run.info.status == "FINISHED"
            self.metrics = dict(run.data.metrics)
            if not self.finished:
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=trial.name,
                                         tags=trial_tags(trial, parent_run_id, tags))
            self.run_id = run.info.run_id
            self.finished = False
            self.metrics = {}
            params = trial_params(trial, extra_params)
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])
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

    def log_final(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        now = _now_ms()
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])
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
