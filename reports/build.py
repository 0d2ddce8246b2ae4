"""`make report`: MLflow (or a results Parquet) -> results store, tables, figures, report.md and report.tex.

Layout of ``out_dir``::

    results.parquet            the results store (one row per trial run; schema version in its metadata)
    tables/<name>.{tex,md,csv} one file per table and format
    figures/<name>.{pdf,png}   one file per figure and format
    report.md                  every table (GitHub Markdown) and links to the figures
    report.tex                 a standalone document that \\input s the tables and includes the figures

Nothing is re-run: the report is rebuilt from tracked runs alone. Files a previous build wrote under
``tables/`` and ``figures/`` are removed first, so a table that no longer has runs does not linger.
:func:`publish` copies a built report where it is committed (``diffpose-bench report --publish``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from diffpose.data.source import DataError
from reports import figures as figs
from reports.invocations import invocations, machine
from reports.results import (
    CHECKPOINT_TAG,
    SCHEMA_VERSION,
    TRAINING_TAG,
    ResultsError,
    column,
    finished_trials,
    local_path,
    metric,
    param,
    parquet_meta,
    pull_runs,
    read_parquet,
    tag,
    write_parquet,
)
from reports.search import SearchSection, search_sections
from reports.tables import all_tables
from reports.tables.model import NOT_CONVERGED, Table, converged_runs
from reports.tables.published import load_published
from reports.tables.render import tex_escape, to_markdown, write_table
from reports.tables.runs import variant_rows

log = logging.getLogger(__name__)

TABLE_FILES = ("*.tex", "*.md", "*.csv")
FIGURE_FILES = ("*.pdf", "*.png")

# run row -> local path of its predictions.npz, or None
ArtifactFinder = Callable[[pd.Series], Path | None]


@dataclass
class ReportSummary:
    """What a build wrote and what a reader must be told."""

    out_dir: Path
    parquet: Path | None
    runs: int = 0                                     # finished trials the tables use
    paths: list[Path] = field(default_factory=list)   # every file written
    tables: list[str] = field(default_factory=list)   # table names (file stems)
    figures: list[str] = field(default_factory=list)  # figure names (file stems)
    warnings: list[str] = field(default_factory=list)
    message: str = ""                                 # set when there was nothing to report
    sections: list[str] = field(default_factory=list)  # search sections (titles)
    unconverged: int = 0                              # finished trials trained short of convergence (†)
    study: str = ""                                   # wall time over the suite's invocations, machines

    @property
    def first_line(self) -> str:
        """The report's title, which says so when a run of its tables did not converge."""
        if not self.unconverged:
            return "diffpose-bench report"
        return (f"diffpose-bench report: {self.unconverged} of {self.runs} runs trained short of convergence "
                f"({NOT_CONVERGED} in the tables), not final numbers")

    @property
    def ok(self) -> bool:
        return self.runs > 0 or bool(self.sections)


def build_report(tracking_uri: str, experiment: str, out_dir: Path, *, parquet: Path | None = None,
                 figures: bool = True, reference: Path | None = None, carried: Path | None = None
                 ) -> ReportSummary:
    """Pull every trial of ``experiment`` from MLflow, save the results store (``parquet``, default
    ``out_dir/results.parquet``), build tables and (unless ``figures`` is False) figures; with ``reference``
    (another study's results store, :func:`reference_runs`), the table of this study's rows against its. With
    ``carried`` (the suite's carry folder), its wall time counts the invocations of other machines that the
    folder records (:mod:`reports.invocations`)."""
    out_dir = Path(out_dir)
    # a bad reference or carried record: one line, before any work
    against = reference_runs(reference) if reference is not None else None
    study = {f"study.{k}": v for k, v in invocations(tracking_uri, experiment, carried).items()}
    parquet = Path(parquet) if parquet is not None else out_dir / "results.parquet"
    frame = pull_runs(tracking_uri, experiment)
    write_parquet(frame, parquet, experiment=experiment, tracking_uri=tracking_uri, **study)
    source = f"MLflow experiment '{experiment}' at {tracking_uri}"
    sections = search_sections(tracking_uri, experiment)
    if sections:  # a search's trials are reported by its section: they have no test metrics for the tables
        frame = frame[column(frame, param("trial.axis")) != "search"]
    with tempfile.TemporaryDirectory(prefix="diffpose-report-") as scratch:  # artifacts of a remote store
        find = _mlflow_artifacts(tracking_uri, Path(scratch)) if figures else None
        return _build(frame, out_dir, parquet, source, find, sections, study, against)


