"""Report figures (seaborn on matplotlib ``Figure`` objects, no pyplot state), saved as PDF and PNG.

- P1 against the diffusion steps K (mean and 95 % CI over seeds),
- P1 per action, grouped bars per method (mean +- sd over seeds),
- accuracy against inference speed (poses/s, log scale),
- per-joint error against per-joint hypothesis spread (the paper's reliability claim, measured; mean over
  seeds),
- learning curves: validation P1 per epoch of every training (beyond a few seeds, their mean and a band),
- calibration curves of the hypotheses: the fraction of targets inside the q-spheres against q.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter
from scipy import stats

from reports.results import CURVE, column, describe_protocol, metric, param, tag
from reports.tables.model import NOT_CONVERGED, converged_runs
from reports.tables.reliability import sampled_runs
from reports.tables.runs import (
    COMPARISON_AXES,
    DATASET_NAMES,
    H36M_ACTIONS,
    H36M_SHORT,
    dataset_order,
    protocol_groups,
    trial_axis,
    trial_lifter,
    variant_rows,
)

log = logging.getLogger(__name__)

P1_LABEL = "P1 MPJPE (mm)"
MAX_METHODS = 10          # lines a figure tells apart (tab10); a longer legend is not read
SPREAD_BINS = 20          # equal-count bins of a run's per-joint spread
SPREAD_SEEDS = 30         # seeds per method whose predictions the spread figure reads (each a whole test split)
EACH_TRAINING_UP_TO = 5   # learning curves: a variant with more trainings draws their mean and a band
EPOCHS_LOG_FROM = 10      # learning curves: a log epoch axis where one training is this many times another's


@dataclass
class Plot:
    name: str                        # file stem
    caption: str
    figure: Figure


@contextmanager
def style() -> Iterator[None]:
    """The house look for every figure: seaborn's whitegrid at paper scale, set only while drawing."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.15):
        yield


def figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(1, ncols, squeeze=False)[0])


