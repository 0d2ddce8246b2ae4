"""The trainings table: one row per trained set of weights, with what the convergence rule saw on its validation
curve (epochs, cap, best value and its epoch, the verdict) and the test P1 of the trial it was trained for.

The other tables mark a row trained short of convergence (†); this one shows the evidence behind every verdict,
converged ones included, so a reader can judge the rule as well as the rows: seeds of one variant stopped at
very different epochs, or at very different validation values, say the rule read a noisy curve.
"""

from __future__ import annotations

import pandas as pd

from diffpose import convergence
from diffpose.config import EVALUATES, INFERENCE_AXES
from reports.results import column, metric, param
from reports.tables.model import Cell, Column, Row, Table, converged_runs, convergence_note, mark_convergence
from reports.tables.runs import dataset_order, trial_axis, variant_rows


def _trained_here(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether its variant trains the weights it evaluates (not an inference-only axis value or a
    variant that evaluates another variant's weights, such as mc_dropout)."""
    variants = column(runs, param("trial.variant")).fillna("?").astype(str)
    return ~trial_axis(runs).isin(INFERENCE_AXES) & ~variants.isin(EVALUATES)


def _number(value: object) -> Cell:
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return Cell(n=0) if pd.isna(number) else Cell(mean=float(number), n=1)


def trainings_table(runs: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """One row per training of the finished trials ``runs`` (per dataset, variant and seed: "GraFormer, seed 0"),
    in the variants' display order."""
    warn: list[str] = []
    if runs.empty:
        return [], warn
    trainings = column(runs, param("trial.training")).astype("object")
    # A run that did not log its training (an older version) stands for its own.
    trainings = trainings.where(trainings.notna(), column(runs, "run_id").astype(str))
    users = trainings.value_counts()
    metrics = column(runs, param("train.metric")).fillna("val_p1").astype(str)
    columns = [Column("dataset", "Dataset", kind="text"), Column("epochs", "Epochs", digits=0),
               Column("cap", "Cap", digits=0),
               Column("best", "Best val (mm)", digits=2), Column("best_epoch", "at epoch", digits=0),
               Column("verdict", "Converged", kind="text"), Column("test", "Test P1 (mm)"),
               Column("trials", "Trials", digits=0)]
    rows: list[Row] = []
    unconverged: list[str] = []
    seen: set[str] = set()
    datasets = column(runs, param("trial.dataset")).astype(str)
    owners = runs[_trained_here(runs)]
    for ds in dataset_order(datasets[owners.index].unique()):
        for label, part in variant_rows(owners[datasets[owners.index] == ds], warn, "trainings"):
            seeds = pd.to_numeric(column(part, param("trial.seed")), errors="coerce")
            for i in seeds.sort_values(kind="stable").index:
                if trainings[i] in seen:
                    continue
                seen.add(trainings[i])
                one = part.loc[[i]]
                run, done = one.iloc[0], bool(converged_runs(one).iloc[0])
                cells = {"dataset": Cell(text=ds), "epochs": _number(run.get(metric("epochs_trained"))),
                         "cap": _number(run.get(param("train.epochs"))),
                         "best": _number(run.get(metric(f"best_{metrics[i]}"))),
                         "best_epoch": _number(run.get(metric("best_epoch"))),
                         "verdict": Cell(text="yes" if done else "no"), "test": _number(run.get(metric("test_p1"))),
                         "trials": Cell(mean=float(users[trainings[i]]), n=1)}
                name = label if pd.isna(seeds[i]) else f"{label}, seed {int(seeds[i])}"
                rows.append(mark_convergence(Row(name, cells, group=ds, ranked=False), one, unconverged))
    used = sorted(metrics[owners.index].unique())
    notes = [f"One row per training (set of weights) of the finished trials. Epochs: those it trained, of its "
             f"cap (train.epochs). Best val: its best validation value of the selection metric "
             f"({', '.join(used)}), at that epoch, whose weights every trial on them evaluates. Converged: by the "
             f"project's rule (diffpose.convergence: {convergence.DESCRIPTION}); no: it reached its cap first. "
             "Test P1: the trial it was trained for. Trials: the finished trials that evaluate these weights "
             "(other steps K, hypotheses N, the heatmap initialisation, the sampled baselines). Trainings "
             "without a finished trial are not shown (diffpose-bench progress lists them)."]
    table = Table("trainings", "Trainings: epochs, best validation value and the convergence rule's verdict",
                  "Variant", columns, rows, notes + convergence_note(unconverged), kind="trainings",
                  unconverged=unconverged)
    return [table], warn