def build_report_from_parquet(parquet: Path, out_dir: Path, *, figures: bool = True,
                              reference: Path | None = None) -> ReportSummary:
    """The same report from a results store alone (no MLflow); artifacts are read where they are local."""
    parquet = Path(parquet)
    against = reference_runs(reference) if reference is not None else None
    frame = read_parquet(parquet)
    meta = parquet_meta(parquet)
    source = (f"MLflow experiment '{meta['experiment']}', read from the results store" if "experiment" in meta
              else "the results store")
    study = {k: v for k, v in meta.items() if k.startswith("study.")}
    return _build(frame, Path(out_dir), parquet, source, local_artifact if figures else None, study=study,
                  reference=against)


def reference_runs(path: Path) -> tuple[pd.DataFrame, str]:
    """The finished trial runs of another study's results store (a published one:
    ``docs/results/<name>/results.parquet``) and a line naming it, for the reference table
    (:mod:`reports.tables.reference`); a file that is not one is a :class:`DataError` naming it."""
    path = Path(path)
    try:
        frame = read_parquet(path)
    except ResultsError as e:
        raise DataError(path, str(e).removeprefix(f"{path}: ")) from None
    except (OSError, ValueError) as e:   # not a Parquet file, or not one of ours
        raise DataError(path, f"not a results store ({e})") from None
    meta = parquet_meta(path)
    runs, _ = finished_trials(frame, json.loads(meta["study.trials"]) if "study.trials" in meta else None)
    return runs, f"{path} ({meta.get('experiment', 'experiment not recorded')}, {len(runs)} finished trial runs)"


# ---- artifacts ---------------------------------------------------------------------------------------------

def local_artifact(run: pd.Series, name: str = "predictions.npz") -> Path | None:
    """``<artifact_uri>/<name>`` when the artifact store is a local directory."""
    root = local_path(run.get("artifact_uri"))
    path = root / name if root is not None else None
    return path if path is not None and path.exists() else None


def _mlflow_artifacts(tracking_uri: str, scratch: Path) -> ArtifactFinder:
    """Each run's predictions.npz: where it lies for a local store, else downloaded into ``scratch``."""

    def find(run: pd.Series) -> Path | None:
        uri = run.get("artifact_uri")
        if not isinstance(uri, str) or not uri or local_path(uri) is not None:
            return local_artifact(run)
        import mlflow

        try:
            got = mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="predictions.npz",
                                                      dst_path=str(scratch / run["run_id"]),
                                                      tracking_uri=tracking_uri)
        except Exception as e:  # noqa: BLE001 - any store error means: this run has no readable predictions
            log.debug("run %s: no predictions.npz (%s)", run["run_id"], e)
            return None
        return Path(got)

    return find


# ---- the build ---------------------------------------------------------------------------------------------

