"""A suite's invocations travel with its trainings: the report built on the last machine counts the wall time of
every machine's invocations, each once, and a damaged record is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli import main
from benchmark.tracking import ensure_experiment, start_parent_run
from diffpose.data.source import DataError
from reports.build import study_text
from reports.invocations import INVOCATIONS, carried_invocations, carry_invocations, invocations


def _store(path: Path) -> tuple[str, MlflowClient, str]:
    """A machine's MLflow store with the experiment of suite ``s``."""
    uri = f"sqlite:///{path / 'mlflow.db'}"
    path.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    return uri, client, ensure_experiment(client, "s", path / "artifacts")


def _invocation(client: MlflowClient, experiment_id: str, wall: float | None, cpu: str | None = None) -> str:
    """A suite run; with ``cpu``, driven from a machine with that CPU, 2 cores and 24 GiB (else not recorded)."""
    machine = {"host.cpu": cpu, "host.cores": "2", "host.memory_gib": "24"} if cpu else {}
    run = start_parent_run(client, experiment_id, "suite", "s", Path("s.toml"), "abc", machine)
    if wall is not None:
        client.log_metric(run, "wall_seconds", wall)
    return run


def test_each_machines_invocations_are_counted_once_with_their_latest_wall_time(tmp_path):
    folder = tmp_path / "carried"
    uri1, c1, e1 = _store(tmp_path / "one")
    running = _invocation(c1, e1, 600.0)
    _invocation(c1, e1, 3000.0, cpu="AMD EPYC")
    _invocation(c1, e1, None, cpu="AMD EPYC")       # killed within its first minute
    assert len(carry_invocations(uri1, "s", folder)) == 3
    c1.log_metric(running, "wall_seconds", 1200.0)  # it ran on after that carry
    carry_invocations(uri1, "s", folder)
    c1.log_metric(running, "wall_seconds", 900.0)   # a smaller value never replaces a larger one
    carry_invocations(uri1, "s", folder)
    assert json.loads((folder / INVOCATIONS).read_text())["suites"]["s"][running]["wall_seconds"] == 1200.0

    uri2, c2, e2 = _store(tmp_path / "two")        # the next machine: a new store
    _invocation(c2, e2, 1800.0, cpu="Intel Xeon")
    got = invocations(uri2, "s", folder)
    assert (got["invocations"], got["wall_seconds"], got["unlogged"], got["elsewhere"]) == ("4", "6000", "1", "3")
    assert json.loads(got["machines"]) == {"AMD EPYC, 2 cores, 24 GiB": 2, "Intel Xeon, 2 cores, 24 GiB": 1}
    carry_invocations(uri2, "s", folder)           # carried out there too: still counted once
    assert invocations(uri2, "s", folder)["invocations"] == "4"
    assert invocations(uri2, "s")["invocations"] == "1"            # without the folder: this store's only
    text = study_text(pd.DataFrame(), {f"study.{k}": v for k, v in got.items()})
    assert text == ("Wall time: 1.7 h over 4 invocations of the suite (3 of them on other machines, from the record "
                    "its carried trainings hold; driven from AMD EPYC, 2 cores, 24 GiB (2); Intel Xeon, 2 cores, "
                    "24 GiB (1); the machine of 1 not recorded (by a version before it was); 1 logged none: killed "
                    "within its first minute, or run by a version that logged it only at the end).")
    record = json.loads((folder / INVOCATIONS).read_text())["suites"]["s"]
    assert record[running]["machine"] is None                    # its driver's machine was not recorded
    for inv in record.values():                                  # a record written before machines were
        inv.pop("machine")
    (folder / INVOCATIONS).write_text(json.dumps({"suites": {"s": record}}))
    assert json.loads(invocations(uri2, "s", folder)["machines"]) == {"Intel Xeon, 2 cores, 24 GiB": 1}
    other = json.loads((folder / INVOCATIONS).read_text())
    other["suites"]["t"] = {"x": {"started": "2026-12-07T00:00:00Z", "wall_seconds": 5.0}}
    (folder / INVOCATIONS).write_text(json.dumps(other))
    assert invocations(uri2, "s", folder)["invocations"] == "4"   # another suite's, in the same folder: not its


def test_no_store_or_no_experiment_has_no_invocations_and_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert invocations(uri, "s", tmp_path / "carried") == {}
    assert carry_invocations(uri, "s", tmp_path / "carried") == {}
    assert not (tmp_path / "none").exists() and not (tmp_path / "carried").exists()
    uri, client, _ = _store(tmp_path / "one")
    assert invocations(uri, "other") == {} and client.get_experiment_by_name("other") is None


@pytest.mark.parametrize("text", ["not json", "[]", '{"suites": {"s": {"r": {"wall_seconds": 1}}}}',
                                  '{"suites": {"s": {"r": {"started": "x", "wall_seconds": "long"}}}}',
                                  '{"suites": {"s": {"r": {"started": "x", "wall_seconds": NaN}}}}',
                                  '{"suites": {"s": {"r": {"started": "x", "wall_seconds": 1, "machine": 2}}}}'])
def test_a_damaged_record_is_named(tmp_path, text):
    (tmp_path / INVOCATIONS).write_text(text)
    with pytest.raises(DataError, match=f"^{tmp_path / INVOCATIONS}: not a record of a suite's invocations"):
        carried_invocations(tmp_path)


def test_report_carry_and_ablate_refuse_a_damaged_record_in_one_line_writing_nothing(tmp_path, capsys, fake_store):
    folder = tmp_path / "carried"
    folder.mkdir()
    (folder / INVOCATIONS).write_text("not json")
    uri, client, experiment_id = _store(tmp_path / "results")
    _invocation(client, experiment_id, 60.0)
    with pytest.raises(DataError, match=INVOCATIONS):
        carry_invocations(uri, "s", folder)
    assert (folder / INVOCATIONS).read_text() == "not json"      # left as it was
    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nname = "s"\nvariants = ["mean_pose"]\ncarry = "{folder}"\n\n'
                     f'[datasets.d]\nstore = "{fake_store}"\n')
    capsys.readouterr()                                          # MLflow's lines as the store was made
    (tmp_path / "results" / "trainings").mkdir()                # a cache to carry from: nothing is carried
    for argv, results in ((["report"], tmp_path / "results"), (["carry"], tmp_path / "results"),
                          (["ablate"], tmp_path / "fresh")):
        assert main([*argv, "--suite", str(suite), "--results", str(results)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(folder / INVOCATIONS) in err, err
    assert not (tmp_path / "results" / "report").exists() and not (tmp_path / "results" / "s.parquet").exists()
    assert not (tmp_path / "fresh").exists() and [p.name for p in folder.iterdir()] == [INVOCATIONS]
