"""Hyperparameter searches: the search file's validation, the study's budget over drivers (resume, sharing,
pruned and stale trials), the exported best config and the report section; end to end on Ray (a driver killed
mid-search and started again) and on a real PostgreSQL server shared by two drivers.

Tests that start Ray or servers need a loopback-only network namespace (``make test`` runs pytest inside one,
scripts/loopback-ns) and skip anywhere else. Every process they start runs in its own process group and is
killed by its id (a Ray the driver started: by the pids whose command line names the test's own temp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from benchmark.cli import main
from benchmark.search import (
    RESERVED,
    Objective,
    SearchError,
    TrialSeededSampler,
    display_url,
    export_best,
    load_search,
    open_storage,
    open_study,
    storage_url,
)
from benchmark.suite import SuiteError, apply_overrides, load_suite
from diffpose.config import Config
from reports.search import best_so_far, importances, search_section, trials_frame

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.store.tracking.sqlalchemy_store")]

REPO = Path(__file__).resolve().parents[1]
SEARCHES = sorted((REPO / "ablations").glob("search_*.toml"))
SPACE = """[space]
train.lr = { type = "logfloat", low = 2e-4, high = 5e-3 }
model.hidden = { type = "categorical", choices = [64, 96, 128] }
model.dropout = { type = "float", low = 0.0, high = 0.4 }
diffusion.steps = { type = "int", low = 1, high = 10 }
"""


def _search_text(store: Path, search: str = "", base: str = "", space: str = SPACE) -> str:
    """A tiny search (2 epochs of 2 steps); ``search`` lines replace the [search] keys they name."""
    head = {"name": '"t"', "dataset": '"mocap17"', "trials": "5", "concurrency": "2", "stale_after_s": "4"}
    head |= dict(line.split(" = ", 1) for line in search.splitlines() if line)
    lines = "\n".join(f"{k} = {v}" for k, v in head.items())
    return f"""[search]
{lines}

[datasets.mocap17]
store = "{store}"

[resources]
cpu = 1

