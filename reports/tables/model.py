"""A table as data: columns, rows of cells, notes; the statistics behind a cell; the best-two ranking; the †
of a row trained short of convergence.

Every number in a table is a statistic over tracked runs (mean ± sample std over seeds, ``n`` runs) or a row
of ``published.csv`` with its source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from diffpose import convergence
from reports.results import column, metric

MISSING = "–"
NOT_CONVERGED = "†"
UNVERIFIED = "*"
INPUT_UNSTATED = "‡"


@dataclass(frozen=True)
class Column:
    key: str
    header: str                      # plain / Markdown header (unicode allowed; escaped for LaTeX)
    better: str | None = None        # "lower" | "higher": ranked (bold best, underline second)
    digits: int = 1
    kind: str = "num"                # "num" | "delta" (signed) | "p" (p-value) | "text"


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None
    n: int | None = None             # runs behind the number; None for published numbers and text
    text: str | None = None          # shown instead of the number ("ref", "n/a", "243")
    rank: int = 0                    # 1 best, 2 second best


@dataclass
class Row:
    label: str
    cells: dict[str, Cell]
    panel: str = ""                  # a block with its own ranking, e.g. "Protocol #1: MPJPE (mm)"
    section: str = ""                # "Published", "Measured here", "Oracle" (a rule between sections)
    group: str = ""                  # rows ranked together within a panel (ablations: dataset + protocol)
    ranked: bool = True              # oracle rows never take part in the ranking
    marks: tuple[str, ...] = ()      # footnote marks after the label: source letters, * unverified,
                                     # † not converged


@dataclass
class Table:
    name: str                        # file stem
    title: str
    label_header: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)   # "1 run missing test_p2"
    kind: str = ""                   # "comparison" | "mpi3dhp" | "ablation" | "reliability" | "cost" | "search"
    unconverged: list[str] = field(default_factory=list)  # "label (epochs)" of the rows marked †

    @property
    def caption(self) -> str:
        return self.title + (f" (partial: {'; '.join(self.partial)})" if self.partial else "")


# ---- statistics --------------------------------------------------------------------------------------------

def summary(values: Iterable[Any]) -> Cell:
    """Mean and sample standard deviation (ddof = 1; None for one value) of the non-missing values."""
    v = pd.to_numeric(pd.Series(list(values), dtype="object"), errors="coerce").dropna().astype(np.float64)
    if v.empty:
        return Cell(n=0)
    agg = v.agg(["mean", "std", "count"])
    return Cell(mean=float(agg["mean"]), std=float(agg["std"]) if len(v) > 1 else None, n=int(agg["count"]))


@dataclass(frozen=True)
class Paired:
    """Variant minus reference over seeds present in both: d_s = x_s - r_s, delta = mean_s d_s."""

    delta: float | None
    delta_std: float | None
    pairs: int
    p: float | None
    reason: str = ""                 # why there is no p-value


def paired_test(variant: pd.Series, reference: pd.Series) -> Paired:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``) of two per-seed series indexed by seed."""
    variant, reference = variant.dropna().astype(float), reference.dropna().astype(float)
    seeds = variant.index.intersection(reference.index).sort_values()
    x, r = variant.loc[seeds].to_numpy(), reference.loc[seeds].to_numpy()
    d = x - r
    if len(seeds) == 0:
        return Paired(None, None, 0, None, "no seed shared with the full model")
    delta = float(d.mean())
    if len(seeds) < 2:
        return Paired(delta, None, 1, None, "1 paired seed; a paired test needs at least 2")
    if np.ptp(d) == 0.0:
        return Paired(delta, 0.0, len(seeds), None, "identical differences over seeds (zero variance)")
    return Paired(delta, float(d.std(ddof=1)), len(seeds), float(stats.ttest_rel(x, r).pvalue))


def paired_cells(variant: pd.Series, reference: pd.Series, no_reference: bool) -> tuple[dict[str, Cell], str]:
    """ΔP1 (``delta``), ``pairs`` and ``p`` cells of a paired test, and why there is no p-value ("" when there
    is one)."""
    test = paired_test(variant, reference) if not no_reference else \
        Paired(None, None, 0, None, "no full run with the same protocol")
    p = Cell(mean=test.p, n=test.pairs) if test.p is not None else Cell(text="n/a")
    cells = {"delta": Cell(mean=test.delta, std=test.delta_std, n=test.pairs),
             "pairs": Cell(text=str(test.pairs)), "p": p}
    return cells, test.reason


def rank_cells(table: Table) -> Table:
    """Mark the best (1) and second best (2) value per column within each (panel, group) of ranked rows.

    Values are compared as displayed (rounded to the column's digits), so equal-looking numbers tie: a dense
    rank (``pandas.Series.rank(method="dense")``) over the rounded values.
    """
    for col in [c for c in table.columns if c.better]:
        cells = [(row.panel, row.group, cell) for row in table.rows
                 if row.ranked and (cell := row.cells.get(col.key)) is not None and cell.mean is not None
                 and cell.text is None]
        if not cells:
            continue
        frame = pd.DataFrame({"panel": [p for p, _, _ in cells], "group": [g for _, g, _ in cells],
                              "value": [round(c.mean, col.digits) for _, _, c in cells]})
        ranks = frame.groupby(["panel", "group"])["value"].rank(method="dense", ascending=col.better == "lower")
        for (_, _, cell), rank in zip(cells, ranks, strict=True):
            cell.rank = int(rank) if rank <= 2 else 0
    return table


# ---- convergence --------------------------------------------------------------------------------------------

def converged_runs(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether its training converged by the project's rule (diffpose.convergence); a run that
    did not log it counts as not converged."""
    return pd.to_numeric(column(runs, metric("converged")), errors="coerce").fillna(0.0) == 1.0


def epochs_text(runs: pd.DataFrame) -> str:
    """The epochs the runs trained, "3" or "3-5" ("?" where not logged)."""
    epochs = pd.to_numeric(column(runs, metric("epochs_trained")), errors="coerce").dropna().astype(int)
    if epochs.empty:
        return "?"
    lo, hi = int(epochs.min()), int(epochs.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def mark_convergence(row: Row, runs: pd.DataFrame, table: list[str]) -> Row:
    """Give ``row`` the † of a row trained short of convergence and note it in ``table`` (once per label)."""
    if converged_runs(runs).all():
        return row
    row.marks = (*row.marks, NOT_CONVERGED)
    entry = f"{row.label} ({epochs_text(runs)} epochs)"
    if entry not in table:
        table.append(entry)
    return row


def convergence_note(unconverged: list[str]) -> list[str]:
    if not unconverged:
        return []
    return [f"{NOT_CONVERGED} trained short of convergence by the project's rule (diffpose.convergence: "
            f"{convergence.DESCRIPTION}): "
            + "; ".join(unconverged) + "."]