def _clean(directory: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for path in directory.glob(pattern):
            path.unlink()


def _spread_series(runs: pd.DataFrame, find: ArtifactFinder, warn: list[str]) -> dict[str, figs.SpreadCurve]:
    """Per multi-hypothesis run, its per-joint error against spread (mm) binned on its own: one series per
    variant and seed, averaged into one line per variant by the figure (seeds are not pooled: one seed's
    hypotheses may spread ten times wider than another's, which pooled bins would hide). A run's poses are
    read one run at a time and only its bins kept, so memory does not grow with the test split times the
    seeds; the first :data:`reports.figures.SPREAD_SEEDS` seeds of a variant with readable predictions are
    read, so neither does time."""
    n = column(runs, param("sample.hypotheses")).fillna(1).astype(int)
    multi = runs[n > 1]
    if multi.empty:
        warn.append("no multi-hypothesis (N > 1) runs: no spread-vs-error figure")
        return {}
    series: dict[str, figs.SpreadCurve] = {}
    unreadable, unread = 0, 0
    datasets = column(multi, param("trial.dataset")).astype(str)
    for ds in sorted(datasets.unique()):
        for label, part in variant_rows(multi[datasets == ds], [], "spread"):
            seeds = pd.to_numeric(column(part, param("trial.seed")), errors="coerce")
            part, seeds = part.loc[seeds.sort_values(kind="stable").index], seeds.sort_values(kind="stable")
            taken = 0
            for (_, run), seed in zip(part.iterrows(), seeds, strict=True):
                if taken == figs.SPREAD_SEEDS:
                    unread += 1
                    continue
                path = find(run)
                if path is None:
                    unreadable += 1
                    continue
                key = label if datasets.nunique() == 1 else f"{label}, {ds}"
                try:
                    curve = figs.spread_curve(*figs.spread_and_error(path), method=key)
                except (KeyError, ValueError, OSError) as e:
                    log.warning("run %s: %s", run["run_id"], e)
                    unreadable += 1
                    continue
                series[key if len(part) == 1 else f"{key}, seed {seed:g}"] = curve
                taken += 1
    if unread:
        warn.append(f"spread-vs-error figure: the first {figs.SPREAD_SEEDS} seeds of each variant; {unread} "
                    "runs of later seeds not read (the reliability table has every seed)")
    if unreadable:
        warn.append(f"{unreadable} multi-hypothesis run{'s' if unreadable > 1 else ''} without a readable "
                    "predictions.npz holding a spread")
    if not series:
        warn.append("no predictions.npz with per-joint spread could be read: no spread-vs-error figure")
    return series


def _plots(runs: pd.DataFrame, find: ArtifactFinder, warn: list[str]) -> list[figs.Plot]:
    plots = []
    steps = figs.steps_figure(runs)
    if steps is None:
        warn.append("no steps ablation with 2 or more K values: no P1-vs-K figure")
    else:
        plots.append(steps)
    plots += figs.per_action_figures(runs)
    speed = figs.speed_figures(runs)
    if not speed:
        warn.append("no run logged both test_p1 and test_poses_per_second: no accuracy-vs-speed figure")
    plots += speed
    spread = figs.spread_figure(_spread_series(runs, find, warn))
    if spread is not None:
        plots.append(spread)
    calibration = figs.calibration_figure(runs)
    if calibration is not None:
        plots.append(calibration)
    curves = figs.learning_curves_figure(runs)
    if curves is None:
        warn.append("no run logged validation curves: no learning-curve figure")
    else:
        plots.append(curves)
    return plots


def training_text(runs: pd.DataFrame) -> str:
    """The time the finished trials' trainings took, each training once however many trials evaluate it (by
    :data:`TRAINING_TAG`; for runs logged before it, the folder of their ``checkpoint`` tag), from the training's
    own record (``train_seconds``): this counts the trainings a suite carried in from other machines. Empty when
    no run logged it."""
    seconds = pd.to_numeric(column(runs, metric("train_seconds")), errors="coerce")
    folder = column(runs, tag(CHECKPOINT_TAG)).map(lambda p: Path(p).parent.name if isinstance(p, str) else None)
    training = column(runs, tag(TRAINING_TAG)).where(lambda t: t.notna(), folder)
    known = seconds.notna() & training.notna()
    if not known.any():
        return ""
    per_training = seconds[known].groupby(training[known]).max()
    total = float(per_training.sum())
    text = (f"Training: {total / 3600:.1f} h, the sum of {len(per_training)} trainings' own times (those carried "
            "in from other machines included)")
    if (~known).any():
        text += f"; not recorded for {int((~known).sum())} runs"
    return text + "."


def study_text(runs: pd.DataFrame, study: dict[str, str]) -> str:
    """The suite's wall time over its invocations (``study``: :func:`reports.invocations.invocations` as
    ``study.<key>``), its trainings' time (:func:`training_text`) and the machines its finished trials ran on
    (their ``host.*`` tags)."""
    parts = []
    if study.get("study.invocations"):
        n, unlogged = int(study["study.invocations"]), int(study.get("study.unlogged", "0"))
        seconds = float(study.get("study.wall_seconds", "0"))
        wall = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
        elsewhere = int(study.get("study.elsewhere", "0"))
        notes = [f"{elsewhere} of them on other machines, from the record its carried trainings hold"] * bool(elsewhere)
        drivers = json.loads(study.get("study.machines", "{}"))
        if drivers:
            unknown = n - sum(drivers.values())
            notes.append("driven from " + "; ".join(f"{m} ({k})" for m, k in drivers.items())
                         + (f"; the machine of {unknown} not recorded (by a version before it was)" if unknown else ""))
        notes += [f"{unlogged} logged none: killed within its first minute, or run by a version that logged it "
                  "only at the end"] * bool(unlogged)
        parts.append(f"Wall time: {wall} over {n} invocation{'s' if n > 1 else ''} of the suite"
                     + (f" ({'; '.join(notes)})" if notes else "") + ".")
    if not runs.empty:
        if training := training_text(runs):
            parts.append(training)
        keys = [tag(k) for k in ("host.cpu", "host.cores", "host.memory_gib", "torch.version", "device")]
        described = runs[keys[0]].notna() if keys[0] in runs.columns else pd.Series(False, index=runs.index)
        machines = []
        if described.any():
            cols = runs.loc[described, [k for k in keys if k in runs.columns]].fillna("?").astype(str)
            for values, group in cols.groupby(list(cols.columns), sort=True):
                got = dict(zip(cols.columns, values if isinstance(values, tuple) else (values,), strict=True))
                described_as = machine({k.removeprefix(tag("")): v for k, v in got.items()})
                machines.append(f"{described_as}, torch {got.get(keys[3], '?')}, device {got.get(keys[4], '?')} "
                                f"({len(group)} runs)")
        if (~described).any():
            machines.append(f"not recorded for {int((~described).sum())} runs (logged before trials recorded it)")
        parts.append("Machines: " + "; ".join(machines) + ".")
    return " ".join(parts)


def _build(frame: pd.DataFrame, out_dir: Path, parquet: Path | None, source: str, find: ArtifactFinder | None,
           sections: list[SearchSection] | None = None, study: dict[str, str] | None = None,
           reference: tuple[pd.DataFrame, str] | None = None) -> ReportSummary:
    """Tables, and figures unless ``find`` is None, of the finished trials in ``frame`` (and of them against
    ``reference``'s, :func:`reference_runs`)."""
    table_dir, figure_dir = out_dir / "tables", out_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(table_dir, TABLE_FILES)
    _clean(figure_dir, FIGURE_FILES)
    summary = ReportSummary(out_dir=out_dir, parquet=parquet)
    study = study or {}
    runs, notes = finished_trials(frame, json.loads(study["study.trials"]) if "study.trials" in study else None)
    summary.warnings += notes
    summary.runs = len(runs)
    summary.study = study_text(runs, study)
    tables: list[Table] = []
    plots: list[figs.Plot] = []
    sections = sections or []
    for section in sections:
        summary.sections.append(section.title)
        summary.warnings += section.warnings
        for plot in section.plots if find is not None else []:
            summary.paths += figs.save(plot, figure_dir)
            summary.figures.append(plot.name)
    if runs.empty and not sections:
        summary.message = (f"No finished trial runs in {source}" + (f" ({'; '.join(notes)})" if notes else "")
                           + ": no tables or figures were built.")
        log.warning(summary.message)
    elif not runs.empty:
        tables, warn = all_tables(runs, load_published(), reference)
        summary.warnings += warn
        for table in tables:
            summary.paths += write_table(table, table_dir)
            summary.tables.append(table.name)
        summary.unconverged = int((~converged_runs(runs)).sum())
        plots = _plots(runs, find, summary.warnings) if find is not None else []
        for plot in plots:
            summary.paths += figs.save(plot, figure_dir)
            summary.figures.append(plot.name)
    for w in summary.warnings:
        log.warning("report: %s", w)
    summary.paths += [_write_markdown(out_dir, source, summary, tables, plots, sections),
                      _write_latex(out_dir, source, summary, tables, plots, sections)]
    return summary


def _header(source: str, summary: ReportSummary) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    store = f" Results store: {summary.parquet} (schema {SCHEMA_VERSION})." if summary.parquet else ""
    return f"Source: {source}.{store} {summary.runs} finished trial runs; built {when}." + \
        (f" {summary.study}" if summary.study else "")


def _write_markdown(out_dir: Path, source: str, summary: ReportSummary, tables: list[Table],
                    plots: list[figs.Plot], sections: list[SearchSection]) -> Path:
    lines = [f"# {summary.first_line}", "", _header(source, summary), ""]
    if summary.message:
        lines += [f"**{summary.message}**", ""]
    if summary.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in summary.warnings] + [""]
    if tables:
        lines += ["## Tables", ""]
        for t in tables:
            lines += [to_markdown(t), f"Files: [LaTeX](tables/{t.name}.tex), [CSV](tables/{t.name}.csv)", ""]
    if plots:
        lines += ["## Figures", ""]
        for p in plots:
            lines += [f"![{p.caption}](figures/{p.name}.png)", "",
                      f"*{p.caption}* ([PDF](figures/{p.name}.pdf))", ""]
    for s in sections:
        lines += s.markdown
        lines += [line for p in s.plots if p.name in summary.figures for line in (
            f"![{p.caption}](figures/{p.name}.png)", "", f"*{p.caption}* ([PDF](figures/{p.name}.pdf))", "")]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _write_latex(out_dir: Path, source: str, summary: ReportSummary, tables: list[Table],
                 plots: list[figs.Plot], sections: list[SearchSection]) -> Path:
    lines = [r"\documentclass[10pt]{article}",
             r"\usepackage[a4paper,landscape,margin=1.6cm]{geometry}",     # Table-1 layouts: 19 columns
             r"\usepackage{booktabs}",
             r"\usepackage{graphicx}",
             r"\begin{document}",
             r"\section*{" + tex_escape(summary.first_line) + "}",
             tex_escape(_header(source, summary)) + r"\par"]
    if summary.message:
        lines.append(r"\medskip\noindent\textbf{" + tex_escape(summary.message) + "}")
    if summary.warnings:
        lines += [r"\subsection*{Warnings}", r"\begin{itemize}"]
        lines += [r"\item " + tex_escape(w) for w in summary.warnings] + [r"\end{itemize}"]
    lines.append(r"\suppressfloats[t]")
    lines += [rf"\input{{tables/{t.name}}}" for t in tables]
    if plots:
        lines.append(r"\clearpage")
    for s in sections:
        lines += s.latex
    for p in plots + [p for s in sections for p in s.plots if p.name in summary.figures]:
        lines += [r"\begin{figure}[htbp]", r"\centering",
                  rf"\includegraphics[width=0.9\linewidth,height=0.75\textheight,keepaspectratio]"
                  rf"{{figures/{p.name}.pdf}}",
                  rf"\caption{{{tex_escape(p.caption)}}}", rf"\label{{fig:{p.name}}}", r"\end{figure}"]
    lines += [r"\end{document}", ""]
    path = out_dir / "report.tex"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ---- publishing a report to commit ---------------------------------------------------------------------------

