"""`make bench-scale`: the report, the finished-trial lookup and suite expansion at a lab's scale, as JSON.

A synthetic MLflow store (SQLite under ``--results``) in the project's own run schema is built once and kept:
a suite file (:data:`SUITE`, 16 trials per seed: DiffPose and its ablations, K and N axes, the baselines, the
probabilistic baselines and the mean-pose reference) is expanded by :func:`benchmark.suite.load_suite` as a real
suite is, and every trial is logged as :mod:`benchmark.trial` logs it: the tags, params and per-epoch metrics of
:mod:`benchmark.tracking`, the final metrics of :func:`benchmark.tracking.final_metrics` and
:func:`~benchmark.tracking.training_metrics` on a plausible evaluation, and a ``predictions.npz`` for every
multi-hypothesis run (the one artifact the report reads; ``--poses`` poses each, the real stand-in's test
split has 14,832). Numbers are drawn from a seeded generator per trial, never trained. Two experiments:
``scale`` (``--trials`` runs, default 10,000) and ``scale_figures`` (``--figure-seeds`` seeds, default 100).
A build that is interrupted is resumed: the trials already FINISHED are found and kept.

Measured, each in its own process where memory is measured (peak RSS by ``os.wait4``):

- ``report``: ``diffpose-bench report`` of each experiment (tables, figures, Parquet), wall time and peak RSS;
- ``lookup``: the finished trials among every trial of the ``scale`` suite, as the runner looks them up before
  scheduling (:func:`benchmark.tracking.find_finished`, from the index the build's invocation left);
- ``expansion``: :func:`benchmark.suite.load_suite` of a ``--expand``-trial suite (default 2,000) and its trial
  ids with the encoders, as the runner expands a suite;
- ``per_trial_overhead``: a suite of 12 one-epoch trials on ``--store`` run by the runner on a local Ray (start
  it in a loopback-only network namespace): Tune's time per trial less the training's own, and the suite's wall
  time per trial;
- the figures of ``scale_figures`` stay in ``<results>/report/scale_figures/figures`` for looking at.

    python -m benchmark.scale --results results/scale --out results/scale/bench_scale.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from benchmark import tracking
from benchmark.suite import Suite, Trial, load_suite
from diffpose.metrics import CALIBRATION_LEVELS
from diffpose.train import FitResult
from reports.results import curve_tag

log = logging.getLogger(__name__)

SUITE = """# Synthetic (benchmark/scale.py): the scale benchmark's suite. Its runs are generated, never trained.
[suite]
name = "{name}"
description = "the scale benchmark's synthetic suite"
datasets = ["mocap17"]
variants = ["full", "no_gmm", "no_context", "no_heatmap_init", "refiner", "graformer", "semgcn",
            "simple_baseline", "mean_pose", "mc_dropout", "gaussian_residual"]
seeds = [{seeds}]

[axes]
steps = [1, 2, 10]
hypotheses = [5, 10]

[datasets.mocap17]
store = "{store}"

[base]
train.epochs = 30

[variant.mc_dropout]
sample.hypotheses = 10

[variant.gaussian_residual]
sample.hypotheses = 10
"""
TRIALS_PER_SEED = 16
FINGERPRINT = "5ca1e" * 12 + "0000"    # the synthetic store's content fingerprint
ACTIONS = ("Boxing", "Everyday", "Jumping", "Running", "Swordplay", "Walking")
OFFSETS = np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 1.0])               # mm; sum 0: per-action means average to P1
# Test P1 (mm) per variant, around which seeds scatter; and the hypotheses' calibration exponent (q -> q^g).
P1 = {"full": 45.0, "no_gmm": 47.0, "no_context": 49.0, "no_heatmap_init": 46.0, "refiner": 44.0,
      "graformer": 50.0, "semgcn": 53.0, "simple_baseline": 55.0, "mean_pose": 180.0, "mc_dropout": 51.0,
      "gaussian_residual": 50.5, "steps=1": 52.0, "steps=2": 48.0, "steps=10": 44.5, "hypotheses=5": 44.2,
      "hypotheses=10": 43.8}
CALIBRATION = {"mc_dropout": 1.8, "gaussian_residual": 1.3}
REPORT_LIMIT_S = 60.0
REPORT_LIMIT_MIB = 2048.0
LOOKUP_LIMIT_S = 2.0
EXPANSION_LIMIT_S = 1.0


def write_suite(path: Path, name: str, seeds: int, store: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SUITE.format(name=name, seeds=", ".join(str(s) for s in range(seeds)), store=store))
    return path


def suite_trials(suite: Suite, n: int | None = None) -> list[Trial]:
    """The suite's trials with their encoders, seed by seed (the first ``n``), as the runner expands them."""
    trials = suite.trials({key: FINGERPRINT for key in suite.datasets})
    every = sorted(suite.encoder_trials(trials) + trials, key=lambda t: t.seed)
    return every[:n] if n is not None else every


