"""Which runs make a row: grouping the finished trials by dataset, protocol, variant and configuration.

Rows that differ in the evaluation protocol are split into separate tables or labelled; a table with runs
missing a metric says so in its caption ("partial: ...").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from diffpose.config import ABLATION_KEYS, EVALUATES, LIFTER_NAMES, VARIANTS, toml_value
from reports.results import PARAM, PROTOCOL_FIELDS, RUN_IDENTITY_PARAMS, column, metric, param, protocol

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


def missing_metrics(runs: pd.DataFrame, names: Iterable[str]) -> dict[str, int]:
    """Metric name -> number of runs without it."""
    out = {}
    for name in names:
        col = column(runs, metric(name))
        n = int(col.isna().sum())
        if n:
            out[name] = n
    return out


def partial_text(missing: dict[str, int]) -> list[str]:
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


def per_seed(runs: pd.DataFrame, name: str) -> pd.Series:
    """Metric ``name`` per seed (mean when several runs share a seed)."""
    values = pd.to_numeric(column(runs, metric(name)), errors="coerce")
    seeds = _seed(runs)
    keep = values.notna() & seeds.notna()
    return values[keep].groupby(seeds[keep].astype(int).to_numpy()).mean()


def reused_weights(variants: Iterable[str]) -> list[str]:
    """A note for each of ``variants`` that evaluates another variant's trained weights instead of training its
    own (``diffpose.config.EVALUATES``): whose weights, and the evaluation settings it changes. Its difference from
    that variant is then the same weights under other settings, not an ablation trained on its own."""
    notes = []
    for v in sorted(set(variants) & EVALUATES.keys()):
        own = EVALUATES[v]
        changes = {k: x for k, x in VARIANTS[v][2].items() if VARIANTS[own][2].get(k) != x}
        settings = ", ".join(f"{k} = {toml_value(x)}" for k, x in changes.items())
        notes.append(f"{v}: the weights trained for {own}, evaluated with {settings}; not trained on its own.")
    return notes
