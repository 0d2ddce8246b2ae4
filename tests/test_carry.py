"""Trainings that travel (diffpose.carry): what a carried folder holds, and that a cache continued from it on
another machine trains on epoch for epoch, or not at all once finished. Suites end to end: tests/test_cluster.py."""

import fcntl
import json

import pytest
import torch

from diffpose import convergence, train
from diffpose.carry import carry_in, carry_out
from diffpose.config import Config
from diffpose.data.source import DataError
from diffpose.data.store import store_meta
from diffpose.train import load_checkpoint, trained

pytestmark = pytest.mark.slow

TINY = {"train.steps_per_epoch": 3, "train.batch_size": 64, "train.val_max_frames": 300, "data.eval_stride": 50,
        "train.eval_batch_size": 1024, "model.hidden": 32}
KEY = ("epoch", "train_loss", "val_p1", "val_p2", "lr")


class Stop(Exception):
    pass


def stop_after_first(record, _path):
    if record["epoch"] == 1:
        raise Stop


def configs(store) -> dict[str, Config]:
    base = Config().override({"data.store": str(store), **TINY})
    return {"part": base.override({"model.lifter": "graformer", "train.epochs": 3}),
            "capped": base.override({"model.lifter": "simple_baseline", "train.epochs": 2}),
            "mean": base.override({"model.lifter": "mean_pose", "train.epochs": 1})}


def identity(cfg: Config) -> str:
    return cfg.identity(store_meta(cfg.data.store)["fingerprint"])


def files(folder) -> dict[str, set[str]]:
    return {d.name: {f.name for f in d.iterdir()} for d in folder.iterdir()}


def curve(history) -> list[dict]:
    return [{k: h[k] for k in KEY} for h in history]


def test_a_cache_continued_from_carried_trainings_trains_on_as_the_first_would_have(mocap_store, tmp_path,
                                                                                      monkeypatch):
    cfgs = configs(mocap_store)
    ids = {name: identity(cfg) for name, cfg in cfgs.items()}
    here, there, carried = tmp_path / "here", tmp_path / "there", tmp_path / "carried"
    with pytest.raises(Stop):
        trained(cfgs["part"], here, progress=False, on_epoch=stop_after_first)    # killed after epoch 1
    capped = trained(cfgs["capped"], here, progress=False)     # 2 epochs: its cap, short of convergence
    mean = trained(cfgs["mean"], here, progress=False)         # nothing to train: one epoch, not stopped by the rule

    out = carry_out(ids.values(), here, carried)
    assert sorted(out.finished) == sorted([ids["capped"], ids["mean"]]) and out.partway == {ids["part"]: 1}
    assert files(carried) == {ids["part"]: {"checkpoint.pt", "best.pt"},
                              ids["capped"]: {"done.json", "best.pt", "checkpoint.pt"},
                              ids["mean"]: {"done.json", "best.pt", "checkpoint.pt"}}
    assert carry_out(ids.values(), here, carried).unchanged == sorted(ids.values())   # nothing new: nothing written

    # Another machine: the finished ones are found, not trained again; the part-way one resumes at epoch 2.
    got = carry_in(carried, there)
    assert sorted(got.finished) == sorted([ids["capped"], ids["mean"]]) and got.partway == {ids["part"]: 1}
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished training was trained again"))
    assert trained(cfgs["capped"], there, progress=False).history == capped.history
    assert trained(cfgs["mean"], there, progress=False).history == mean.history
    monkeypatch.undo()
    resumed = trained(cfgs["part"], there, progress=False)
    whole = trained(cfgs["part"], tmp_path / "whole", progress=False)
    assert curve(resumed.history) == curve(whole.history)
    for name in ("checkpoint.pt", "best.pt"):
        a, b = (load_checkpoint(r.out_dir / name)["model"] for r in (whole, resumed))
        assert all(torch.equal(a[k], b[k]) for k in a)
    # What the first machine carried is behind the second's: nothing comes back over it.
    assert carry_in(carried, there).unchanged == sorted(ids.values())
    assert trained(cfgs["part"], there, progress=False).history == resumed.history

    # A raised cap on the second machine continues the capped training from its carried checkpoint.
    longer = trained(cfgs["capped"].override({"train.epochs": 3}), there, progress=False)
    assert longer.history[:2] == capped.history and len(longer.history) == 3


def test_a_training_the_rule_stopped_since_leaves_its_checkpoint_behind(mocap_store, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "converged", lambda curve: len(curve) >= 2)   # the rule, met at epoch 2
    cfg = configs(mocap_store)["part"]
    here, carried = tmp_path / "here", tmp_path / "carried"
    with pytest.raises(Stop):
        trained(cfg, here, progress=False, on_epoch=stop_after_first)
    carry_out([identity(cfg)], here, carried)
    assert files(carried) == {identity(cfg): {"checkpoint.pt", "best.pt"}}
    done = trained(cfg, here, progress=False)
    assert done.converged and done.epochs == 2
    assert carry_out([identity(cfg)], here, carried).finished == [identity(cfg)]
    assert files(carried) == {identity(cfg): {"done.json", "best.pt"}}
    assert json.loads((carried / identity(cfg) / "done.json").read_text())["history"] == done.history