# ---- a trial's synthetic numbers ---------------------------------------------------------------------------

def _rng(key: str) -> np.random.Generator:
    """A generator seeded by ``key`` alone (the same numbers in every process, unlike ``hash``)."""
    return np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))


def synthetic_fit(trial: Trial) -> FitResult:
    """The training ``trial`` needs (shared by every trial of one training): a validation curve that falls
    towards the variant's P1 and stops at convergence (by epoch 20-30; 1 in 10 stops short at the last epoch)."""
    rng = _rng(trial.training.rsplit("-", 1)[-1])
    epochs = trial.config.train.epochs
    if trial.config.model.lifter == "mean_pose":
        stop, converged = 1, True
    elif rng.random() < 0.1:
        stop, converged = epochs, False
    else:
        stop, converged = int(rng.integers(20, epochs + 1)), True
    base = P1.get(trial.variant, 50.0) + rng.normal(0.0, 1.0)
    e = np.arange(1, stop + 1)
    val = base + 1.0 + 60.0 * np.exp(-(e - 1) / (3.0 + 3.0 * rng.random())) + rng.normal(0.0, 0.4, stop)
    history = [{"epoch": int(k), "train_loss": float(0.1 * v / base), "lr": 1e-3 * 0.96 ** k, "val_p1": float(v),
                "val_p2": float(0.7 * v), "train_seconds": 20.0, "samples_per_second": 5000.0,
                "epoch_seconds": 24.0} for k, v in zip(e, val, strict=True)]
    best = int(np.argmin(val))
    return FitResult(out_dir=Path("."), best_checkpoint=Path("best.pt"), best_epoch=best + 1,
                     best_metric=float(val[best]), history=history, seconds=24.0 * stop, converged=converged)


def synthetic_result(trial: Trial) -> dict[str, Any]:
    """What :func:`diffpose.train.evaluate` would return for ``trial`` (the keys final_metrics reads)."""
    rng = _rng(trial.id)
    cfg = trial.eval_config
    p1 = P1.get(trial.variant, 50.0) + rng.normal(0.0, 1.0)
    diffpose = cfg.model.lifter == "diffpose"
    n = cfg.sample.hypotheses
    calls = cfg.diffusion.steps * n if diffpose else n
    out: dict[str, Any] = {
        "p1": p1, "p2": 0.7 * p1, "p1_frames": p1 + 0.4, "p2_frames": 0.7 * p1 + 0.3,
        "per_action": {a: {"p1": p1 + o, "p2": 0.7 * (p1 + o), "frames": 600} for a, o in zip(ACTIONS, OFFSETS,
                                                                                           strict=True)},
        "poses_per_second": 40000.0 / (1 + calls) * (1 + 0.05 * rng.random()),
        "params": 1.68e6 if diffpose else 0.65e6, "flops_per_pose": 6.5e6 + calls * 13e6}
    if n > 1:
        g = CALIBRATION.get(trial.variant, 1.0) * (1 + 0.05 * rng.normal())
        curve = [q ** g for q in CALIBRATION_LEVELS]
        out |= {"calibration": curve, "calibration_error": float(np.mean(np.abs(np.subtract(curve,
                                                                                          CALIBRATION_LEVELS)))),
                "j_best": p1 - 6.0, "p_best": 0.7 * p1 - 4.0, "spread_error_corr": 0.4 + 0.05 * rng.normal(),
                "energy_score": 0.6 * p1, "coverage_50": 0.5 ** g, "coverage_90": 0.9 ** g, "sharpness_90": 30.0,
                "mean_hypothesis_p1": p1 + 2.0, "median_hypothesis_p1": p1 + 1.5, "oracle_best_p1": p1 - 6.0,
                "oracle_worst_p1": p1 + 15.0}
    return out