def save(plot: Plot, directory: Path, dpi: int = 200) -> list[Path]:
    """``<name>.pdf`` and ``<name>.png`` under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{plot.name}.pdf", directory / f"{plot.name}.png"]
    plot.figure.savefig(paths[0])
    plot.figure.savefig(paths[1], dpi=dpi)
    log.info("wrote figure %s", plot.name)
    return paths


def _dataset_label(ds: str) -> str:
    return DATASET_NAMES.get(ds, ds)


def _k_ticks(ax, ks: list[int]) -> None:
    """Log-x when K spans a decade or more; ticks at the measured K values, printed as integers."""
    if max(ks) / max(min(ks), 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_ticks(ax, low: float, high: float, fine_up_to: float = 100) -> None:
    """Log-x with plain-number labels (1,000 not 10^3): 1-2-5 ticks while high / low < ``fine_up_to``, else
    decades only."""
    ax.set_xscale("log")
    subs = (1.0, 2.0, 5.0) if high / max(low, 1e-12) < fine_up_to else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean over seeds: mean -+ t_{(1+level)/2, n-1} s / sqrt(n)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), float(v.mean())
    half = stats.t.ppf(0.5 + level / 2.0, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def steps_figure(runs: pd.DataFrame) -> Plot | None:
    """P1 against K for DiffPose's steps ablation (with full), one panel per dataset and protocol: mean and
    95 % Student-t confidence interval over seeds."""
    pool = runs[(trial_lifter(runs) == "diffpose") & trial_axis(runs).isin(["steps", "full"])]
    panels = []
    groups = [(p, g) for p, g in protocol_groups(pool) if (trial_axis(g) == "steps").any()]
    for proto, group in groups:
        frame = pd.DataFrame({"K": column(group, param("diffusion.steps")),
                              "P1": column(group, metric("test_p1"))}).dropna()
        if frame["K"].nunique() >= 2:
            same = sum(p["dataset"] == proto["dataset"] for p, _ in groups) == 1
            title = _dataset_label(proto["dataset"]) + ("" if same else f" ({describe_protocol(proto)})")
            panels.append((title, frame.astype({"K": int, "P1": float})))
    if not panels:
        return None
    with style():
        fig, axes = figure(max(6.0, 4.6 * len(panels)), 3.8, ncols=len(panels))
        for ax, (title, frame) in zip(axes, panels, strict=True):
            sns.lineplot(frame, x="K", y="P1", marker="o", errorbar=t_interval, err_style="bars", ax=ax,
                         color=sns.color_palette()[0], err_kws={"capsize": 3})
            _k_ticks(ax, sorted(frame["K"].unique()))
            seeds = frame.groupby("K").size()
            n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
            ax.set_title(f"{title}, {n} seeds per K")
            ax.set_xlabel("DDIM steps K (denoiser calls)")
            ax.set_ylabel(P1_LABEL)
        fig.suptitle("P1 against diffusion steps K (mean and 95% CI over seeds)")
    return Plot("p1_vs_steps", "DiffPose P1 against the number of diffusion steps K: mean and 95% confidence "
                "interval over seeds (Student t; wide when there are few seeds).", fig)


def per_action_figures(runs: pd.DataFrame) -> list[Plot]:
    """Grouped bars of P1 per action for the comparison rows (full, baselines, refiner), per protocol."""
    plots = []
    chosen = runs[trial_axis(runs).isin(COMPARISON_AXES)]
    datasets = column(chosen, param("trial.dataset")).astype(str)
    for ds in dataset_order(datasets.unique()):
        groups = protocol_groups(chosen[datasets == ds])
        for i, (_, part) in enumerate(groups):
            records = []
            for label, sub in variant_rows(part, [], "figure"):
                for c in [c for c in sub.columns if c.startswith(metric("test_p1") + ".")]:
                    action = c[len(metric("test_p1")) + 1:]
                    for v in sub[c].dropna():
                        records.append((label, action, float(v)))
            if not records:
                continue
            frame = pd.DataFrame(records, columns=["method", "action", "P1"])
            if ds == "h36m":
                order = [H36M_SHORT[a] for a in H36M_ACTIONS if a in set(frame["action"])]
                frame["action"] = frame["action"].map(lambda a: H36M_SHORT.get(a, a))
            else:
                order = sorted(frame["action"].unique())
            width = min(11.0, 3.0 + 0.3 * len(order) * max(2, frame["method"].nunique()))
            with style():
                fig, (ax,) = figure(width, 3.8)
                sns.barplot(frame, x="action", y="P1", hue="method", order=order, errorbar="sd", ax=ax,
                            capsize=0.15, err_kws={"linewidth": 1.0})
                ax.set_xlabel("action")
                ax.set_ylabel(P1_LABEL)
                if len(order) > 8:
                    ax.tick_params(axis="x", labelrotation=45)
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title=None, frameon=False)
                suffix = f", protocol {i + 1} of {len(groups)}" if len(groups) > 1 else ""
                ax.set_title(f"{_dataset_label(ds)}: P1 per action (mean ± sd over seeds){suffix}")
            name = f"per_action_{ds}" + (f"_{i + 1}" if len(groups) > 1 else "")
            plots.append(Plot(name, f"{_dataset_label(ds)}: P1 per test action (mean and standard deviation "
                              "over seeds).", fig))
    return plots


def speed_figures(runs: pd.DataFrame) -> list[Plot]:
    """P1 against inference poses/s (log-x) per variant, one figure per dataset; markers by device type."""
    plots = []
    datasets = column(runs, param("trial.dataset")).astype(str)
    for ds in dataset_order(datasets.unique()):
        sub = runs[datasets == ds]
        records = []
        for label, part in variant_rows(sub, [], "figure"):
            frame = pd.DataFrame({"speed": column(part, metric("test_poses_per_second")),
                                  "P1": column(part, metric("test_p1")),
                                  "device": column(part, tag("device.type")).fillna("unknown")}).dropna()
            for device, g in frame.groupby("device"):
                s, p = g["speed"].astype(float), g["P1"].astype(float)
                records.append((label, device, s.mean(), s.std(ddof=1) if len(g) > 1 else 0.0,
                                p.mean(), p.std(ddof=1) if len(g) > 1 else 0.0, len(g)))
        if not records:
            continue
        frame = pd.DataFrame(records, columns=["method", "device", "speed", "speed_sd", "P1", "P1_sd", "n"])
        with style():
            fig, (ax,) = figure(7.4, 4.4)
            palette = dict(zip(frame["method"].unique(),
                               sns.color_palette("tab10" if frame["method"].nunique() <= 10 else "husl",
                                                 frame["method"].nunique()), strict=True))
            markers = dict(zip(sorted(frame["device"].unique()), "osD^v", strict=False))
            for r in frame.itertuples():
                ax.errorbar(r.speed, r.P1, xerr=r.speed_sd, yerr=r.P1_sd, fmt=markers[r.device],
                            color=palette[r.method], markersize=7, capsize=3, linewidth=1.0,
                            label=r.method if frame["device"].nunique() == 1 else f"{r.method} ({r.device})")
            _log_ticks(ax, float(frame["speed"].min()), float(frame["speed"].max()))
            ax.set_xlabel("inference throughput (poses/s, log scale)")
            ax.set_ylabel(P1_LABEL)
            fig.suptitle(f"{_dataset_label(ds)}: accuracy against speed\n(mean ± sd over seeds)")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        plots.append(Plot(f"speed_{ds}", f"{_dataset_label(ds)}: P1 against inference throughput on the test "
                          "split; lower-right is better.", fig))
    return plots


def spread_and_error(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint error and hypothesis spread (mm), root joint excluded, from a ``predictions.npz``.

    error_nj = || (x_nj - x_n0) - (y_nj - y_n0) ||_2 (root-relative, as P1), spread_nj as logged;
    both flattened to (N * 16,).
    """
    with np.load(path, allow_pickle=False) as z:
        if "spread" not in z.files:
            raise KeyError(f"{path}: no 'spread' array (a single-hypothesis run)")
        pose, target, spread = z["pose"], z["target"], z["spread"]    # (N, 17, 3), (N, 17, 3), (N, 17) m
    rel = (pose - pose[:, :1]) - (target - target[:, :1])                      # (N, 17, 3) m
    error = np.linalg.norm(rel, axis=-1) * 1000.0                              # (N, 17) mm
    return error[:, 1:].reshape(-1), spread[:, 1:].reshape(-1) * 1000.0