[base]
train.epochs = 2
train.steps_per_epoch = 2
train.batch_size = 64
train.val_max_frames = 200
data.eval_stride = 50
encoder.lr = 1e-3
{base}
{space}"""


@pytest.fixture(autouse=True)
def _no_storage_env(monkeypatch):
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _write(tmp_path: Path, text: str, name: str = "search_t.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- the search file -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SEARCHES, ids=[p.name for p in SEARCHES])
def test_every_shipped_search_loads_with_its_default_inside_the_space(path, tmp_path):
    search = load_search(path, results_dir=tmp_path, check_data=False)
    assert search.space and search.metric in ("val_p1", "val_p2") and search.pruner in ("asha", "median", "none")
    assert search.storage == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    defaults = search.defaults()
    assert search.config(defaults).hash() == search.fixed.hash()  # trial 0 is the unsearched config
    for key in RESERVED:
        assert key not in defaults


def test_a_search_resolves_base_variant_and_the_sampled_values(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store, 'variant = "no_gmm"\nseed = 3')),
                         results_dir=tmp_path)
    cfg = search.config({"train.lr": 2e-3, "model.hidden": 64, "model.dropout": 0.1, "diffusion.steps": 2})
    assert (cfg.train.lr, cfg.model.hidden, cfg.model.dropout, cfg.diffusion.steps) == (2e-3, 64, 0.1, 2)
    assert cfg.diffusion.gmm is False                                   # the variant
    assert (cfg.train.seed, cfg.train.threads, cfg.train.metric) == (3, 1, "val_p1")
    assert cfg.data.store == str(fake_store.resolve()) and cfg.train.epochs == 2
    assert search.defaults() == {"train.lr": 1e-3, "model.hidden": 96, "model.dropout": 0.25, "diffusion.steps": 5}
    dist = search.distributions()
    assert dist["train.lr"] == optuna.distributions.FloatDistribution(low=2e-4, high=5e-3, log=True)
    assert dist["model.dropout"] == optuna.distributions.FloatDistribution(low=0.0, high=0.4)
    assert dist["diffusion.steps"] == optuna.distributions.IntDistribution(low=1, high=10)
    assert dist["model.hidden"] == optuna.distributions.CategoricalDistribution(choices=(64, 96, 128))
    trial = search.trial({"train.lr": 2e-3, "model.hidden": 64, "model.dropout": 0.1, "diffusion.steps": 2})
    assert trial.params()["trial.axis"] == "search" and trial.config.hash() == cfg.hash()


def test_a_sampled_lifter_keeps_what_base_gives_and_takes_its_recipe_for_the_rest(fake_store, tmp_path):
    """The search's fixed change and the sampled values make one change, as a suite's [base] and variant do:
    sampled on top of the fixed config, SemGCN's recipe replaced [base]'s 2 epochs and batch 256 by its 50 and
    64, silently."""
    space = '[space]\nmodel.lifter = { type = "categorical", choices = ["graformer", "semgcn"] }\n'
    search = load_search(_write(tmp_path, _search_text(fake_store, 'variant = "graformer"', "train.batch_size = 256",
                                                       space).replace("train.batch_size = 64\n", "")),
                         results_dir=tmp_path)
    for lifter in ("graformer", "semgcn"):
        cfg = search.config({"model.lifter": lifter})
        recipe = Config().override({"model.lifter": lifter})
        assert (cfg.model.lifter, cfg.train.epochs, cfg.train.batch_size) == (lifter, 2, 256)
        assert (cfg.model.hidden, cfg.train.lr_step) == (recipe.model.hidden, recipe.train.lr_step)


BAD = {
    "unknown table": ("", "", SPACE + "[extra]\nx = 1\n", "extra: unknown table"),
    "unknown search key": ("budget = 3", "", SPACE, "search.budget: unknown key"),
    "test metric": ('metric = "test_p1"', "", SPACE, "search.metric: 'test_p1' is a test-split metric"),
    "unknown metric": ('metric = "loss"', "", SPACE, "search.metric: must be one of"),
    "max mode": ('mode = "max"', "", SPACE, "search.mode"),
    "zero trials": ("trials = 0", "", SPACE, "search.trials: must be >= 1"),
    "trials as text": ('trials = "5"', "", SPACE, "search.trials: must be int"),
    "unknown pruner": ('pruner = "hyperband"', "", SPACE, "search.pruner: must be one of"),
    "unknown variant": ('variant = "tiny"', "", SPACE, "search.variant: unknown variant"),
    "grace past epochs": ("grace_period = 2", "", SPACE, "search.grace_period"),
    "unknown dataset": ('dataset = "h36m"', "", SPACE, "search.dataset: dataset 'h36m' has no"),
    "storage scheme": ('storage = "redis://127.0.0.1/0"', "", SPACE, "search.storage"),
    "reserved base key": ("", "train.seed = 3", SPACE, "base.train.seed: is set by the search"),
    "bad base value": ("", "train.optimizer = \"sgd\"", SPACE, "train.optimizer"),
    "empty space": ("", "", "", "space: is empty"),
    "unknown space key": ("", "", '[space]\ntrain.lrr = { type = "float", low = 0.1, high = 0.2 }\n',
                          "space.train.lrr: unknown config key"),
    "unknown type": ("", "", '[space]\ntrain.lr = { type = "normal", low = 0.1, high = 0.2 }\n',
                     "space.train.lr.type: must be one of"),
    "low above high": ("", "", '[space]\ntrain.lr = { type = "float", low = 0.2, high = 0.1 }\n',
                       "space.train.lr: low (0.2) must be below high (0.1)"),
    "log of zero": ("", "", '[space]\nmodel.dropout = { type = "logfloat", low = 0.0, high = 0.3 }\n',
                    "space.model.dropout.low: must be > 0"),
    "int bounds as floats": ("", "", '[space]\ndiffusion.steps = { type = "int", low = 1.0, high = 4 }\n',
                             "space.diffusion.steps.low: must be int"),
    "float dist on an int key": ("", "", '[space]\ndiffusion.steps = { type = "float", low = 1, high = 4 }\n',
                                 "space.diffusion.steps.type: diffusion.steps is int"),
    "int step not dividing": ("", "", '[space]\ndiffusion.steps = { type = "int", low = 1, high = 4, step = 2 }\n',
                              "space.diffusion.steps.step"),
    "choices missing": ("", "", '[space]\nmodel.hidden = { type = "categorical" }\n',
                        "space.model.hidden.choices: must be a non-empty list"),
    "stray key": ("", "", '[space]\nmodel.hidden = { type = "categorical", choices = [64], low = 1 }\n',
                  "space.model.hidden.low: unknown key"),
    "value the config rejects": ("", "", '[space]\nmodel.hidden = { type = "categorical", choices = [96, 98] }\n',
                                 "model.hidden"),
    "steps past train_steps": ("", "", '[space]\ndiffusion.steps = { type = "int", low = 1, high = 80 }\n',
                               "diffusion.steps"),
    "reserved space key": ("", "", '[space]\ntrain.seed = { type = "int", low = 0, high = 3 }\n',
                           "space.train.seed: set by the search itself"),
    "space key fixed in base": ("", "train.lr = 2e-3", SPACE, "space.train.lr: is fixed in [base] too"),
    "default outside the space": ("", "", '[space]\nmodel.hidden = { type = "categorical", choices = [64, 128] }\n',
                                  "space.model.hidden: the default model.hidden = 96 is outside the space"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_search_file_fails_with_one_line_naming_the_file_and_the_key(case, fake_store, tmp_path):
    search, base, space, expected = BAD[case]
    path = _write(tmp_path, _search_text(fake_store, search, base, space))
    with pytest.raises(SearchError) as err:
        load_search(path, results_dir=tmp_path / "results")
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    assert not (tmp_path / "results").exists()


def test_missing_store_and_missing_file_are_search_errors(tmp_path):
    with pytest.raises(SearchError, match="no such search file"):
        load_search(tmp_path / "none.toml")
    path = _write(tmp_path, _search_text(tmp_path / "nowhere"))
    with pytest.raises(SearchError, match=r"datasets.mocap17.store: no store at"):
        load_search(path)


def test_the_cli_rejects_a_bad_search_before_anything_starts(fake_store, tmp_path, capsys):
    from benchmark.cli import EXIT_BAD_INPUT, main

    path = _write(tmp_path, _search_text(fake_store, 'metric = "test_p2"'))
    results = tmp_path / "results"
    assert main(["tune", "--search", str(path), "--results", str(results)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: search.metric") and len(err.splitlines()) == 1
    assert not results.exists()  # no store, no study, no MLflow, no Ray


def test_ablate_rejects_a_bad_override_file_before_anything_starts(fake_store, tmp_path, capsys):
    from benchmark.cli import EXIT_BAD_INPUT, main

    suite_file = _write(tmp_path, f'[suite]\nvariants = ["full"]\n[datasets.mocap17]\nstore = "{fake_store}"\n',
                        "suite.toml")
    over = _write(tmp_path, "[base]\nmodel.hiddn = 64\n", "over.toml")
    results = tmp_path / "results"
    assert main(["ablate", "--suite", str(suite_file), "--overrides", str(over), "--results", str(results)]) == (
        EXIT_BAD_INPUT)
    assert capsys.readouterr().err.startswith(f"error: {over}: unknown key model.hiddn")
    assert not results.exists()


def test_storage_url_precedence_and_display(fake_store, tmp_path, monkeypatch):
    path = _write(tmp_path, _search_text(fake_store, 'storage = "sqlite:///rel/study.db"'))
    monkeypatch.chdir(tmp_path)
    assert load_search(path).storage == f"sqlite:///{tmp_path.resolve() / 'rel/study.db'}"
    monkeypatch.setenv("OPTUNA_STORAGE", "sqlite:////abs/env.db")
    assert load_search(path).storage == "sqlite:////abs/env.db"
    assert load_search(path, storage="sqlite:////abs/arg.db").storage == "sqlite:////abs/arg.db"
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert display_url("postgresql://ann:secret@127.0.0.1:5433/optuna") == "postgresql://ann:***@127.0.0.1:5433/optuna"


# ---- the study and its budget --------------------------------------------------------------------------------

def test_a_trials_proposal_depends_on_the_seed_and_its_number_not_on_the_driver(tmp_path):
    space = {"x": optuna.distributions.FloatDistribution(low=0.0, high=1.0),
             "k": optuna.distributions.IntDistribution(low=1, high=10)}

    def asks(storage: str, samplers: list[optuna.samplers.BaseSampler]) -> list[dict]:
        """Trial i asked through samplers[i] (a driver each), all on one study."""
        out = []
        for sampler in samplers:
            study = optuna.create_study(storage=storage, study_name="s", sampler=sampler, load_if_exists=True)
            out.append(study.ask(fixed_distributions=space).params)
        return out

    one = asks(f"sqlite:///{tmp_path / 'a.db'}", [TrialSeededSampler(seed=7, n_startup_trials=5)] * 4)
    many = asks(f"sqlite:///{tmp_path / 'b.db'}", [TrialSeededSampler(seed=7, n_startup_trials=5) for _ in range(4)])
    other = asks(f"sqlite:///{tmp_path / 'c.db'}", [TrialSeededSampler(seed=8, n_startup_trials=5)] * 4)
    assert one == many                              # a driver per trial proposes what one driver does
    assert len({json.dumps(p, sort_keys=True) for p in one}) == 4   # distinct per trial number
    assert one != other


def _scripted(plan: dict[int, list[float] | str], calls: list[int] | None = None):
    """An executor whose trial ``n`` reports ``plan[n]`` as its val_p1 per epoch ("error": it fails before its
    first epoch); ``calls`` collects the trials it was asked to train."""
    def execute(number: int, params: dict) -> Iterator[dict]:
        if calls is not None:
            calls.append(number)
        if plan[number] == "error":
            raise RuntimeError("a trial that fails")
        for epoch, value in enumerate(plan[number], 1):
            yield {"epoch": epoch, "val_p1": value, "val_p2": value / 2}
    return execute


def _poll(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# The first driver of the budget test: trial 0 (the default) completes, 1 is pruned (ASHA: worse than 0 at epoch
# 1), 2 errs, and the driver is killed while 3, the last slot of the budget, trains.
FIRST = """
import sys, time
from benchmark.search import Objective, load_search, open_storage, open_study
search = load_search(sys.argv[1], results_dir=sys.argv[2])
study = open_study(search, open_storage(search), "fp")
def execute(number, params):
    if number == 2:
        raise RuntimeError("a trial that fails")
    if number == 3:
        time.sleep(2)       # past the first heartbeats (Optuna never fails a trial that has not beaten yet)
        print("training", number, flush=True)
        time.sleep(600)
    for epoch, value in enumerate({0: [50.0, 40.0], 1: [70.0, 65.0]}[number], 1):
        yield {"epoch": epoch, "val_p1": value}
