"""Suites end to end on a real Ray cluster and a real MLflow server, both started here on loopback.

Every process a test starts (``ray start --block`` per node, ``mlflow server``, the ``diffpose-bench ablate``
driver) runs in its own process group and is killed by that group's id in teardown, pass or fail; nothing is
stopped by name (``ray stop`` would stop every Ray on the machine). The tests need a loopback-only network
namespace (``make test`` runs pytest inside one, scripts/loopback-ns); anywhere else they skip, so that Ray,
which listens on every interface, never listens on a real one.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from reports.invocations import INVOCATIONS, invocations
from reports.results import TRAINING_TAG

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.store.tracking.sqlalchemy_store"),
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DRIVER_TIMEOUT = 480.0
# Tiny trials: three optimiser steps per epoch, 200 validation frames, every 50th test frame.
TINY_BASE = """train.steps_per_epoch = 3
train.batch_size = 64
train.val_max_frames = 200
data.eval_stride = 50
"""
TRAINING = re.compile(r"diffpose\.train training (\w+) on cpu")  # fit's first log line


# ---- processes ---------------------------------------------------------------------------------------------
def _processes() -> list[tuple[int, int, str, str]]:
    """(pid, process group, state, command line) of every process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        out.append((int(entry), int(fields[2]), fields[0], cmd))
    return out


def _live(match: Callable[[int, str], bool]) -> list[int]:
    """PIDs of the live (not zombie) processes whose (process group, command line) match."""
    return [pid for pid, pgid, state, cmd in _processes() if state not in ("Z", "X") and match(pgid, cmd)]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every live descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append((p, _start_time(p)))
        todo += children.get(p, [])
    return [(p, t) for p, t in out if t]


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if fields[0] not in ("Z", "X") else ""  # starttime, in clock ticks since boot


def _same_process(entry: tuple[int, str]) -> bool:
    """Whether the process recorded as (PID, start time) still runs (not a later one reusing the PID)."""
    return _start_time(entry[0]) == entry[1]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Group:
    """A command started in a new session (its own process group); its log is stdout and stderr together."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]):
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        self.pgid = self.proc.pid

    def members(self) -> list[int]:
        return _live(lambda pgid, _cmd: pgid == self.pgid)

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 3.0) -> None:
        _stop([self], grace)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        """Close the log of a command that ended (its group may outlive it)."""
        self._out.close()


def _stop(groups: list[Group], grace: float = 3.0) -> None:
    """SIGTERM to every group, SIGKILL to whatever is left of them after ``grace`` seconds."""
    for g in groups:
        g.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(g.members() for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for g in groups:
        g.signal(signal.SIGKILL)
        try:
            g.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        g._out.close()


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:]


def _wait(condition: Callable[[], bool], timeout: float, what: str, log: Group | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tail = f"\n{_tail(log.text())}" if log is not None else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)
    return env


def _ray_env() -> dict[str, str]:
    """Token auth with a fresh token in the environment: nothing read from or written to ~/.ray."""
    return _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))


def _short_temp_dir(prefix: str) -> Path:
    """Ray's Unix sockets live under its temp dir, and a socket path has at most 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def loopback() -> None:
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        names = set()
    if names != {"lo"}:
        pytest.skip(f"needs a loopback-only network namespace (interfaces here: {sorted(names)}); "
                    "run through scripts/loopback-ns or make test")
    if not (BIN / "ray").exists():
        pytest.skip(f"no ray executable next to {sys.executable}")


# ---- services ----------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    address: str
    env: dict[str, str]       # what every `ray` command and driver of this cluster needs (token auth)
    head: Group
    worker: Group
    head_dir: Path            # each node's --temp-dir: its sockets and logs
    worker_dir: Path


def _ray_node(name: str, args: list[str], env: dict[str, str], temp_dir: Path, log_dir: Path,
              groups: list[Group]) -> Group:
    node = Group([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                  "--object-store-memory=100000000", *args], log_dir / f"ray-{name}.log", env)
    groups.append(node)
    _wait(lambda: "Ray runtime started" in node.text() or node.proc.poll() is not None, 120,
          f"the Ray {name} node", node)
    assert node.proc.poll() is None, f"ray start ({name}) exited:\n{_tail(node.text())}"
    return node


