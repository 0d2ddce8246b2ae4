"""Comparison tables: per dataset (and protocol), the measured full model and baselines beside the published
numbers of the same 2D input and frame class. Human3.6M in the paper's Table 1 layout (15 actions and Avg,
P1 and P2 panels); MPI-INF-3DHP with PCK, AUC and MPJPE; any other dataset with its own actions."""

from __future__ import annotations

from typing import Any

import pandas as pd

from reports.results import column, describe_protocol, metric, param
from reports.tables.model import (
    INPUT_UNSTATED,
    Cell,
    Column,
    Row,
    Table,
    convergence_note,
    mark_convergence,
    rank_cells,
    summary,
)
from reports.tables.published import one_row_per_method, published_notes, published_rows, source_marks
from reports.tables.runs import (
    COMPARISON_AXES,
    DATASET_NAMES,
    H36M_ACTIONS,
    H36M_SHORT,
    dataset_order,
    differing,
    frame_class,
    input_kind,
    missing_metrics,
    partial_text,
    protocol_groups,
    same_frame_class,
    trial_axis,
    variant_rows,
)


def _measured_cells(runs: pd.DataFrame, keys: dict[str, str]) -> dict[str, Cell]:
    cells = {"n": Cell(text=str(len(runs)))}
    frames = column(runs, param("data.frames")).dropna().unique()
    cells["T"] = Cell(text=",".join(str(int(f)) for f in sorted(frames)))
    for key, name in keys.items():
        cells[key] = summary(column(runs, metric(name)))
    return cells


def _split_title(base: str, index: int, count: int, proto: dict[str, Any], fields: list[str]) -> str:
    if count == 1:
        return base
    what = describe_protocol(proto, tuple(fields)) or "see footnote"
    return f"{base}, protocol {index + 1} of {count} ({what})"


