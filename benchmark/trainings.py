"""A suite's trainings in a results folder's cache, for the CLI: carried to the folder they travel in
(:mod:`diffpose.carry`, ``diffpose-bench carry``), and where each stands (``diffpose-bench progress``): a study
run in pieces, whose trials' table in Ray shows only the running ones."""

from __future__ import annotations

from pathlib import Path

from benchmark.suite import Suite, SuiteError, Trial, load_suite
from benchmark.tracking import tracking_uri
from diffpose.carry import carry_out
from diffpose.data.source import DataError
from diffpose.train import TRAININGS, training_state
from reports.invocations import carried_invocations, carry_invocations, invocations

# The states of a training (diffpose.train.TrainingState), in the order they are listed.
STATES = ("converged", "unconverged", "part-way", "not started")


def trainings_cache(suite: Suite, results: Path, what: str) -> Path:
    """The cache of ``suite``'s trainings in ``results``; one line naming what is missing where the suite has not
    run there (``what``: what that leaves the command, "nothing to carry")."""
    for ds in suite.datasets.values():
        if not (ds.store / "meta.json").is_file():
            raise DataError(ds.store, f"no store here: the suite has not run on this machine ({what})")
    cache = results / TRAININGS
    if not cache.is_dir():
        raise DataError(cache, "no trainings here: the suite has not run with these results")
    return cache


def carry(path: Path, results: Path, to: Path | None) -> list[str]:
    """The suite's trainings from ``results``' cache into the folder they travel in (``to``, else the suite's
    ``carry``); what was carried, as lines."""
    suite = load_suite(path, check_data=False)
    folder = to.resolve() if to else suite.carry
    if folder is None:
        raise SuiteError(f"{path}: suite.carry: the suite names no folder to carry its trainings in; "
                         f"give one with --to")
    if folder.exists() and not folder.is_dir():
        raise DataError(folder, "a file, not a folder (the trainings travel in a folder)")
    carried_invocations(folder)  # a damaged record: one line before anything is written
    cache = trainings_cache(suite, results, "nothing to carry")
    carried = carry_out(suite.trainings(suite.trials(suite.fingerprints())), cache, folder)
    runs = carry_invocations(tracking_uri(results), suite.name, folder)
    hours = sum(r["wall_seconds"] or 0.0 for r in runs.values()) / 3600
    return [f"{carried.line('carried')} of suite {suite.name} to {folder}",
            *(f"  {identity}: part-way, after epoch {epochs}" for identity, epochs in sorted(carried.partway.items())),
            *([f"  its invocations: {len(runs)} recorded there, {hours:.1f} h of wall time"] if runs else [])]


def progress(path: Path, results: Path) -> list[str]:
    """Where each training the suite needs stands in ``results``' cache, from its own files, with the trials that
    use it; a line of counts first."""
    suite = load_suite(path, check_data=False)
    cache = trainings_cache(suite, results, "nothing trained")
    trials = suite.trials(suite.fingerprints())
    users: dict[str, list[Trial]] = {}
    for t in trials + suite.encoder_trials(trials):
        users.setdefault(t.training, []).append(t)
    states = sorted(((training_state(ts[0].config, cache), ts) for ts in users.values()),
                    key=lambda s: (STATES.index(s[0].state), s[0].identity))
    counts = ", ".join(f"{n} {state}" for state in STATES if (n := sum(s.state == state for s, _ in states)))
    hours = sum(s.seconds for s, _ in states) / 3600
    study = invocations(tracking_uri(results), suite.name, suite.carry)
    wall = (f", {float(study['wall_seconds']) / 3600:.1f} h of wall time over {study['invocations']} invocations"
            if study else "")
    lines = [f"suite {suite.name}: {len(states)} trainings in {cache}: {counts}; {hours:.1f} h of training so far"
             f"{wall}"]
    width = max(len(s.identity) for s, _ in states)
    for state, ts in states:
        names = [t.name for t in ts if t.stage != "encoder"] or [f"{ts[0].name} (a context encoder)"]
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        lines.append(f"  {state.line(width)}  {names[0]}{more}")
        if state.rule:
            lines.append(f"  {'':<11}  {state.rule}")
    return lines
