"""A suite's invocations: how long it ran, over the pieces it ran in and the machines they ran on.

Each invocation of a suite is a suite run in the MLflow store of the driver that ran it, with its wall time
(``wall_seconds``: logged once a minute and when it ends, so a killed driver's is the last minute's). A study
that runs in pieces on machines that do not keep their disks starts a new store on each; a suite that carries its
trainings (``carry``, :mod:`diffpose.carry`) carries its invocations too, in :data:`INVOCATIONS` in the same
folder, so that the report built on the last machine counts every machine's wall time, not only its own store's.
The file is plain JSON, ``{"suites": {suite: {suite run id: {"started": ISO 8601, "wall_seconds": s or
null, "machine": the driver's or null}}}}`` ("machine" is absent from the invocations of versions that did not
record it); it is written by the program and merged, never replaced: an invocation keeps its largest wall time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from diffpose.data.source import DataError
from reports.results import SUITE_TRIALS, artifact_text, search_all

INVOCATIONS = "invocations.json"

Invocations = dict[str, dict[str, Any]]   # suite run id -> {"started": ISO 8601 UTC, "wall_seconds": s or None,
#                                           "machine": str or None}


def machine(tags: dict[str, str]) -> str | None:
    """A run's machine in words from its ``host.*`` tags (:func:`benchmark.trial.machine_tags`), or None."""
    if "host.cpu" not in tags:
        return None
    return f"{tags['host.cpu']}, {tags.get('host.cores', '?')} cores, {tags.get('host.memory_gib', '?')} GiB"


def store_invocations(tracking_uri: str, experiment: str) -> tuple[Invocations, list[str] | None]:
    """The suite runs of ``experiment`` in the MLflow store, and the trial ids the newest logged
    (:data:`SUITE_TRIALS`; None when none did). A store with no such experiment has none (and is not created)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return {}, None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}, None
    suites = list(search_all(client, found.experiment_id, "tags.`diffpose.role` = 'suite'"))
    if not suites:
        return {}, None
    runs = {r.info.run_id: {"started": dt.datetime.fromtimestamp(r.info.start_time / 1000, dt.UTC)
                            .strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "wall_seconds": r.data.metrics.get("wall_seconds"), "machine": machine(r.data.tags)}
            for r in suites}
    return runs, _suite_trials(client, max(suites, key=lambda r: r.info.start_time))


def _suite_trials(client: Any, run: Any) -> list[str] | None:
    """The trial ids ``run`` (a suite invocation) logged, or None: logged by none before this was recorded."""
    text = artifact_text(client, run, SUITE_TRIALS)
    if text is None:
        return None
    try:
        trials = json.loads(text)
    except json.JSONDecodeError:
        trials = None
    if not (isinstance(trials, list) and all(isinstance(t, str) for t in trials)):
        raise DataError(f"{SUITE_TRIALS} of suite run {run.info.run_id}", "not a JSON list of trial ids (damaged?)")
    return trials


def carried_invocations(folder: Path) -> dict[str, Invocations]:
    """Every suite's invocations that ``folder``'s record holds; {} without one. A damaged record is a
    :class:`DataError` naming it."""
    path = folder / INVOCATIONS
    if not path.exists():
        return {}
    try:
        suites = json.loads(path.read_text())["suites"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(path, f"not a record of a suite's invocations ({type(e).__name__}: {e})") from None
    ok = isinstance(suites, dict) and all(
        isinstance(runs, dict) and all(
            isinstance(r, dict) and isinstance(r.get("started"), str) and isinstance(r.get("machine", ""), str | None)
            and (r.get("wall_seconds") is None or (isinstance(r["wall_seconds"], int | float)
                                                   and math.isfinite(r["wall_seconds"])))
            for r in runs.values())
        for runs in suites.values())
    if not ok:
        raise DataError(path, "not a record of a suite's invocations (each a start time, a wall time and, if "
                        "recorded, a machine)")
    return suites


def _merge(a: Invocations, b: Invocations) -> Invocations:
    """The invocations of both; one in both keeps its larger wall time (a later look at a running one), and its
    machine where either records it (a record written before machines were has none)."""
    out = dict(a)
    for run_id, inv in b.items():
        old = out.get(run_id)
        if old is None:
            out[run_id] = inv
            continue
        later = inv if (inv["wall_seconds"] or 0.0) > (old["wall_seconds"] or 0.0) else old
        out[run_id] = {**later, "machine": later.get("machine") or old.get("machine") or inv.get("machine")}
    return out


def carry_invocations(tracking_uri: str, suite: str, folder: Path) -> Invocations:
    """Merge the store's invocations of ``suite`` into ``folder``'s record (made if missing); what it holds of
    the suite now."""
    runs, _ = store_invocations(tracking_uri, suite)
    suites = carried_invocations(folder)
    merged = _merge(suites.get(suite, {}), runs)
    if merged != suites.get(suite, {}):
        suites[suite] = merged
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{INVOCATIONS}.tmp"
        tmp.write_text(json.dumps({"suites": suites}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / INVOCATIONS)
    return merged


def invocations(tracking_uri: str, experiment: str, carried: Path | None = None) -> dict[str, str]:
    """How long the experiment's suite ran, over its invocations: those of the MLflow store and, with
    ``carried`` (the suite's carry folder), those its record holds from other machines. ``invocations``,
    ``wall_seconds`` (the sum of each one's last logged wall time), ``unlogged`` (invocations that logged none),
    ``elsewhere`` (those only the carried record has), ``machines`` (how many ran on each driver's machine
    recorded, as JSON) and ``trials``, the store's newest invocation's trial ids (:data:`SUITE_TRIALS`, as JSON;
    absent when none logged them). Strings, as a results store's metadata."""
    runs, trials = store_invocations(tracking_uri, experiment)
    other = carried_invocations(carried).get(experiment, {}) if carried is not None else {}
    merged = _merge(other, runs)
    if not merged:
        return {}
    walls = [r["wall_seconds"] for r in merged.values()]
    out = {"invocations": str(len(merged)), "wall_seconds": f"{sum(w for w in walls if w is not None):.0f}",
           "unlogged": str(sum(w is None for w in walls)), "elsewhere": str(len(set(merged) - set(runs))),
           "machines": json.dumps(dict(sorted(Counter(r["machine"] for r in merged.values() if r.get("machine"))
                                              .items())))}
    if trials is not None:
        out["trials"] = json.dumps(trials)
    return out
