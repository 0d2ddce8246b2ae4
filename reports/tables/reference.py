"""This suite's rows against another study's: the reference table.

A quick suite (the default demo) is read against a study whose rows converged (the converged study's published
results store, ``docs/results/mocap17/results.parquet``): per row both test P1s and their ratio, the row's
ratio to this suite's mean-pose row, and, for every two rows whose difference the reference finds significant
(a paired t-test over its seeds), whether this suite orders them the same way. Rows are matched by dataset and
label (the variant), not by config: the demo's GraFormer is narrower than the study's, and is compared with it
on purpose.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from diffpose.config import LIFTER_NAMES
from reports.results import column, metric, param
from reports.tables.claims import ALPHA
from reports.tables.model import (
    Cell,
    Column,
    Row,
    Table,
    converged_runs,
    convergence_note,
    mark_convergence,
    paired_test,
    summary,
)
from reports.tables.runs import dataset_order, per_seed, variant_rows

MEAN_POSE = LIFTER_NAMES["mean_pose"]   # the mean-pose row's label (reports.tables.runs.run_label)


def reference_table(runs: pd.DataFrame, reference: pd.DataFrame, source: str) -> tuple[list[Table], list[str]]:
    """The rows of ``runs`` that ``reference`` (finished trial runs of another study, read from ``source``)
    also has, side by side, and the pairs of them the reference tells apart; none when they share no row."""
    warn: list[str] = []
    columns = [Column("dataset", "Dataset", kind="text"), Column("n", "n", kind="text"),
               Column("here", "P1 here (mm)"), Column("there", "P1 reference (mm)"),
               Column("converged", "Reference converged", kind="text"),
               Column("ratio", "Here ÷ reference", digits=2), Column("mean_pose", "Here ÷ mean pose", digits=2)]
    rows: list[Row] = []
    pairs: list[Row] = []
    unconverged: list[str] = []
    here_sets, there_sets = (column(r, param("trial.dataset")).astype(str) for r in (runs, reference))
    for ds in dataset_order(set(here_sets) & set(there_sets)):
        here = dict(variant_rows(runs[here_sets == ds], warn, "reference"))
        there = dict(variant_rows(reference[there_sets == ds], warn, "reference"))
        shared = [label for label in here if label in there]
        p1 = {label: summary(column(part, metric("test_p1"))) for label, part in here.items()}
        floor = p1[MEAN_POSE].mean if MEAN_POSE in p1 else None
        for label in shared:
            ref = summary(column(there[label], metric("test_p1")))
            done = converged_runs(there[label])
            cells = {"dataset": Cell(text=ds), "n": Cell(text=str(len(here[label]))), "here": p1[label],
                     "there": ref, "converged": Cell(text=f"{int(done.sum())} of {len(done)}"),
                     "ratio": _ratio(p1[label], ref), "mean_pose": _ratio(p1[label], Cell(mean=floor))}
            rows.append(mark_convergence(Row(label, cells, group=ds, ranked=False), here[label], unconverged))
        for a, b in combinations(shared, 2):
            test = paired_test(per_seed(there[a], "test_p1"), per_seed(there[b], "test_p1"))
            if test.p is None or test.p >= ALPHA:
                continue
            low, high = (a, b) if test.delta < 0 else (b, a)
            gap = None if p1[low].mean is None or p1[high].mean is None else p1[high].mean - p1[low].mean
            order = "not measured" if gap is None else "same" if gap > 0 else "opposite"
            pairs.append(Row(f"{low} < {high}", {
                "dataset": Cell(text=ds), "there": Cell(mean=abs(test.delta), std=test.delta_std, n=test.pairs),
                "p": Cell(mean=test.p, n=test.pairs), "here": Cell(mean=gap), "order": Cell(text=order)},
                group=ds, ranked=False))
    if not rows:
        return [], warn
    notes = [f"Reference: {source}. Test P1, mean ± std over seeds; rows matched by dataset and variant, not by "
             "config. Here ÷ mean pose: this suite's row over its mean-pose row."]
    tables = [Table("reference", "Against the reference study: test P1 here and there", "Variant", columns, rows,
                    notes + convergence_note(unconverged), kind="reference", unconverged=unconverged)]
    same = sum(r.cells["order"].text == "same" for r in pairs)
    pair_columns = [Column("dataset", "Dataset", kind="text"), Column("there", "Reference gap (mm)"),
                    Column("p", "p", kind="p"), Column("here", "Gap here (mm)", kind="delta"),
                    Column("order", "Order here", kind="text")]
    tables.append(Table(
        "reference_pairs", "Against the reference study: the rows it tells apart, ordered here", "Lower < higher",
        pair_columns, pairs,
        [f"Reference: {source}. Every two rows of the table above whose test P1 the reference tells apart "
         f"(two-sided paired t-test over its seeds, p < {ALPHA}, not corrected for the number of pairs): its gap "
         "(mean ± std of the paired differences), and this suite's (the higher row's mean minus the lower's). "
         f"{same} of {len(pairs)} in the same order here." if pairs else
         f"Reference: {source}. It tells no two of the rows above apart (paired t-test over its seeds, "
         f"p < {ALPHA})."], kind="reference"))
    return tables, warn


def _ratio(a: Cell, b: Cell) -> Cell:
    return Cell(mean=a.mean / b.mean) if a.mean is not None and b.mean else Cell()