def synthetic_predictions(trial: Trial, path: Path, poses: int) -> Path:
    """A ``predictions.npz`` as evaluation writes one (metres, float32): per-joint error grows with the
    hypotheses' per-joint spread; an overconfident method's errors outgrow its spread."""
    rng = _rng(trial.id[::-1])
    target = rng.normal(0.0, 0.25, (poses, 17, 3)).astype(np.float32)
    scale = 0.01 * (1.0 + 0.3 * rng.random())
    spread = (scale * rng.lognormal(0.0, 0.5, (poses, 17))).astype(np.float32)
    k = CALIBRATION.get(trial.variant, 1.0)
    pose = target + (k * rng.normal(0.0, 1.0, (poses, 17, 3)) * spread[..., None]).astype(np.float32)
    pose[:, 0] = target[:, 0]
    np.savez_compressed(path, pose=pose, target=target, spread=spread,
                        action=np.array(ACTIONS)[np.arange(poses) % len(ACTIONS)],
                        subject=np.array(["cmu02"] * poses))
    return path


# ---- building the store ------------------------------------------------------------------------------------

def log_trial(client: MlflowClient, experiment_id: str, parent: str, trial: Trial, scratch: Path,
              poses: int) -> str:
    """One trial's run as the trial worker leaves it, in four calls: created with its tags, one batch of its
    params, epochs and final metrics, its predictions (multi-hypothesis runs), terminated FINISHED."""
    tags = {"git.commit": "0" * 40, "data.fingerprint": FINGERPRINT, "device": "cpu", "device.type": "cpu",
            "ray.node": "synthetic", "ray.node_ip": "127.0.0.1"}
    fit = synthetic_fit(trial)
    if trial.stage != "encoder":  # as benchmark.trial.run_trial tags it at its end
        tags |= curve_tag([] if trial.eval_only else [h["val_p1"] for h in fit.history])
    run = client.create_run(experiment_id, run_name=trial.name, tags=tracking.trial_tags(trial, parent, tags))
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [] if trial.eval_only else [m for r in fit.history for m in tracking.epoch_metrics(r, now)]
    final = tracking.training_metrics(fit, trial.config.train.metric)
    if trial.stage != "encoder":
        final |= tracking.final_metrics(synthetic_result(trial))
    metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
    params = tracking.trial_params(trial, {"trial.detector": "synth"})
    while params or metrics:  # MLflow's limits: 100 params and 1000 entities a batch
        batch, params = params[:100], params[100:]
        room = 1000 - len(batch)
        client.log_batch(run_id, params=batch, metrics=metrics[:room])
        metrics = metrics[room:]
    if trial.stage != "encoder" and trial.eval_config.sample.hypotheses > 1:
        client.log_artifact(run_id, str(synthetic_predictions(trial, scratch / "predictions.npz", poses)))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def build_experiment(uri: str, results: Path, suite: Suite, n: int | None, poses: int) -> dict[str, Any]:
    """The suite's first ``n`` trials as FINISHED runs of its experiment; those already there are kept, runs an
    interrupted build left unfinished are deleted first."""
    client = MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(client, suite.name, results / "artifacts")
    for run in client.search_runs([experiment_id], "attributes.status != 'FINISHED'", max_results=1000):
        client.delete_run(run.info.run_id)
    trials = suite_trials(suite, n)
    t0 = time.perf_counter()
    # as an invocation of the runner: look up, log what is missing, leave the index of finished trials
    known = tracking.find_finished(client, experiment_id)
    todo = [t for t in trials if t.id not in known.runs]
    parent = tracking.start_parent_run(client, experiment_id, "suite", suite.name, suite.file, "0" * 40)
    with tempfile.TemporaryDirectory(prefix="diffpose-scale-") as scratch:
        for i, trial in enumerate(todo):
            log_trial(client, experiment_id, parent, trial, Path(scratch), poses)
            if (i + 1) % 500 == 0:
                rate = (i + 1) / (time.perf_counter() - t0)
                log.info("%s: %d of %d runs logged (%.0f runs/s)", suite.name, i + 1, len(todo), rate)
    tracking.write_index(client, parent, tracking.find_finished(client, experiment_id, known))
    client.set_terminated(parent, "FINISHED")
    return {"experiment": suite.name, "experiment_id": experiment_id, "trials": len(trials),
            "logged_now": len(todo), "build_seconds": time.perf_counter() - t0}


# ---- measuring ---------------------------------------------------------------------------------------------

