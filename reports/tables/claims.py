"""The paper's claims, each put to the tracked runs: one row per claim and compared variant, with the paired
difference over seeds against full DiffPose, its p-value and a verdict in words, so that a claim that does not
hold on the data is said as plainly as one that does.

Claims (Gong et al. 2023 and its title's "more reliable"): the GMM-based forward diffusion, the context
encoder's conditioning and the heatmap initialisation each lower the error; more diffusion steps K and more
hypotheses N (the aggregated J-Agg pose) lower it; DiffPose beats its own context encoder; and its hypotheses
score better (energy score, calibration error) than the simple probabilistic baselines at the same N.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from diffpose.config import ENCODER_TRAIN_KEYS
from reports.results import PROTOCOL_FIELDS, column, describe_protocol, param
from reports.tables.model import (
    Cell,
    Column,
    Row,
    Table,
    convergence_note,
    mark_convergence,
    paired_test,
)
from reports.tables.runs import (
    DATASET_NAMES,
    dataset_order,
    per_seed,
    protocol_groups,
    reused_weights,
    run_label,
    trial_axis,
    trial_lifter,
)

ALPHA = 0.05          # two-sided, per comparison (not corrected for the number of comparisons)
HOLDS, OPPOSITE, NOT_SHOWN, UNTESTED = "yes", "no: the opposite", "not shown", "untested"

# The switch variants' claims: the variant turns a component off, so the claim is that the error rises.
SWITCHES = {"gmm": "GMM-based forward diffusion lowers the error",
            "context": "Conditioning on the context encoder lowers the error",
            "heatmap_init": "The heatmap (2D-uncertainty) initialisation lowers the error"}
RELIABILITY = {"test_energy_score": "energy score", "test_calibration_error": "calibration error"}
METRIC_TEXT = {"test_p1": "P1 (mm)", "test_energy_score": "energy score (mm)",
               "test_calibration_error": "calibration error"}


@dataclass(frozen=True)
class Comparison:
    claim: str
    other: str                 # the compared runs' label
    expected: int              # +1: the claim says other − full > 0; -1: < 0
    other_runs: pd.DataFrame
    full_runs: pd.DataFrame
    metric: str = "test_p1"    # a key of METRIC_TEXT


def verdict(delta: float | None, p: float | None, expected: int, reason: str = "") -> str:
    """Whether a paired difference (other − full) bears out a claim that its sign is ``expected``."""
    if p is None or delta is None:
        return f"{UNTESTED}: {reason}" if reason else UNTESTED
    if p >= ALPHA:
        return NOT_SHOWN
    return HOLDS if (delta > 0) == (expected > 0) else OPPOSITE


def _value(runs: pd.DataFrame, key: str) -> float | None:
    values = pd.to_numeric(column(runs, param(key)), errors="coerce").dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def _comparisons(runs: pd.DataFrame) -> list[Comparison]:
    """The claims one protocol group of runs can test (full DiffPose's runs, N = 1, are its reference)."""
    axes, lifters = trial_axis(runs), trial_lifter(runs)
    variants = column(runs, param("trial.variant")).fillna("?").astype(str)
    diffpose = lifters == "diffpose"
    full = runs[diffpose & (axes == "full")]
    if full.empty:
        return []
    out: list[Comparison] = []
    for axis, claim in SWITCHES.items():
        for v in sorted(variants[diffpose & (axes == axis)].unique()):
            out.append(Comparison(claim, run_label(v, "diffpose", axis), +1, runs[variants == v], full))
    for axis, key, claim, name in (("steps", "diffusion.steps", "More diffusion steps K lower the error", "K"),
                                   ("hypotheses", "sample.hypotheses",
                                    "More hypotheses N lower the error of the aggregated pose (J-Agg)", "N")):
        mine = _value(full, key) if axis == "steps" else (_value(full, key) or 1.0)
        values = {v: _value(runs[variants == v], key) for v in variants[diffpose & (axes == axis)].unique()}
        for v, value in sorted(values.items(), key=lambda item: (item[1] is None, item[1] or 0.0)):
            other = runs[variants == v]
            if mine is None or value is None or value == mine:
                continue
            out.append(Comparison(f"{claim} ({name} = {value:g} against {mine:g})", f"DiffPose, {name} = {value:g}",
                                  +1 if value < mine else -1, other, full))
    encoder = column(full, param("encoder.lifter")).dropna().unique()
    if len(encoder) == 1:
        own = runs[(axes == "baseline") & (lifters == encoder[0])]
        if not own.empty and _trained_as_encoder(own, full):
            label = run_label(str(variants[own.index[0]]), str(encoder[0]), "baseline")
            out.append(Comparison(f"DiffPose beats its own context encoder ({label})", label, +1, own, full))
    return out


def _trained_as_encoder(baseline: pd.DataFrame, full: pd.DataFrame) -> bool:
    """Whether the baseline's runs have the architecture and recipe of full's context encoder (its [encoder]
    keys: the recipe, ENCODER_TRAIN_KEYS, as [train], the architecture as [model]; Config.encoder_config)."""
    prefix = param("encoder.")
    for col in [c for c in full.columns if c.startswith(prefix)]:
        key = col[len(prefix):]
        own = param(f"train.{key}" if f"train.{key}" in ENCODER_TRAIN_KEYS else f"model.{key}")
        if set(column(full, col).dropna().astype(str)) != set(column(baseline, own).dropna().astype(str)):
            return False
    return True


def _reliability_comparisons(runs: pd.DataFrame) -> list[Comparison]:
    """DiffPose's hypotheses (full's weights at N) against each sampled baseline at the same N."""
    axes, lifters = trial_axis(runs), trial_lifter(runs)
    variants = column(runs, param("trial.variant")).fillna("?").astype(str)
    n = pd.to_numeric(column(runs, param("sample.hypotheses")), errors="coerce").fillna(1).astype(int)
    paper = column(runs, param("diffusion.mode")).fillna("paper") == "paper"
    out: list[Comparison] = []
    for size in sorted(n[(axes == "probabilistic") & (lifters != "diffpose")].unique()):
        full = runs[(lifters == "diffpose") & axes.isin(["hypotheses", "full"]) & paper & (n == size)]
        if full.empty:
            continue
        for v in sorted(variants[(axes == "probabilistic") & (lifters != "diffpose") & (n == size)].unique()):
            other = runs[(variants == v) & (n == size)]
            label = run_label(v, str(lifters[other.index[0]]), "probabilistic")
            for name, what in RELIABILITY.items():
                out.append(Comparison(f"DiffPose's hypotheses have a lower {what} than {label}'s (N = {size})",
                                      f"{label}, N = {size}", +1, other, full, metric=name))
    return out


def claims_tables(runs: pd.DataFrame) -> tuple[list[Table], list[str]]:
    """One table: per dataset and protocol, each claim the runs can test and whether it holds."""
    if runs.empty:
        return [], []
    columns = [Column("other", "Compared with DiffPose", kind="text"),
               Column("metric", "Metric", kind="text"), Column("delta", "Δ (other − DiffPose)", kind="delta",
                                                                 digits=2),
               Column("pairs", "pairs", kind="text"), Column("p", "p", kind="p"),
               Column("verdict", "Holds?", kind="text")]
    fields = tuple(f for f in PROTOCOL_FIELDS if f not in ("hypotheses", "aggregate"))
    rows: list[Row] = []
    unconverged: list[str] = []
    notes: list[str] = []
    compared: set[str] = set()
    datasets = column(runs, param("trial.dataset")).astype(str)
    for ds in dataset_order(datasets.unique()):
        groups = protocol_groups(runs[datasets == ds], fields)
        for proto, group in groups:
            label = DATASET_NAMES.get(ds, ds) + ("" if len(groups) == 1 else
                                                 f" ({describe_protocol(proto, fields[1:])})")
            found = _comparisons(group) + _reliability_comparisons(group)
            if found:
                notes.append(f"{label}: {describe_protocol(proto, fields[1:])}.")
            for c in found:
                compared.update(column(c.other_runs, param("trial.variant")).dropna().astype(str))
                test = paired_test(per_seed(c.other_runs, c.metric), per_seed(c.full_runs, c.metric))
                cells = {"other": Cell(text=c.other), "metric": Cell(text=METRIC_TEXT[c.metric]),
                         "delta": Cell(mean=test.delta, std=test.delta_std, n=test.pairs),
                         "pairs": Cell(text=str(test.pairs)),
                         "p": Cell(mean=test.p, n=test.pairs) if test.p is not None else Cell(text="n/a"),
                         "verdict": Cell(text=verdict(test.delta, test.p, c.expected, test.reason))}
                row = Row(c.claim, cells, panel=label, group=label)
                rows.append(mark_convergence(row, pd.concat([c.other_runs, c.full_runs]), unconverged))
    if not rows:
        return [], []
    notes.insert(0, "Each claim of the paper, tested on these runs: Δ = mean over seeds of (compared runs − full "
                    "DiffPose, K and N as in full unless the row says otherwise), paired by trial.seed; p: "
                    "two-sided paired t-test over those seeds (scipy.stats.ttest_rel). Holds? yes: Δ has the "
                    f"claimed sign with p < {ALPHA:g}; no: the opposite sign with p < {ALPHA:g}; not shown: "
                    f"p ≥ {ALPHA:g}, which with few seeds is no evidence either way; untested: no p-value. "
                    "Each comparison is tested on its own, with no correction for their number. The "
                    "reliability rows compare full DiffPose's weights at the same N. Protocols:")
    notes += reused_weights(compared)
    notes += convergence_note(unconverged)
    return [Table("claims", "The paper's claims, tested: paired differences over seeds", "Claim", columns, rows,
                  notes, [], kind="claims", unconverged=unconverged)], []
