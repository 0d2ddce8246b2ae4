"""reports/: MLflow runs -> results store -> tables, figures, report.md and report.tex.

One sqlite MLflow store per module holds three experiments built to RUN_SCHEMA.md:
- "demo": a clean mocap17 suite (full, no_gmm, steps=1/2/5, refiner, hypotheses=5, graformer; seeds 0 and 1),
  one FAILED and one RUNNING trial, and Human3.6M (CPN) full + graformer runs for the Table-1 layout;
- "messy": Human3.6M runs that mix protocols (a flip-test run, a 243-frame N=5 run), miss metrics, and a steps
  variant with one seed;
- "empty": FAILED runs only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import stats

from diffpose.config import Config
from diffpose.metrics import CALIBRATION_LEVELS
from reports.build import build_report, build_report_from_parquet
from reports.results import (
    SCHEMA_VERSION,
    SUITE_TRIALS,
    ResultsError,
    finished_trials,
    pull_runs,
    read_parquet,
    write_parquet,
)
from reports.tables import all_tables
from reports.tables.model import NOT_CONVERGED, UNVERIFIED, paired_test
from reports.tables.published import load_published
from reports.tables.render import tex_escape, to_latex, to_markdown
from reports.tables.runs import H36M_ACTIONS
from tests.test_bad_input import tree

MOCAP_TEST = ("Boxing", "Everyday", "Jumping", "Running", "Swordplay", "Walking")
MOCAP_OFFSETS = np.array([-3.0, -1.0, 0.0, 1.0, 2.0, 1.0])            # sum 0: per-action mean == test_p1
H36M_OFFSETS = np.linspace(-7.0, 7.0, 15)

# (variant, axis, value, config overrides, P1 of seed 0 and seed 1) on mocap17
MOCAP_TRIALS = [
    ("full", "full", "full", {}, (40.0, 42.0)),
    ("no_gmm", "gmm", "false", {"diffusion.gmm": False}, (43.0, 44.5)),
    ("steps=1", "steps", "1", {"diffusion.steps": 1}, (48.0, 49.0)),
    ("steps=2", "steps", "2", {"diffusion.steps": 2}, (44.0, 45.5)),
    ("steps=5", "steps", "5", {"diffusion.steps": 5}, (41.0, 42.5)),
    ("refiner", "mode", "refiner", {"diffusion.mode": "refiner", "diffusion.steps": 2}, (39.0, 41.6)),
    ("hypotheses=5", "hypotheses", "5", {"sample.hypotheses": 5}, (39.5, 42.1)),
    ("graformer", "baseline", "graformer", {"model.lifter": "graformer"}, (45.0, 46.0)),
    ("mc_dropout", "probabilistic", "mc_dropout",
     {"model.lifter": "graformer", "sample.method": "mc_dropout", "sample.hypotheses": 5}, (45.5, 46.5)),
]
FULL = {"diffusion.steps": 10, "sample.hypotheses": 1, "data.flip_test": False, "train.epochs": 20,
        "encoder.epochs": 20}  # as a suite's [base] train.epochs sets the encoder's too


def _metrics(p1: float, actions: tuple[str, ...], offsets: np.ndarray, config: Config, rng
             ) -> dict[str, float]:
    """Plausible final metrics whose per-action means average to ``p1``."""
    out = {"test_p1": p1, "test_p2": round(0.7 * p1, 3), "test_p1_frames": p1 + 0.3,
           "test_p2_frames": round(0.7 * p1, 3) + 0.2}
    for a, off in zip(actions, offsets, strict=True):
        out[f"test_p1.{a}"] = p1 + float(off)
        out[f"test_p2.{a}"] = round(0.7 * (p1 + float(off)), 3)
    diffpose = config.model.lifter == "diffpose"
    calls = config.diffusion.steps * config.sample.hypotheses if diffpose else 0
    out |= {"params": 1.68e6 if diffpose else 0.65e6, "flops_per_pose": 6.5e6 + calls * 13e6,
            "train_seconds": 600.0 + 30.0 * rng.random(), "best_epoch": 18.0, "best_val_p1": p1 + 1.0,
            "converged": 1.0, "epochs_trained": 20.0,
            "test_poses_per_second": 20000.0 / (1 + calls) * (1 + 0.05 * rng.random())}
    if config.sample.hypotheses > 1:
        out |= {"test_j_best": p1 - 6.0, "test_p_best": 0.7 * p1 - 4.0, "test_spread_error_corr": 0.4}
        # DiffPose's hypotheses calibrated; MC dropout's too narrow: its curve at q^2, energy score 5 mm higher.
        curve = {q: q if diffpose else q * q for q in CALIBRATION_LEVELS}
        out |= {f"test_calibration.q{round(100 * q):03d}": v for q, v in curve.items()}
        out |= {"test_calibration_error": float(np.mean([abs(v - q) for q, v in curve.items()])),
                "test_energy_score": p1 * 0.6 + (0.0 if diffpose else 5.0 + rng.random()),
                "test_coverage_90": curve[0.9], "test_sharpness_90": 30.0 if diffpose else 12.0}
    return out


def _predictions(path: Path, rng, n: int = 300) -> Path:
    """A predictions.npz whose per-joint error grows with the per-joint hypothesis spread."""
    target = rng.normal(0.0, 0.25, (n, 17, 3))
    spread = rng.uniform(0.005, 0.04, (n, 17))                                  # m
    pose = target + rng.normal(0.0, 1.0, (n, 17, 3)) * spread[..., None]
    pose[:, 0] = target[:, 0]
    np.savez(path, pose=pose, target=target, spread=spread, action=np.array(["Boxing"] * n),
             subject=np.array(["S1"] * n))
    return path


def _log_trial(client, experiment_id: str, parent: str, *, dataset: str, detector: str, variant: str,
               axis: str, value: str, seed: int, overrides: dict, metrics: dict | None,
               status: str = "FINISHED", device: str = "cpu", drop: tuple[str, ...] = (),
               artifact: Path | None = None) -> str:
    from mlflow.entities import Metric, Param

    config = Config().override({**FULL, **overrides, "train.seed": seed, "data.store": f"stores/{dataset}"})
    params = {k: str(v) for k, v in config.flatten().items()}
    params |= {"trial.dataset": dataset, "trial.detector": detector, "trial.variant": variant,
               "trial.axis": axis, "trial.value": value, "trial.seed": str(seed)}
    tags = {"mlflow.parentRunId": parent, "diffpose.role": "trial", "trial.id": config.hash(),
            "git.commit": "0" * 40, "data.fingerprint": "f" * 16, "device.type": device,
            "ray.node": "127.0.0.1", "device": "cuda:NVIDIA H100" if device == "cuda" else "cpu"}
    if device == "cuda":  # the machine, as trials tag it (the CPU runs are as older versions logged them)
        tags |= {"host.cpu": "AMD EPYC 9654", "host.cores": "16", "host.memory_gib": "128",
                 "torch.version": "2.13.0"}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{dataset}-{variant}-s{seed}")
    now = int(time.time() * 1000)
    logged = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if k not in drop]
    logged += [Metric("val_p1", 50.0 - e, now, e) for e in (1, 2)]
    client.log_batch(run.info.run_id, metrics=logged, params=[Param(k, v) for k, v in params.items()])
    if artifact is not None:
        client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """A sqlite MLflow store with the experiments "demo", "messy" and "empty"."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    rng = np.random.default_rng(0)

    demo = client.create_experiment("demo", artifact_location=str(root / "artifacts"))
    parent = client.create_run(demo, tags={"diffpose.role": "suite", "suite.name": "demo"}).info.run_id
    for variant, axis, value, overrides, p1s in MOCAP_TRIALS:
        config = Config().override({**FULL, **overrides})
        for seed, p1 in enumerate(p1s):
            artifact = _predictions(root / "predictions.npz", rng) if axis == "hypotheses" else None
            metrics = _metrics(p1, MOCAP_TEST, MOCAP_OFFSETS, config, rng)
            if variant == "no_gmm" and seed == 1:  # one seed stopped short of convergence
                metrics |= {"converged": 0.0, "epochs_trained": 3.0}
            _log_trial(client, demo, parent, dataset="mocap17", detector="synth", variant=variant, axis=axis,
                       value=value, seed=seed, overrides=overrides, metrics=metrics, artifact=artifact)
    _log_trial(client, demo, parent, dataset="mocap17", detector="synth", variant="steps=20", axis="steps",
               value="20", seed=0, overrides={"diffusion.steps": 20}, metrics=None, status="FAILED")
    _log_trial(client, demo, parent, dataset="mocap17", detector="synth", variant="steps=50", axis="steps",
               value="50", seed=0, overrides={"diffusion.steps": 50}, metrics=None, status="RUNNING")
    h36m = {"dataset": "h36m", "detector": "cpn_ft_h36m_dbb"}
    graformer = {"model.lifter": "graformer"}
    for variant, axis, overrides, p1s in (("full", "full", {}, (55.0, 56.0)),
                                          ("graformer", "baseline", graformer, (60.0, 61.0))):
        config = Config().override({**FULL, **overrides})
        for seed, p1 in enumerate(p1s):
            _log_trial(client, demo, parent, **h36m, variant=variant, axis=axis,
                       value=variant, seed=seed, overrides=overrides, device="cuda",
                       metrics=_metrics(p1, H36M_ACTIONS, H36M_OFFSETS, config, rng))
    client.log_metric(parent, "wall_seconds", 5400.0)
    client.set_terminated(parent, "FINISHED")
    # an invocation killed before it logged its wall time
    client.set_terminated(client.create_run(demo, tags={"diffpose.role": "suite"}).info.run_id, "KILLED")

    messy = client.create_experiment("messy", artifact_location=str(root / "artifacts_messy"))
    parent = client.create_run(messy, tags={"diffpose.role": "suite"}).info.run_id
    for seed, p1 in enumerate((55.0, 56.0)):
        _log_trial(client, messy, parent, **h36m, variant="full", axis="full", value="full", seed=seed,
                   overrides={}, metrics=_metrics(p1, H36M_ACTIONS, H36M_OFFSETS, Config(), rng))
    _log_trial(client, messy, parent, **h36m, variant="full", axis="full", value="full", seed=0,
               overrides={"data.flip_test": True},
               metrics=_metrics(54.0, H36M_ACTIONS, H36M_OFFSETS, Config(), rng))
    _log_trial(client, messy, parent, **h36m, variant="graformer", axis="baseline", value="graformer", seed=0,
               overrides={"model.lifter": "graformer"}, drop=("test_p2", "test_p1.Walking"),
               metrics=_metrics(60.0, H36M_ACTIONS, H36M_OFFSETS, Config(), rng))
    video = {"data.frames": 243, "sample.hypotheses": 5}
    _log_trial(client, messy, parent, **h36m, variant="full", axis="full", value="full", seed=0,
               overrides=video,
               metrics=_metrics(50.0, H36M_ACTIONS, H36M_OFFSETS, Config().override(video), rng))
    _log_trial(client, messy, parent, **h36m, variant="steps=5", axis="steps", value="5", seed=0,
               overrides={"diffusion.steps": 5},
               metrics=_metrics(57.0, H36M_ACTIONS, H36M_OFFSETS, Config(), rng))

    metrics = {"test_pck": 90.0, "test_auc": 60.0, "test_mpjpe": 70.0, "test_p1": 70.0, "test_p2": 50.0}
    for seed in (0, 1):
        _log_trial(client, messy, parent, dataset="mpi3dhp", detector="gt", variant="full", axis="full",
                   value="full", seed=seed, overrides={}, metrics={k: v + seed for k, v in metrics.items()})

    empty = client.create_experiment("empty", artifact_location=str(root / "artifacts_empty"))
    parent = client.create_run(empty, tags={"diffpose.role": "suite"}).info.run_id
    for seed in (0, 1):
        _log_trial(client, empty, parent, dataset="mocap17", detector="synth", variant="full", axis="full",
                   value="full", seed=seed, overrides={}, metrics=None, status="FAILED")
    return uri


