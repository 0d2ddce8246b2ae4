"""Paper tables from the results store: built as data (:class:`Table`), rendered as LaTeX, Markdown and CSV.

Every number in a table is a statistic over tracked runs (mean +- sample std over seeds, ``n`` runs) or a
row of ``published.csv`` with its source. Rows that differ in the evaluation protocol are split into separate
tables or labelled; a table with runs missing a metric says so in its caption ("partial: ...").
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from diffpose.config import ABLATION_KEYS, LIFTER_NAMES
from diffpose.train import CONVERGENCE_MIN_EPOCHS, CONVERGENCE_TOLERANCE
from reports.results import (
    PARAM,
    PROTOCOL_FIELDS,
    RUN_IDENTITY_PARAMS,
    column,
    describe_protocol,
    metric,
    param,
    protocol,
    tag,
)

log = logging.getLogger(__name__)

PUBLISHED_CSV = Path(__file__).with_name("published.csv")

# Human3.6M actions in the paper's Table 1 order, with its short headers.
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
                "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether")
H36M_SHORT = dict(zip(H36M_ACTIONS, ("Dir", "Disc", "Eat", "Greet", "Phone", "Photo", "Pose", "Pur", "Sit",
                                     "SitD", "Smoke", "Wait", "WalkD", "Walk", "WalkT"), strict=True))

DATASET_ORDER = ("h36m", "mpi3dhp", "mocap17")
DATASET_NAMES = {"h36m": "Human3.6M", "mpi3dhp": "MPI-INF-3DHP", "mocap17": "mocap17 (CMU stand-in)"}
# Variants shown in the comparison tables; the ablation axes get their own tables.
COMPARISON_AXES = ("full", "baseline", "reference", "mode", "unknown")
ABLATION_AXES = tuple(ABLATION_KEYS)
AXIS_TITLES = {"gmm": ("GMM-based forward diffusion", "GMM"), "context": ("context encoder", "Context"),
               "heatmap_init": ("heatmap (2D-uncertainty) initialisation", "Heatmap init"),
               "mode": ("paper method vs released-code refiner", "Mode"),
               "steps": ("diffusion steps K", "K"), "kernels": ("GMM kernels M", "M"),
               "hypotheses": ("hypotheses N", "N")}

MISSING = "–"
NOT_CONVERGED = "†"
UNVERIFIED = "*"
INPUT_UNSTATED = "‡"


# ---- the table as data -------------------------------------------------------------------------------------

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
    section: str = ""                # "Published", "Measured here", "Oracle ..." (a rule between sections)
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
    kind: str = ""                   # "comparison" | "mpi3dhp" | "ablation" | "reliability" | "cost"
    unconverged: list[str] = field(default_factory=list)  # "label (epochs)" of the rows marked †

    @property
    def caption(self) -> str:
        return self.title + (f" (partial: {'; '.join(self.partial)})" if self.partial else "")


# ---- statistics --------------------------------------------------------------------------------------------

def summary(values: Iterable[Any]) -> Cell:
    """Mean and sample standard deviation (ddof = 1; None for one value) of the non-missing values."""
    v = np.asarray([float(x) for x in values if x is not None and not pd.isna(x)], dtype=np.float64)
    if v.size == 0:
        return Cell(n=0)
    return Cell(mean=float(v.mean()), std=float(v.std(ddof=1)) if v.size > 1 else None, n=int(v.size))


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


def rank_cells(table: Table) -> Table:
    """Mark the best (1) and second best (2) value per column within each (panel, group) of ranked rows.

    Values are compared as displayed (rounded to the column's digits), so equal-looking numbers tie.
    """
    for col in [c for c in table.columns if c.better]:
        blocks: dict[tuple[str, str], list[Cell]] = {}
        for row in table.rows:
            cell = row.cells.get(col.key)
            if row.ranked and cell is not None and cell.mean is not None and cell.text is None:
                blocks.setdefault((row.panel, row.group), []).append(cell)
        for cells in blocks.values():
            sign = 1.0 if col.better == "lower" else -1.0
            order = sorted({round(c.mean, col.digits) * sign for c in cells})
            for c in cells:
                key = round(c.mean, col.digits) * sign
                c.rank = 1 if key == order[0] else (2 if len(order) > 1 and key == order[1] else 0)
    return table


# ---- convergence --------------------------------------------------------------------------------------------

def converged_runs(runs: pd.DataFrame) -> pd.Series:
    """Per run: whether its training converged by the project's rule (diffpose.train.converged); a run that
    did not log it counts as not converged."""
    return pd.to_numeric(column(runs, metric("converged")), errors="coerce").fillna(0.0) == 1.0


def epochs_text(runs: pd.DataFrame) -> str:
    """The epochs the runs trained, "3" or "3-5" ("?" where not logged)."""
    epochs = pd.to_numeric(column(runs, metric("epochs_trained")), errors="coerce").dropna().astype(int)
    if epochs.empty:
        return "?"
    lo, hi = int(epochs.min()), int(epochs.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _mark_convergence(row: Row, runs: pd.DataFrame, table: list[str]) -> Row:
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
    return [f"{NOT_CONVERGED} trained short of convergence by the project's rule (diffpose.train.converged: "
            f"after {CONVERGENCE_MIN_EPOCHS} epochs or more, the best validation value of the last quarter of "
            f"the epochs improves on the best before it by less than {CONVERGENCE_TOLERANCE:.0%}): "
            + "; ".join(unconverged) + "."]


# ---- inputs ------------------------------------------------------------------------------------------------

def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published-numbers data file: one row per (method, input, protocol), source, verified flag."""
    frame = pd.read_csv(path)
    missing = {"dataset", "method", "frames", "input", "protocol", "avg", "source", "verified", "oracle"} \
        - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    frame["input"] = frame["input"].fillna("")
    frame["note"] = frame["note"].fillna("") if "note" in frame.columns else ""
    return frame


def input_kind(detector: str | None) -> str:
    """The 2D source family a published number is keyed by: cpn, gt, sh or the detector name itself."""
    d = (detector or "").lower()
    if d.startswith("cpn"):
        return "cpn"
    if d in ("gt", "ground_truth", "groundtruth"):
        return "gt"
    if d.startswith("sh") or "hourglass" in d:
        return "sh"
    return d


def frame_class(frames: Any) -> str:
    """"frame-based" (T = 1) or "video-based" (T > 1): the paper ranks the two in separate tables."""
    if frames is None or pd.isna(frames):
        return "unknown"
    return "frame-based" if int(frames) == 1 else "video-based"


def same_frame_class(frames: pd.Series, reference: Any) -> pd.Series:
    """Published rows in the frame class of ``reference``; rows whose frames are not stated count as any."""
    return frames.isna() | (frames.map(frame_class) == frame_class(reference))


def dataset_order(datasets: Iterable[str]) -> list[str]:
    known = [d for d in DATASET_ORDER if d in set(datasets)]
    return known + sorted(set(datasets) - set(DATASET_ORDER))


def trial_axis(frame: pd.DataFrame) -> pd.Series:
    """``trial.axis`` per run; "unknown" where not logged."""
    return column(frame, param("trial.axis")).fillna("unknown").astype(str)


def trial_lifter(frame: pd.DataFrame) -> pd.Series:
    """``model.lifter`` per run; "diffpose" where not logged."""
    return column(frame, param("model.lifter")).fillna("diffpose").astype(str)


def _seed(frame: pd.DataFrame) -> pd.Series:
    seed = column(frame, param("trial.seed"))
    return seed.fillna(column(frame, param("train.seed")))


def run_label(variant: str, lifter: str, axis: str) -> str:
    if axis == "probabilistic":
        return f"{LIFTER_NAMES.get(lifter, lifter)} ({variant.replace('_', ' ')})"
    if axis == "baseline" or lifter != "diffpose":
        return LIFTER_NAMES.get(lifter, variant)
    return "DiffPose" if variant == "full" else f"DiffPose ({variant})"


def config_split(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Runs of one variant split by the config keys they disagree on (besides seed and machine).

    Returns ``[("", runs)]`` when they agree, else one ``("train.epochs=20", subset)`` per configuration.
    """
    skip = {param(k) for k in RUN_IDENTITY_PARAMS}
    cols = [c for c in runs.columns if c.startswith(PARAM) and c not in skip]
    if len(runs) < 2:
        return [("", runs)]
    counts = runs[cols].nunique(dropna=False)
    keys = list(counts.index[counts > 1])
    if not keys:
        return [("", runs)]
    labels = runs[keys].astype("object").where(runs[keys].notna(), "<unset>").astype(str)
    suffix = labels.apply(lambda r: ", ".join(f"{k[len(PARAM):]}={v}" for k, v in r.items()), axis=1)
    return [(s, runs[suffix == s]) for s in sorted(suffix.unique())]


def protocol_groups(runs: pd.DataFrame, fields: tuple[str, ...] = PROTOCOL_FIELDS
                    ) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """Runs grouped by protocol (the ``fields`` of :func:`reports.results.protocol`).

    A baseline lifter has no hypotheses or aggregation: it joins every DiffPose group that agrees on the
    other fields (so the same baseline row may appear beside several DiffPose protocols).
    """
    if runs.empty:
        return []
    protos = [protocol(r) for _, r in runs.iterrows()]
    keys = [tuple(p[f] for f in fields) for p in protos]
    loose = [i for i, p in enumerate(protos) if p["hypotheses"] is None]
    strict = [i for i in range(len(protos)) if i not in set(loose)]
    base_fields = [j for j, f in enumerate(fields) if f not in ("hypotheses", "aggregate")]

    def base(key: tuple) -> tuple:
        return tuple(key[j] for j in base_fields)

    members: dict[tuple, list[int]] = {}
    for i in strict:
        members.setdefault(keys[i], []).append(i)
    for i in loose:
        homes = [k for k in members if base(k) == base(keys[i]) and any(j in strict for j in members[k])]
        for k in homes or [keys[i]]:
            members.setdefault(k, []).append(i)
    out = []
    for key in sorted(members, key=lambda k: tuple(str(x) for x in k)):
        proto = dict(zip(fields, key, strict=True))
        out.append((proto, runs.iloc[sorted(set(members[key]))]))
    return out


def differing(protos: list[dict[str, Any]]) -> list[str]:
    """Protocol fields whose value is not the same in all ``protos``."""
    fields = protos[0].keys() if protos else []
    return [f for f in fields if len({str(p.get(f)) for p in protos}) > 1]


def _missing(runs: pd.DataFrame, names: Iterable[str]) -> dict[str, int]:
    """Metric name -> number of runs without it."""
    out = {}
    for name in names:
        col = column(runs, metric(name))
        n = int(col.isna().sum())
        if n:
            out[name] = n
    return out


def _partial_text(missing: dict[str, int]) -> list[str]:
    """``{"test_p1.Walking": 1, "test_p1.Eating": 1}`` -> ``["1 run missing test_p1.Eating,
    test_p1.Walking"]``."""
    by_count: dict[int, list[str]] = {}
    for name, n in sorted(missing.items()):
        by_count.setdefault(n, []).append(name)
    out = []
    for n, names in sorted(by_count.items()):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        out.append(f"{n} run{'s' if n > 1 else ''} missing {shown}")
    return out


def variant_rows(runs: pd.DataFrame, warn: list[str], where: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, runs) per variant of ``runs`` in display order: DiffPose full, its variants, baselines."""
    out = []
    variants = column(runs, param("trial.variant")).fillna("?").astype(str)
    lifters, axes = trial_lifter(runs), trial_axis(runs)
    order = sorted(variants.unique(), key=lambda v: (
        (lifters[variants == v] != "diffpose").any(), v != "full", v))
    for v in order:
        sub = runs[variants == v]
        label = run_label(v, lifters[variants == v].iloc[0], axes[variants == v].iloc[0])
        splits = config_split(sub)
        if len(splits) > 1:
            warn.append(f"{where}: the runs of variant {v!r} differ in their config "
                        f"({'; '.join(s for s, _ in splits)}); shown as separate rows")
        out += [(f"{label} [{s}]" if s else label, part) for s, part in splits]
    return out


# ---- comparison (Table-1 layout) ---------------------------------------------------------------------------

def _source_marks(published: pd.DataFrame) -> dict[str, str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return {s: letters[i % 26] for i, s in enumerate(dict.fromkeys(published["source"]))}


def _published_rows(published: pd.DataFrame, panel: str, keys: dict[str, str], section: str,
                    marks: dict[str, str], ranked: bool) -> list[Row]:
    rows = []
    for _, p in published.iterrows():
        frames = "" if pd.isna(p["frames"]) else str(int(p["frames"]))
        cells = {"T": Cell(text=frames), "n": Cell(text="")}
        for key, src in keys.items():
            value = p.get(src)
            cells[key] = Cell(mean=None if value is None or pd.isna(value) else float(value))
        flags = (marks[p["source"]],) + (() if bool(p["verified"]) else (UNVERIFIED,)) \
            + ((INPUT_UNSTATED,) if not p["input"] else ())
        label = str(p["method"]) + (" (oracle)" if bool(p["oracle"]) else "")
        rows.append(Row(label, cells, panel=panel, section=section, ranked=ranked, marks=flags))
    return rows


def _measured_cells(runs: pd.DataFrame, keys: dict[str, str]) -> dict[str, Cell]:
    cells = {"n": Cell(text=str(len(runs)))}
    frames = column(runs, param("data.frames")).dropna().unique()
    cells["T"] = Cell(text=",".join(str(int(f)) for f in sorted(frames)))
    for key, name in keys.items():
        cells[key] = summary(column(runs, metric(name)))
    return cells


def _notes_for_published(published: pd.DataFrame, marks: dict[str, str]) -> list[str]:
    notes = []
    if len(published):
        notes.append("Sources: " + "; ".join(f"{m}: {s}" for s, m in marks.items()
                                              if s in set(published["source"])) + ".")
        noted = published[published["note"] != ""]
        extra = [f"{method} ({', '.join(g['protocol'].str.upper())}): {note}"
                 for (method, note), g in noted.groupby(["method", "note"], sort=False)]
        if extra:
            notes.append("Notes on published rows: " + "; ".join(extra) + ".")
        if not published["verified"].astype(bool).all():
            notes.append(f"{UNVERIFIED} not verified in its primary source (see its source); treat with care.")
        if (published["input"] == "").any():
            notes.append(f"{INPUT_UNSTATED} the source does not state the 2D input.")
    return notes


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
    marks = _source_marks(pub)
    rows: list[Row] = []
    missing: dict[str, int] = {}
    unconverged: list[str] = []
    measured = variant_rows(runs, warn, name)
    multi = column(runs, param("sample.hypotheses")).fillna(1).astype(int) > 1
    for stem, panel in panels.items():
        keys = {a: f"test_{stem}.{a}" for a in acts} | {"avg": f"test_{stem}"}
        fair = pub[(pub["protocol"] == stem) & ~pub["oracle"].astype(bool)]
        rows += _published_rows(fair, panel, {a: a for a in acts} | {"avg": "avg"}, "Published", marks, True)
        for label, part in measured:
            row = Row(label, _measured_cells(part, keys), panel=panel, section="Measured here")
            rows.append(_mark_convergence(row, part, unconverged))
            for k, n in _missing(part, keys.values()).items():
                missing[k] = missing.get(k, 0) + n
        oracle_pub = pub[(pub["protocol"] == stem) & pub["oracle"].astype(bool)]
        rows += _published_rows(oracle_pub, panel, {"avg": "avg"}, "Oracle", marks, False)
        best = {"p1": "test_j_best", "p2": "test_p_best"}.get(stem)
        for label, part in measured if best else ():
            if multi[part.index].any() and column(part, metric(best)).notna().any():
                cells = _measured_cells(part, {"avg": best})
                row = Row(f"{label}, best of N (oracle)", cells, panel=panel, section="Oracle", ranked=False)
                rows.append(_mark_convergence(row, part, unconverged))
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
    notes += _notes_for_published(pub, marks) + convergence_note(unconverged)
    metrics_named = "P1, P2 and MPJVE" if "mpjve" in panels else "P1 and P2"
    title = f"{DATASET_NAMES.get(ds, ds)}: comparison per action ({metrics_named})"
    return Table(name, title, "Method", columns, rows, notes, _partial_text(missing), kind="comparison",
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
    merged = _one_row_per_method(pub, ("pck", "auc", "mpjpe"))
    marks = _source_marks(pub)
    rows = _published_rows(merged, "", {k: k for k in ("pck", "auc", "mpjpe")}, "Published", marks, True)
    keys = {"pck": "test_pck", "auc": "test_auc", "mpjpe": "test_mpjpe"}
    missing: dict[str, int] = {}
    unconverged: list[str] = []
    for label, part in variant_rows(runs, warn, name):
        rows.append(_mark_convergence(Row(label, _measured_cells(part, keys), section="Measured here"), part,
                                      unconverged))
        for k, n in _missing(part, keys.values()).items():
            missing[k] = missing.get(k, 0) + n
    notes = [f"Protocol of the measured rows: {describe_protocol(proto)}; TS1-TS6 valid frames; "
             "PCK at 150 mm, AUC over 0-150 mm; mean ± std over n seeds. Bold: best, underline: second best "
             "per column.",
             f"Published rows: {frame_class(proto['frames'])} methods with the same 2D input ({kind}), or "
             f"input and frames not stated ({INPUT_UNSTATED})."]
    notes += _notes_for_published(pub, marks) + convergence_note(unconverged)
    title = "MPI-INF-3DHP: PCK, AUC and MPJPE"
    return Table(name, title, "Method", columns, rows, notes, _partial_text(missing), kind="mpi3dhp",
                 unconverged=unconverged)


def _one_row_per_method(published: pd.DataFrame, protocols: tuple[str, ...]) -> pd.DataFrame:
    """Published rows (one per metric) merged into one row per method, input, frames and source."""
    keys = ["method", "frames", "input", "source", "mark", "verified"]
    records = []
    unstated = published.assign(frames=published["frames"].fillna(-1))      # groupby drops NaN keys
    for key, group in unstated.groupby(keys, sort=False):
        values = dict(zip(group["protocol"], group["avg"], strict=True))
        records.append(dict(zip(keys, key, strict=True)) | values)
    merged = pd.DataFrame(records, columns=keys + list(protocols))
    merged["frames"] = merged["frames"].where(merged["frames"] >= 0)
    return merged.assign(oracle=False, note="")


# ---- ablations ---------------------------------------------------------------------------------------------

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
    for proto, runs in groups:
        ds = proto["dataset"]
        dlabel = ds if per_dataset[ds] == 1 else f"{ds} ({describe_protocol(proto, fields[1:])})"
        group = describe_protocol(proto, fields)
        notes.append(f"{dlabel}: {describe_protocol(proto, fields[1:])}.")
        axes = trial_axis(runs)
        full = runs[axes == "full"]
        reference = _per_seed(full, "test_p1")
        if full.empty:
            warn.append(f"{name}: no full run for {group}; no differences or p-values there")
        values = _axis_value(runs, axis)
        variants = column(runs, param("trial.variant")).fillna("?").astype(str)
        ordered = sorted(variants[axes == axis].unique(),
                         key=lambda v: _value_order(values[variants == v].iloc[0]))
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
                    paired, reason = _paired_cells(_per_seed(part, "test_p1"), reference, full.empty)
                    cells |= paired
                    if reason:
                        reasons.append(f"{label} on {dlabel}: {reason}")
                rows.append(_mark_convergence(Row(label, cells, group=group), part, unconverged))
                for k, n in _missing(part, ("test_p1", "test_p2")).items():
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
    notes += convergence_note(unconverged)
    return Table(name, f"Ablation: {title}", "Variant", columns, rows, notes, _partial_text(missing),
                 kind="ablation", unconverged=unconverged)


def _per_seed(runs: pd.DataFrame, name: str) -> pd.Series:
    """Metric ``name`` per seed (mean when several runs share a seed)."""
    values = pd.to_numeric(column(runs, metric(name)), errors="coerce")
    seeds = _seed(runs)
    keep = values.notna() & seeds.notna()
    return values[keep].groupby(seeds[keep].astype(int).to_numpy()).mean()


def _paired_cells(variant: pd.Series, reference: pd.Series, no_reference: bool
                  ) -> tuple[dict[str, Cell], str]:
    """ΔP1, pairs and p-value cells, and why there is no p-value ("" when there is one)."""
    test = paired_test(variant, reference) if not no_reference else \
        Paired(None, None, 0, None, "no full run with the same protocol")
    p = Cell(mean=test.p, n=test.pairs) if test.p is not None else Cell(text="n/a")
    cells = {"delta": Cell(mean=test.delta, std=test.delta_std, n=test.pairs),
             "pairs": Cell(text=str(test.pairs)), "p": p}
    return cells, test.reason


# ---- reliability of the hypotheses ---------------------------------------------------------------------------

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
                        paired, reason = _paired_cells(_per_seed(part, name), _per_seed(reference, name),
                                                       reference.empty)
                        cells |= {d: paired["delta"], pk: paired["p"]}
                        if reason and name == "test_energy_score":
                            reasons.append(f"{label} ({group}): {reason}")
                row = Row(f"{label}, N = {n}", cells, group=group)
                rows.append(_mark_convergence(row, part, unconverged))
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


# ---- cost --------------------------------------------------------------------------------------------------

def cost_table(runs: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """Parameters, FLOPs per pose, training time and inference poses/s per device type, per variant."""
    warn: list[str] = []
    if runs.empty:
        return [], warn
    devices = column(runs, tag("device.type")).fillna("unknown").astype(str)
    types = sorted(devices.unique())
    hours = column(runs, metric("train_seconds")).astype(float) / 3600.0
    in_minutes = bool(hours.max() < 1.0) if hours.notna().any() else False
    flops = column(runs, metric("flops_per_pose")).astype(float)
    giga = bool(flops.max() >= 1e9) if flops.notna().any() else False
    columns = [Column("dataset", "Dataset", kind="text"), Column("n", "n", kind="text"),
               Column("params", "Params (M)", digits=2),
               Column("flops", "GFLOPs/pose" if giga else "MFLOPs/pose", digits=2 if giga else 1)]
    for t in types:
        columns += [Column(f"train_{t}", f"Train ({'min' if in_minutes else 'h'}, {t})", digits=2 if
                           not in_minutes else 1),
                    Column(f"speed_{t}", f"Poses/s ({t})", digits=0)]
    rows: list[Row] = []
    missing: dict[str, int] = {}
    unconverged: list[str] = []
    datasets = column(runs, param("trial.dataset")).astype(str)
    for ds in dataset_order(datasets.unique()):
        sub = runs[datasets == ds]
        for label, part in variant_rows(sub, warn, "cost"):
            cells = {"dataset": Cell(text=ds), "n": Cell(text=str(len(part))),
                     "params": summary(column(part, metric("params")).astype(float) / 1e6),
                     "flops": summary(column(part, metric("flops_per_pose")).astype(float)
                                      / (1e9 if giga else 1e6))}
            for t in types:
                on = part[devices[part.index] == t]
                scale = 60.0 if in_minutes else 3600.0
                cells[f"train_{t}"] = summary(column(on, metric("train_seconds")).astype(float) / scale)
                cells[f"speed_{t}"] = summary(column(on, metric("test_poses_per_second")))
            rows.append(_mark_convergence(Row(label, cells, group=ds, ranked=False), part, unconverged))
            for k, n in _missing(part, ("params", "flops_per_pose", "train_seconds",
                                         "test_poses_per_second")).items():
                missing[k] = missing.get(k, 0) + n
    epochs = sorted({str(e) for e in column(runs, param("train.epochs")).dropna()})
    names = sorted({str(d) for d in column(runs, tag("device")).dropna()})
    notes = ["Mean ± std over the runs of each variant. Params: parameters of the model used at inference "
             "(trainable and frozen). FLOPs: forward FLOPs per pose at inference, all K × N denoiser calls "
             "and the encoder. Train: wall time of training the weights, summed over epochs with validation "
             "(the context encoder's not included; K and N rows evaluate full DiffPose's weights and show "
             "their training); Poses/s: inference throughput on the test split; both per device type (– "
             "where a variant has no run on that device type).",
             f"Epochs at most: {', '.join(epochs) or 'not logged'}; devices: {', '.join(names) or 'not logged'}."]
    table = Table("cost", "Cost: parameters, FLOPs, training time and inference speed", "Variant", columns,
                  rows, notes + convergence_note(unconverged), _partial_text(missing), kind="cost",
                  unconverged=unconverged)
    return [table], warn


# ---- rendering ---------------------------------------------------------------------------------------------

def _number(value: float, digits: int, signed: bool = False) -> str:
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_p(p: float) -> str:
    """p-values: three decimals, ``<0.001`` below."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def cell_parts(cell: Cell, col: Column) -> tuple[str, str]:
    """(main, spread) strings: ``("49.7", "0.3")``; spread is empty without a std."""
    if cell.text is not None:
        return cell.text, ""
    if cell.mean is None or (isinstance(cell.mean, float) and math.isnan(cell.mean)):
        return MISSING, ""
    if col.kind == "p":
        return format_p(cell.mean), ""
    main = _number(cell.mean, col.digits, signed=col.kind == "delta")
    spread = _number(cell.std, col.digits) if cell.std else ""              # no "± 0.0" for identical values
    return main, spread


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown: **best**, <u>second</u>, mean ± std, panel and section rows in italics."""
    headers = [table.label_header] + [c.header for c in table.columns]
    align = [":---"] + ["---:" if c.kind != "text" or c.key in ("T", "n", "pairs") else ":---"
                        for c in table.columns]
    lines = [f"### {table.caption}", "", "| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    blank = [""] * len(table.columns)
    panel, section = None, None
    for row in table.rows:
        if row.panel != panel:
            panel, section = row.panel, None
            if panel:
                lines.append("| " + " | ".join([f"**{panel}**"] + blank) + " |")
        if row.section != section:
            section = row.section
            if section and len({r.section for r in table.rows}) > 1:
                lines.append("| " + " | ".join([f"*{section}*"] + blank) + " |")
        label = row.label.replace("|", "\\|") + (f"<sup>{','.join(row.marks)}</sup>" if row.marks else "")
        cells = []
        for col in table.columns:
            main, spread = cell_parts(row.cells.get(col.key, Cell()), col)
            rank = row.cells.get(col.key, Cell()).rank
            main = f"**{main}**" if rank == 1 else (f"<u>{main}</u>" if rank == 2 else main)
            cells.append(main + (f" ± {spread}" if spread else ""))
        lines.append("| " + " | ".join([label] + cells) + " |")
    lines.append("")
    lines += [f"<sub>{n}</sub>  " for n in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "†": r"\dag{}",
        "‡": r"\ddag{}", "×": r"$\times$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≥": r"$\geq$",
        "≤": r"$\leq$", "·": r"$\cdot$"}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX that pdflatex with only latex-base/recommended packages typesets."""
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    return out.encode("ascii", "replace").decode("ascii")


def to_latex(table: Table) -> str:
    """A booktabs ``table`` float with \\caption, \\label and the notes under the tabular.

    Needs only ``booktabs`` and ``graphicx`` (\\resizebox shrinks a table wider than the line, never
    enlarges it).
    """
    ncols = len(table.columns) + 1
    spec = "@{}l" + "".join("l" if c.kind == "text" and c.key not in ("T", "n", "pairs") else "r"
                            for c in table.columns) + "@{}"
    head = [tex_escape(table.label_header)] + [tex_escape(c.header) for c in table.columns]
    body = [r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    panel, section, first = None, None, True
    many_sections = len({r.section for r in table.rows}) > 1
    for row in table.rows:
        if row.panel != panel:
            if not first:
                body.append(r"\midrule")
            panel, section = row.panel, None
            if panel:
                body.append(rf"\multicolumn{{{ncols}}}{{@{{}}l}}{{\textbf{{{tex_escape(panel)}}}}} \\")
        elif row.section != section and not first and many_sections:
            body.append(r"\cmidrule(l){1-" + str(ncols) + "}")
        if row.section != section:
            section = row.section
            if section and many_sections:
                body.append(rf"\multicolumn{{{ncols}}}{{@{{}}l}}{{\textit{{{tex_escape(section)}}}}} \\")
        elif row.group and not first and table.rows[table.rows.index(row) - 1].group != row.group:
            body.append(r"\addlinespace")
        first = False
        label = tex_escape(row.label) + (rf"$^{{{','.join(tex_escape(m) for m in row.marks)}}}$"
                                         if row.marks else "")
        cells = []
        for col in table.columns:
            cell = row.cells.get(col.key, Cell())
            main, spread = cell_parts(cell, col)
            negative = col.kind != "text" and main[:1] == "-" and main[1:2].isdigit()
            main = "$-$" + tex_escape(main[1:]) if negative else tex_escape(main)
            if cell.rank:
                main = rf"\textbf{{{main}}}" if cell.rank == 1 else rf"\underline{{{main}}}"
            cells.append(main + (rf"{{\scriptsize\,$\pm${spread}}}" if spread else ""))
        body.append(" & ".join([label] + cells) + r" \\")
    body.append(r"\bottomrule")
    tabular = [rf"\begin{{tabular}}{{{spec}}}"] + body + [r"\end{tabular}"]
    # shrink to the line width when wider, never enlarge (\width is the natural width inside \resizebox)
    tabular = [r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"] + tabular + ["}"]
    notes = " ".join(tex_escape(n) for n in table.notes)
    lines = ["% Generated by reports.tables (diffpose-bench); rebuild with `make report`, do not edit.",
             r"\begin{table}[htbp]", r"\centering", rf"\caption{{{tex_escape(table.caption)}}}",
             rf"\label{{tab:{table.name}}}", r"\small", *tabular]
    if notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize\raggedright", notes,
                  r"\end{minipage}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Long format, raw numbers: one line per (row, column) with mean, std, n, rank, marks."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "partial", "panel", "section", "group", "row", "marks", "column", "mean", "std",
                     "n", "text", "rank"])
    partial = "; ".join(table.partial)
    for row in table.rows:
        for col in table.columns:
            cell = row.cells.get(col.key, Cell())
            writer.writerow([table.name, partial, row.panel, row.section, row.group, row.label,
                             ",".join(row.marks), col.header,
                             "" if cell.mean is None else repr(float(cell.mean)),
                             "" if cell.std is None else repr(float(cell.std)),
                             "" if cell.n is None else cell.n, cell.text or "", cell.rank or ""])
    return buf.getvalue()


def write_table(table: Table, directory: Path) -> list[Path]:
    """``<name>.tex``, ``<name>.md`` and ``<name>.csv`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for ext, render in (("tex", to_latex), ("md", to_markdown), ("csv", to_csv)):
        path = directory / f"{table.name}.{ext}"
        path.write_text(render(table), encoding="utf-8")
        out.append(path)
    log.info("wrote table %s (%d rows)%s", table.name, len(table.rows),
             f" partial: {'; '.join(table.partial)}" if table.partial else "")
    return out


def all_tables(runs: pd.DataFrame, published: pd.DataFrame | None = None) -> tuple[list[Table], list[str]]:
    """Comparison, MPI-INF-3DHP, ablation and cost tables of the finished trials ``runs``."""
    published = load_published() if published is None else published
    tables, warn = [], []
    for build in (lambda r: comparison_tables(r, published), ablation_tables, reliability_tables, cost_table):
        t, w = build(runs)
        tables += t
        warn += w
    return tables, list(dict.fromkeys(warn))