PUBLISHED = "<!-- written by `diffpose-bench report --publish`: rebuild it with that command, do not edit -->"
MANIFEST = ".published"  # in the folder of a published report: the mark, then every file written there


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\n")


def check_publishable(target: Path) -> Path:
    """The folder of ``target``'s figures and tables, once both may be (re)written by :func:`publish`: absent,
    or written by it with nothing added; else a :class:`DataError` naming the file."""
    target = Path(target)
    if target.suffix != ".md":
        raise DataError(target, "--publish must name a Markdown file (.md)")
    assets = target.with_suffix("")
    refuse = "exists and was not written by `diffpose-bench report --publish`; refusing to replace it"
    if target.exists() and (not target.is_file() or _first_line(target) != PUBLISHED):
        raise DataError(target, refuse)
    if assets.exists():
        manifest = assets / MANIFEST
        ours = manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []
        if not assets.is_dir() or (ours[:1] != [PUBLISHED] and any(assets.iterdir())):
            raise DataError(assets, refuse)
        foreign = sorted(str(p.relative_to(assets)) for p in assets.rglob("*")
                         if p.is_file() and p != manifest and str(p.relative_to(assets)) not in ours[1:])
        if foreign:
            raise DataError(assets / foreign[0], "was not written by `diffpose-bench report --publish`; refusing "
                                                 f"to replace {assets}")
    return assets