class SpreadCurve(NamedTuple):
    """One run's per-joint error against its per-joint spread (mm) in equal-count bins of its own spread."""

    error: np.ndarray    # (B,) mean error of the bin
    spread: np.ndarray   # (B,) mean spread of the bin
    sem: np.ndarray      # (B,) standard error of the bin's mean error
    r: float             # Pearson r over all joints and poses of the run
    method: str          # the line it is averaged into (one per method and dataset)


def spread_curve(error: np.ndarray, spread: np.ndarray, method: str, bins: int = SPREAD_BINS) -> SpreadCurve:
    """``bins`` equal-count bins of ``spread`` (by rank, so every run has the same bins whatever its scale),
    the mean error and spread of each and the standard error of that mean."""
    starts = np.linspace(0, len(error), min(bins, len(error)) + 1).astype(int)[:-1]
    order = np.argpartition(spread, starts[1:]) if len(starts) > 1 else np.arange(len(spread))   # ranks by bin
    e, s = error[order].astype(np.float64), spread[order].astype(np.float64)
    count = np.diff(np.append(starts, len(e)))
    mean = np.add.reduceat(e, starts) / count
    sq = np.add.reduceat(e * e, starts) / count
    r = float(np.corrcoef(s, e)[0, 1]) if len(e) > 2 else float("nan")
    return SpreadCurve(mean, np.add.reduceat(s, starts) / count, np.sqrt(np.maximum(sq - mean ** 2, 0.0) / count),
                       r, method)