Objective(search, execute, driver="first").optimize(study)
"""


def test_the_budget_counts_complete_and_pruned_trials_not_failed_or_stale_ones(fake_store, tmp_path):
    path = _write(tmp_path, _search_text(fake_store, "trials = 3\nstale_after_s = 6"))
    search = load_search(path, results_dir=tmp_path)
    first = subprocess.Popen([sys.executable, "-c", FIRST, str(path), str(tmp_path)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    watchdog = threading.Timer(180, os.killpg, (first.pid, signal.SIGKILL))
    watchdog.start()
    try:
        lines = iter(first.stdout.readline, "")
        assert any(line.startswith("training 3") for line in lines), "the first driver ended before its trial 3"
    finally:
        os.killpg(first.pid, signal.SIGKILL)                     # trial 3 is live, then its driver dies
        first.wait(30)
        watchdog.cancel()
    trials = optuna.load_study(study_name="t", storage=search.storage).get_trials()  # (no stale check here)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.RUNNING]
    assert trials[0].params == search.defaults() and trials[0].user_attrs["default"]  # trial 0: the default
    assert trials[0].value == 40.0 and trials[1].value == 70.0 and trials[1].intermediate_values == {1: 70.0}
    study = open_study(search, open_storage(search), "fp")

    seen = {}

    def execute(number: int, params: dict) -> Iterator[dict]:
        seen[number] = study.get_trials()[3].state
        yield from _scripted({4: [31.0, 30.0]})(number, params)

    other = Objective(search, execute, driver="other")
    other.optimize(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                         TrialState.FAIL, TrialState.COMPLETE]
    # trial 4 was asked for while 3 held the last slot, and trained only once 3 had failed as stale
    assert trials[4].datetime_start < trials[3].datetime_complete and seen == {4: TrialState.FAIL}
    assert study.best_trial.value == 30.0 and other.started == [4]
    other.optimize(study)                       # the budget is full: nothing more starts
    assert len(study.get_trials()) == 5


def test_a_trial_asked_for_past_the_budget_by_a_racing_driver_is_failed_not_run(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store, "trials = 1")), results_dir=tmp_path)
    study = open_study(search, open_storage(search), "fp")
    asked = threading.Event()

    def slow(number: int, params: dict) -> Iterator[dict]:
        assert asked.wait(120)
        yield from _scripted({0: [50.0, 45.0]})(number, params)

    ran: list[int] = []
    first, racing = Objective(search, slow, driver="first"), Objective(search, _scripted({}, ran), driver="racing")
    threads = [threading.Thread(target=first.optimize, args=(study,))]
    threads[0].start()
    try:
        _poll(lambda: [t.state for t in study.get_trials()] == [TrialState.RUNNING], 60, "the first trial")
        racing_study = open_study(search, open_storage(search), "fp")     # a second driver's handle
        threads.append(threading.Thread(target=racing.optimize, args=(racing_study,)))
        threads[1].start()
        _poll(lambda: len(study.get_trials()) == 2, 60, "the racing driver's trial")
        time.sleep(1.0)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2   # it waits for the slot ...
    finally:
        asked.set()
        for t in threads:
            t.join(120)
    kept, rejected = study.get_trials()
    assert kept.state == TrialState.COMPLETE and first.started == [0]
    assert rejected.state == TrialState.FAIL and rejected.user_attrs["search.rejected"]   # ... which never frees
    assert racing.started == [] and ran == []


@pytest.mark.parametrize("pruner", ["asha", "median"])
def test_pruners_stop_a_worse_trial_but_never_the_default_nor_at_the_last_epoch(pruner, fake_store, tmp_path):
    text = _search_text(fake_store, f'pruner = "{pruner}"\nstartup_trials = 2\ntrials = 4')
    search = load_search(_write(tmp_path, text), results_dir=tmp_path)
    study = open_study(search, open_storage(search), "fp")
    # 0: the default; 1: worse than 0 at epoch 1 (ASHA keeps the better half; the median pruner waits for 2
    # complete trials); 2: worst; 3: above the median (and ASHA's cut) only at its last epoch; 4: the default again,
    # now the worst at every epoch.
    plan = {0: [10.0, 9.0], 1: [12.0, 11.0], 2: [30.0, 30.0], 3: [10.2, 10.1], 4: [99.0, 99.0]}
    Objective(search, _scripted(plan)).optimize(study)
    study.enqueue_trial(search.defaults(), user_attrs={"default": True})
    more = load_search(_write(tmp_path, text.replace("trials = 4", "trials = 5"), "search_more.toml"),
                       results_dir=tmp_path)                         # a driver with a larger budget, same study
    Objective(more, _scripted(plan)).optimize(open_study(more, open_storage(more), "fp"))
    trials = study.get_trials()
    pruned = {"asha": [1, 2], "median": [2]}[pruner]
    assert [t.number for t in trials if t.state == TrialState.PRUNED] == pruned
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [n for n in range(5) if n not in pruned]
    assert all(trials[n].user_attrs["search.epochs"] == 1 and trials[n].value == plan[n][0] for n in pruned)
    assert trials[3].value == 10.1 and trials[4].value == 99.0


def test_concurrent_threads_on_sqlite_train_each_trial_once_and_the_default_first(fake_store, tmp_path):
    """Optuna's queue of waiting trials handed the enqueued default to two threads on SQLite (optuna#4002: in CI,
    trial 0 trained twice and the second tell crashed the driver); the sampler proposes it now."""
    for attempt in range(3):
        text = _search_text(fake_store, f'trials = 6\nconcurrency = 4\nname = "c{attempt}"')
        search = load_search(_write(tmp_path, text, f"search_c{attempt}.toml"), results_dir=tmp_path)
        study = open_study(search, open_storage(search), "fp")
        ran: list[int] = []
        Objective(search, _scripted({n: [50.0 - n, 40.0 - n] for n in range(12)}, ran)).optimize(study,
                                                                                                 concurrency=4)
        assert sorted(ran) == sorted(set(ran)) and len(ran) >= 6
        trials = study.get_trials()
        assert [t.number for t in trials if t.user_attrs.get("default")] == [0]
        assert trials[0].params == search.defaults() and trials[0].state == TrialState.COMPLETE
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6   # the budget


def test_a_driver_past_its_time_budget_starts_nothing(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store)), results_dir=tmp_path)
    study = open_study(search, open_storage(search), "fp")
    ran: list[int] = []
    late = Objective(search, _scripted({}, ran), deadline=time.time() - 1)
    late.optimize(study, concurrency=2)
    assert late.started == [] and ran == [] and [t.state for t in study.get_trials()] == []


def test_a_study_of_another_search_is_refused(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store)), results_dir=tmp_path)
    open_study(search, open_storage(search), "fp")
    open_study(search, open_storage(search), "fp")  # the same search again: resumes
    other = load_search(_write(tmp_path, _search_text(fake_store, 'metric = "val_p2"')), results_dir=tmp_path)
    with pytest.raises(SearchError, match="was made by a search with another objective or space"):
        open_study(other, open_storage(other), "fp")
    with pytest.raises(SearchError, match="another objective"):
        open_study(search, open_storage(search), "another store")


# ---- export, overrides, report -------------------------------------------------------------------------------

def _known_study(search, storage) -> optuna.Study:
    """Trial 0 the default (50 mm), 1 complete (42.5), 2 pruned (90 at epoch 1), 3 complete (45)."""
    study = open_study(search, storage, "fp")
    Objective(search, _scripted({0: [60.0, 50.0], 1: [45.0, 42.5], 2: [90.0, 80.0], 3: [48.0, 45.0]})).optimize(study)
    return study


def test_the_exported_best_config_merges_into_a_suite(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store, "trials = 4")), results_dir=tmp_path)
    study = _known_study(search, open_storage(search))
    best = study.best_trial
    path = export_best(study, search, tmp_path / "t.best.toml")
    text = path.read_text()
    assert "trial 1, best_val_p1 = 42.500 mm" in text and "default config (trial 0, complete): 50.000 mm" in text
    assert tomllib.loads(text) == {"base": {k.split(".")[0]: {} for k in best.params} | _nested(best.params)}
    suite_file = _write(tmp_path, f"""[suite]
