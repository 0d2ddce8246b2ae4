"""The results store: finished trials pulled from MLflow into one typed DataFrame, saved as Parquet.

One row per trial run. Columns keep MLflow's prefixes so that every name says where it came from:
``run_id``, ``status``, ``artifact_uri``, ``start_time``, ``end_time``, ``params.<dotted config key>``
(typed back from MLflow's strings: ints, floats and bools as the config declares them),
``metrics.<name>`` (float; per-action metrics are ``metrics.test_p1.<Action>``), ``tags.<name>`` and
``curve.val_p1``, the validation P1 per epoch of the training the run logged (a list; empty for a run that
evaluates weights another run trained).
The Parquet file carries :data:`SCHEMA_VERSION` in its metadata; reading a file written by another
version is an error that says how to rebuild it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.errors import Pandas4Warning

from diffpose.config import Config

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VERSION_KEY = b"diffpose.results.schema_version"

PARAM, METRIC, TAG = "params.", "metrics.", "tags."
CURVE = "curve.val_p1"   # the learning curve: validation P1 (mm) per epoch, epochs 1, 2, ...
# A trial run's learning curve as one tag (JSON, 0.01 mm), logged at its end: the report reads it with the run
# instead of one metric-history request per run. A run without it (older, or too long a curve) is read by history.
CURVE_TAG = "train.val_p1_curve"
CURVE_TAG_MAX = 5000     # characters: within every MLflow server's tag length
# The training whose weights a trial run evaluates (its folder in the trainings' cache, ``<lifter>-<hash>``):
# trials that share a training (an evaluation-only variant, a baseline that is an encoder) count its cost once.
TRAINING_TAG = "diffpose.training"
CHECKPOINT_TAG = "checkpoint"   # the absolute path of a run's trained weights, where they are not an artifact
# Each suite invocation logs the trial ids of the suite as it is then (a JSON list) on its suite run. The report
# uses the newest invocation's: a run of a trial the suite has since replaced (a changed config makes a new trial)
# is not one of its rows.
SUITE_TRIALS = "suite_trials.json"

# Fields that define an evaluation protocol: rows that differ in one of them never share a ranking silently.
PROTOCOL_FIELDS = ("dataset", "detector", "frames", "eval_mode", "flip_test", "hypotheses", "aggregate")

# Params that identify a run, not its configuration (ignored when checking that a variant's runs agree);
# trial.training is the fingerprint of the run's training, which includes its seed.
RUN_IDENTITY_PARAMS = ("train.seed", "trial.seed", "trial.training", "train.device", "train.threads",
                       "train.eval_batch_size", "data.store")


class ResultsError(ValueError):
    """The results store cannot be read or built: one line saying what and how to fix it."""


def param(name: str) -> str:
    return PARAM + name


def metric(name: str) -> str:
    return METRIC + name


def tag(name: str) -> str:
    return TAG + name


# ---- typing MLflow's string params back --------------------------------------------------------------------

def config_types() -> dict[str, type]:
    """Dotted key -> Python type of every config field, plus the ``trial.*`` keys of the run schema."""
    types = {k: type(v) for k, v in Config().flatten().items()}
    types.update({"trial.seed": int, "trial.dataset": str, "trial.detector": str, "trial.variant": str,
                  "trial.axis": str, "trial.value": str})
    return types


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low not in ("true", "false"):
        raise ValueError(f"not a bool: {text!r}")
    return low == "true"


def _typed(values: pd.Series, kind: type) -> pd.Series:
    """Parse a column of strings (NA allowed) as ``kind``; raises ValueError on the first bad value."""
    present = values.dropna()
    if kind is bool:
        parsed = [_parse_bool(v) for v in present]
        return pd.Series(pd.array(parsed, dtype="boolean"), index=present.index).reindex(values.index)
    if kind is int:
        parsed = [int(v) for v in present]
        return pd.Series(pd.array(parsed, dtype="Int64"), index=present.index).reindex(values.index)
    if kind is float:
        parsed = [float(v) for v in present]
        return pd.Series(parsed, index=present.index, dtype="float64").reindex(values.index)
    return values


def _guessed(values: pd.Series) -> pd.Series:
    """A param the config does not declare: the narrowest of bool, int, float, str that parses every value."""
    for kind in (bool, int, float):
        try:
            return _typed(values, kind)
        except ValueError:
            continue
    return values


def type_params(frame: pd.DataFrame) -> pd.DataFrame:
    """``params.*`` columns parsed from MLflow's strings to the config's types (nullable Int64/boolean)."""
    types = config_types()
    out = frame.copy()
    for col in [c for c in frame.columns if c.startswith(PARAM)]:
        key = col[len(PARAM):]
        kind = types.get(key)
        if kind is None:
            out[col] = _guessed(frame[col])
            continue
        try:
            out[col] = _typed(frame[col], kind)
        except ValueError as e:
            log.warning("param %s is declared %s but a run has %s; kept as text", key, kind.__name__, e)
    return out


# ---- pulling from MLflow -----------------------------------------------------------------------------------

def pull_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """Every trial run of ``experiment`` (any status), typed; an empty frame when there are none.

    Suite (parent) runs are dropped: a trial has the tag ``diffpose.role = trial`` (or, when a logger
    did not set the tag, a ``trial.dataset`` param).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        log.warning("no experiment %r at %s", experiment, tracking_uri)
        return pd.DataFrame({"run_id": pd.Series(dtype="str"), "status": pd.Series(dtype="str")})
    runs = _pull(client, tracking_uri, found.experiment_id)
    if runs.empty:
        return pd.DataFrame({"run_id": pd.Series(dtype="str"), "status": pd.Series(dtype="str")})
    role = runs.get(tag("diffpose.role"), pd.Series(None, index=runs.index, dtype="object"))
    has_dataset = runs.get(param("trial.dataset"), pd.Series(None, index=runs.index)).notna()
    trials = runs[(role == "trial") | (role.isna() & has_dataset)]
    log.info("pulled %d trial runs (%d runs in all) of experiment %r", len(trials), len(runs), experiment)
    trials = trials.drop(columns=[c for c in ("experiment_id",) if c in trials.columns]).reset_index(drop=True)
    trials[CURVE] = learning_curves(tracking_uri, trials)
    return type_params(trials).sort_values("run_id", ignore_index=True)