def spread_figure(series: dict[str, SpreadCurve]) -> Plot | None:
    """Mean per-joint error against mean spread per bin, one line per method: the mean over its seeds (each
    binned on its own, never pooled) with a 95 % Student-t band over seeds (one seed: over the bin's joints);
    at most :data:`MAX_METHODS` methods, the first in the report's order."""
    methods: dict[str, list[SpreadCurve]] = {}
    for curve in series.values():
        methods.setdefault(curve.method, []).append(curve)
    if not methods:
        return None
    shown = list(methods)[:MAX_METHODS]
    rs = {}
    with style():
        fig, (ax,) = figure(6.4, 4.2)
        for colour, name in zip(sns.color_palette("tab10", len(shown)), shown, strict=True):
            group = methods[name]
            bins = max(len(c.error) for c in group)
            group = [c for c in group if len(c.error) == bins]                # runs with fewer poses than bins
            error = np.stack([c.error for c in group])                         # (S, B) mm
            x, y = np.stack([c.spread for c in group]).mean(axis=0), error.mean(axis=0)
            if len(group) > 1:
                half = stats.t.ppf(0.975, len(group) - 1) * error.std(axis=0, ddof=1) / np.sqrt(len(group))
            else:
                half = 1.96 * group[0].sem
            rs[name] = float(np.nanmean([c.r for c in group]))
            seeds = f", {len(group)} seeds" if len(group) > 1 else ""
            ax.plot(x, y, "o-", color=colour, markersize=3, linewidth=1.3, label=f"{name}, r = {rs[name]:.2f}{seeds}")
            ax.fill_between(x, y - half, y + half, color=colour, alpha=0.2, linewidth=0)
        ax.set_xlabel("per-joint hypothesis spread (mm)")
        ax.set_ylabel("mean per-joint error (mm)")
        title = "Per-joint error against hypothesis spread"
        if len(rs) == 1:
            title += f" (Pearson r = {next(iter(rs.values())):.2f})"
        if len(shown) < len(methods):
            title += f"\n(the first {len(shown)} of {len(methods)} methods)"
        ax.set_title(title)
        ax.legend(loc="upper left", frameon=False, fontsize="small")
    left_out = f" The first {len(shown)} of {len(methods)} methods are drawn." if len(shown) < len(methods) else ""
    return Plot("spread_vs_error", f"Per-joint error against per-joint hypothesis spread ({SPREAD_BINS} "
                "equal-count bins of each run's spread; root joint excluded): per method, the mean over seeds "
                "of each bin's mean error and spread, band: 95% confidence interval of that mean over seeds "
                f"(one seed: over the bin's joints), at most the first {SPREAD_SEEDS} seeds of a method. Pearson "
                f"r over all joints and test poses of a run, mean over seeds.{left_out}", fig)