@pytest.fixture
def cluster(loopback, tmp_path) -> Iterator[Cluster]:
    """Two Ray nodes of one CPU each on this machine, a head and a worker, with token auth."""
    env = _ray_env()
    head_dir, worker_dir = _short_temp_dir("dpray-h"), _short_temp_dir("dpray-w")
    port = _free_port()
    groups: list[Group] = []
    try:
        head = _ray_node("head", ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                         env, head_dir, tmp_path, groups)
        worker = _ray_node("worker", [f"--address=127.0.0.1:{port}", "--num-cpus=1"], env, worker_dir,
                           tmp_path, groups)
        yield Cluster(f"127.0.0.1:{port}", env, head, worker, head_dir, worker_dir)
    finally:
        _stop(groups)
        _kill(_live(lambda _pgid, cmd: str(head_dir) in cmd or str(worker_dir) in cmd))
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(worker_dir, ignore_errors=True)


@pytest.fixture
def mlflow_server(loopback, tmp_path) -> Iterator[str]:
    """An MLflow tracking server on 127.0.0.1 with a SQLite store and proxied artifacts in ``tmp_path``."""
    port = _free_port()
    server = Group([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "server-artifacts")],
                   tmp_path / "mlflow-server.log", _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    uri = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def healthy() -> bool:
        assert server.proc.poll() is None, f"mlflow server exited:\n{_tail(server.text())}"
        try:
            with opener.open(f"{uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 120, "the MLflow server", server)
        yield uri
    finally:
        server.stop()


def _ablate(suite: Path, results: Path, env: dict[str, str], log: Path) -> Group:
    """``diffpose-bench ablate`` (no report) in its own process group."""
    return Group([sys.executable, "-m", "benchmark", "ablate", "--suite", str(suite), "--results",
                  str(results), "--no-report"], log, env)


def _finish(driver: Group, timeout: float = DRIVER_TIMEOUT) -> str:
    """Wait for the driver to succeed, then kill whatever is left of its process group; its output."""
    try:
        rc = driver.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        driver.stop()
    out = driver.text()
    assert rc == 0, f"diffpose-bench ablate exited with {rc}:\n{_tail(out, 8000)}"
    return out


# ---- suites and what MLflow holds --------------------------------------------------------------------------
def _suite(path: Path, name: str, store: Path, variants: list[str], *, epochs: int, axes: str = "",
           extra: str = "") -> Path:
    quoted = ", ".join(f'"{v}"' for v in variants)
    path.write_text(f"""[suite]
name = "{name}"
datasets = ["mocap17"]
variants = [{quoted}]
seeds = [0]
max_failures = 2

[axes]
{axes}

[resources]
cpu = 1

[datasets.mocap17]
store = "{store}"

[base]
train.epochs = {epochs}
{TINY_BASE}
{extra}""")
    return path


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _trial_runs(client, experiment: str, status: str | None = None) -> list:
    """The trial and encoder runs of ``experiment`` (only those with ``status`` if given)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("diffpose.role") in ("trial", "encoder")
            and (status is None or r.info.status == status)]


def _val_steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_p1"))


def _check_suite_in_mlflow(client, suite_file: Path) -> dict[str, object]:
    """Every trial (and context encoder) of the suite has exactly one FINISHED child run of a suite run,
    with the validation history at steps 1..epochs trained, each epoch once. Returns trial id -> run."""
    from benchmark.suite import load_suite

    suite = load_suite(suite_file)
    trials = suite.trials(suite.fingerprints())
    expected = {t.id: t for t in trials + suite.encoder_trials(trials)}
    exp = client.get_experiment_by_name(suite.name)
    assert exp is not None, f"no MLflow experiment {suite.name!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = {r.info.run_id for r in runs if r.data.tags.get("diffpose.role") == "suite"}
    by_id: dict[str, list] = {}
    for r in runs:
        if "trial.id" in r.data.tags:
            by_id.setdefault(r.data.tags["trial.id"], []).append(r)
    assert set(by_id) == set(expected), f"runs for {sorted(by_id)}, trials {sorted(expected)}"
    for tid, found in by_id.items():
        t = expected[tid]
        assert len(found) == 1, f"{t.name}: {len(found)} runs for one trial"
        run = found[0]
        assert run.info.status == "FINISHED", f"{t.name}: {run.info.status}"
        assert run.data.tags["mlflow.parentRunId"] in parents
        assert run.data.tags["diffpose.role"] == ("encoder" if t.stage == "encoder" else "trial")
        if not t.eval_only:  # every epoch once, up to train.epochs or to where the training converged
            trained = int(run.data.metrics["epochs_trained"])
            assert _val_steps(client, run) == list(range(1, trained + 1)), t.name
            assert trained == t.config.train.epochs or run.data.metrics["converged"] == 1.0, t.name
        if t.stage == "trial":  # the same curve as one tag, for the report (empty for an evaluation)
            history = sorted(client.get_metric_history(run.info.run_id, "val_p1"), key=lambda m: m.step)
            curve = json.loads(run.data.tags["train.val_p1_curve"])
            assert curve == pytest.approx([m.value for m in history], abs=0.005), t.name
    return {tid: found[0] for tid, found in by_id.items()}


def _node_logs(temp_dir: Path) -> str:
    """What the workers of one node wrote (a trial's Python logging goes to its worker-*.err file)."""
    return "".join(p.read_text(errors="replace") for p in sorted(temp_dir.glob("session_*/logs/worker-*")))


# ---- the tests ---------------------------------------------------------------------------------------------
def test_suite_on_two_nodes_logs_one_finished_run_per_trial_to_a_server(cluster, mlflow_server, mocap_store,
                                                                         tmp_path):
    from benchmark.suite import load_suite
    from diffpose.config import Config

    # The baseline learns at another rate than full's encoder: two trainings for stage 1, one per node.
    suite_file = _suite(tmp_path / "two_nodes.toml", "two_nodes", mocap_store, ["full", "graformer"],
                        epochs=2, axes="steps = [2]", extra="[variant.graformer]\ntrain.lr = 2e-3\n")
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": mlflow_server}
    out = _finish(_ablate(suite_file, tmp_path / "results", env, tmp_path / "driver.log"))
    assert "cluster: 2 CPUs" in out, "the driver did not see both nodes"
    assert "3 trials done, 0 already finished, 0 failed, of 3" in out

    client = _client(mlflow_server)
    runs = _check_suite_in_mlflow(client, suite_file)
    suite = load_suite(suite_file)
    trials = {t.id: t for t in suite.trials(suite.fingerprints())}
    assert sorted(t.variant for t in trials.values()) == ["full", "graformer", "steps=2"]
    for tid, t in trials.items():
        run = runs[tid]
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        expected = {k: str(v) for k, v in t.params().items()}
        assert {k: params.get(k) for k in expected} == expected
        assert params["diffusion.steps"] == ("2" if t.variant == "steps=2" else "5")
        assert tags["device.type"] == "cpu" and tags["ray.node"]
        assert tags["host.cpu"] and int(tags["host.cores"]) >= 1 and tags["torch.version"].startswith("2.")
        assert {"test_p1", "test_p2", "test_p1_frames", "params", "flops_per_pose",
                "best_val_p1"} <= set(metrics)

        # a server's artifact store: the weights uploaded, as nothing else there would name them
        assert {"config.toml", "per_action.csv", "predictions.npz", "best.pt"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)}
        assert "checkpoint" not in tags
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / tid)))
        assert Config.from_toml(local / "config.toml").hash() == t.eval_config.hash()
        with open(local / "per_action.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        # test_p1 is the mean of the per-action means, and each action's P1 is a metric of its own.
        assert np.mean([float(r["p1"]) for r in rows]) == pytest.approx(metrics["test_p1"], abs=1e-3)
        for r in rows:
            assert float(r["p1"]) == pytest.approx(metrics[f"test_p1.{r['action']}"], abs=1e-3)
        # test_p1_frames is the mean joint error of the saved predictions, in mm.
        pred = np.load(local / "predictions.npz")
        assert pred["pose"].shape == pred["target"].shape and pred["pose"].shape[1:] == (17, 3)
        frames_mm = np.linalg.norm(pred["pose"] - pred["target"], axis=-1).mean() * 1000.0
        assert frames_mm == pytest.approx(metrics["test_p1_frames"], rel=1e-4)

    # The encoder and the baseline wait for nothing and start together with one CPU each: one per node.
    for temp_dir in (cluster.head_dir, cluster.worker_dir):
        assert TRAINING.search(_node_logs(temp_dir)), f"no trial trained on the node of {temp_dir}"
    first = {runs[t.id].data.tags["ray.node"] for t in suite.encoder_trials(list(trials.values()))}
    first.add(runs[next(tid for tid, t in trials.items() if t.variant == "graformer")].data.tags["ray.node"])
    if not all(re.fullmatch(r"[\d.]+", node) for node in first):
        assert len(first) == 2  # node ids tell the nodes apart; their addresses (both 127.0.0.1) cannot

    # RUN_SCHEMA.md: the store's 2D source is a param of every trial run.
    for tid in trials:
        assert "trial.detector" in runs[tid].data.params, "no trial.detector param (RUN_SCHEMA.md)"
    # The report reads the suite's trials from the server's artifact store.
    assert json.loads(invocations(mlflow_server, "two_nodes")["trials"]) == sorted(trials)


def test_losing_the_worker_node_mid_trial_retries_it_on_the_head_in_the_same_run(cluster, mlflow_server,
                                                                                  mocap_store, tmp_path):
    from benchmark.suite import load_suite

    # Epochs long enough that the kill, right after an epoch reached MLflow, lands in the next one's training.
    epochs, steps = 6, "train.steps_per_epoch = 10\n"
    suite_file = _suite(tmp_path / "node_loss.toml", "node_loss", mocap_store,
                        ["graformer", "simple_baseline"], epochs=epochs,
                        extra=f"[variant.graformer]\n{steps}[variant.simple_baseline]\n{steps}")
    loaded = load_suite(suite_file)
    trial_of = {t.variant: t for t in loaded.trials(loaded.fingerprints())}
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": mlflow_server}
    driver = _ablate(suite_file, tmp_path / "results", env, tmp_path / "driver.log")
    client = _client(mlflow_server)
    try:
        # Both trials start at once, one per node. Once the worker's trial has an epoch in MLflow (after its
        # checkpoint), kill -9 the worker's raylet: the node is lost with the trial on it.
        def victim_run() -> object | None:
            assert driver.proc.poll() is None, f"driver exited early:\n{_tail(driver.text())}"
            started = TRAINING.findall(_node_logs(cluster.worker_dir))
            if not started:
                return None
            tid = trial_of[started[0]].id
            found = [r for r in _trial_runs(client, "node_loss") if r.data.tags["trial.id"] == tid]
            return found[0] if found and _val_steps(client, found[0]) else None

        _wait(lambda: victim_run() is not None, 300, "an epoch of the worker node's trial", driver)
        victim = victim_run()
        assert victim.info.status == "RUNNING", "the worker's trial finished before the kill"
        logged_before = _val_steps(client, victim)
        raylets = _live(lambda pgid, cmd: pgid == cluster.worker.pgid and "/raylet/raylet " in cmd)
        assert len(raylets) == 1, f"worker raylets: {raylets}"
        os.kill(raylets[0], signal.SIGKILL)
    except BaseException:
        driver.stop()
        raise
    out = _finish(driver)

    assert "2 trials done, 0 already finished, 0 failed, of 2" in out
    assert re.search(r"Trial \S+ errored", out), "Tune saw no failure"
    runs = _check_suite_in_mlflow(client, suite_file)
    assert victim.info.run_id in {r.info.run_id for r in runs.values()}
    assert 1 <= logged_before[-1] < epochs
    # The retry ran on the head and went on from the last epoch checkpoint instead of starting over.
    assert re.search(r"resumed \S+ at epoch [1-9]", _node_logs(cluster.head_dir)), "no resumed trial on head"


def test_killed_driver_then_rerun_skips_finished_trials_and_runs_the_rest(loopback, mocap_store, tmp_path):
    ray_tmp = _short_temp_dir("dpray-l")
    env = _env(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    # simple_baseline (2 epochs) finishes long before graformer (16 epochs): kill the driver in between.
    suite_file = _suite(tmp_path / "resume.toml", "resume", mocap_store, ["simple_baseline", "graformer"],
                        epochs=2, extra="[variant.graformer]\ntrain.epochs = 16\n")
    results = tmp_path / "results"

    def ray_left() -> list[int]:
        return _live(lambda _pgid, cmd: str(ray_tmp) in cmd)

    started: list[tuple[int, str]] = []
    try:
        first = _ablate(suite_file, results, env, tmp_path / "first.log")
        try:
            # Query the database only once the driver has created it: two processes creating one SQLite
            # store race.
            _wait(lambda: "already finished), " in first.text() or first.proc.poll() is not None, 240,
                  "the driver's MLflow setup", first)
            client = _client(f"sqlite:///{results / 'mlflow.db'}")

            def one_finished() -> bool:
                assert first.proc.poll() is None, f"driver exited early:\n{_tail(first.text())}"
                return bool(_trial_runs(client, "resume", "FINISHED"))

            _wait(one_finished, 300, "a FINISHED trial", first)
            started = _descendants(first.proc.pid)  # the local Ray the driver started
            assert started, "the driver started no Ray processes"
            os.kill(first.proc.pid, signal.SIGKILL)  # the driver alone, as a user's kill -9 would
            first.proc.wait(30)
        except BaseException:
            first.stop()
            raise
        first.close()
        done_first = {r.data.tags["trial.id"]: r for r in _trial_runs(client, "resume", "FINISHED")}
        assert len(done_first) == 1, f"{len(done_first)} of 2 trials finished before the kill"

        second = _ablate(suite_file, results, env, tmp_path / "second.log")
        # Once the rerun's own Ray is up, nothing of the killed driver's may run any more.
        _wait(lambda: "cluster: " in second.text() or second.proc.poll() is not None, 240, "the rerun's Ray",
              second)
        survivors = [p for p, t in started if _same_process((p, t))]
        out = _finish(second)
    finally:
        leftover = [p for p, t in started if _same_process((p, t))]
        _kill(ray_left() + leftover)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not survivors, f"the killed driver's Ray processes {survivors} still ran when the rerun started"
    assert "1 trials done, 1 already finished, 0 failed, of 2" in out
    runs = _check_suite_in_mlflow(client, suite_file)
    for tid, before in done_first.items():
        assert runs[tid].info.run_id == before.info.run_id
        assert runs[tid].info.end_time == before.info.end_time, "a finished trial ran again"
    for run in runs.values():   # local artifacts: the weights by reference to the trainings' cache, not copied
        assert Path(run.data.tags["checkpoint"]).is_file()
        assert Path(run.data.tags["checkpoint"]).is_relative_to((results / "trainings").resolve())
        assert "best.pt" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The killed invocation left no index of finished trials; the rerun's names both, for the next lookup.
    from benchmark import tracking

    experiment_id = client.get_experiment_by_name("resume").experiment_id
    indexed = client.search_runs([experiment_id], f"metrics.`{tracking.INDEX_TIME}` > 0")
    assert len(indexed) == 1
    with tempfile.TemporaryDirectory() as scratch:
        index = json.loads(Path(client.download_artifacts(indexed[0].info.run_id, tracking.INDEX_FILE,
                                                          scratch)).read_text())
    assert index == {tid: run.info.run_id for tid, run in runs.items()}
    # Each invocation, the killed one too, named the suite's trials as they were then: the report keeps those.
    from reports.results import SUITE_TRIALS

    for suite_run in client.search_runs([experiment_id], "tags.`diffpose.role` = 'suite'"):
        with tempfile.TemporaryDirectory() as scratch:
            listed = Path(client.download_artifacts(suite_run.info.run_id, SUITE_TRIALS, scratch)).read_text()
        assert json.loads(listed) == sorted(runs)


def test_a_suite_goes_on_on_another_machine_from_the_trainings_it_carried(loopback, mocap_store, tmp_path):
    """``suite.carry``: the first run writes its trainings to the folder; a run with other results (another
    machine's) takes them from it and trains nothing, its test numbers the first run's."""
    carried = tmp_path / "carried"
    suite_file = _suite(tmp_path / "carry.toml", "carry", mocap_store, ["simple_baseline"], epochs=2)
    suite_file.write_text(suite_file.read_text().replace('name = "carry"', f'name = "carry"\ncarry = "{carried}"'))
    outs, logs, metrics, tags = [], [], [], []
    for machine in ("first", "second"):
        ray_tmp = _short_temp_dir(f"dpray-{machine[0]}")
        env = _env(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
        results = tmp_path / machine
        try:
            outs.append(_finish(_ablate(suite_file, results, env, tmp_path / f"{machine}.log")))
            logs.append(_node_logs(ray_tmp))
        finally:
            _kill(_live(lambda _pgid, cmd, where=str(ray_tmp): where in cmd))
            shutil.rmtree(ray_tmp, ignore_errors=True)
        (run,) = _trial_runs(_client(f"sqlite:///{results / 'mlflow.db'}"), "carry", "FINISHED")
        metrics.append({k: v for k, v in run.data.metrics.items()
                        if k.startswith(("test_p1", "test_p2")) or k == "train_seconds"})
        tags.append(run.data.tags)
    assert "carried out 1 finished, 0 part-way" in outs[0]
    (folder,) = [p for p in carried.iterdir() if p.is_dir()]  # 2 epochs, its cap, unconverged: its checkpoint too
    # Both runs name the one training they evaluate, and its time is its own record's, carried with it.
    assert tags[0][TRAINING_TAG] == tags[1][TRAINING_TAG] == folder.name
    assert {f.name for f in folder.iterdir()} == {"done.json", "best.pt", "checkpoint.pt"}
    assert TRAINING.findall(outs[0] + logs[0]) and "carried in" not in outs[0]
    assert "carried in 1 finished, 0 part-way" in outs[1]
    assert not TRAINING.findall(outs[1] + logs[1]), "the second machine trained again"
    assert "carried out 0 finished, 0 part-way, 1 already there" in outs[1]
    assert metrics[1] == metrics[0] and "test_p1" in metrics[0]
    # Each machine's invocation travels with the trainings: the second's report counts both, each once.
    study = invocations(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}", "carry", carried)
    assert (study["invocations"], study["elsewhere"], study["unlogged"]) == ("2", "1", "0")
    assert len(json.loads((carried / INVOCATIONS).read_text())["suites"]["carry"]) == 2
    from benchmark.trial import machine_tags

    here = machine_tags()                                   # both drivers ran here, and the record says so
    assert json.loads(study["machines"]) == {f"{here['host.cpu']}, {here['host.cores']} cores, "
                                             f"{here['host.memory_gib']} GiB": 2}


def test_bad_suite_fails_before_anything_starts(tmp_path):
    suite_file = _suite(tmp_path / "bad.toml", "bad", tmp_path / "no_store", ["graformer"], epochs=1)
    suite_file.write_text(suite_file.read_text().replace("seeds = [0]", "seeds = [0]\nseed = 1"))
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmark", "ablate", "--suite", str(suite_file),
                           "--results", str(results), "--no-report"],
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(suite_file) in lines[0] and "suite.seed" in lines[0]
    assert proc.stdout == ""
    assert not (results / "mlflow.db").exists() and not (results / "trials").exists()