def measured(cmd: list[str], stderr: Path) -> dict[str, Any]:
    """Run ``cmd`` to its end, its stderr (logs, with times) into ``stderr``: wall seconds, peak RSS (MiB, by
    ``os.wait4``), exit status and its stdout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, stderr.open("wb") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        stdout = out.read().decode()
    if child.returncode != 0:
        log.error("%s exited %d (its stderr: %s)", " ".join(cmd), child.returncode, stderr)
    return {"command": " ".join(cmd), "returncode": child.returncode, "wall_seconds": wall,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "stdout": stdout}


def lookup(uri: str, suite_file: Path, n: int) -> dict[str, Any]:
    """The runner's lookup of the finished trials of the suite's first ``n`` trials (run in its own process)."""
    suite = load_suite(suite_file, check_data=False)
    ids = [t.id for t in suite_trials(suite, n)]
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(suite.name).experiment_id
    t0 = time.perf_counter()
    found = tracking.find_finished(client, experiment_id).among(ids)
    return {"seconds": time.perf_counter() - t0, "trials": len(ids), "found": len(found)}


def expansion(suite_file: Path) -> dict[str, Any]:
    """A suite file read, validated and expanded to its trials and encoders, with their ids, as the runner
    does before it looks anything up (run in a fresh process: nothing is cached yet)."""
    t = [time.perf_counter()]
    suite = load_suite(suite_file, check_data=False)
    t.append(time.perf_counter())
    trials = suite.trials({key: FINGERPRINT for key in suite.datasets})
    every = trials + suite.encoder_trials(trials)
    t.append(time.perf_counter())
    ids = {trial.id for trial in every}
    t.append(time.perf_counter())
    return {"seconds": t[-1] - t[0], "trials": len(every), "unique_ids": len(ids), "load_seconds": t[1] - t[0],
            "trials_seconds": t[2] - t[1], "ids_seconds": t[3] - t[2]}


OVERHEAD_SUITE = """# Synthetic (benchmark/scale.py): per-trial overhead. Twelve one-epoch trials on a sparse subset.
[suite]
name = "overhead"
description = "the scale benchmark's per-trial overhead: trials that do almost nothing"
datasets = ["mocap17"]
variants = ["mean_pose", "simple_baseline"]
seeds = [0, 1, 2, 3, 4, 5]
max_failures = 0

[resources]
cpu = 1
gpu = 0

[datasets.mocap17]
store = "{store}"

[base]
data.train_stride = 64
data.eval_stride = 64
train.epochs = 1
"""


def overhead(results: Path, store: Path) -> dict[str, Any]:
    """Per-trial fixed cost: :data:`OVERHEAD_SUITE` run by the runner on a local Ray in a scratch results folder
    (under ``results``, removed after): Tune's time per trial less its training's own (epochs with their
    validation), and the suite's wall time per trial (worker start-up and Tune's scheduling included)."""
    from benchmark.runner import run_suite

    with tempfile.TemporaryDirectory(prefix="overhead-", dir=results) as scratch:
        suite_file = Path(scratch) / "overhead.toml"
        suite_file.write_text(OVERHEAD_SUITE.format(store=store.resolve()))
        summary = run_suite(suite_file, Path(scratch) / "results", verbose=0)
        client = MlflowClient(summary.tracking_uri)
        runs = client.search_runs([summary.experiment_id], f"tags.`{tracking.ROLE}` = 'trial'", max_results=100)
        train = sum(r.data.metrics["train_seconds"] for r in runs)
        import ray

        ray.shutdown()
    n = len(runs)
    return {"trials": n, "done": summary.done, "slots": summary.slots, "wall_seconds": summary.wall_seconds,
            "trial_seconds": summary.trial_seconds, "train_seconds": train,
            "overhead_per_trial_seconds": (summary.trial_seconds - train) / max(n, 1),
            "wall_per_trial_seconds": summary.wall_seconds / max(n, 1), "scheduled_seconds": summary.scheduled_seconds,
            "scheduling_efficiency": summary.efficiency}


def _child(results: Path, what: str, *args: str) -> dict[str, Any]:
    """Run measurement ``what`` of this module in a fresh interpreter; its JSON result and the process's cost."""
    run = measured([sys.executable, "-m", "benchmark.scale", "--results", str(results), "--child", what, *args],
                   results / f"{what}.log")
    if run["returncode"] != 0:
        raise RuntimeError(f"{run['command']} failed (exit {run['returncode']})")
    return json.loads(run["stdout"].strip().splitlines()[-1]) | {
        "process_wall_seconds": run["wall_seconds"], "peak_rss_mib": run["peak_rss_mib"]}


def _check(name: str, value: float, limit: float, unit: str, **detail: Any) -> dict[str, Any]:
    ok = value < limit
    log.info("%s: %.2f %s (limit %.0f %s) %s", name, value, unit, limit, unit, "pass" if ok else "FAIL")
    return {"name": name, "value": round(value, 3), "unit": unit, "limit": limit, "pass": ok, **detail}


