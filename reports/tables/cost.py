"""The cost table: parameters, FLOPs per pose, training time and inference poses/s per device type."""

from __future__ import annotations

import pandas as pd

from reports.results import column, metric, param, tag
from reports.tables.model import Cell, Column, Row, Table, convergence_note, mark_convergence, summary
from reports.tables.runs import dataset_order, missing_metrics, partial_text, variant_rows


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
            rows.append(mark_convergence(Row(label, cells, group=ds, ranked=False), part, unconverged))
            for k, n in missing_metrics(part, ("params", "flops_per_pose", "train_seconds",
                                         "test_poses_per_second")).items():
                missing[k] = missing.get(k, 0) + n
    epochs = sorted({str(e) for e in column(runs, param("train.epochs")).dropna()})
    names = sorted({str(d) for d in column(runs, tag("device")).dropna()})
    notes = ["Mean ± std over the runs of each variant. Params: parameters of the model used at inference "
             "(trainable and frozen). FLOPs: forward FLOPs per pose at inference, all K × N denoiser calls "
             "and the encoder. Train: wall time of training the weights, summed over epochs with validation "
             "(the context encoder's not included; K and N rows evaluate full DiffPose's weights and show "
             "their training); Poses/s: inference throughput on the test split; both per device type (– "
             "where a variant has no run on that device type), and both measured inside the trials, so beside "
             "whatever else their machine ran then (a suite's other trials); make bench measures speed "
             "alone.",
             f"Epochs at most: {', '.join(epochs) or 'not logged'}; devices: {', '.join(names) or 'not logged'}."]
    table = Table("cost", "Cost: parameters, FLOPs, training time and inference speed", "Variant", columns,
                  rows, notes + convergence_note(unconverged), partial_text(missing), kind="cost",
                  unconverged=unconverged)
    return [table], warn
