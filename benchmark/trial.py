"""The trial worker (it runs in a Ray worker): a trial's MLflow run, its training with every epoch logged once,
and ``run_trial``, the suite's Tune trainable, which then evaluates on the test split. A search's trials
(:mod:`benchmark.search.driver`) open their run and train through the same two functions.

A trial's training is :func:`diffpose.train.trained` in the results' cache: the one done there before (by another
trial, suite or search), else trained now, a concurrent trial of the same config waiting on its lock; it resumes
from its last epoch checkpoint when a trial is retried, and replays the epochs done before to ``on_epoch``."""

from __future__ import annotations

import csv
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from ray import tune

from benchmark.speed import cpu_name
from benchmark.suite import Trial
from benchmark.tracking import TrialRun, final_metrics, training_metrics
from diffpose.data.store import store_meta
from diffpose.train import FitResult, evaluate, pick_device, trained
from reports.results import TRAINING_TAG, curve_tag

log = logging.getLogger(__name__)


def machine_tags() -> dict[str, str]:
    """This process's machine: CPU model, the cores it may use, memory, torch (a trial's, a suite driver's)."""
    return {"host.cpu": cpu_name(), "host.cores": str(len(os.sched_getaffinity(0))),
            "host.memory_gib": f"{psutil.virtual_memory().total / 2**30:.0f}", "torch.version": torch.__version__}


def device_tags(cfg_device: str) -> dict[str, str]:
    """Where a trial runs: its device, its machine (:func:`machine_tags`) and its Ray node (the host when Ray is
    not running)."""
    dev = pick_device(cfg_device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    tags = {"device": f"{dev.type}:{name}" if dev.type == "cuda" else name, "device.type": dev.type,
            **machine_tags(), "ray.node": socket.gethostname(), "ray.node_ip": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            tags["ray.node"] = ray.get_runtime_context().get_node_id()
            tags["ray.node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - a tag is not worth failing a trial for
        pass
    return tags


def open_run(trial: Trial, context: dict[str, Any], tags: dict[str, str] | None = None, *,
             run_id: str | None = None) -> TrialRun:
    """The trial's MLflow run: ``run_id`` (opened by the trial's driver), else found again by its ``trial.id``,
    else created under the driver's parent run. ``context``: tracking URI, experiment and parent run ids, git
    commit (:meth:`benchmark.runner.Setup.context`). An unfinished run is tagged with the commit, the store's
    content, where it runs now and ``tags``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    meta = store_meta(trial.config.data.store)
    tags = {"git.commit": context["git_commit"], "data.fingerprint": meta["fingerprint"],
            **device_tags(trial.config.train.device), **(tags or {})}
    run = TrialRun(context["tracking_uri"], context["experiment_id"], context["parent_run_id"], trial, tags,
                   extra_params={"trial.detector": meta["detector"]}, run_id=run_id)
    if not run.finished:
        run.set_tags(tags)  # a retry may land on another node or device
    return run


def train_logged(trial: Trial, run: TrialRun, cache: Path, on_epoch: Callable[[dict[str, float]], None] | None = None,
                 *, log_epochs: bool = True) -> FitResult:
    """The trial's training in ``cache``; with ``log_epochs``, each epoch (those done before included) is logged
    to ``run`` once, then passed to ``on_epoch``. The run is tagged with the training (:data:`TRAINING_TAG`),
    and FAILED when the training raises."""
    def epoch(record: dict[str, float], _checkpoint: Path) -> None:
        run.log_epoch(record)
        if on_epoch is not None:
            on_epoch(dict(record))

    try:
        result = trained(trial.config, cache, on_epoch=epoch if log_epochs else None, progress=False)
    except Exception:
        run.finish("FAILED")
        raise
    run.set_tags({TRAINING_TAG: result.out_dir.name})
    return result


def run_trial(spec: dict[str, Any]) -> None:
    """Tune function trainable. ``spec["trial"]``: :meth:`Trial.to_dict`; ``spec["context"]``: tracking URI,
    experiment and parent run ids, results directory, the trainings' cache, git commit.

    An inference-only trial waits for the training it evaluates and logs none of its epochs; every other trial's
    epochs are logged to its run and reported to Tune, then its test evaluation."""
    trial = Trial.from_dict(spec["trial"])
    ctx = spec["context"]
    run = open_run(trial, ctx)
    if run.finished:
        log.info("%s already finished in run %s", trial.name, run.run_id)
        tune.report({"done_before": 1.0, **{k: v for k, v in run.metrics.items() if "." not in k}})
        return
    result = train_logged(trial, run, Path(ctx["cache"]), tune.report, log_epochs=not trial.eval_only)
    try:
        training = training_metrics(result, trial.config.train.metric)
        if trial.stage == "encoder":
            run.log_final(training, [])
            run.finish()
            tune.report({"encoder_done": 1.0})
            return
        out_dir = result.out_dir / trial.id
        out_dir.mkdir(exist_ok=True)
        predictions = out_dir / "predictions.npz"
        test = evaluate(trial.eval_config, result.best_checkpoint, "test", save_predictions=predictions)
    except Exception:
        run.finish("FAILED")
        raise
    metrics = {**final_metrics(test), **training}
    (out_dir / "config.toml").write_text(trial.eval_config.to_toml())
    with open(out_dir / "per_action.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["action", "p1", "p2", "frames"])
        for action, m in test["per_action"].items():
            writer.writerow([action, f"{m['p1']:.3f}", f"{m['p2']:.3f}", m["frames"]])
    run.log_final(metrics, [out_dir / "config.toml", out_dir / "per_action.csv", predictions],
                  checkpoint=result.best_checkpoint)
    # the learning curve as one tag; an evaluation logs no epochs of the training it evaluates: an empty curve
    run.set_tags(curve_tag([] if trial.eval_only else [h["val_p1"] for h in result.history]))
    run.finish()
    tune.report({k: v for k, v in metrics.items() if "." not in k})
