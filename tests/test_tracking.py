"""The tracking store's lookups, on a local SQLite MLflow store."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from benchmark import tracking


def test_finished_trials_reads_every_page_and_only_finished_trial_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(client, "paging", tmp_path / "artifacts")
    expected = {}
    for i in range(11):
        role = "encoder" if i == 3 else "trial"
        run = client.create_run(experiment_id, tags={tracking.ROLE: role, "trial.id": f"t{i:02d}"})
        client.set_terminated(run.info.run_id, "FINISHED" if i % 4 else "FAILED")
        if i % 4:
            expected[f"t{i:02d}"] = run.info.run_id
    client.create_run(experiment_id, tags={tracking.ROLE: "trial", "trial.id": "running"})  # still RUNNING
    suite = client.create_run(experiment_id, tags={tracking.ROLE: "suite"})
    client.set_terminated(suite.info.run_id, "FINISHED")

    assert len(expected) == 8
    assert tracking.finished_trials(client, experiment_id, page_size=3) == expected     # 4 pages of 3 runs
    wanted = ["t01", "t02", "t04", "absent"]
    assert tracking.finished_trials(client, experiment_id, wanted, page_size=2) == {
        k: expected[k] for k in ("t01", "t02")}


def test_finished_trials_by_id_finds_what_paging_finds(tmp_path):
    """A few ids are looked up one by one; with a page of one run each id's query pages too, and the answer is
    the paging one's: FINISHED trial and encoder runs only, the same run where an id has two."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(client, "by-id", tmp_path / "artifacts")
    for tid, role, status in [("a", "trial", "FAILED"), ("a", "trial", "FINISHED"), ("b", "trial", "FINISHED"),
                              ("b", "trial", "FINISHED"), ("c", "encoder", "FINISHED"), ("c", "suite", "FINISHED"),
                              ("d", "suite", "FINISHED"), ("e", "trial", "KILLED")]:
        run = client.create_run(experiment_id, tags={tracking.ROLE: role, "trial.id": tid})
        client.set_terminated(run.info.run_id, status)
        time.sleep(0.002)   # newest first: c's suite run fills the first page of c's own query
    wanted = ["a", "b", "c", "d", "e", "absent"]

    paged = tracking.finished_trials(client, experiment_id, wanted, page_size=2, by_id_up_to=0)
    assert sorted(paged) == ["a", "b", "c"]
    assert tracking.finished_trials(client, experiment_id, wanted, page_size=1) == paged
    assert tracking.finished_trials(client, experiment_id, ["b"], page_size=1) == {"b": paged["b"]}
    assert tracking.finished_trials(client, experiment_id, ["it's"]) == {}     # not an id: pages, finds nothing