def test_a_foreign_or_mislabelled_carried_file_is_refused_before_anything_is_copied(mocap_store, tmp_path):
    cfgs = configs(mocap_store)
    here, carried = tmp_path / "here", tmp_path / "carried"
    trained(cfgs["capped"], here, progress=False)
    trained(cfgs["mean"], here, progress=False)
    carry_out([identity(c) for c in cfgs.values()], here, carried)
    # a torch file holding an object, not tensors and plain data: refused unread, named
    bad = carried / identity(cfgs["capped"]) / "checkpoint.pt"
    torch.save({"config": {}, "config_hash": bad.parent.name, "model": Stop("not plain data")}, bad)
    with pytest.raises(DataError, match=f"^{bad}: not a checkpoint"):
        carry_in(carried, tmp_path / "there")
    assert not (tmp_path / "there").exists()
    # one training's weights in another's folder
    (carried / identity(cfgs["capped"])).rename(tmp_path / "aside")
    moved = carried / identity(cfgs["mean"]) / "best.pt"
    (tmp_path / "aside" / "best.pt").replace(moved)
    with pytest.raises(DataError, match=f"^{moved}: the checkpoint of training {identity(cfgs['capped'])}"):
        carry_in(carried, tmp_path / "there")
    assert not (tmp_path / "there").exists()


def test_a_training_in_progress_in_the_cache_is_left_to_its_process(mocap_store, tmp_path):
    cfg = configs(mocap_store)["part"]
    here, there, carried = tmp_path / "here", tmp_path / "there", tmp_path / "carried"
    with pytest.raises(Stop):
        trained(cfg, here, progress=False, on_epoch=stop_after_first)
    carry_out([identity(cfg)], here, carried)
    (there / identity(cfg)).mkdir(parents=True)
    with open(there / identity(cfg) / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert carry_in(carried, there).busy == [identity(cfg)]
    assert files(there) == {identity(cfg): {".lock"}}


def test_the_carry_command_writes_the_suites_trainings_and_progress_says_where_each_stands(mocap_store, tmp_path,
                                                                                         capsys):
    from benchmark.cli import main
    from benchmark.suite import load_suite

    base = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**TINY, "train.epochs": 3}.items())
    path, carried = tmp_path / "s.toml", tmp_path / "carried"
    variants = json.dumps(["graformer", "mean_pose", "simple_baseline", "semgcn"])
    path.write_text(f'[suite]\nname = "s"\nvariants = {variants}\ncarry = "{carried}"\n\n'
                    f'[datasets.d]\nstore = "{mocap_store}"\n\n[base]\n{base}')
    suite = load_suite(path)
    trials = {t.variant: t for t in suite.trials(suite.fingerprints())}
    cache = tmp_path / "results" / train.TRAININGS
    with pytest.raises(Stop):
        trained(trials["graformer"].config, cache, progress=False, on_epoch=stop_after_first)
    trained(trials["mean_pose"].config, cache, progress=False)
    assert main(["carry", "--suite", str(path), "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"carried 1 finished, 1 part-way of suite s to {carried}",
                   f"  {trials['graformer'].training}: part-way, after epoch 1"]
    assert files(carried) == {trials["graformer"].training: {"checkpoint.pt", "best.pt"},
                              trials["mean_pose"].training: {"done.json", "best.pt", "checkpoint.pt"}}

    trained(trials["simple_baseline"].config, cache, progress=False)   # 3 epochs: its cap, short of convergence
    assert main(["progress", "--suite", str(path), "--results", str(tmp_path / "results")]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    # under the part-way training, what the convergence rule reads on its curve so far
    assert lines.pop(3) == f"  {'':<11}  the rule reads from epoch {convergence.MIN_EPOCHS}"
    assert head.startswith(f"suite s: 4 trainings in {cache}: 1 converged, 1 unconverged, 1 part-way, 1 not "
                           "started; ")
    states = {line.split()[1]: line.split() for line in lines}
    assert [line.split()[0] for line in lines] == ["converged", "unconverged", "part-way", "not"]
    assert states[trials["graformer"].training][2:4] == ["1/3", "epochs"]
    assert lines[2].endswith("  d/graformer/seed0")
    assert states[trials["simple_baseline"].training][2] == "3/3"
    assert lines[3].split()[:4] == ["not", "started", trials["semgcn"].training, "0/3"]
    assert all(" s an epoch  " in line for line in lines[:3]) and "s an epoch" not in lines[3]


def test_a_damaged_record_of_a_finished_training_is_named_not_read(tmp_path):
    carried = tmp_path / "carried" / "graformer-0123456789abcdef"
    carried.mkdir(parents=True)
    (carried / "done.json").write_text('{"history": [')
    with pytest.raises(DataError, match=f"^{carried / 'done.json'}: not a finished training's record"):
        carry_in(carried.parent, tmp_path / "there")
    (carried / "done.json").write_text('{"history": []}')
    with pytest.raises(DataError, match="written by diffpose-bench"):
        carry_in(carried.parent, tmp_path / "there")
    assert not (tmp_path / "there").exists()