@pytest.fixture(scope="module")
def demo_frame(tracking) -> pd.DataFrame:
    return pull_runs(tracking, "demo")


@pytest.fixture(scope="module")
def demo_tables(demo_frame):
    runs, _ = finished_trials(demo_frame)
    tables, warnings = all_tables(runs)
    return {t.name: t for t in tables}, warnings


@pytest.fixture(scope="module")
def messy_tables(tracking):
    runs, _ = finished_trials(pull_runs(tracking, "messy"))
    tables, warnings = all_tables(runs)
    return {t.name: t for t in tables}, warnings


@pytest.fixture(scope="module")
def demo_report(tracking, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(tracking, "demo", out)


def _row(table, label, panel=""):
    rows = [r for r in table.rows if r.label == label and (not panel or r.panel.startswith(panel))]
    assert len(rows) == 1, [r.label for r in table.rows]
    return rows[0]


# ---- results store -----------------------------------------------------------------------------------------

def test_pull_keeps_trials_only_with_typed_params(demo_frame):
    assert len(demo_frame) == 2 * len(MOCAP_TRIALS) + 2 + 4          # + FAILED + RUNNING + 4 h36m; no parent
    assert set(demo_frame["tags.diffpose.role"]) == {"trial"}
    assert str(demo_frame["params.diffusion.steps"].dtype) == "Int64"
    assert str(demo_frame["params.data.flip_test"].dtype) == "boolean"
    assert demo_frame["params.train.lr"].dtype == np.float64
    assert set(demo_frame["params.trial.value"]) >= {"5", "false", "refiner", "graformer"}   # stays text
    assert demo_frame["metrics.test_p1.Boxing"].dtype == np.float64


def test_parquet_round_trips_with_schema_version(demo_frame, tmp_path):
    path = write_parquet(demo_frame, tmp_path / "results.parquet", experiment="demo")
    meta = pq.read_schema(path).metadata
    assert meta[b"diffpose.results.schema_version"] == str(SCHEMA_VERSION).encode()
    pd.testing.assert_frame_equal(read_parquet(path), demo_frame)


def test_parquet_of_another_schema_version_is_refused(demo_frame, tmp_path):
    path = tmp_path / "old.parquet"
    pq.write_table(pq.read_table(write_parquet(demo_frame, path)).replace_schema_metadata({}), path)
    with pytest.raises(ResultsError, match="schema version missing"):
        read_parquet(path)


def test_unfinished_runs_are_skipped_and_counted(demo_frame):
    runs, notes = finished_trials(demo_frame)
    assert len(runs) == 2 * len(MOCAP_TRIALS) + 4
    assert notes == ["skipped 2 runs that are not FINISHED (1 FAILED, 1 RUNNING)"]


# ---- tables ------------------------------------------------------------------------------------------------

def test_comparison_mean_std_and_ranking_hand_computed(demo_tables):
    table = demo_tables[0]["comparison_mocap17"]
    full = _row(table, "DiffPose", "Protocol #1")
    assert full.cells["avg"].mean == pytest.approx(41.0) and full.cells["avg"].std == pytest.approx(2 ** 0.5)
    assert full.cells["Boxing"].mean == pytest.approx(38.0) and full.cells["n"].text == "2"
    refiner = _row(table, "DiffPose (refiner)", "Protocol #1")
    assert refiner.cells["avg"].mean == pytest.approx(40.3) and refiner.cells["avg"].rank == 1
    assert full.cells["avg"].rank == 2 and _row(table, "GraFormer", "Protocol #1").cells["avg"].rank == 0
    md, tex = to_markdown(table), to_latex(table)
    assert "| DiffPose (refiner) | 1 | 2 | **37.3** ± 1.8 |" in md        # Boxing = 40.3 - 3
    assert "<u>41.0</u> ± 1.4" in md and r"\underline{41.0{\scriptsize\,$\pm$1.4}}" in tex
    assert r"\textbf{40.3{\scriptsize" in tex
    headers = [c.header for c in table.columns]
    assert headers == ["T", "n", *MOCAP_TEST, "Avg"]
    assert not any(r.section == "Published" for r in table.rows)          # no H36M numbers beside mocap17


def test_seeds_of_a_variant_are_one_row_though_their_training_fingerprints_differ(demo_frame):
    """trial.training fingerprints a training, seed included: runs of one variant over seeds differ in it and
    still make one row (the converged study's SemGCN rows were split by it)."""
    runs, _ = finished_trials(demo_frame)
    runs = runs.copy()
    runs["params.trial.training"] = [f"{v}-{s}" for v, s in zip(runs["params.trial.variant"],
                                                                runs["params.trial.seed"], strict=True)]
    tables, warnings = all_tables(runs)
    comparison = next(t for t in tables if t.name == "comparison_mocap17")
    assert not [w for w in warnings if "differ in their config" in w]
    assert _row(comparison, "DiffPose", "Protocol #1").cells["n"].text == "2"


def test_video_runs_get_an_mpjve_panel_and_their_evaluation_mode_in_the_protocol(demo_frame):
    """Runs at T = 27: chunked and sliding evaluation are different protocols (two tables); MPJVE, where a run
    has it, is a third panel per action."""
    runs, _ = finished_trials(demo_frame)
    mocap = runs[(runs["params.trial.dataset"] == "mocap17")
                 & runs["params.trial.variant"].isin(["full", "graformer"])].copy()
    mocap["params.data.frames"] = 27
    mocap["params.data.eval_mode"] = "chunks"
    mocap["metrics.test_mpjve"] = 3.0
    for a, off in zip(MOCAP_TEST, MOCAP_OFFSETS, strict=True):
        mocap[f"metrics.test_mpjve.{a}"] = 3.0 + 0.1 * off
    sliding = mocap[mocap["params.trial.variant"] == "graformer"].copy()
    sliding["params.data.eval_mode"] = "sliding"
    sliding[[c for c in sliding.columns if "mpjve" in c]] = np.nan   # evaluated on every n-th frame
    tables, warnings = all_tables(pd.concat([mocap, sliding], ignore_index=True))
    comparisons = [t for t in tables if t.kind == "comparison"]
    assert len(comparisons) == 2
    chunked = next(t for t in comparisons if "chunked evaluation" in " ".join(t.notes))
    assert "MPJVE" in chunked.title and "T=27" in " ".join(chunked.notes)
    full = _row(chunked, "DiffPose", "MPJVE")
    assert full.cells["avg"].mean == pytest.approx(3.0) and full.cells["Boxing"].mean == pytest.approx(2.7)
    assert "| DiffPose | 27 | 2 |" in to_markdown(chunked)
    other = next(t for t in comparisons if t is not chunked)
    assert "sliding windows" in " ".join(other.notes) and "MPJVE" not in other.title
    assert not any(r.panel.startswith("MPJVE") for r in other.rows)


def test_h36m_table_has_paper_layout_and_same_protocol_published_rows(demo_tables):
    table = demo_tables[0]["comparison_h36m"]
    assert [c.header for c in table.columns][2:] == ["Dir", "Disc", "Eat", "Greet", "Phone", "Photo", "Pose",
                                                     "Pur", "Sit", "SitD", "Smoke", "Wait", "WalkD", "Walk",
                                                     "WalkT", "Avg"]
    p1 = {r.label: r for r in table.rows if r.panel.startswith("Protocol #1")}
    published = {label for label, r in p1.items() if r.section == "Published"}
    # frame-based runs on CPN: the frame-based CPN rows only (no GT-2D, no SH, no video methods)
    assert published == {"DiffPose (frame)", "SemGCN (Zhao et al.)", "GraFormer (Zhao et al.)"}
    assert p1["DiffPose (frame)"].cells["avg"].rank == 1 and p1["DiffPose (frame)"].cells["avg"].mean == 49.7
    assert p1["GraFormer (Zhao et al.)"].cells["avg"].rank == 2
    assert p1["DiffPose"].cells["avg"].mean == pytest.approx(55.5) and p1["DiffPose"].cells["avg"].rank == 0
    assert p1["DiffPose (frame)"].cells["Directions"].mean == 42.8
    p2 = {r.label: r for r in table.rows if r.panel.startswith("Protocol #2")}
    assert p2["DiffPose"].cells["avg"].rank == 1 and p2["GraFormer"].cells["avg"].rank == 2


def test_oracle_rows_are_shown_apart_and_never_ranked(messy_tables):
    table = messy_tables[0]["comparison_h36m_3"]                         # T=243, N=5
    p1 = {r.label: r for r in table.rows if r.panel.startswith("Protocol #1")}
    assert p1["DiffPose (video)"].cells["avg"].rank == 1                  # 36.9
    d3dp = p1["D3DP (Shan et al.)"].cells["avg"]
    assert d3dp.rank == 2 and d3dp.mean == 39.5
    oracle = p1["D3DP (Shan et al.) (oracle)"]
    assert oracle.cells["avg"].mean == 35.4 and oracle.cells["avg"].rank == 0 and oracle.section == "Oracle"
    ours = p1["DiffPose, best of N (oracle)"]
    assert ours.cells["avg"].mean == pytest.approx(44.0) and not ours.ranked
    assert "Oracle rows pick" in " ".join(table.notes)


def test_ablation_paired_test_equals_scipy(demo_tables):
    table = demo_tables[0]["ablation_gmm"]
    row = _row(table, "no_gmm")
    expected = stats.ttest_rel([43.0, 44.5], [40.0, 42.0]).pvalue
    assert row.cells["delta"].mean == pytest.approx(2.75)
    assert row.cells["p"].mean == pytest.approx(expected) and row.cells["pairs"].text == "2"
    assert row.cells["value"].text == "no" and _row(table, "full").cells["value"].text == "yes"
    line = "| no_gmm<sup>†</sup> | no | mocap17 | 2 | <u>43.8</u> ± 1.1 | <u>30.6</u> ± 0.7 | +2.8 ± 0.4 | 2 | 0.058 |"
    assert line in to_markdown(table)


def test_steps_and_hypotheses_ablations(demo_tables):
    steps = demo_tables[0]["ablation_steps"]
    assert [r.label for r in steps.rows] == ["full", "steps=1", "steps=2", "steps=5"]
    assert [r.cells["value"].text for r in steps.rows] == ["10", "1", "2", "5"]
    assert _row(steps, "full").cells["p1"].rank == 1 and _row(steps, "steps=5").cells["p1"].rank == 2
    hyp = demo_tables[0]["ablation_hypotheses"]
    assert _row(hyp, "hypotheses=5").cells["j_best"].mean == pytest.approx(40.8 - 6.0)
    assert _row(hyp, "full").cells["j_best"].mean is None and not hyp.partial
    assert "J-Best (oracle)" in to_markdown(hyp)


def test_paired_test_without_enough_pairs_says_why():
    one = paired_test(pd.Series({0: 2.0}), pd.Series({0: 1.0, 1: 1.5}))
    assert one.p is None and one.pairs == 1 and "needs at least 2" in one.reason and one.delta == 1.0
    flat = paired_test(pd.Series({0: 2.0, 1: 3.0}), pd.Series({0: 1.0, 1: 2.0}))
    assert flat.p is None and "zero variance" in flat.reason


def test_dataset_without_runs_gets_no_table(demo_tables, demo_report):
    assert not any("mpi3dhp" in name for name in demo_tables[0])
    assert not list((demo_report.out_dir / "tables").glob("*mpi3dhp*"))


def test_missing_metric_marks_table_partial(messy_tables):
    tables, _ = messy_tables
    with_baseline = next(t for t in tables.values() if t.name.startswith("comparison_h36m")
                         and any(r.label == "GraFormer" for r in t.rows))
    assert "partial: 1 run missing test_p1.Walking, test_p2" in with_baseline.caption
    cell = _row(with_baseline, "GraFormer", "Protocol #2").cells["avg"]
    assert cell.mean is None and "| GraFormer | 1 | 1 |" in to_markdown(with_baseline)
    assert "| GraFormer | 1 | 1 |" in to_markdown(with_baseline) and " – |" in to_markdown(with_baseline)


def test_mixed_protocols_are_split_and_said(messy_tables):
    tables, warnings = messy_tables
    split = sorted(n for n in tables if n.startswith("comparison_h36m"))
    assert split == ["comparison_h36m_1", "comparison_h36m_2", "comparison_h36m_3"]
    assert "protocol 1 of 3 (T=1, no flip test, N=1)" in tables["comparison_h36m_1"].title
    assert "protocol 2 of 3 (T=1, flip test, N=1)" in tables["comparison_h36m_2"].title
    video = "protocol 3 of 3 (T=243, sliding windows, no flip test, N=5, mean of hypotheses)"
    assert video in tables["comparison_h36m_3"].title
    differ = "3 protocols (they differ in frames, eval_mode, flip_test, hypotheses, aggregate)"
    assert any(differ in w for w in warnings)
    assert "2D cpn_ft_h36m_dbb, T=1, flip test" in tables["comparison_h36m_2"].notes[0]


def test_mpi3dhp_table_ranks_pck_up_and_mpjpe_down(messy_tables):
    table = messy_tables[0]["comparison_mpi3dhp"]
    assert [c.header for c in table.columns][2:] == ["PCK (%) ↑", "AUC (%) ↑", "MPJPE (mm) ↓"]
    rows = {r.label: r for r in table.rows}
    assert set(rows) == {"DiffPose (video)", "DiffPose"}      # D3DP is video-based: not beside T=1 runs
    published, ours = rows["DiffPose (video)"], rows["DiffPose"]
    assert UNVERIFIED in published.marks and "‡" in published.marks        # third-party number, input not stated
    assert published.cells["pck"].mean == 98.0 and published.cells["pck"].rank == 1
    assert ours.cells["pck"].mean == pytest.approx(90.5) and ours.cells["pck"].rank == 2
    assert ours.cells["mpjpe"].mean == pytest.approx(70.5) and ours.cells["mpjpe"].rank == 2
    assert published.cells["mpjpe"].rank == 1 and ours.cells["n"].text == "2"


def test_single_seed_ablation_writes_na_with_reason(messy_tables):
    steps = messy_tables[0]["ablation_steps"]
    row = next(r for r in steps.rows if r.label == "steps=5")
    assert row.cells["p"].text == "n/a"
    assert any("1 paired seed; a paired test needs at least 2" in n for n in steps.notes)


def test_published_file_is_complete_and_sourced():
    pub = load_published()
    assert pub["source"].str.len().min() > 5 and pub["verified"].dtype == bool
    assert set(pub["protocol"]) == {"p1", "p2", "pck", "auc", "mpjpe"}
    frame_cpn = pub[(pub["method"] == "DiffPose (frame)") & (pub["input"] == "cpn")].iloc[0]
    assert frame_cpn["avg"] == 49.7 and frame_cpn["Directions"] == 42.8 and bool(frame_cpn["verified"])
    assert pub.loc[pub["oracle"], "avg"].tolist() == [35.4]
    assert not pub.loc[pub["mark"] == "3P", "verified"].any()
    full = pub.dropna(subset=list(H36M_ACTIONS))
    gap = (full[list(H36M_ACTIONS)].mean(axis=1) - full["avg"]).abs()
    assert (gap[full["note"].fillna("").str.contains("average to") == False] < 0.15).all()  # noqa: E712


def test_spread_series_are_per_seed_never_pooled(demo_frame, tmp_path):
    """Each seed of the N = 5 variant is its own series: a seed whose hypotheses barely spread is not mixed into
    the bins of one whose hypotheses spread widely."""
    from reports.build import _spread_series

    runs, _ = finished_trials(demo_frame)
    files = {0: _predictions(tmp_path / "s0.npz", np.random.default_rng(3)), 1: tmp_path / "s1.npz"}
    with np.load(files[0]) as z:   # seed 1: the same poses, ten times narrower spread
        np.savez(files[1], **{k: z[k] / 10 if k == "spread" else z[k] for k in z.files})

    def find(run):
        return files[int(run["params.trial.seed"])]

    warn: list[str] = []
    diffpose = runs[(runs["params.trial.dataset"] == "mocap17") & (runs["params.trial.variant"] == "hypotheses=5")]
    series = _spread_series(diffpose, find, warn)
    assert sorted(series) == ["DiffPose (hypotheses=5), seed 0", "DiffPose (hypotheses=5), seed 1"]
    spread = {k[-1]: v[1] for k, v in series.items()}
    assert np.median(spread["0"]) == pytest.approx(10 * np.median(spread["1"]))
    assert not warn


# ---- the built report --------------------------------------------------------------------------------------

def test_report_writes_tables_figures_and_documents(demo_report):
    out = demo_report.out_dir
    assert demo_report.runs == 22 and demo_report.ok
    assert {"comparison_mocap17", "comparison_h36m", "ablation_gmm", "ablation_steps", "ablation_mode",
            "ablation_hypotheses", "reliability", "claims", "cost", "trainings"} == set(demo_report.tables)
    for name in demo_report.tables:
        for ext in ("tex", "md", "csv"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert {"p1_vs_steps", "per_action_h36m", "per_action_mocap17", "speed_h36m", "speed_mocap17",
            "spread_vs_error", "learning_curves", "calibration"} == set(demo_report.figures)
    for name in demo_report.figures:
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "skipped 2 runs that are not FINISHED" in md and "![" in md and "figures/p1_vs_steps.png" in md
    csv = pd.read_csv(out / "tables" / "ablation_gmm.csv")
    row = csv[(csv["row"] == "no_gmm") & (csv["column"] == "P1 (mm) ↓")].iloc[0]
    assert row["mean"] == pytest.approx(43.75) and row["std"] == pytest.approx(1.5 / 2 ** 0.5)
    assert row["n"] == 2


def test_the_report_gives_the_suites_wall_time_over_its_invocations_and_the_machines(demo_report, tmp_path):
    header = (demo_report.out_dir / "report.md").read_text().splitlines()[2]
    assert "Wall time: 1.5 h over 2 invocations of the suite (1 logged none" in header
    assert ("Machines: AMD EPYC 9654, 16 cores, 128 GiB, torch 2.13.0, device cuda:NVIDIA H100 (4 runs); not "
            "recorded for 18 runs") in header
    again = build_report_from_parquet(demo_report.parquet, tmp_path)
    assert again.study == demo_report.study


def test_the_trainings_time_counts_each_training_once_also_one_named_only_by_its_checkpoint():
    """An evaluation-only trial and the trial that trained its weights share one training: its time counts once.
    A run logged before the training tag is placed by its checkpoint's folder; one with neither is named."""
    from reports.build import training_text

    runs = pd.DataFrame({
        "metrics.train_seconds": [3600.0, 3600.0, 1800.0, 900.0, 450.0],
        "tags.diffpose.training": ["diffpose-aa", "diffpose-aa", None, "graformer-cc", None],
        "tags.checkpoint": [None, None, "/r/trainings/graformer-bb/best.pt", None, None],
    })
    assert training_text(runs) == ("Training: 1.8 h, the sum of 3 trainings' own times (those carried in from "
                                   "other machines included); not recorded for 1 runs.")
    assert training_text(runs.drop(columns=["tags.diffpose.training", "tags.checkpoint"])) == ""


def test_a_suite_read_against_a_reference_study_row_by_row_and_by_the_pairs_the_reference_tells_apart(
        demo_frame):
    """Rows matched by dataset and variant; a pair counts where the reference's paired test over its seeds says
    p < 0.05, and the table says whether this suite orders it the same way."""
    from reports.tables.reference import reference_table

    runs, _ = finished_trials(demo_frame)
    runs = runs[runs["params.trial.dataset"] == "mocap17"]
    reference = runs.copy()
    variant, seed = reference["params.trial.variant"], reference["params.trial.seed"].astype(int)
    full = {0: 40.0, 1: 42.0}
    for name, gaps in {"no_gmm": (3.0, 3.1), "graformer": (10.0, 10.2), "refiner": (5.0, 5.2),
                       "steps=1": (1.0, -1.0)}.items():
        for s, gap in enumerate(gaps):
            reference.loc[(variant == name) & (seed == s), "metrics.test_p1"] = full[s] + gap
    (table, ordered), _ = reference_table(runs, reference, "the converged study")
    rows = {r.label: r for r in table.rows}
    assert rows["DiffPose"].cells["ratio"].mean == pytest.approx(1.0)
    assert rows["GraFormer"].cells["there"].mean == pytest.approx(51.1)
    assert rows["GraFormer"].cells["ratio"].mean == pytest.approx(45.5 / 51.1)
    assert rows["DiffPose (no_gmm)"].cells["converged"].text == "1 of 2" and NOT_CONVERGED in rows[
        "DiffPose (no_gmm)"].marks
    assert rows["DiffPose"].cells["mean_pose"].mean is None   # this suite has no mean-pose row
    pairs = {r.label: r.cells for r in ordered.rows}
    same = pairs["DiffPose < DiffPose (no_gmm)"]
    assert same["there"].mean == pytest.approx(3.05) and same["p"].mean == pytest.approx(0.0104, abs=1e-4)
    assert same["here"].mean == pytest.approx(43.75 - 41.0) and same["order"].text == "same"
    opposite = pairs["DiffPose < DiffPose (refiner)"]
    assert opposite["here"].mean == pytest.approx(40.3 - 41.0) and opposite["order"].text == "opposite"
    assert not [k for k in pairs if "steps=1" in k]   # the reference does not tell it from full (p > 0.05)
    assert f"{sum(c['order'].text == 'same' for c in pairs.values())} of {len(pairs)} in the same order" in \
        ordered.notes[0]
    for t in (table, ordered):   # rendered as every table is
        assert to_markdown(t) and to_latex(t)
    assert reference_table(runs, reference[reference["params.trial.dataset"] == "h36m"], "none") == ([], [])


def test_runs_of_trials_an_edit_of_the_suite_replaced_are_left_out_and_named(tmp_path):
    """A changed config is a new trial; the old trial's runs stay in MLflow but are not the suite's rows."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    rng = np.random.default_rng(0)
    exp = client.create_experiment("edited", artifact_location=str(tmp_path / "artifacts"))
    now = int(time.time() * 1000)
    first = client.create_run(exp, start_time=now - 60_000, tags={"diffpose.role": "suite"}).info.run_id
    second = client.create_run(exp, start_time=now, tags={"diffpose.role": "suite"}).info.run_id
    kept = []
    for parent, variant, overrides, p1s in ((first, "full", {}, (40.0, 42.0)),
                                            (first, "no_gmm", {"diffusion.gmm": False}, (70.0, 71.0)),
                                            (second, "no_gmm", {"diffusion.gmm": False, "train.epochs": 30},
                                             (43.0, 44.0))):
        for seed, p1 in enumerate(p1s):
            run = _log_trial(client, exp, parent, dataset="mocap17", detector="synth", variant=variant,
                             axis="gmm" if variant == "no_gmm" else "full", value=variant, seed=seed,
                             overrides=overrides, metrics=_metrics(p1, MOCAP_TEST, MOCAP_OFFSETS, Config(), rng))
            if p1 < 70.0:
                kept.append(client.get_run(run).data.tags["trial.id"])
    # the edited trial's seed 2 was running when its driver was killed, before the suite was edited again
    _log_trial(client, exp, first, dataset="mocap17", detector="synth", variant="no_gmm", axis="gmm",
               value="no_gmm", seed=2, overrides={"diffusion.gmm": False}, metrics=None, status="RUNNING")
    client.log_dict(first, [], SUITE_TRIALS)       # an older invocation's list is not the one read
    client.log_dict(second, kept, SUITE_TRIALS)    # the suite now: full and the edited no_gmm
    for parent in (first, second):
        client.set_terminated(parent, "FINISHED")

    report = build_report(uri, "edited", tmp_path / "report")
    assert report.runs == 4
    assert report.warnings[0] == ("skipped 3 runs of trials the suite's latest invocation no longer has (their "
                                  "config has changed since): mocap17-no_gmm-s0, mocap17-no_gmm-s1, "
                                  "mocap17-no_gmm-s2")
    assert not any("not FINISHED" in w for w in report.warnings)
    gmm = (tmp_path / "report" / "tables" / "ablation_gmm.md").read_text()
    assert "| no_gmm | no | mocap17 | 2 | <u>43.5</u> ± 0.7 |" in gmm  # the edited trial's runs only
    again = build_report_from_parquet(report.parquet, tmp_path / "again")
    assert again.runs == 4 and again.warnings == report.warnings


def test_a_row_short_of_convergence_is_marked_and_the_reports_first_line_says_so(demo_report, demo_tables):
    tables, _ = demo_tables
    gmm = tables["ablation_gmm"]
    assert _row(gmm, "no_gmm").marks == (NOT_CONVERGED,) and _row(gmm, "full").marks == ()
    assert gmm.unconverged == ["no_gmm (3-20 epochs)"]
    assert any(n.startswith(f"{NOT_CONVERGED} trained short of convergence") and "no_gmm (3-20 epochs)" in n
               for n in gmm.notes)
    assert NOT_CONVERGED not in "".join(m for r in tables["comparison_mocap17"].rows for m in r.marks)
    md = (demo_report.out_dir / "report.md").read_text().splitlines()
    assert md[0] == f"# diffpose-bench report: 1 of 22 runs trained short of convergence ({NOT_CONVERGED} in the " \
                    "tables), not final numbers"
    assert f"no_gmm<sup>{NOT_CONVERGED}</sup>" in (demo_report.out_dir / "tables" / "ablation_gmm.md").read_text()


def test_the_trainings_table_gives_each_set_of_weights_its_epochs_best_value_and_verdict(demo_frame):
    """One row per training, not per trial: the K and N values and MC dropout evaluate weights trained for
    another row, and a sampled baseline sharing GraFormer's training counts as one of its trials."""
    from reports.tables.trainings import trainings_table

    runs, _ = finished_trials(demo_frame)
    runs = runs.copy()
    variants, seeds = runs["params.trial.variant"], runs["params.trial.seed"].astype(int).astype(str)
    datasets = runs["params.trial.dataset"]
    runs["params.trial.training"] = datasets + variants + seeds     # a training of its own per trial ...
    for seed in ("0", "1"):                                         # ... but MC dropout samples GraFormer's
        runs.loc[(variants == "mc_dropout") & (seeds == seed), "params.trial.training"] = f"mocap17graformer{seed}"
    [table], _ = trainings_table(runs)
    assert [(r.group, r.label) for r in table.rows] == [
        ("h36m", "DiffPose, seed 0"), ("h36m", "DiffPose, seed 1"), ("h36m", "GraFormer, seed 0"),
        ("h36m", "GraFormer, seed 1"), ("mocap17", "DiffPose, seed 0"), ("mocap17", "DiffPose, seed 1"),
        ("mocap17", "DiffPose (no_gmm), seed 0"), ("mocap17", "DiffPose (no_gmm), seed 1"),
        ("mocap17", "DiffPose (refiner), seed 0"), ("mocap17", "DiffPose (refiner), seed 1"),
        ("mocap17", "GraFormer, seed 0"), ("mocap17", "GraFormer, seed 1")]
    full = _row_in(table, "DiffPose, seed 0", "mocap17")
    assert (full.cells["epochs"].mean, full.cells["cap"].mean, full.cells["best"].mean,
            full.cells["best_epoch"].mean, full.cells["test"].mean) == (20, 20, 41.0, 18, 40.0)
    assert full.cells["verdict"].text == "yes" and full.marks == () and full.cells["trials"].mean == 1
    short = _row_in(table, "DiffPose (no_gmm), seed 1", "mocap17")
    assert short.cells["verdict"].text == "no" and short.cells["epochs"].mean == 3
    assert short.marks == (NOT_CONVERGED,) and table.unconverged == ["DiffPose (no_gmm), seed 1 (3 epochs)"]
    assert _row_in(table, "GraFormer, seed 1", "mocap17").cells["trials"].mean == 2
    assert "| DiffPose (no_gmm), seed 1<sup>†</sup> | mocap17 | 3 | 20 | 45.50 | 18 | no | 44.5 | 1 |" \
        in to_markdown(table)


def _row_in(table, label, group):
    [row] = [r for r in table.rows if r.label == label and r.group == group]
    return row


def test_reliability_table_compares_each_method_with_diffpose_at_the_same_n(demo_tables):
    table = demo_tables[0]["reliability"]
    full = _row(table, "DiffPose (hypotheses=5), N = 5")
    mc = _row(table, "GraFormer (mc dropout), N = 5")
    assert full.cells["d_es"].text == "ref" and full.cells["cal"].mean == pytest.approx(0.0)
    expected = np.mean([abs(q * q - q) for q in CALIBRATION_LEVELS])
    assert mc.cells["cal"].mean == pytest.approx(expected) and mc.cells["cov90"].mean == pytest.approx(0.81)
    assert mc.cells["d_cal"].mean == pytest.approx(expected) and mc.cells["d_cal"].n == 2
    assert mc.cells["d_es"].mean > 5.0 and mc.cells["p_es"].mean is not None
    assert full.cells["cal"].rank == 1 and mc.cells["cal"].rank == 2
    assert "ablation_probabilistic" not in demo_tables[0]


def test_claims_table_tests_each_claim_paired_over_seeds_and_marks_unconverged_rows(demo_tables):
    table = demo_tables[0]["claims"]
    gmm = _row(table, "GMM-based forward diffusion lowers the error")
    assert gmm.cells["delta"].mean == pytest.approx(2.75)
    assert gmm.cells["p"].mean == pytest.approx(stats.ttest_rel([43.0, 44.5], [40.0, 42.0]).pvalue)
    assert gmm.cells["verdict"].text == "not shown" and NOT_CONVERGED in gmm.marks  # p = 0.058
    k1 = _row(table, "More diffusion steps K lower the error (K = 1 against 10)")
    assert k1.cells["p"].mean == pytest.approx(stats.ttest_rel([48.0, 49.0], [40.0, 42.0]).pvalue)  # 0.042
    assert k1.cells["verdict"].text == "yes" and not k1.marks
    encoder = "DiffPose beats its own context encoder (GraFormer)"
    mocap, h36m = _row(table, encoder, panel="mocap17").cells, _row(table, encoder, panel="Human3.6M").cells
    assert mocap["other"].text == "GraFormer" and mocap["delta"].mean == pytest.approx(4.5)
    assert h36m["delta"].mean == pytest.approx(5.0) and h36m["verdict"].text.startswith("untested: identical")
    mc = _row(table, "DiffPose's hypotheses have a lower energy score than GraFormer (mc dropout)'s (N = 5)")
    assert mc.cells["delta"].mean > 5.0 and mc.cells["pairs"].text == "2"
    # the same calibration error on both seeds: no variance, no p-value, and the row says why
    cal = _row(table, "DiffPose's hypotheses have a lower calibration error than GraFormer (mc dropout)'s (N = 5)")
    assert cal.cells["verdict"].text.startswith("untested: identical differences")
    assert "| yes |" in to_markdown(table) and "scipy.stats.ttest_rel" in to_markdown(table)


def _claim_runs(p1: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    """Finished runs as the results store holds them: one per (variant, seed), P1 per seed as given."""
    spec = {"full": ("full", "diffpose", {}), "no_gmm": ("gmm", "diffpose", {"diffusion.gmm": False}),
            "no_context": ("context", "diffpose", {"diffusion.context": False}),
            "no_heatmap_init": ("heatmap_init", "diffpose", {"diffusion.heatmap_init": False}),
            "steps=20": ("steps", "diffpose", {"diffusion.steps": 20}),
            "graformer": ("baseline", "graformer", {})}
    rows = []
    for variant, values in p1.items():
        axis, lifter, own = spec[variant]
        for seed, value in enumerate(values):
            params = {"trial.variant": variant, "trial.axis": axis, "trial.dataset": "mocap17",
                      "trial.detector": "synth", "trial.seed": seed, "model.lifter": lifter,
                      "diffusion.steps": 5, "sample.hypotheses": 1, "encoder.lifter": "graformer", **own}
            rows.append({**{f"params.{k}": v for k, v in params.items()}, "status": "FINISHED",
                         "metrics.test_p1": value, "metrics.converged": 1.0, "metrics.epochs_trained": 30.0})
    return pd.DataFrame(rows)


def test_a_claim_the_data_contradicts_is_said_so_and_one_without_pairs_is_untested():
    from reports.tables.claims import claims_tables, verdict

    runs = _claim_runs({"full": (50.0, 51.0, 52.0), "no_gmm": (45.0, 45.5, 47.2), "no_context": (56.0, 58.0, 57.5),
                        "steps=20": (50.5, 50.0, 52.8), "graformer": (49.0,)})
    (table,), warn = claims_tables(runs)
    cells = {r.label: r.cells for r in table.rows}
    assert cells["GMM-based forward diffusion lowers the error"]["verdict"].text == "no: the opposite"
    assert cells["Conditioning on the context encoder lowers the error"]["verdict"].text == "yes"
    k20 = cells["More diffusion steps K lower the error (K = 20 against 5)"]
    assert k20["delta"].mean == pytest.approx(0.1) and k20["verdict"].text == "not shown"
    encoder = cells["DiffPose beats its own context encoder (GraFormer)"]
    assert encoder["verdict"].text == "untested: 1 paired seed; a paired test needs at least 2"
    assert not warn and not table.unconverged
    # a GraFormer trained by another recipe than full's encoder is not "its own context encoder"
    other = runs.copy()
    other["params.encoder.epochs"] = 100
    other["params.train.epochs"] = 30
    (table,), _ = claims_tables(other)
    assert "DiffPose beats its own context encoder (GraFormer)" not in {r.label for r in table.rows}
    assert verdict(-2.0, 0.01, -1) == "yes" and verdict(2.0, 0.01, -1) == "no: the opposite"
    assert verdict(None, None, 1) == "untested" and verdict(1.0, 0.05, 1) == "not shown"


def test_a_row_of_another_variants_weights_says_so_where_it_is_compared():
    """no_heatmap_init samples full's trained weights from N(0, I): the tables comparing it say it is not a
    training of its own, and the tables without it say nothing of it."""
    from reports.tables.ablation import ablation_tables
    from reports.tables.claims import claims_tables

    note = ("no_heatmap_init: the weights trained for full, evaluated with diffusion.heatmap_init = false; "
            "not trained on its own.")
    runs = _claim_runs({"full": (50.0, 51.0, 52.0), "no_heatmap_init": (150.0, 170.5, 160.0),
                        "no_gmm": (45.0, 45.5, 47.2)})
    (claims,), _ = claims_tables(runs)
    assert "The heatmap (2D-uncertainty) initialisation lowers the error" in {r.label for r in claims.rows}
    assert note in claims.notes and note in to_markdown(claims)
    tables, _ = ablation_tables(runs)
    by_name = {t.name: t for t in tables}
    assert note in by_name["ablation_heatmap_init"].notes
    assert not [n for n in by_name["ablation_gmm"].notes if "not trained on its own" in n]
    (claims,), _ = claims_tables(runs[runs["params.trial.variant"] != "no_heatmap_init"])
    assert not [n for n in claims.notes if "not trained on its own" in n]

def test_calibration_figure_draws_the_diagonal_and_one_line_per_method(demo_frame):
    from reports.figures import calibration_figure

    runs, _ = finished_trials(demo_frame)
    plot = calibration_figure(runs)
    [ax] = plot.figure.axes
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["calibrated", "DiffPose (hypotheses=5), N = 5", "GraFormer (mc dropout), N = 5"]
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [q * q for q in CALIBRATION_LEVELS])


def test_learning_curves_are_pulled_per_run_and_drawn_once_per_training(demo_frame):
    from reports.figures import learning_curves_figure
    from reports.results import CURVE

    runs, _ = finished_trials(demo_frame)
    assert all(list(c) == [49.0, 48.0] for c in runs[CURVE])   # val_p1 at epochs 1 and 2
    plot = learning_curves_figure(runs)
    assert plot is not None and plot.name == "learning_curves"
    [h36m, mocap] = plot.figure.axes  # one panel per dataset, in the report's dataset order
    assert len(h36m.lines) == 4 and h36m.get_title() == "Human3.6M"
    dashed = [line for line in mocap.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1  # no_gmm's seed 1
    assert h36m.get_xscale() == mocap.get_xscale() == "linear" and "logarithmic" not in plot.caption
    # a training 10 times as long as another's in one panel: the epoch axis of that panel becomes logarithmic
    longer = runs.copy()
    first = longer.index[longer["params.trial.dataset"] == "h36m"][0]
    longer.at[first, CURVE] = [50.0 - 0.1 * e for e in range(20)]
    plot = learning_curves_figure(longer)
    [h36m, mocap] = plot.figure.axes
    assert (h36m.get_xscale(), mocap.get_xscale()) == ("log", "linear")
    assert "The epoch axis is logarithmic in Human3.6M:" in plot.caption


def test_a_learning_curve_is_read_from_its_tag_else_from_the_metric_history(tmp_path):
    from mlflow import MlflowClient

    from reports.results import CURVE, CURVE_TAG, curve_tag

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("curves", artifact_location=str(tmp_path / "artifacts"))
    names = {}
    for name, tags, history in (("tagged", curve_tag([50.004, 40.5]), []),             # the tag only
                                ("history", {}, [60.0, 55.0, 52.0]),                    # the metric only
                                ("damaged", {CURVE_TAG: "[1, 2"}, [70.0, 65.0])):       # fall back to the metric
        run = client.create_run(exp, tags={"diffpose.role": "trial", **tags}).info.run_id
        for epoch, value in enumerate(history, 1):
            client.log_metric(run, "val_p1", value, step=epoch)
        client.set_terminated(run, "FINISHED")
        names[run] = name
    frame = pull_runs(uri, "curves")
    curves = {names[r]: list(c) for r, c in zip(frame["run_id"], frame[CURVE], strict=True)}
    assert curves == {"tagged": [50.0, 40.5], "history": [60.0, 55.0, 52.0], "damaged": [70.0, 65.0]}
    assert curve_tag([50.0] * 2000) == {}                                   # too long for a tag: the history


def test_a_published_report_links_its_own_copies_and_never_replaces_what_it_did_not_write(demo_report, tmp_path):
    from diffpose.data.source import DataError
    from reports.build import MANIFEST, PUBLISHED, publish

    target = tmp_path / "docs" / "results" / "demo.md"
    assert publish(demo_report.out_dir, target) == [target, tmp_path / "docs" / "results" / "demo"]
    text = target.read_text()
    assert text.splitlines()[:2] == [PUBLISHED, "# " + demo_report.first_line]
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("demo/") and (target.parent / link).is_file() for link in links)
    assert "demo/figures/learning_curves.png" in links and "demo/tables/claims.csv" in links
    publish(demo_report.out_dir, target)  # its own files: replaced
    assert target.read_text() == text

    before = tree(target.parent)
    (target.parent / "demo" / "figures" / "mine.png").write_bytes(b"a user's figure")
    with pytest.raises(DataError, match="mine.png: was not written by"):
        publish(demo_report.out_dir, target)
    (target.parent / "demo" / "figures" / "mine.png").unlink()
    assert tree(target.parent) == before
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    with pytest.raises(DataError, match="notes.md: exists and was not written"):
        publish(demo_report.out_dir, notes)
    theirs = tmp_path / "theirs"
    (theirs / "figures").mkdir(parents=True)
    (theirs / "figures" / "plot.png").write_bytes(b"theirs")
    with pytest.raises(DataError, match="theirs: exists and was not written"):
        publish(demo_report.out_dir, tmp_path / "theirs.md")
    assert notes.read_text() == "# my notes\n" and not (tmp_path / "theirs.md").exists()
    assert (target.parent / "demo" / MANIFEST).read_text().startswith(PUBLISHED)


def test_report_from_parquet_alone_matches(demo_report, tmp_path):
    again = build_report_from_parquet(demo_report.parquet, tmp_path, figures=False)
    assert again.tables == demo_report.tables and again.runs == demo_report.runs
    for name in again.tables:
        assert (tmp_path / "tables" / f"{name}.md").read_text() == \
            (demo_report.out_dir / "tables" / f"{name}.md").read_text()


def test_no_finished_runs_gives_a_message_and_no_tables(tracking, tmp_path):
    summary = build_report(tracking, "empty", tmp_path, figures=False)
    assert summary.runs == 0 and not summary.ok and not summary.tables
    assert "No finished trial runs" in summary.message and "2 FAILED" in summary.message
    assert not list((tmp_path / "tables").glob("*"))
    assert summary.message in (tmp_path / "report.md").read_text()
    missing = build_report(tracking, "no-such-experiment", tmp_path / "none", figures=False)
    assert missing.runs == 0 and "No finished trial runs" in missing.message


def test_tex_escape_keeps_pdflatex_safe():
    assert tex_escape("steps=5 & no_gmm 50% #3 <0.001 ± Δ") == \
        r"steps=5 \& no\_gmm 50\% \#3 \textless{}0.001 $\pm$ $\Delta$"


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt-get install texlive-latex-recommended)")
def test_report_tex_compiles_to_a_pdf_with_the_numbers(demo_report):
    out = demo_report.out_dir
    done = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", "report.tex"], cwd=out,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    pdf = out / "report.pdf"
    assert pdf.read_bytes()[:4] == b"%PDF"
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
        assert "43.8" in text and "49.7" in text and "Ablation: GMM-based forward diffusion" in text


def test_runs_are_pulled_page_by_page_and_none_is_missed(tracking):
    from mlflow.tracking import MlflowClient

    from reports.results import search_all

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("demo").experiment_id
    every = {r.info.run_id for r in search_all(client, exp)}
    assert {r.info.run_id for r in search_all(client, exp, page_size=3)} == every and len(every) > 3 * 5


def test_a_pull_past_one_page_splits_the_older_runs_among_processes_and_misses_none(tmp_path):
    """Start times tie at the first page's end and at the slices' edges; each run is read exactly once."""
    from mlflow.tracking import MlflowClient

    from reports.results import _pull

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("split", artifact_location=str(tmp_path / "artifacts"))
    starts = [1000, 1000, 1000, 1005, 1010, 1010, 1020, 1030, 1030, 1030, 1041]
    made = {client.create_run(exp, start_time=t, tags={"i": str(i)}).info.run_id: str(i)
            for i, t in enumerate(starts)}
    for workers in (1, 2, 3):   # 3: slices [1000, 1010), [1010, 1020), [1020, 1031) after the page to 1030
        frame = _pull(client, uri, exp, workers=workers, page_size=4)
        assert len(frame) == len(made)
        assert dict(zip(frame["run_id"], frame["tags.i"], strict=True)) == made
    assert len(_pull(client, uri, exp, workers=2, page_size=20)) == len(made)   # one page: no split


def test_only_a_path_or_a_file_uri_is_a_local_artifact_store():
    from reports.results import local_path

    assert local_path("/r/artifacts/1/abc/artifacts") == Path("/r/artifacts/1/abc/artifacts")
    assert local_path("file:///r/my%20runs/artifacts") == Path("/r/my runs/artifacts")
    assert local_path("file:/r/a") == Path("/r/a") and local_path("results/artifacts") == Path("results/artifacts")
    # a server that proxies artifacts: no "//", still not a path (its predictions are downloaded)
    for remote in ("mlflow-artifacts:/0/abc/artifacts", "s3://bucket/k", "http://127.0.0.1:5000/x", "", None):
        assert local_path(remote) is None