def comparison_tables(runs: pd.DataFrame, published: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """One comparison table per dataset (and per protocol when the runs mix protocols).

    Human3.6M: the paper's Table 1 layout (15 actions + Avg, P1 and P2 panels) with published rows of the
    same 2D input; MPI-INF-3DHP: PCK, AUC, MPJPE; any other dataset: its own actions, no published rows.
    """
    tables: list[Table] = []
    warn: list[str] = []
    if runs.empty:
        return tables, warn
    datasets = column(runs, param("trial.dataset")).astype(str)
    chosen = runs[trial_axis(runs).isin(COMPARISON_AXES)]
    for ds in dataset_order(datasets.unique()):
        sub = chosen[datasets[chosen.index] == ds]
        if sub.empty:
            warn.append(f"{ds}: no full/baseline runs; no comparison table (see the ablation tables)")
            continue
        groups = protocol_groups(sub)
        fields = differing([g for g, _ in groups])
        if len(groups) > 1:
            warn.append(f"{ds}: the runs use {len(groups)} protocols (they differ in {', '.join(fields)}); "
                        f"one comparison table per protocol")
        for i, (proto, part) in enumerate(groups):
            name = f"comparison_{ds}" + (f"_{i + 1}" if len(groups) > 1 else "")
            build = _mpi3dhp_table if ds == "mpi3dhp" else _action_table
            table = build(part, proto, published, name, warn)
            table.title = _split_title(table.title, i, len(groups), proto, fields)
            tables.append(rank_cells(table))
    return tables, warn


def _action_table(runs: pd.DataFrame, proto: dict[str, Any], published: pd.DataFrame, name: str,
                  warn: list[str]) -> Table:
    ds = proto["dataset"]
    if ds == "h36m":
        acts = list(H36M_ACTIONS)
        short = H36M_SHORT
    else:
        acts = sorted(set(_actions_of(runs, "test_p1")) | set(_actions_of(runs, "test_p2")))
        short = {a: a for a in acts}
    columns = [Column("T", "T", kind="text"), Column("n", "n", kind="text")]
    columns += [Column(a, short[a], better="lower") for a in acts] + [Column("avg", "Avg", better="lower")]
    panels = {"p1": "Protocol #1: MPJPE (mm) ↓", "p2": "Protocol #2: P-MPJPE (mm) ↓"}
    if column(runs, metric("test_mpjve")).notna().any():  # evaluated on consecutive frames (video)
        panels["mpjve"] = "MPJVE (mm/frame) ↓"
    kind = input_kind(proto["detector"])
    pub = published[(published["dataset"] == ds) & (published["input"] == kind)
                    & same_frame_class(published["frames"], proto["frames"])] if ds == "h36m" \
        else published.iloc[0:0]
    marks = source_marks(pub)
    rows: list[Row] = []
    missing: dict[str, int] = {}
    unconverged: list[str] = []
    measured = variant_rows(runs, warn, name)
    multi = column(runs, param("sample.hypotheses")).fillna(1).astype(int) > 1
    for stem, panel in panels.items():
        keys = {a: f"test_{stem}.{a}" for a in acts} | {"avg": f"test_{stem}"}
        fair = pub[(pub["protocol"] == stem) & ~pub["oracle"].astype(bool)]
        rows += published_rows(fair, panel, {a: a for a in acts} | {"avg": "avg"}, "Published", marks, True)
        for label, part in measured:
            row = Row(label, _measured_cells(part, keys), panel=panel, section="Measured here")
            rows.append(mark_convergence(row, part, unconverged))
            for k, n in missing_metrics(part, keys.values()).items():
                missing[k] = missing.get(k, 0) + n
        oracle_pub = pub[(pub["protocol"] == stem) & pub["oracle"].astype(bool)]
        rows += published_rows(oracle_pub, panel, {"avg": "avg"}, "Oracle", marks, False)
        best = {"p1": "test_j_best", "p2": "test_p_best"}.get(stem)
        for label, part in measured if best else ():
            if multi[part.index].any() and column(part, metric(best)).notna().any():
                cells = _measured_cells(part, {"avg": best})
                row = Row(f"{label}, best of N (oracle)", cells, panel=panel, section="Oracle", ranked=False)
                rows.append(mark_convergence(row, part, unconverged))
    n_runs = len(runs)
    notes = [f"Protocol of the measured rows: {describe_protocol(proto)}; mean ± std over n seeds "
             f"({n_runs} run{'s' if n_runs != 1 else ''}); Avg is the mean of the per-action means; "
             "errors in mm, lower is better. Bold: best, underline: second best per column among the "
             "non-oracle rows."]
    if "mpjve" in panels:
        notes.append("MPJVE: mean per-joint velocity error between consecutive test frames of a clip (mm per "
                     "frame), mean of the per-action means; – for runs evaluated on every n-th frame.")
    if ds == "h36m":
        notes.append(f"Published rows: numbers as their sources report them, "
                     f"{frame_class(proto['frames'])} methods with the same 2D input ({kind or 'unknown'}); "
                     "T is each method's frames and the test-time augmentation is its own. Published rows "
                     "with another input or frame class are not shown.")
    if any(r.section == "Oracle" for r in rows):
        notes.append("Oracle rows pick, per pose, the hypothesis closest to the ground truth "
                     "(J-Best/P-Best): not comparable with the other rows and never ranked.")
    notes += published_notes(pub, marks) + convergence_note(unconverged)
    metrics_named = "P1, P2 and MPJVE" if "mpjve" in panels else "P1 and P2"
    title = f"{DATASET_NAMES.get(ds, ds)}: comparison per action ({metrics_named})"
    return Table(name, title, "Method", columns, rows, notes, partial_text(missing), kind="comparison",
                 unconverged=unconverged)


def _actions_of(runs: pd.DataFrame, stem: str) -> list[str]:
    prefix = metric(stem) + "."
    return [c[len(prefix):] for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()]


def _mpi3dhp_table(runs: pd.DataFrame, proto: dict[str, Any], published: pd.DataFrame, name: str,
                   warn: list[str]) -> Table:
    columns = [Column("T", "T", kind="text"), Column("n", "n", kind="text"),
               Column("pck", "PCK (%) ↑", better="higher"), Column("auc", "AUC (%) ↑", better="higher"),
               Column("mpjpe", "MPJPE (mm) ↓", better="lower")]
    kind = input_kind(proto["detector"])
    pub = published[(published["dataset"] == "mpi3dhp") & published["input"].isin([kind, ""])
                    & same_frame_class(published["frames"], proto["frames"])
                    & ~published["oracle"].astype(bool)]
    merged = one_row_per_method(pub, ("pck", "auc", "mpjpe"))
    marks = source_marks(pub)
    rows = published_rows(merged, "", {k: k for k in ("pck", "auc", "mpjpe")}, "Published", marks, True)
    keys = {"pck": "test_pck", "auc": "test_auc", "mpjpe": "test_mpjpe"}
    missing: dict[str, int] = {}
    unconverged: list[str] = []
    for label, part in variant_rows(runs, warn, name):
        rows.append(mark_convergence(Row(label, _measured_cells(part, keys), section="Measured here"), part,
                                      unconverged))
        for k, n in missing_metrics(part, keys.values()).items():
            missing[k] = missing.get(k, 0) + n
    notes = [f"Protocol of the measured rows: {describe_protocol(proto)}; TS1-TS6 valid frames; "
             "PCK at 150 mm, AUC over 0-150 mm; mean ± std over n seeds. Bold: best, underline: second best "
             "per column.",
             f"Published rows: {frame_class(proto['frames'])} methods with the same 2D input ({kind}), or "
             f"input and frames not stated ({INPUT_UNSTATED})."]
    notes += published_notes(pub, marks) + convergence_note(unconverged)
    title = "MPI-INF-3DHP: PCK, AUC and MPJPE"
    return Table(name, title, "Method", columns, rows, notes, partial_text(missing), kind="mpi3dhp",
                 unconverged=unconverged)
