"""The tracking store's lookups, on a local SQLite MLflow store."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from benchmark import tracking


def test_a_lookup_without_an_index_reads_every_page_and_only_finished_trial_runs(tmp_path):
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
    assert tracking.find_finished(client, experiment_id, page_size=3).runs == expected     # 4 pages of 3 runs
    wanted = ["t01", "t02", "t04", "absent"]
    assert tracking.find_finished(client, experiment_id, page_size=2).among(wanted) == {
        k: expected[k] for k in ("t01", "t02")}


def _finished_run(client, experiment_id, tid, role="trial", ended_ms=None):
    run = client.create_run(experiment_id, tags={tracking.ROLE: role, "trial.id": tid})
    client.set_terminated(run.info.run_id, "FINISHED", end_time=ended_ms)
    return run.info.run_id


def test_a_lookup_reads_the_newest_index_and_pages_only_the_runs_ended_since(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(client, "index", tmp_path / "artifacts")
    hour_ago = int(time.time() * 1000) - 3_600_000
    old = _finished_run(client, experiment_id, "old", ended_ms=hour_ago)
    first = tracking.find_finished(client, experiment_id)           # no index yet: every run paged
    assert first.runs == {"old": old}
    for name, runs, at in [("older", {"stale": old}, first.looked_up_at - 1),
                           ("newest", {"indexed": old}, first.looked_up_at)]:
        parent = tracking.start_parent_run(client, experiment_id, "suite", name, tmp_path / "s.toml", "0" * 40)
        tracking.write_index(client, parent, tracking.Finished(runs, at))
    late = _finished_run(client, experiment_id, "late")                 # ended after the index's lookup
    unseen = _finished_run(client, experiment_id, "unseen", ended_ms=hour_ago)  # before it, missing from it

    found = tracking.find_finished(client, experiment_id)
    # the newest index, plus what ended since (less the slack): a run that ended an hour before is not paged
    assert found.runs == {"indexed": old, "late": late}
    assert found.looked_up_at >= first.looked_up_at
    assert tracking.find_finished(client, experiment_id, found).runs == found.runs   # from this process's lookup
    assert found.among(["late", "absent"]) == {"late": late}

    client.delete_run(old)                     # a run of the index deleted: its trial may have been retrained
    assert tracking.find_finished(client, experiment_id).runs == {"late": late, "unseen": unseen}


def test_an_unreadable_index_means_paging_every_run(tmp_path, caplog):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(client, "bad-index", tmp_path / "artifacts")
    run = _finished_run(client, experiment_id, "t", ended_ms=int(time.time() * 1000) - 3_600_000)
    parent = tracking.start_parent_run(client, experiment_id, "suite", "s", tmp_path / "s.toml", "0" * 40)
    client.log_dict(parent, ["not", "a", "mapping"], tracking.INDEX_FILE)
    client.log_metric(parent, tracking.INDEX_TIME, float(time.time() * 1000))
    assert tracking.find_finished(client, experiment_id).runs == {"t": run}
    assert "not a JSON object of trial id -> run id" in caplog.text

    other = tracking.start_parent_run(client, experiment_id, "suite", "s", tmp_path / "s.toml", "0" * 40)
    client.log_metric(other, tracking.INDEX_TIME, float(time.time() * 1000 + 1))   # its artifact never written
    assert tracking.find_finished(client, experiment_id).runs == {"t": run}
    assert "cannot be read" in caplog.text


def test_the_running_runs_of_replaced_trials_are_closed_and_those_of_the_suites_trials_left_to_resume(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(client, "edited", tmp_path / "artifacts")
    run = {tid: client.create_run(experiment_id, tags={tracking.ROLE: role, "trial.id": tid}).info.run_id
           for tid, role in (("kept", "trial"), ("replaced", "trial"), ("old-encoder", "encoder"))}
    suite = client.create_run(experiment_id, tags={tracking.ROLE: "suite"}).info.run_id   # not a trial's
    finished = _finished_run(client, experiment_id, "replaced-and-finished")
    assert tracking.close_replaced_trial_runs(client, experiment_id, ["kept"]) == 2
    status = {tid: client.get_run(rid).info.status for tid, rid in run.items()}
    assert status == {"kept": "RUNNING", "replaced": "KILLED", "old-encoder": "KILLED"}
    assert client.get_run(suite).info.status == "RUNNING" and client.get_run(finished).info.status == "FINISHED"


def test_a_driver_killed_while_it_opens_a_trials_run_leaves_no_trial_run_without_its_config(tmp_path, monkeypatch):
    """The run gets its params before the tags that make it the trial's: killed in between (here, the params'
    batch fails), no lookup or report finds a trial run without them; opened again, the trial gets a whole run."""
    from benchmark.suite import Trial
    from diffpose.config import Config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = tracking.ensure_experiment(client, "killed", tmp_path / "artifacts")
    parent = client.create_run(experiment_id, tags={tracking.ROLE: "suite"}).info.run_id
    trial = Trial(dataset="d", variant="full", axis="full", value="full", seed=0, config=Config(), fingerprint="f")

    class Killed(BaseException):
        pass

    def killed(self, run_id, metrics=(), params=(), tags=()):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "log_batch", killed)
        try:
            tracking.TrialRun(uri, experiment_id, parent, trial, {})
        except Killed:
            pass
    assert not client.search_runs([experiment_id], "tags.`diffpose.role` = 'trial'")
    assert not client.search_runs([experiment_id], f"tags.`trial.id` = '{trial.id}'")
    run = tracking.TrialRun(uri, experiment_id, parent, trial, {})
    (whole,) = client.search_runs([experiment_id], f"tags.`trial.id` = '{trial.id}'")
    assert whole.info.run_id == run.run_id and whole.data.params["trial.axis"] == "full"
    assert whole.data.tags["mlflow.parentRunId"] == parent
