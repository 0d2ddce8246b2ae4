"""The tracking store's lookups, on a local SQLite MLflow store."""

from __future__ import annotations

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