name = "s"
datasets = ["mocap17"]
variants = ["full", "graformer"]
seeds = [0]
[datasets.mocap17]
store = "{fake_store}"
[base]
train.epochs = 2
train.lr = 5e-4
""", "suite.toml")
    merged = load_suite(apply_overrides(suite_file, path, tmp_path / "suites"), check_data=False)
    assert merged.name == "s+t.best" and merged.file.parent == tmp_path / "suites"
    full = next(t for t in merged.trials() if t.variant == "full")
    flat = full.config.flatten()
    assert all(flat[k] == v for k, v in best.params.items()) and flat["train.epochs"] == 2
    assert next(t for t in merged.trials() if t.variant == "graformer").config.train.lr == best.params["train.lr"]


def _nested(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        head, tail = k.split(".", 1)
        out.setdefault(head, {})[tail] = v
    return out


def test_an_override_file_other_than_one_base_table_is_refused(fake_store, tmp_path):
    suite_file = _write(tmp_path, f'[suite]\nvariants = ["full"]\n[datasets.mocap17]\nstore = "{fake_store}"\n',
                        "suite.toml")
    for text, expected in (("[search]\nx = 1\n", "search: unknown table"),
                           ("[base]\ntrain.lrr = 1.0\n", "unknown key train.lrr"),
                           ("[base]\ntrain.lr = \"fast\"\n", "train.lr must be float")):
        over = _write(tmp_path, text, "over.toml")
        with pytest.raises(SuiteError, match=expected) as err:
            apply_overrides(suite_file, over, tmp_path / "suites")
        assert str(err.value).startswith(str(over))


def test_best_so_far_and_the_trials_frame_have_known_values(fake_store, tmp_path):
    got = best_so_far([60.0, 70.0, 90.0, 50.0, 55.0], [True, True, False, True, True])
    assert got.tolist() == [60.0, 60.0, 60.0, 50.0, 50.0]
    assert [x != x for x in best_so_far([80.0, 40.0], [False, True])] == [True, False]  # NaN before the first
    search = load_search(_write(tmp_path, _search_text(fake_store, "trials = 4")), results_dir=tmp_path)
    study = _known_study(search, open_storage(search))
    frame = trials_frame(study)
    assert frame["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert frame["value"].tolist() == [50.0, 42.5, 90.0, 45.0] and frame["default"].tolist() == [True] + [False] * 3
    assert frame["epochs"].tolist() == [2, 2, 1, 2]
    section = search_section(study, "sqlite:///x.db")
    text = "\n".join(section.markdown)
    assert "4 trials (3 complete, 1 pruned, 0 failed, 0 running)" in text
    assert "Best: trial 1, best val P1 42.50 mm. Default config: trial 0, best val P1 50.00 mm." in text
    assert [p.name for p in section.plots] == ["search_t_history", "search_t_importance"]
    found, note = importances(study)
    assert set(found) == set(search.defaults()) and abs(sum(found.values()) - 1.0) < 1e-9 and "3 complete" in note


def test_importances_need_two_complete_trials(fake_store, tmp_path):
    search = load_search(_write(tmp_path, _search_text(fake_store, "trials = 1")), results_dir=tmp_path)
    study = open_study(search, open_storage(search), "fp")
    Objective(search, _scripted({0: [55.0, 50.0]})).optimize(study)
    assert importances(study) == ({}, "1 complete trial: importances need 2 or more")
    section = search_section(study, "sqlite:///x.db")
    assert [p.name for p in section.plots] == ["search_t_history"] and "no parameter importances" in section.warnings[0]


# ---- processes ------------------------------------------------------------------------------------------------

def _loopback_only() -> None:
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        names = set()
    if names != {"lo"}:
        pytest.skip(f"needs a loopback-only network namespace (interfaces here: {sorted(names)}); run through "
                    "scripts/loopback-ns or make test")


def _pids_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a directory only this test uses)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(entry))
            except OSError:
                continue
    return out


@dataclass
class Driver:
    """``diffpose-bench tune`` in its own process group, its Ray under ``ray_dir``."""

    proc: subprocess.Popen
    log: Path
    ray_dir: Path

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        for _ in range(3):
            for pid in _pids_naming(str(self.ray_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _driver(search_file: Path, results: Path, log: Path) -> Driver:
    ray_dir = Path(tempfile.mkdtemp(prefix="dpsr", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(ray_dir))
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "tune", "--search", str(search_file), "--results",
                             str(results), "--no-report"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)
    return Driver(proc, log, ray_dir)


def _wait(condition: Callable[[], bool], timeout: float, what: str, driver: Driver) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if driver.proc.poll() is not None:
            pytest.fail(f"the driver exited ({driver.proc.returncode}) before {what}:\n{driver.text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{driver.text()[-4000:]}")


def _states(url: str, name: str) -> dict[int, tuple[str, float | None]]:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return {}
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception:  # noqa: BLE001 - no study (or no tables) yet
        return {}
    return {t.number: (t.state.name, t.value) for t in study.get_trials(deepcopy=False)}


@dataclass
class Killed:
    search_file: Path
    results: Path
    url: str
    before: dict[int, tuple[str, float | None]]     # the study when the first driver was killed
    after: dict[int, tuple[str, float | None]]      # when the second one finished
    second: str                                      # the second driver's output


@pytest.fixture(scope="module")
def killed_search(mocap_store, tmp_path_factory) -> Iterator[Killed]:
    """A 5-trial search whose driver is killed (SIGKILL, its Ray with it) once a trial completed while another
    runs, then started again to the end."""
    _loopback_only()
    root = tmp_path_factory.mktemp("killed")
    search_file = root / "search_k.toml"
    search_file.write_text(_search_text(mocap_store).replace('name = "t"', 'name = "k"'))
    results = root / "results"
    url = f"sqlite:///{results / 'optuna.db'}"
    drivers = []
    try:
        first = _driver(search_file, results, root / "first.log")
        drivers.append(first)
        _wait(lambda: sum(s == "COMPLETE" for s, _ in _states(url, "k").values()) >= 1
              and any(s == "RUNNING" for s, _ in _states(url, "k").values()), 240, "a complete and a running trial",
              first)
        first.kill()
        before = _states(url, "k")
        second = _driver(search_file, results, root / "second.log")
        drivers.append(second)
        second.proc.wait(300)
        assert second.proc.returncode == 0, second.text()[-4000:]
        yield Killed(search_file, results, url, before, _states(url, "k"), second.text())
    finally:
        for d in drivers:
            d.kill()
            shutil.rmtree(d.ray_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_killed_search_resumes_from_its_storage_without_counting_a_trial_twice(killed_search):
    from mlflow.tracking import MlflowClient

    before, after = killed_search.before, killed_search.after
    counted = [n for n, (s, _) in after.items() if s in ("COMPLETE", "PRUNED")]
    assert len(counted) == 5                                         # the budget, exactly
    for n, (state, value) in before.items():
        if state in ("COMPLETE", "PRUNED"):
            assert after[n] == (state, value)                        # kept, not run again
        if state == "RUNNING":
            assert after[n][0] == "FAIL"                             # the killed driver's: failed, not counted
    ran_again = len(counted) - sum(s in ("COMPLETE", "PRUNED") for s, _ in before.values())
    assert f"search k: {ran_again} trials run now" in killed_search.second
    assert not [n for n, (s, _) in after.items() if s in ("RUNNING", "WAITING")]

    client = MlflowClient(f"sqlite:///{killed_search.results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("k")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`diffpose.role` = 'trial'")
    study = optuna.load_study(study_name="k", storage=killed_search.url)
    by_number = {t.number: t for t in study.get_trials()}
    numbers = [int(r.data.tags["optuna.trial"]) for r in runs]
    assert all(r.data.tags["optuna.study"] == "k" for r in runs)
    assert sorted(n for n in numbers if by_number[n].state.name in ("COMPLETE", "PRUNED")) == sorted(counted)
    assert len(set(numbers)) == len(numbers)                         # one MLflow run per Optuna trial
    assert all(r.info.status != "RUNNING" for r in runs)
    for r in runs:
        t = by_number[int(r.data.tags["optuna.trial"])]
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert r.info.status == expected and r.data.tags["search.state"] == t.state.name.lower()
        assert r.data.params["trial.axis"] == "search"
        if t.state.name == "COMPLETE":
            assert r.data.metrics["best_val_p1"] == pytest.approx(t.value, abs=1e-4)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`diffpose.role` = 'search'")
    assert len(parents) == 2


@pytest.mark.slow
@pytest.mark.cluster
def test_the_exported_config_with_the_same_seed_reproduces_the_best_validation_metric(killed_search, tmp_path):
    from diffpose.train import fit

    study = optuna.load_study(study_name="k", storage=killed_search.url)
    search = load_search(killed_search.search_file, results_dir=killed_search.results)
    export = killed_search.results / "k.best.toml"
    assert tomllib.loads(export.read_text())["base"] == _nested(study.best_trial.params)
    suite_file = _write(tmp_path, textwrap.dedent(f"""\
        [suite]
        name = "again"
        variants = ["full"]
        seeds = [{search.seed}]
        [datasets.mocap17]
        store = "{search.dataset.store}"
        [base]
        """) + "\n".join(f"{k} = {json.dumps(v)}" for k, v in Config().override(search.base).flatten().items()
                         if k in _flat(search.base)) + "\n", "suite.toml")
    suite = load_suite(apply_overrides(suite_file, export, tmp_path / "suites"))
    (trial,) = suite.trials()
    assert trial.config.hash() == search.config(study.best_trial.params).hash()
    # From scratch, a fresh encoder cache too: fit trains the encoder first, then seeds its own training.
    result = fit(trial.config, tmp_path / "run", cache=tmp_path / "encoders", progress=False)
    assert min(h["val_p1"] for h in result.history) == pytest.approx(study.best_value, abs=1e-4)


def _flat(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.mark.slow
@pytest.mark.cluster
def test_the_report_of_a_search_has_its_section(killed_search, tmp_path):
    from reports.build import build_report

    out = tmp_path / "report"
    summary = build_report(f"sqlite:///{killed_search.results / 'mlflow.db'}", "k", out)
    assert summary.ok and summary.sections == ["Search: k"] and summary.runs == 0  # no suite tables of search runs
    text = (out / "report.md").read_text()
    study = optuna.load_study(study_name="k", storage=killed_search.url)
    assert f"Best: trial {study.best_trial.number}, best val P1 {study.best_value:.2f} mm." in text
    assert (out / "figures" / "search_k_history.png").exists()
    assert "figures/search_k_history.pdf" in (out / "report.tex").read_text()
    # `make report SUITE=<search file>`: the CLI takes a search file too and finds its experiment by name
    assert main(["report", "--suite", str(killed_search.search_file), "--results", str(tmp_path / "cli"),
                 "--tracking-uri", f"sqlite:///{killed_search.results / 'mlflow.db'}"]) == 0
    assert "Search: k" in (tmp_path / "cli" / "report" / "k" / "report.md").read_text()


# ---- PostgreSQL: two drivers share one study -----------------------------------------------------------------

def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 (its own data directory, a free port), a database "optuna"; stopped by
    its postmaster's PID."""
    _loopback_only()
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (apt-get install -y postgresql)")
    try:
        import psycopg  # noqa: F401 - SQLAlchemy's default driver for postgresql:// URLs
    except ImportError:
        pytest.fail("PostgreSQL is installed but its Python driver is not: pip install 'psycopg[binary]'")
    root = Path(tempfile.mkdtemp(prefix="dppg", dir="/tmp"))  # the postgres user must reach it: not tmp_path
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    postmaster = None
    try:
        subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
                        "-t", "60", "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"],
                       check=True, capture_output=True, timeout=120)
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "optuna"], check=True, capture_output=True, timeout=60)
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        if postmaster is not None:
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 30
            while Path(f"/proc/{postmaster}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


DRIVE = """
import sys, time
from pathlib import Path
from benchmark.search import Objective, load_search, open_storage, open_study
search = load_search(sys.argv[1], storage=sys.argv[2])
study = open_study(search, open_storage(search), "fp")
def execute(number, params):
    value = 100 * params["train.lr"] + params["model.dropout"]   # a made-up objective of the point
    time.sleep(0.25)
    yield {"epoch": 1, "val_p1": value + 1}
    yield {"epoch": 2, "val_p1": value}
driver = Objective(search, execute, driver=sys.argv[3])
barrier = Path(sys.argv[4])        # both drivers ready before either asks for a trial: a driver that imports
(barrier / sys.argv[3]).touch()    # torch slower on a loaded machine would otherwise find the budget spent
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
driver.optimize(study, concurrency=2)
print("ran", driver.started)
"""


@pytest.mark.cluster
def test_two_drivers_share_one_study_on_postgresql_without_double_counting(postgres, fake_store, tmp_path):
    search_file = _write(tmp_path, _search_text(fake_store, 'trials = 12\npruner = "none"'))
    env = {k: v for k, v in os.environ.items() if k != "OPTUNA_STORAGE"}
    barrier = tmp_path / "ready"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", DRIVE, str(search_file), postgres, name, str(barrier)],
                              cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for name in ("one", "two")]
    try:
        outs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    study = optuna.load_study(study_name="t", storage=postgres)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12                                        # the shared budget, exactly
    assert {t.user_attrs["search.driver"] for t in complete} == {"one", "two"}  # both drivers contributed
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert all(t.user_attrs.get("search.rejected") for t in trials if t.state == TrialState.FAIL)
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 12   # no point run twice
    assert sum(len(json.loads(o.split("ran ", 1)[1].splitlines()[0])) for o in outs) == 12
    defaults = [t for t in trials if t.user_attrs.get("default")]
    assert len(defaults) == 1 and defaults[0].state == TrialState.COMPLETE  # trial 0 only