def report(uri: str, results: Path, suite_file: Path, runs: int) -> list[dict[str, Any]]:
    """``diffpose-bench report`` of the suite's experiment in its own process: wall time and peak RSS."""
    run = measured([sys.executable, "-m", "benchmark", "report", "--suite", str(suite_file), "--results",
                    str(results), "--tracking-uri", uri], results / f"{suite_file.stem}.report.log")
    if run["returncode"] != 0:
        raise RuntimeError(f"{run['command']} failed (exit {run['returncode']})")
    what = f"report of {runs:,} runs ({suite_file.stem})"
    return [_check(f"{what}: wall", run["wall_seconds"], REPORT_LIMIT_S, "s", command=run["command"],
                   log=str(results / f"{suite_file.stem}.report.log")),
            _check(f"{what}: peak RSS", run["peak_rss_mib"], REPORT_LIMIT_MIB, "MiB")]


def machine() -> dict[str, Any]:
    """Where it was measured: the load average says whether others' work shared the cores."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "mlflow": version("mlflow"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmark.scale", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results/scale"),
                   help="where the synthetic store, its suite files and the reports live (kept between runs)")
    p.add_argument("--out", type=Path, default=Path("bench_scale.json"))
    p.add_argument("--trials", type=int, default=10_000, help="runs of the 'scale' experiment")
    p.add_argument("--figure-seeds", type=int, default=100, help="seeds of the 'scale_figures' experiment")
    p.add_argument("--expand", type=int, default=2_000, help="trials of the suite whose expansion is timed")
    p.add_argument("--poses", type=int, default=2_000, help="test poses in each predictions.npz")
    p.add_argument("--store", type=Path, default=Path("stores/mocap17"),
                   help="the prepared mocap17 store the per-trial overhead suite trains on")
    p.add_argument("--child", choices=("lookup", "expansion", "overhead"), help=argparse.SUPPRESS)
    p.add_argument("--suite", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = args.results.resolve()
    uri = f"sqlite:///{results / 'mlflow.db'}"
    if args.child == "lookup":
        print(json.dumps(lookup(uri, args.suite, args.trials)))
        return 0
    if args.child == "expansion":
        print(json.dumps(expansion(args.suite)))
        return 0
    if args.child == "overhead":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(overhead(results, args.store)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    started = machine()
    store = results / "store"   # never read: the runs are synthetic
    big = write_suite(results / "scale.toml", "scale", math.ceil(args.trials / TRIALS_PER_SEED), store)
    small = write_suite(results / "scale_figures.toml", "scale_figures", args.figure_seeds, store)
    wide = write_suite(results / "scale_expand.toml", "scale_expand", math.ceil(args.expand / TRIALS_PER_SEED),
                       store)
    builds = [build_experiment(uri, results, load_suite(big, check_data=False), args.trials, args.poses),
              build_experiment(uri, results, load_suite(small, check_data=False), None, args.poses)]
    for b in builds:
        log.info("%s: %d runs (%d logged now, %.0f s)", b["experiment"], b["trials"], b["logged_now"],
                 b["build_seconds"])
    found = _child(results, "lookup", "--suite", str(big), "--trials", str(args.trials))
    checks = [_check(f"finished-trial lookup of a {found['trials']:,}-trial suite", found["seconds"],
                     LOOKUP_LIMIT_S, "s", found=found["found"], trials=found["trials"])]
    if found["found"] != found["trials"]:
        checks[-1]["pass"] = False
        log.error("lookup found %d of %d finished trials", found["found"], found["trials"])
    grown = _child(results, "expansion", "--suite", str(wide))
    checks.append(_check(f"expansion of a {grown['trials']:,}-trial suite", grown["seconds"], EXPANSION_LIMIT_S,
                         "s", **{k: round(v, 3) if isinstance(v, float) else v for k, v in grown.items()
                                 if k != "seconds"}))
    checks += report(uri, results, small, builds[1]["trials"]) + report(uri, results, big, builds[0]["trials"])
    cost = _child(results, "overhead", "--store", str(args.store))
    log.info("per-trial overhead: %.2f s over its training (Tune's time); %.2f s of the suite's wall per trial",
             cost["overhead_per_trial_seconds"], cost["wall_per_trial_seconds"])
    figures = results / "report" / "scale_figures" / "figures"
    out = {"machine": started, "load_average_at_end": os.getloadavg(), "builds": builds, "checks": checks,
           "per_trial_overhead": cost,
           "passed": all(c["pass"] for c in checks), "figures": sorted(str(p) for p in figures.glob("*.png")),
           "tracking_uri": uri}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s: %s", args.out, "every limit met" if out["passed"] else "a limit was missed")
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