def publish(report_dir: Path, target: Path, parquet: Path | None = None) -> list[Path]:
    """A built report (``report_dir``) copied where it is committed: its report.md as ``target``, its figures and
    tables in the folder beside it named by ``target``'s stem (``docs/results/mocap17.md`` and
    ``docs/results/mocap17/``), with the links rewritten to it, and its results store (``parquet``) there as
    ``results.parquet``, another study's reference (``report --reference``). What :func:`check_publishable`
    refuses is refused before anything is written."""
    report_dir, target = Path(report_dir), Path(target)
    assets = check_publishable(target)
    text = (report_dir / "report.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\((figures|tables)/", lambda m: f"]({assets.name}/{m.group(1)}/", text)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{assets.name}-", dir=target.parent))
    try:
        fresh.chmod(0o755)
        for sub in ("figures", "tables"):
            if (report_dir / sub).is_dir():
                shutil.copytree(report_dir / sub, fresh / sub)
        if parquet is not None and Path(parquet).is_file():
            shutil.copyfile(parquet, fresh / "results.parquet")
        written = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
        (fresh / MANIFEST).write_text("\n".join([PUBLISHED, *written]) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if assets.exists():
        shutil.rmtree(assets)  # every file in it is one this wrote (checked above)
    fresh.rename(assets)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(f"{PUBLISHED}\n{text}", encoding="utf-8")
    partial.replace(target)
    log.info("published %s to %s and %s", report_dir, target, assets)
    return [target, assets]

