"""``run_trial``: the one Ray-facing entry point. A trial trains, evaluates on the test split and logs
everything to its MLflow run; it resumes from its last checkpoint when Tune retries it."""

from __future__ import annotations

import csv
import logging
import socket
from pathlib import Path
from typing import Any

import torch
from ray import tune

from benchmark.suite import Trial
from benchmark.tracking import TrialRun, final_metrics, training_metrics
from diffpose.data.store import PoseStore
from diffpose.train import evaluate, pick_device, trained

log = logging.getLogger(__name__)


def _device_tags(cfg_device: str) -> dict[str, str]:
    dev = pick_device(cfg_device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    tags = {"device": f"{dev.type}:{name}" if dev.type == "cuda" else name, "device.type": dev.type,
            "ray.node": socket.gethostname(), "ray.node_ip": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            tags["ray.node"] = ray.get_runtime_context().get_node_id()
            tags["ray.node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - a tag is not worth failing a trial for
        pass
    return tags


def run_trial(spec: dict[str, Any]) -> None:
    """Tune function trainable. ``spec["trial"]``: :meth:`Trial.to_dict`; ``spec["context"]``: tracking URI,
    experiment and parent run ids, results directory, the trainings' cache, git commit.

    The trial's training is :func:`diffpose.train.trained` in the cache (done before by another trial, or now:
    an inference-only trial waits for the training it evaluates); every epoch of it is logged to the trial's
    run, then its test evaluation."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    trial = Trial.from_dict(spec["trial"])
    ctx = spec["context"]
    cfg = trial.config
    store = PoseStore.open(cfg.data.store)
    tags = {"git.commit": ctx["git_commit"], "data.fingerprint": store.meta["fingerprint"],
            **_device_tags(cfg.train.device)}
    run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], trial, tags,
                   extra_params={"trial.detector": store.meta["detector"]})
    if run.finished:
        log.info("%s already finished in run %s", trial.name, run.run_id)
        tune.report({"done_before": 1.0, **{k: v for k, v in run.metrics.items() if "." not in k}})
        return
    run.set_tags(tags)  # a retry may land on another node or device

    def on_epoch(record: dict[str, float], _checkpoint: Path) -> None:
        run.log_epoch(record)
        tune.report(dict(record))

    cache = Path(ctx["cache"])
    try:
        result = trained(cfg, cache, on_epoch=None if trial.eval_only else on_epoch, progress=False)
        training = training_metrics(result, cfg.train.metric)
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
    run.log_final(metrics, [out_dir / "config.toml", out_dir / "per_action.csv", predictions,
                            result.best_checkpoint])
    run.finish()
    tune.report({k: v for k, v in metrics.items() if "." not in k})
