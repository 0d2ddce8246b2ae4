"""What a killed driver's local Ray leaves behind is stopped by the next run: by the PIDs and start times it
recorded, never by name, and never while that driver still runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil

from benchmark.runner import WallClock, stop_leftover_ray


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


def _entry(proc: subprocess.Popen) -> dict[str, float]:
    return {"pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}


def _record(tmp_path, driver: dict, ray: list[dict]):
    path = tmp_path / "1234.json"
    path.write_text(json.dumps({"driver": driver, "ray": ray}))
    return path


def test_the_processes_of_a_dead_driver_are_stopped_and_its_record_removed(tmp_path):
    driver, child, other = _sleeper(), _sleeper(), _sleeper()
    try:
        record = _record(tmp_path, _entry(driver), [_entry(child)])
        driver.kill()
        driver.wait()
        assert stop_leftover_ray(record, grace=5.0) == 1
        assert child.wait(10) is not None
        assert other.poll() is None, "a process the record does not name was stopped"
        assert not record.exists()
    finally:
        for p in (driver, child, other):
            p.kill()
            p.wait()


def test_a_live_drivers_processes_are_left_alone(tmp_path):
    driver, child = _sleeper(), _sleeper()
    try:
        record = _record(tmp_path, _entry(driver), [_entry(child)])
        assert stop_leftover_ray(record) == 0
        time.sleep(0.2)
        assert child.poll() is None and record.exists()
    finally:
        for p in (driver, child):
            p.kill()
            p.wait()


def test_a_reused_pid_is_not_the_recorded_process(tmp_path):
    driver, child = _sleeper(), _sleeper()
    try:
        entry = _entry(child)
        entry["started"] -= 100.0  # a process of this PID that started earlier: not this one
        record = _record(tmp_path, _entry(driver), [entry])
        driver.kill()
        driver.wait()
        assert stop_leftover_ray(record) == 0
        assert child.poll() is None
    finally:
        for p in (driver, child):
            p.kill()
            p.wait()


def test_an_unreadable_record_stops_nothing(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    assert stop_leftover_ray(path) == 0


def test_the_wall_clock_logs_at_most_once_a_minute_and_is_saved_without_its_client(tmp_path):
    """A killed driver runs no ``finally``: its suite run keeps the wall time the clock last logged."""
    from mlflow import MlflowClient
    from ray import cloudpickle

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x")).info.run_id
    clock = WallClock(uri, run, started=100.0, every=60.0)
    clock.logged = 100.0
    for now in (130.0, 161.0, 200.0, 221.5):
        clock.tick(now)
    assert [m.value for m in client.get_metric_history(run, "wall_seconds")] == [61.0, 121.5]
    saved = cloudpickle.loads(cloudpickle.dumps(clock))  # as Tune saves its callbacks with the experiment
    assert saved._client is None and (saved.run_id, saved.logged) == (run, 221.5)


def _trials(tmp_path, store):
    from benchmark.suite import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(f"""[suite]
name = "t"
datasets = ["mocap17"]
variants = ["full", "no_context", "no_heatmap_init", "simple_baseline"]
seeds = [0, 1]

[axes]
steps = [2]

[datasets.mocap17]
store = "{store}"
""")
    suite = load_suite(path)
    trials = suite.trials()
    return suite.encoder_trials(trials), trials


def _name(t) -> str:
    return t.name.removeprefix("mocap17/")


def test_each_trial_waits_for_its_own_needs_only_and_what_an_earlier_invocation_trained_goes_last(tmp_path,
                                                                                            fake_store):
    from benchmark.runner import needs

    encoders, trials = _trials(tmp_path, fake_store)
    by_id = {t.id: _name(t) for t in encoders + trials}
    done: set[str] = set()

    def waits() -> dict[str, list[str]]:
        order, need = needs(encoders + trials, lambda cfg: cfg.identity("") in done)
        return [_name(t) for t in order], {by_id[k]: sorted(by_id[n] for n in v) for k, v in need.items() if v}

    order, wait = waits()
    assert [_name(e) for e in encoders] == ["encoder:graformer/seed0", "encoder:graformer/seed1"]
    assert order[:4] == ["encoder:graformer/seed0", "encoder:graformer/seed1", "full/seed0", "full/seed1"]
    assert wait == {"full/seed0": ["encoder:graformer/seed0"], "full/seed1": ["encoder:graformer/seed1"],
                    "no_heatmap_init/seed0": ["full/seed0"], "no_heatmap_init/seed1": ["full/seed1"],
                    "steps=2/seed0": ["full/seed0"], "steps=2/seed1": ["full/seed1"]}
    # an earlier invocation trained seed 0's encoder, and seed 1's full DiffPose
    seed0_encoder = next(e for e in encoders if e.seed == 0)
    seed1_full = next(t for t in trials if t.variant == "full" and t.seed == 1)
    done |= {seed0_encoder.config.identity(""), seed1_full.config.identity("")}
    order, wait = waits()
    assert wait == {"no_heatmap_init/seed0": ["full/seed0"], "steps=2/seed0": ["full/seed0"]}
    # the needed training first, the rest in the suite's order, and what has its weights (to evaluate only) last
    assert order[:8] == ["full/seed0", "encoder:graformer/seed1", "no_context/seed0", "no_heatmap_init/seed0",
                         "simple_baseline/seed0", "steps=2/seed0", "no_context/seed1", "simple_baseline/seed1"]
    assert order[8:] == ["encoder:graformer/seed0", "full/seed1", "no_heatmap_init/seed1", "steps=2/seed1"]


def test_the_scheduler_hands_out_what_is_ready_and_never_what_a_failed_training_was_needed_for(tmp_path,
                                                                                              fake_store):
    from ray.tune.search import Searcher

    from benchmark.runner import WhenReady, needs

    encoders, trials = _trials(tmp_path, fake_store)
    order, wait = needs(encoders + trials, lambda cfg: False)
    names = {t.id: _name(t) for t in order}
    searcher = WhenReady(names, [t.id for t in order], wait)
    given: dict[str, str] = {}

    def ask() -> list[str]:
        out = []
        while (config := searcher.suggest(f"tune{len(given)}")) not in (None, Searcher.FINISHED):
            given[config["trial"]] = f"tune{len(given)}"
            out.append(config["trial"])
        return out

    first = ask()   # everything that waits for nothing, the encoders first
    assert first[:2] == ["encoder:graformer/seed0", "encoder:graformer/seed1"]
    assert set(first) == {"encoder:graformer/seed0", "encoder:graformer/seed1", "no_context/seed0",
                          "no_context/seed1", "simple_baseline/seed0", "simple_baseline/seed1"}
    searcher.on_trial_complete(given["encoder:graformer/seed0"])
    assert ask() == ["full/seed0"]          # seed 1's full still waits for its encoder
    searcher.on_trial_complete(given["encoder:graformer/seed1"], error=True)
    searcher.on_trial_complete(given["full/seed0"])
    assert ask() == ["no_heatmap_init/seed0", "steps=2/seed0"]
    assert searcher.suggest("last") == Searcher.FINISHED
    assert sorted(names[t] for t in searcher.unrunnable) == ["full/seed1", "no_heatmap_init/seed1",
                                                             "steps=2/seed1"]
    # Tune saves its search algorithm with the experiment: the state comes back whole
    searcher.save(str(tmp_path / "searcher.json"))
    again = WhenReady(names, [], wait)
    again.restore(str(tmp_path / "searcher.json"))
    assert (again.done, again.failed, again.unrunnable) == (searcher.done, searcher.failed, searcher.unrunnable)
