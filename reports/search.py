"""The search section of a report: an Optuna study's optimisation history, parameter importances, best trial.

Read from the study itself (its RDB storage), which MLflow's parent run of each search driver names (tags
``optuna.study`` and ``optuna.storage``; a storage URL whose password MLflow does not keep is taken from
``OPTUNA_STORAGE``). The objective of a trial is its best validation error over its epochs (mm, minimised); a
pruned trial's is the one at the epoch it was stopped, drawn but never the best.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from reports import figures as figs
from reports.results import search_all
from reports.tables.model import Cell, Column, Row, Table
from reports.tables.render import tex_escape, to_latex, to_markdown

log = logging.getLogger(__name__)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class SearchSection:
    """What a report shows of one search: Markdown and LaTeX lines, figures, warnings."""

    title: str
    markdown: list[str] = field(default_factory=list)
    latex: list[str] = field(default_factory=list)
    plots: list[figs.Plot] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value`` (the objective; a pruned trial's last intermediate
    value), ``epochs``, ``default`` and the sampled ``params.<key>``; ordered by number."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else (
            t.intermediate_values[t.last_step] if t.last_step is not None else np.nan)
        rows.append({"number": t.number, "state": t.state.name, "value": float(value),
                     "epochs": int(t.user_attrs.get("search.epochs", t.last_step or 0)),
                     "default": bool(t.user_attrs.get("default", False)),
                     **{f"params.{k}": v for k, v in t.params.items()}})
    frame = pd.DataFrame(rows, columns=["number", "state", "value", "epochs", "default"] + sorted(
        {c for r in rows for c in r if c.startswith("params.")}))
    return frame.sort_values("number", ignore_index=True)


def best_so_far(values: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Running minimum of ``values`` over the entries where ``counted`` (complete trials); NaN before the
    first. (N,) -> (N,)."""
    v = np.where(counted, np.asarray(values, dtype=np.float64), np.inf)
    best = np.minimum.accumulate(v) if v.size else v
    return np.where(np.isinf(best), np.nan, best)