def learning_curves_figure(runs: pd.DataFrame) -> Plot | None:
    """Validation P1 per epoch, one panel per dataset, colour by variant: one line per training (runs that share
    one, like the K and N values of full's weights, draw it once; dashed: short of convergence) while a variant
    has at most :data:`EACH_TRAINING_UP_TO`, else the mean of its trainings per epoch with a band."""
    curves = column(runs, CURVE)
    have = runs[curves.map(lambda c: c is not None and len(c) > 0)]
    if have.empty:
        return None
    key = column(have, param("trial.training")).fillna(have["run_id"]).astype(str)
    have = have[~key.duplicated()]
    datasets = column(have, param("trial.dataset")).astype(str)
    order = dataset_order(datasets.unique())
    with style():
        fig, axes = figure(max(8.5, 7.6 * len(order)), 4.2, ncols=len(order))     # legends to the right
        logarithmic = []
        for ax, ds in zip(axes, order, strict=True):
            sub = have[datasets == ds]
            labels = variant_rows(sub, [], "curves")
            palette = sns.color_palette("tab10" if len(labels) <= 10 else "husl", n_colors=max(len(labels), 1))
            averaged = []
            for colour, (label, part) in zip(palette, labels, strict=False):
                done = converged_runs(part)
                if len(part) > EACH_TRAINING_UP_TO:
                    averaged.append(len(part))
                    _mean_curve(ax, list(part[CURVE]), int((~done).sum()), colour, label)
                    continue
                for values, ok in zip(part[CURVE], done, strict=True):
                    values = np.asarray(values, dtype=float)
                    ax.plot(np.arange(1, len(values) + 1), values, color=colour, lw=1.2,
                            ls="-" if ok else "--", marker="o" if len(values) == 1 else None, label=label)
            handles, names = ax.get_legend_handles_labels()
            unique = dict(zip(names, handles, strict=True))        # one entry per variant, not per seed
            ax.legend(unique.values(), unique.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
            lengths = sub[CURVE].map(len)
            lengths = lengths[lengths > 1]                        # a one-epoch training (mean pose) is a point
            if len(lengths) and lengths.max() >= EPOCHS_LOG_FROM * lengths.min():   # else 20 of 300 epochs: a sliver
                _log_ticks(ax, 1, float(lengths.max()), fine_up_to=1000)
                logarithmic.append(ds)
            title = _dataset_label(ds)
            if averaged:
                low, high = min(averaged), max(averaged)
                title += f": mean of {low if low == high else f'{low}-{high}'} trainings per variant"
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation P1 (mm)")
        fig.suptitle("Learning curves: validation P1 per epoch" + ("" if averaged else " (dashed: not converged)"))
    return Plot("learning_curves", "Validation P1 per epoch, colour by variant: one line per training and seed "
                f"while a variant has at most {EACH_TRAINING_UP_TO} (dashed: stopped short of convergence, "
                f"{NOT_CONVERGED} in the tables), else the mean over the trainings that ran that far, band: the "
                "10th to 90th percentile of them. Model selection uses these validation subjects only."
                + (f" The epoch axis is logarithmic in {', '.join(map(_dataset_label, logarithmic))}: its longest "
                   f"training ran {EPOCHS_LOG_FROM} or more times as many epochs as its shortest of more than "
                   "one." if logarithmic else ""), fig)


def _mean_curve(ax, curves: list, short: int, colour, label: str) -> None:
    """The mean of ``curves`` (validation P1 per epoch, of different lengths) per epoch over those that ran that
    far, and a band from their 10th to 90th percentile; the legend says how many stopped short."""
    longest = max(len(c) for c in curves)
    grid = np.full((len(curves), longest), np.nan)                               # (trainings, epochs)
    for i, c in enumerate(curves):
        grid[i, :len(c)] = np.asarray(c, dtype=float)
    epochs = np.arange(1, longest + 1)
    low, high = np.nanpercentile(grid, [10.0, 90.0], axis=0)
    ax.fill_between(epochs, low, high, color=colour, alpha=0.15, linewidth=0)
    ax.plot(epochs, np.nanmean(grid, axis=0), color=colour, lw=1.5, marker="o" if longest == 1 else None,
            label=f"{label} ({short} not converged)" if short else label)


def calibration_figure(runs: pd.DataFrame) -> Plot | None:
    """Quantile calibration curves (metrics.calibration_curve), one panel per dataset, one line per method and N
    (the mean over seeds, the band their range), the diagonal of perfect calibration drawn."""
    from diffpose.metrics import CALIBRATION_LEVELS

    pool = sampled_runs(runs)
    names = [metric(f"test_calibration.q{round(100 * q):03d}") for q in CALIBRATION_LEVELS]
    if pool.empty or not all(n in pool.columns for n in names):
        return None
    datasets = column(pool, param("trial.dataset")).astype(str)
    order = dataset_order(datasets.unique())
    levels = np.asarray(CALIBRATION_LEVELS)
    with style():
        fig, axes = figure(max(7.4, 6.8 * len(order)), 4.6, ncols=len(order))     # legends to the right
        for ax, ds in zip(axes, order, strict=True):
            sub = pool[datasets == ds]
            n_of = pd.to_numeric(column(sub, param("sample.hypotheses")), errors="coerce").astype(int)
            labels = [(f"{label}, N = {n}", part) for n in sorted(n_of.unique())
                      for label, part in variant_rows(sub[n_of == n], [], "calibration")]
            palette = sns.color_palette("tab10", n_colors=max(len(labels), 1))
            ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls=":", label="calibrated")
            for colour, (label, part) in zip(palette, labels, strict=False):
                curves = part[names].to_numpy(dtype=float)                          # (seeds, Q)
                ax.plot(levels, curves.mean(axis=0), color=colour, lw=1.5, marker="o", ms=3, label=label)
                if len(curves) > 1:
                    ax.fill_between(levels, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.15)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_title(_dataset_label(ds))
            ax.set_xlabel("q: fraction of hypotheses inside the sphere")
            ax.set_ylabel("fraction of targets inside")
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.suptitle("Calibration of the hypotheses\n(below the diagonal: overconfident)")
    return Plot("calibration", "Quantile calibration of the hypotheses per joint (root excluded): the fraction "
                "of test targets inside the sphere around the hypotheses' median that holds a fraction q of "
                "them, against q; mean over seeds, band: their range. On the diagonal a method's spread says "
                "how far off it is; below it, the hypotheses are too narrow.", fig)