def artifact_text(client: Any, run: Any, name: str) -> str | None:
    """The text of ``run``'s top-level artifact ``name``, None where it has none: read where it lies for a local
    artifact store (no download, and no download bar on stderr), else downloaded."""
    root = local_path(run.info.artifact_uri)
    if root is not None:
        return (root / name).read_text() if (root / name).is_file() else None
    if not any(f.path == name for f in client.list_artifacts(run.info.run_id)):
        return None
    with tempfile.TemporaryDirectory(prefix="diffpose-artifact-") as scratch:
        return Path(client.download_artifacts(run.info.run_id, name, scratch)).read_text()


def local_path(artifact_uri: str | None) -> Path | None:
    """The directory of a local artifact store's URI (a path, ``file:`` or ``file://``); None for any other
    store (``mlflow-artifacts:/...`` of a server that proxies artifacts has no ``//``)."""
    if not isinstance(artifact_uri, str) or not artifact_uri:
        return None
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", artifact_uri)
    if scheme is None:
        return Path(artifact_uri)
    if scheme.group(1).lower() != "file":
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(artifact_uri).path))


def search_all(client: Any, experiment_id: str, query: str = "", page_size: int = 1000,
               deleted: bool = False) -> Iterator[Any]:
    """Every run of the experiment that ``query`` finds (all of them by default; the deleted ones instead of the
    active ones with ``deleted``), page by page: ``search_runs`` alone stops at its ``max_results``."""
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, run_view_type=view, max_results=page_size,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            return


