"""Ablation tables: one per axis of the paper's ablations (GMM, context, heatmap initialisation, mode, K, M, N),
each variant against full DiffPose per dataset and protocol, with paired differences over seeds and their
p-values."""

from __future__ import annotations

from typing import Any

import pandas as pd

from diffpose.config import ABLATION_KEYS
from reports.results import PROTOCOL_FIELDS, column, describe_protocol, metric, param
from reports.tables.model import (
    MISSING,
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
from reports.tables.runs import (
    ABLATION_AXES,
    COMPARISON_AXES,
    config_split,
    missing_metrics,
    partial_text,
    per_seed,
    protocol_groups,
    reused_weights,
    trial_axis,
    trial_lifter,
)

AXIS_TITLES = {"gmm": ("GMM-based forward diffusion", "GMM"), "context": ("context encoder", "Context"),
               "heatmap_init": ("heatmap (2D-uncertainty) initialisation", "Heatmap init"),
               "mode": ("paper method vs released-code refiner", "Mode"),
               "steps": ("diffusion steps K", "K"), "kernels": ("GMM kernels M", "M"),
               "hypotheses": ("hypotheses N", "N")}


def _axis_value(frame: pd.DataFrame, axis: str) -> pd.Series:
    key = ABLATION_KEYS.get(axis)
    values = column(frame, param(key)) if key else column(frame, param("trial.value"))
    if axis == "kernels":
        return values.map(lambda v: "all" if v is not None and not pd.isna(v) and int(v) == 0 else v)
    if values.dtype == "boolean" or axis in ("gmm", "context", "heatmap_init"):
        return values.map(lambda v: MISSING if v is None or pd.isna(v) else ("yes" if bool(v) else "no"))
    return values


def _value_order(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def ablation_tables(runs: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """One table per ablation axis: the variants of the axis and full DiffPose, per dataset and protocol.

    Columns: the axis value, dataset, n seeds, P1, P2, ΔP1 = mean over paired seeds of (variant - full),
    the number of pairs, and the p-value of a two-sided paired t-test over seeds (pairs by ``trial.seed``).
    The hypotheses axis also shows the J-Best oracle in its own column.
    """
    tables: list[Table] = []
    warn: list[str] = []
    if runs.empty:
        return tables, warn
    axes = trial_axis(runs)
    present = [a for a in ABLATION_AXES if (axes == a).any()]
    present += sorted(set(axes) - set(ABLATION_AXES) - set(COMPARISON_AXES) - {"probabilistic"})
    diffpose = trial_lifter(runs) == "diffpose"
    for axis in present:
        own = ("hypotheses", "aggregate") if axis == "hypotheses" else ()
        fields = tuple(f for f in PROTOCOL_FIELDS if f not in own)
        pool = runs[diffpose & axes.isin([axis, "full"])]
        groups = [(p, g) for p, g in protocol_groups(pool, fields) if (trial_axis(g) == axis).any()]
        tables.append(rank_cells(_ablation_table(axis, groups, fields, warn)))
    return tables, warn


def _ablation_table(axis: str, groups: list[tuple[dict[str, Any], pd.DataFrame]], fields: tuple[str, ...],
                    warn: list[str]) -> Table:
    title, value_header = AXIS_TITLES.get(axis, (axis, "Value"))
    columns = [Column("value", value_header, kind="text"), Column("dataset", "Dataset", kind="text"),
               Column("n", "n", kind="text"), Column("p1", "P1 (mm) ↓", better="lower"),
               Column("p2", "P2 (mm) ↓", better="lower"), Column("delta", "ΔP1 (mm)", kind="delta"),
               Column("pairs", "pairs", kind="text"), Column("p", "p", kind="p")]
    if axis == "hypotheses":
        columns.append(Column("j_best", "J-Best (oracle)", digits=1))
    name = f"ablation_{axis}"
    per_dataset: dict[str, int] = {}
    for proto, _ in groups:
        per_dataset[proto["dataset"]] = per_dataset.get(proto["dataset"], 0) + 1
    rows: list[Row] = []
    missing: dict[str, int] = {}
    notes: list[str] = []
    reasons: list[str] = []
    unconverged: list[str] = []
    shown: set[str] = set()
    for proto, runs in groups:
        ds = proto["dataset"]
        dlabel = ds if per_dataset[ds] == 1 else f"{ds} ({describe_protocol(proto, fields[1:])})"
        group = describe_protocol(proto, fields)
        notes.append(f"{dlabel}: {describe_protocol(proto, fields[1:])}.")
        axes = trial_axis(runs)
        full = runs[axes == "full"]
        reference = per_seed(full, "test_p1")
        if full.empty:
            warn.append(f"{name}: no full run for {group}; no differences or p-values there")
        values = _axis_value(runs, axis)
        variants = column(runs, param("trial.variant")).fillna("?").astype(str)
        ordered = sorted(variants[axes == axis].unique(),
                         key=lambda v: _value_order(values[variants == v].iloc[0]))
        shown.update(ordered)
        for v in (["full"] if not full.empty else []) + ordered:
            sub = runs[variants == v] if v != "full" else full
            for suffix, part in config_split(sub):
                if suffix:
                    warn.append(f"{name}: runs of {v!r} on {ds} differ in their config ({suffix})")
                label = v + (f" [{suffix}]" if suffix else "")
                vals = {str(x) for x in values[part.index] if x is not None and not pd.isna(x)}
                cells = {"value": Cell(text=", ".join(sorted(vals, key=_value_order)) or MISSING),
                         "dataset": Cell(text=dlabel), "n": Cell(text=str(len(part))),
                         "p1": summary(column(part, metric("test_p1"))),
                         "p2": summary(column(part, metric("test_p2")))}
                if axis == "hypotheses":
                    cells["j_best"] = summary(column(part, metric("test_j_best")))
                if v == "full":
                    cells |= {"delta": Cell(text="ref"), "pairs": Cell(text=""), "p": Cell(text="")}
                else:
                    paired, reason = paired_cells(per_seed(part, "test_p1"), reference, full.empty)
                    cells |= paired
                    if reason:
                        reasons.append(f"{label} on {dlabel}: {reason}")
                rows.append(mark_convergence(Row(label, cells, group=group), part, unconverged))
                for k, n in missing_metrics(part, ("test_p1", "test_p2")).items():
                    missing[k] = missing.get(k, 0) + n
    notes.insert(0, "ΔP1: mean over seeds of (variant − full) P1, paired by trial.seed; positive = a higher "
                    "error than full DiffPose. p: two-sided paired t-test over those seeds "
                    "(scipy.stats.ttest_rel). Mean ± std over n seeds. Bold: best, underline: second best "
                    "within each dataset. Protocols:")
    if reasons:
        notes.append("n/a: " + "; ".join(reasons) + ".")
    if axis == "hypotheses":
        notes.append("J-Best (oracle): per pose, the hypothesis closest to the ground truth; not comparable "
                     "with P1 and never ranked.")
    notes += reused_weights(shown)
    notes += convergence_note(unconverged)
    return Table(name, f"Ablation: {title}", "Variant", columns, rows, notes, partial_text(missing),
                 kind="ablation", unconverged=unconverged)
