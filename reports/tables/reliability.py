"""The reliability table: how well each method's N hypotheses cover the truth (calibration, energy score,
coverage, sharpness), against full DiffPose's at the same N, with paired differences over seeds."""

from __future__ import annotations

import pandas as pd

from reports.results import column, metric, param
from reports.tables.model import (
    Cell,
    Column,
    Row,
    Table,
    convergence_note,
    mark_convergence,
    paired_cells,
    rank_cells,
    summary,
)
from reports.tables.runs import dataset_order, per_seed, trial_axis, trial_lifter, variant_rows


def sampled_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that made N > 1 hypotheses and logged their reliability (DiffPose's, sampled baselines')."""
    n = pd.to_numeric(column(runs, param("sample.hypotheses")), errors="coerce").fillna(1)
    return runs[(n > 1) & column(runs, metric("test_calibration_error")).notna()]


def reliability_tables(runs: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """Per dataset and N: how reliable each method's hypotheses are, against full DiffPose's at the same N.

    Columns: J-Agg P1 (the aggregated pose), the J-Best oracle, the calibration error, the energy score,
    the 90 % coverage and sharpness (metrics.reliability), and the paired differences over seeds of the energy
    score and the calibration error against DiffPose (full's weights at that N), with their p-values."""
    warn: list[str] = []
    pool = sampled_runs(runs)
    if pool.empty:
        return [], warn
    columns = [Column("n", "n", kind="text"), Column("p1", "J-Agg P1 (mm) ↓", better="lower"),
               Column("j_best", "J-Best (mm, oracle)"), Column("cal", "Calibration error ↓", better="lower",
                                                              digits=3),
               Column("es", "Energy score (mm) ↓", better="lower"),
               Column("cov90", "Coverage 90% (→ 0.9)", digits=3), Column("sharp", "Sharpness 90% (mm)"),
               Column("d_es", "ΔES (mm)", kind="delta"), Column("p_es", "p", kind="p"),
               Column("d_cal", "Δcal.", kind="delta", digits=3), Column("p_cal", "p", kind="p")]
    rows: list[Row] = []
    unconverged: list[str] = []
    reasons: list[str] = []
    datasets = column(pool, param("trial.dataset")).astype(str)
    n_of = pd.to_numeric(column(pool, param("sample.hypotheses")), errors="coerce").astype(int)
    for ds in dataset_order(datasets.unique()):
        for n in sorted(n_of[datasets == ds].unique()):
            sub = pool[(datasets == ds) & (n_of == n)]
            group = f"{ds}, N = {n}"
            is_full = (trial_lifter(sub) == "diffpose") & trial_axis(sub).isin(["hypotheses", "full"]) \
                & (column(sub, param("diffusion.mode")).fillna("paper") == "paper")
            reference = sub[is_full]
            if reference.empty:
                warn.append(f"reliability: no DiffPose (full) run at N = {n} on {ds}; no paired differences")
            for label, part in variant_rows(sub, warn, "reliability"):
                cells = {"n": Cell(text=str(len(part))), "p1": summary(column(part, metric("test_p1"))),
                         "j_best": summary(column(part, metric("test_j_best"))),
                         "cal": summary(column(part, metric("test_calibration_error"))),
                         "es": summary(column(part, metric("test_energy_score"))),
                         "cov90": summary(column(part, metric("test_coverage_90"))),
                         "sharp": summary(column(part, metric("test_sharpness_90")))}
                if part.index.isin(reference.index).all():
                    cells |= {k: Cell(text="ref" if k.startswith("d_") else "") for k in
                              ("d_es", "p_es", "d_cal", "p_cal")}
                else:
                    for name, d, pk in (("test_energy_score", "d_es", "p_es"),
                                        ("test_calibration_error", "d_cal", "p_cal")):
                        paired, reason = paired_cells(per_seed(part, name), per_seed(reference, name),
                                                       reference.empty)
                        cells |= {d: paired["delta"], pk: paired["p"]}
                        if reason and name == "test_energy_score":
                            reasons.append(f"{label} ({group}): {reason}")
                row = Row(f"{label}, N = {n}", cells, group=group)
                rows.append(mark_convergence(row, part, unconverged))
    notes = ["Hypotheses' reliability on the test subjects (diffpose.metrics.reliability, root joint excluded): "
             "calibration error = mean over q in 0, 0.05, ..., 1 of |fraction of targets inside the per-joint "
             "sphere holding a fraction q of the hypotheses - q| (0: calibrated; quantile calibration as in "
             "Pierzchlewicz et al. 2022); energy score = the multivariate CRPS per joint (Gneiting and Raftery "
             "2007; lower is better, it rewards accuracy and penalises both over- and underdispersion); coverage "
             "90%: the fraction of targets inside the 90% spheres (0.9 if calibrated); sharpness 90%: their mean "
             "radius. J-Best is an oracle (the hypothesis closest to the ground truth) and never ranked. ΔES and "
             "Δcal.: mean over seeds of (method - DiffPose full at the same N), paired by seed; p: two-sided "
             "paired t-test (scipy.stats.ttest_rel). Mean ± std over n seeds."]
    if reasons:
        notes.append("n/a: " + "; ".join(reasons) + ".")
    notes += convergence_note(unconverged)
    table = Table("reliability", "Reliability of the hypotheses: calibration, energy score, coverage and "
                  "sharpness", "Method", columns, rows, notes, [], kind="reliability", unconverged=unconverged)
    return [rank_cells(table)], warn
