"""The report's figures at many seeds (benchmark/scale.py's synthetic suite, as report rows without MLflow): one
line and one legend entry per method whatever the number of seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import scale, tracking
from benchmark.suite import load_suite
from reports import figures as figs
from reports.build import _plots, _spread_series
from reports.results import CURVE, metric, param, tag, type_params

SEEDS = 30


def _row(trial, artifacts: Path, poses: int) -> dict:
    """One trial's row of the results store as pull_runs builds it from the run benchmark.scale logs."""
    fit = scale.synthetic_fit(trial)
    metrics = tracking.training_metrics(fit, trial.config.train.metric) | tracking.final_metrics(
        scale.synthetic_result(trial))
    where = artifacts / trial.id
    where.mkdir(parents=True)
    if trial.eval_config.sample.hypotheses > 1:
        scale.synthetic_predictions(trial, where / "predictions.npz", poses)
    return ({"run_id": trial.id, "status": "FINISHED", "artifact_uri": str(where),
             "end_time": pd.Timestamp("2026-12-01", tz="UTC"), tag("trial.id"): trial.id,
             tag(tracking.ROLE): "trial", tag("device.type"): "cpu",
             CURVE: [] if trial.eval_only else [r["val_p1"] for r in fit.history]}
            | {param(p.key): p.value for p in tracking.trial_params(trial, {"trial.detector": "synth"})}
            | {metric(k): float(v) for k, v in metrics.items()})


@pytest.fixture(scope="module")
def many_seeds(tmp_path_factory) -> pd.DataFrame:
    """The scale suite at 30 seeds (480 runs, 120 with 64-pose predictions)."""
    root = tmp_path_factory.mktemp("scale")
    suite = load_suite(scale.write_suite(root / "suite.toml", "many", SEEDS, root / "store"), check_data=False)
    frame = pd.DataFrame([_row(t, root / "artifacts", 64) for t in scale.suite_trials(suite)])
    return type_params(frame)


def _find(run: pd.Series) -> Path | None:
    path = Path(run["artifact_uri"]) / "predictions.npz"
    return path if path.exists() else None


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def test_spread_figure_is_one_line_per_method_over_all_seeds(many_seeds):
    warn: list[str] = []
    series = _spread_series(many_seeds, _find, warn)
    assert len(series) == 4 * SEEDS and not warn        # every seed of 4 multi-hypothesis variants, binned apart
    plot = figs.spread_figure(series)
    [ax] = plot.figure.axes
    entries = _legend(ax)
    assert len(entries) == 4 and len(ax.lines) == 4
    assert all(e.endswith(f"{SEEDS} seeds") for e in entries)
    mc = next(line for line, e in zip(ax.lines, entries, strict=True) if "mc dropout" in e)
    curves = [c for c in series.values() if "mc dropout" in c.method]
    np.testing.assert_allclose(mc.get_ydata(), np.mean([c.error for c in curves], axis=0))


def test_spread_series_read_the_first_seeds_of_each_method_only(many_seeds, monkeypatch):
    monkeypatch.setattr(figs, "SPREAD_SEEDS", 5)
    warn: list[str] = []
    series = _spread_series(many_seeds, _find, warn)
    assert len(series) == 4 * 5 and all(k.endswith(tuple(f"seed {s}" for s in range(5))) for k in series)
    assert warn == [f"spread-vs-error figure: the first 5 seeds of each variant; {4 * (SEEDS - 5)} runs of later "
                    "seeds not read (the reliability table has every seed)"]


def test_spread_figure_caps_the_methods_it_draws_and_says_so():
    rng = np.random.default_rng(0)
    spread = rng.lognormal(0.0, 0.5, 400)
    series = {f"m{i:02d}, seed {s}": figs.spread_curve(spread * (1 + s), spread * (2 + i), f"m{i:02d}")
              for i in range(12) for s in range(3)}
    plot = figs.spread_figure(series)
    [ax] = plot.figure.axes
    assert len(ax.lines) == len(_legend(ax)) == figs.MAX_METHODS
    assert f"first {figs.MAX_METHODS} of 12 methods" in ax.get_title() and "12 methods" in plot.caption


def test_spread_curve_bins_by_rank_with_known_means():
    spread = np.arange(1.0, 401.0)[::-1].copy()             # 400 joints, 20 bins of 20
    curve = figs.spread_curve(3.0 * spread, spread, "m")
    assert len(curve.error) == figs.SPREAD_BINS and curve.r == pytest.approx(1.0)
    np.testing.assert_allclose(curve.spread, np.arange(20) * 20 + 10.5)   # mean of 1..20, 21..40, ...
    np.testing.assert_allclose(curve.error, 3.0 * curve.spread)
    np.testing.assert_allclose(curve.sem, 3.0 * np.std(np.arange(1.0, 21.0)) / np.sqrt(20))


def test_learning_curves_average_many_seeds_into_one_line_per_variant(many_seeds):
    plot = figs.learning_curves_figure(many_seeds)
    [ax] = plot.figure.axes
    trained = {v for v, e in zip(many_seeds[param("trial.variant")], many_seeds[CURVE], strict=True) if len(e)}
    assert len(trained) == 8
    assert len(ax.lines) == len(_legend(ax)) == len(trained)
    assert f"mean of {SEEDS} trainings per variant" in ax.get_title()
    full = many_seeds[(many_seeds[param("trial.variant")] == "full") & many_seeds[CURVE].map(len).gt(0)]
    first = [c[0] for c in full[CURVE]]
    assert ax.lines[0].get_ydata()[0] == pytest.approx(np.mean(first))   # DiffPose full: epoch 1, all seeds


def test_no_figure_grows_with_the_seeds(many_seeds):
    """Every figure at 30 seeds has the legend entries it has at 3 and no more artists (lines, bands, bars)."""
    few = many_seeds[many_seeds[param("trial.seed")] < 3]

    def artists(runs: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
        warn: list[str] = []
        return {p.name: [(len(_legend(ax)), len(ax.lines) + len(ax.collections) + len(ax.patches))
                         for ax in p.figure.axes] for p in _plots(runs, _find, warn)}

    many, three = artists(many_seeds), artists(few)
    assert set(many) == {"p1_vs_steps", "per_action_mocap17", "speed_mocap17", "spread_vs_error", "calibration",
                         "learning_curves"} == set(three)
    for name, axes in many.items():
        for (entries, drawn), (entries3, drawn3) in zip(axes, three[name], strict=True):
            assert entries == entries3 and drawn <= drawn3, name


def test_a_build_leaves_the_index_its_lookup_reads_and_a_rebuild_logs_nothing(tmp_path):
    """The synthetic store is built as the runner would log it: its lookup finds every trial by the index the
    build's invocation left, and an interrupted or repeated build logs only what is missing."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    suite_file = scale.write_suite(tmp_path / "suite.toml", "tiny", 2, tmp_path / "store")
    suite = load_suite(suite_file, check_data=False)
    first = scale.build_experiment(uri, tmp_path, suite, 20, 8)
    assert first["logged_now"] == 20
    again = scale.build_experiment(uri, tmp_path, suite, 24, 8)
    assert again["logged_now"] == 4 and again["trials"] == 24
    found = scale.lookup(uri, suite_file, 24)
    assert found["found"] == found["trials"] == 24
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny").experiment_id
    indexed = client.search_runs([exp], f"metrics.`{tracking.INDEX_TIME}` > 0")
    assert len(indexed) == 2   # one per build, as one per suite invocation