def importances(study: optuna.Study, seed: int = 0) -> tuple[dict[str, float], str]:
    """fANOVA importances of the sampled keys over the complete trials (seeded, normalised to sum 1) and a note;
    empty with the reason when there is too little to judge."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial{'s' if len(complete) != 1 else ''}: importances need 2 or more"
    if len({t.value for t in complete}) < 2:
        return {}, "every complete trial has the same value: no parameter explains any variance"
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError) as e:
        return {}, f"importances could not be computed ({e})"
    caution = "; with so few trials they are indicative only" if len(complete) < 10 else ""
    return dict(found), f"fANOVA over {len(complete)} complete trials (seed {seed}){caution}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def history_figure(frame: pd.DataFrame, name: str, label: str) -> figs.Plot:
    """Each trial's objective against its number (complete: filled, pruned: crosses at the epoch they stopped,
    the default config: a star) and the best-so-far line over complete trials."""
    complete = (frame["state"] == "COMPLETE").to_numpy()
    best = best_so_far(frame["value"].to_numpy(), complete)
    palette = sns.color_palette()
    with figs.style():
        fig, axes = figs.figure(6.4, 3.8)
        ax = axes[0]
        done = frame[complete]
        ax.scatter(done["number"], done["value"], color=palette[0], s=28, label="complete", zorder=3)
        pruned = frame[frame["state"] == "PRUNED"]
        if len(pruned):
            ax.scatter(pruned["number"], pruned["value"], color=palette[1], marker="x", s=30, zorder=3,
                       label="pruned (value when stopped)")
        default = frame[frame["default"] & frame["value"].notna()]
        if len(default):
            ax.scatter(default["number"], default["value"], color=palette[3], marker="*", s=140, zorder=4,
                       label="default config")
        ax.step(frame["number"], best, where="post", color=palette[2], label="best so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{label} (mm)")
        ax.legend(fontsize="small")
        fig.suptitle(f"Optimisation history of {name}")
    return figs.Plot(f"search_{_slug(name)}_history",
                     f"Optimisation history of the search {name}: each trial's {label} (mm, lower is better) and "
                     "the best so far over complete trials.", fig)


def importance_figure(found: dict[str, float], name: str, note: str) -> figs.Plot:
    keys = sorted(found, key=found.get)
    with figs.style():
        fig, axes = figs.figure(6.0, 0.5 + 0.45 * len(keys))
        ax = axes[0]
        ax.barh(keys, [found[k] for k in keys], color=sns.color_palette()[0])
        ax.set_xlabel("importance (share of explained variance)")
        ax.set_xlim(0, 1)
        fig.suptitle(f"Parameter importances of {name}")
    return figs.Plot(f"search_{_slug(name)}_importance", f"Parameter importances of the search {name}: {note}.",
                     fig)


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.4g}"
    return "" if value is None or value is pd.NA else str(value)


def search_section(study: optuna.Study, storage: str) -> SearchSection:
    """The section of one study: a summary line, best against default per parameter (with importances), every
    trial, and the two figures."""
    name = str(study.user_attrs.get("search.name", study.study_name))
    metric = str(study.user_attrs.get("search.metric", "val_p1"))
    label = f"best val {metric[4:].upper()}"
    section = SearchSection(title=f"Search: {name}")
    frame = trials_frame(study)
    counts = {s: int((frame["state"] == s).sum()) for s in STATES}
    head = (f"Study `{study.study_name}` in `{storage}`: {len(frame)} trials ({counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} running). Objective: the "
            f"{label} of a trial over its epochs, in mm, minimised; the test split is never used.")
    section.markdown += [f"## {section.title}", "", head, ""]
    section.latex += [rf"\subsection*{{{tex_escape(section.title)}}}", tex_escape(head) + r"\par"]
    if frame.empty:
        section.warnings.append(f"search {name}: the study has no trials")
        return section
    keys = [c[len("params."):] for c in frame.columns if c.startswith("params.")]
    found, note = importances(study)
    if not found:
        section.warnings.append(f"search {name}: no parameter importances ({note})")
    complete = frame[frame["state"] == "COMPLETE"]
    best = complete.loc[complete["value"].idxmin()] if len(complete) else None
    default = frame[frame["default"]]
    default = default.iloc[0] if len(default) else None
    lines = []
    if best is not None:
        lines.append(f"Best: trial {best['number']}, {label} {best['value']:.2f} mm.")
    if default is not None and not np.isnan(default["value"]):
        state = "" if default["state"] == "COMPLETE" else f", {default['state'].lower()}"
        lines.append(f"Default config: trial {default['number']}, {label} {default['value']:.2f} mm{state}.")
    params = Table(f"search_{_slug(name)}_best", f"Search {name}: the best trial against the default config",
                   "Parameter", [Column("best", f"best (trial {best['number']})" if best is not None else "best",
                                        kind="text"), Column("default", "default", kind="text"),
                                 Column("importance", "importance")],
                   [Row(k, {"best": Cell(text=_fmt(best[f"params.{k}"]) if best is not None else ""),
                            "default": Cell(text=_fmt(default[f"params.{k}"]) if default is not None else ""),
                            "importance": Cell(text=f"{found[k]:.2f}" if k in found else "")}) for k in keys],
                   notes=[note] if found else [], kind="search")
    section.markdown += [" ".join(lines), "", to_markdown(params)]
    section.latex += [tex_escape(" ".join(lines)) + r"\par", to_latex(params)]
    columns = [Column("state", "state", kind="text"), Column("value", f"{label} (mm)"),
               Column("epochs", "epochs"), *[Column(f"params.{k}", k, kind="text") for k in keys]]
    trials = Table(f"search_{_slug(name)}_trials", f"Trials of the search {name}", "Trial", columns,
                   [Row(str(r["number"]) + (" (default)" if r["default"] else ""),
                        {"state": Cell(text=r["state"].lower()), "value": Cell(text=_fmt(r["value"])),
                         "epochs": Cell(text=str(r["epochs"])),
                         **{f"params.{k}": Cell(text=_fmt(r[f"params.{k}"])) for k in keys}})
                    for _, r in frame.iterrows()], kind="search")
    section.markdown += [to_markdown(trials)]
    section.plots.append(history_figure(frame, name, label))
    if found:
        section.plots.append(importance_figure(found, name, note))
    return section


def search_sections(tracking_uri: str, experiment: str) -> list[SearchSection]:
    """A section per study that the experiment's search drivers (MLflow runs with ``diffpose.role = search``)
    name; none for an experiment of suites."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    parents = list(search_all(client, found.experiment_id, "tags.`diffpose.role` = 'search'"))
    studies = sorted({(r.data.tags.get("optuna.storage", ""), r.data.tags.get("optuna.study", "")) for r in parents})
    sections = []
    for shown, name in studies:
        url = os.environ.get("OPTUNA_STORAGE") if "***" in shown else shown
        if not url or not name:
            sections.append(SearchSection(title=f"Search: {name or experiment}", warnings=[
                f"search {name}: the study storage {shown!r} keeps no password; set OPTUNA_STORAGE to read it"]))
            continue
        try:
            study = optuna.load_study(study_name=name, storage=url)
        except Exception as e:  # noqa: BLE001 - an unreachable study is a warning in the report, not a crash
            sections.append(SearchSection(title=f"Search: {name}", warnings=[
                f"search {name}: cannot read the study in {shown} ({str(e).splitlines()[0] if str(e) else e!r})"]))
            continue
        sections.append(search_section(study, shown))
    return sections