# MLflow builds 2-7 ms of Python objects per run it returns (params, metrics, tags: 56 of the 67 s of a report of
# 10,000 runs on one core). Past one page, the older runs are split by start time among PULL_WORKERS processes:
# this one and fresh interpreters (``python -m reports.results``: nothing of the caller's main module runs
# again), as many as the cores this process may use, at most 4.
PULL_WORKERS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def _pull(client: Any, tracking_uri: str, experiment_id: str, workers: int = PULL_WORKERS,
          page_size: int = 1000) -> pd.DataFrame:
    """Every run of the experiment as :func:`_runs_frame`: the newest page here, the runs that started at or
    before its oldest one in ``workers`` slices of start time, each a half-open interval."""
    page = client.search_runs([experiment_id], max_results=page_size, order_by=["attributes.start_time DESC"])
    if not page.token:
        return _runs_frame([_record(r) for r in page])
    newest_rest = min(r.info.start_time for r in page)
    oldest = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"])
    oldest_start = oldest[0].info.start_time if oldest else newest_rest
    edges = [oldest_start + (newest_rest + 1 - oldest_start) * i // workers for i in range(workers + 1)]
    queries = [f"attributes.start_time >= {lo} and attributes.start_time < {hi}"
               for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]
    if len(queries) > 1:
        log.info("reading the runs of experiment %s in %d processes", experiment_id, len(queries))
    records = [_record(r) for r in page if r.info.start_time > newest_rest]
    with tempfile.TemporaryDirectory(prefix="diffpose-pull-") as scratch:
        children = []
        try:
            for i, query in enumerate(queries[1:]):
                out, err = Path(scratch, f"{i}.json"), Path(scratch, f"{i}.log")
                with err.open("wb") as log_file:
                    children.append((subprocess.Popen([sys.executable, "-m", "reports.results", tracking_uri,
                                                       experiment_id, query, str(page_size), str(out)],
                                                      stdout=subprocess.DEVNULL, stderr=log_file), query, out, err))
            records += [_record(r) for r in search_all(client, experiment_id, queries[0], page_size)]
            for child, query, out, err in children:
                if child.wait() != 0:
                    last = (err.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
                    raise ResultsError(f"reading the runs of experiment {experiment_id} with {query!r} failed "
                                       f"(exit {child.returncode}): {last}")
                records += json.loads(out.read_text())
        finally:
            for child, *_ in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    return _runs_frame(records)


def _record(r: Any) -> dict[str, Any]:
    """One run as a flat record with MLflow's own column names (run_id, status, artifact_uri, start_time,
    end_time in ms, params.*, metrics.* with each metric's latest value, tags.*)."""
    record = {"run_id": r.info.run_id, "status": r.info.status, "artifact_uri": r.info.artifact_uri,
              "start_time": r.info.start_time, "end_time": r.info.end_time}
    record |= {param(k): v for k, v in r.data.params.items()}
    record |= {metric(k): v for k, v in r.data.metrics.items()}
    record |= {tag(k): v for k, v in r.data.tags.items()}
    return record


def _runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Records of :func:`_record` as a DataFrame, times as UTC timestamps."""
    frame = pd.DataFrame.from_records(records)
    for col in ("start_time", "end_time"):
        if col in frame.columns:
            frame[col] = pd.to_datetime(frame[col], unit="ms", utc=True)
    return frame


def curve_tag(val_p1: list[float]) -> dict[str, str]:
    """The tag that holds a learning curve (:data:`CURVE_TAG`); none when it would not fit."""
    text = json.dumps([round(float(v), 2) for v in val_p1], separators=(",", ":"))
    return {CURVE_TAG: text} if len(text) <= CURVE_TAG_MAX else {}


def learning_curves(tracking_uri: str, trials: pd.DataFrame) -> list[list[float]]:
    """Per run, the validation P1 it logged per epoch, in epoch order: its :data:`CURVE_TAG`, else its metric
    history (step = epoch), one request per run."""
    from mlflow.tracking import MlflowClient

    stored = column(trials, tag(CURVE_TAG))
    client = None
    curves = []
    for run_id, text in zip(trials["run_id"], stored, strict=True):
        if isinstance(text, str):
            try:
                curves.append([float(v) for v in json.loads(text)])
                continue
            except (ValueError, TypeError):
                log.warning("run %s: unreadable %s tag; reading its metric history", run_id, CURVE_TAG)
        client = client or MlflowClient(tracking_uri)
        history = {m.step: m.value for m in client.get_metric_history(run_id, "val_p1")}
        curves.append([history[e] for e in sorted(history)])
    return curves


# ---- Parquet -----------------------------------------------------------------------------------------------

def write_parquet(frame: pd.DataFrame, path: Path, **meta: str) -> Path:
    """Write the store with ``schema_version`` (and ``meta``: experiment, tracking_uri) in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pyarrow 25 reads Series.values of tz-aware timestamps (deprecated in pandas 3.1; values stay UTC)
        warnings.filterwarnings("ignore", category=Pandas4Warning)
        table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {VERSION_KEY: str(SCHEMA_VERSION).encode(),
             b"diffpose.results.written": dt.datetime.now(dt.UTC).isoformat().encode()}
    extra.update({f"diffpose.results.{k}".encode(): str(v).encode() for k, v in meta.items()})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    pq.write_table(table, path)
    log.info("wrote %d runs to %s", len(frame), path)
    return path


def parquet_meta(path: Path) -> dict[str, str]:
    """The ``diffpose.results.*`` metadata of a store file (keys without the prefix)."""
    raw = pq.read_schema(path).metadata or {}
    prefix = b"diffpose.results."
    return {k[len(prefix):].decode(): v.decode() for k, v in raw.items() if k.startswith(prefix)}


def read_parquet(path: Path) -> pd.DataFrame:
    """Read a store written by :func:`write_parquet`; a missing or other schema version is an error."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path}: no such results file (build it with `make report`)")
    version = parquet_meta(path).get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise ResultsError(f"{path}: results schema version {version or 'missing'}, this code reads "
                           f"{SCHEMA_VERSION}; rebuild it from MLflow with `make report`")
    return pq.read_table(path).to_pandas()


# ---- selecting what the report may use ---------------------------------------------------------------------

def finished_trials(frame: pd.DataFrame, suite: Collection[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """FINISHED trials, one run per ``trial.id`` (the latest), with the messages a reader must see.

    Where ``suite`` gives the trial ids of the suite as it is now, the runs of trials it no longer has (whatever
    their status) are skipped and named; then runs that are not FINISHED and runs without a ``trial.dataset``
    param are skipped and counted.
    """
    notes: list[str] = []
    if frame.empty:
        return frame, notes
    if suite is not None and tag("trial.id") in frame.columns:
        replaced = frame[tag("trial.id")].notna() & ~frame[tag("trial.id")].isin(set(suite))
        if replaced.any():
            names = sorted(set(column(frame, tag("mlflow.runName"), "?")[replaced].fillna("?")))
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            notes.append(f"skipped {int(replaced.sum())} runs of trials the suite's latest invocation no longer "
                         f"has (their config has changed since): {shown}")
            frame = frame[~replaced]
    done = frame[frame["status"] == "FINISHED"]
    others = frame.loc[frame["status"] != "FINISHED", "status"].value_counts().sort_index()
    if len(others):
        detail = ", ".join(f"{n} {s}" for s, n in others.items())
        notes.append(f"skipped {int(others.sum())} runs that are not FINISHED ({detail})")
    if param("trial.dataset") not in done.columns:
        if len(done):
            notes.append(f"skipped {len(done)} FINISHED runs without a trial.dataset param")
        return done.iloc[0:0], notes
    no_dataset = done[param("trial.dataset")].isna()
    if no_dataset.any():
        notes.append(f"skipped {int(no_dataset.sum())} FINISHED runs without a trial.dataset param")
        done = done[~no_dataset]
    if tag("trial.id") in done.columns and len(done):
        order = done.sort_values("end_time") if "end_time" in done.columns else done
        keyed = order[tag("trial.id")].notna()
        dup = order[keyed].duplicated(tag("trial.id"), keep="last")
        if dup.any():
            notes.append(f"{int(dup.sum())} FINISHED runs repeat a trial.id; the latest run of each trial "
                         "is used")
            done = pd.concat([order[keyed][~dup], order[~keyed]]).sort_values("run_id")
    return done.reset_index(drop=True), notes


def column(frame: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """A column, or a column of ``default`` when no run logged it."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([default] * len(frame), index=frame.index, dtype="object")


def protocol(row: pd.Series) -> dict[str, Any]:
    """The evaluation protocol of a run: dataset, 2D detector, frames T (with T > 1, the evaluation mode),
    flip test, and for DiffPose and sampled baselines the hypotheses N and (when N > 1) the aggregation. A
    deterministic baseline has no hypotheses (None)."""
    def get(key: str) -> Any:
        value = row.get(param(key))
        return None if value is None or pd.isna(value) else value

    lifter = get("model.lifter") or "diffpose"
    frames = int(get("data.frames")) if get("data.frames") is not None else None
    samples = lifter == "diffpose" or (get("sample.method") or "model") != "model"
    n = get("sample.hypotheses") if samples else None
    n = int(n) if n is not None else (1 if samples else None)
    return {
        "dataset": get("trial.dataset"),
        "detector": get("trial.detector"),
        "frames": frames,
        # chunks or sliding windows: the same thing for single frames (and not logged by older runs)
        "eval_mode": get("data.eval_mode") if frames is not None and frames > 1 else None,
        "flip_test": bool(get("data.flip_test")) if get("data.flip_test") is not None else None,
        "hypotheses": n,
        "aggregate": get("sample.aggregate") if n is not None and n > 1 else None,
    }


def describe_protocol(proto: dict[str, Any], fields: tuple[str, ...] = PROTOCOL_FIELDS) -> str:
    """``2D cpn_ft_h36m_dbb, T=1, no flip test, N=1``: the protocol as a footnote states it."""
    parts = []
    for f in fields:
        v = proto.get(f)
        if f == "dataset" and v is not None:
            parts.append(str(v))
        elif f == "detector" and v is not None:
            parts.append(f"2D {v}")
        elif f == "frames" and v is not None:
            parts.append(f"T={v}")
        elif f == "eval_mode" and v is not None:
            parts.append("chunked evaluation" if v == "chunks" else "sliding windows")
        elif f == "flip_test" and v is not None:
            parts.append("flip test" if v else "no flip test")
        elif f == "hypotheses" and v is not None:
            parts.append(f"N={v}")
        elif f == "aggregate" and v is not None:
            parts.append(f"{v} of hypotheses")
    return ", ".join(parts)


if __name__ == "__main__":   # one slice of _pull's runs as JSON records: URI EXPERIMENT_ID QUERY PAGE_SIZE OUT
    from mlflow.tracking import MlflowClient

    uri, experiment_id, query, size, out_file = sys.argv[1:]
    slice_records = [_record(r) for r in search_all(MlflowClient(uri), experiment_id, query, int(size))]
    Path(out_file).write_text(json.dumps(slice_records))
