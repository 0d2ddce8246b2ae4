"""Suite files: validation (one SuiteError line naming the file and the key, and nothing else done),
expansion into trials, trial identity; every shipped suite loads; the deploy manifests parse."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from benchmark.suite import SuiteError, load_suite
from diffpose.config import AXES, VARIANTS, Config

REPO = Path(__file__).resolve().parents[1]
# ablations/search_*.toml are hyperparameter searches (benchmark/search/), not suites.
SUITES = sorted(p for p in (REPO / "ablations").glob("*.toml") if not p.name.startswith("search_"))


def _suite_text(store: Path) -> str:
    return f"""[suite]
name = "t"
datasets = ["mocap17"]
variants = ["full", "no_gmm", "graformer"]
seeds = [0]

[axes]
steps = [2]
hypotheses = [3]
kernels = [1]

[resources]
cpu = 1

[datasets.mocap17]
store = "{store}"

[base]
train.epochs = 2
"""


def _write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / "suites" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_the_valid_suite_loads(tmp_path, fake_store):
    suite = load_suite(_write(tmp_path, _suite_text(fake_store)))
    assert suite.name == "t" and suite.seeds == (0,) and suite.cpu == 1.0 and suite.max_failures == 2
    assert sorted(t.variant for t in suite.trials()) == ["full", "graformer", "hypotheses=3", "kernels=1",
                                                         "no_gmm", "steps=2"]


MISSING = "/nonexistent/diffpose-bench"
NO_STORE = f'store = "{MISSING}/store"\n#'  # replaces 'store = ' and comments out the real path
NO_ROOT = f'prepare = {{ dataset = "mocap17", root = "{MISSING}/root" }}\n{NO_STORE}'
BAD = [  # (case, (old, new) replacements in the valid text or text to append, the key the error names)
    ("unknown table", ("", "[suit]\nx = 1\n"), "suit"),
    ("unknown suite key", ("seeds = [0]", "seeds = [0]\nseed = 1"), "suite.seed"),
    ("seeds as a string", ("seeds = [0]", 'seeds = "0"'), "suite.seeds"),
    ("cpu as a string", ("cpu = 1", 'cpu = "1"'), "resources.cpu"),
    ("unknown variant", ('"no_gmm"', '"no_gmmm"'), "suite.variants"),
    ("unknown axis", ("steps = [2]", "step = [2]"), "axes.step"),
    ("steps the config rejects", ("steps = [2]", "steps = [500]"), "diffusion.steps"),
    ("hypotheses the config rejects", ("hypotheses = [3]", "hypotheses = [0]"), "sample.hypotheses"),
    ("training key for an inference-only variant", ('"graformer"]', '"graformer", "mc_dropout"]\n[variant.mc_dropout]'
                                                    '\ntrain.lr = 1e-3'), "train.lr"),
    ("kernels the config rejects", ("kernels = [1]", "kernels = [-1]"), "data.kernels"),
    ("unknown config key in base", ("train.epochs = 2", "train.epochz = 2"), "train.epochz"),
    ("wrong config type in base", ("train.epochs = 2", 'train.epochs = "two"'), "train.epochs"),
    ("variant table for an unknown variant", ("", "[variant.fulll]\ntrain.lr = 1e-3\n"), "variant.fulll"),
    ("no store and no prepare table", ("store = ", NO_STORE), "datasets.mocap17.store"),
    ("prepare root that does not exist", ("store = ", NO_ROOT), "datasets.mocap17.prepare.root"),
    ("unknown prepare dataset", ("store = ", 'prepare = { dataset = "h37m", root = "." }\nstore = '),
     "datasets.mocap17.prepare.dataset"),
    ("not TOML", ("[base]", "[base"), "not valid TOML"),
    ("carry as a number", ("seeds = [0]", "seeds = [0]\ncarry = 3"), "suite.carry"),
    ("carry as an empty string", ("seeds = [0]", 'seeds = [0]\ncarry = " "'), "suite.carry"),
    ("carry to a file", ("seeds = [0]", f'seeds = [0]\ncarry = "{__file__}"'), "suite.carry"),
]


@pytest.mark.parametrize(("edit", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_an_invalid_suite_fails_with_one_line_naming_the_file_and_the_key(tmp_path, fake_store, edit, key):
    old, new = edit
    text = _suite_text(fake_store)
    text = text.replace(old, new, 1) if old else text + new
    assert text != _suite_text(fake_store)
    path = _write(tmp_path, text)
    before = _files(tmp_path)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and key in message and "\n" not in message
    assert _files(tmp_path) == before  # nothing prepared, nothing written
    assert not Path(MISSING).exists()


def test_a_missing_suite_file_is_a_suite_error(tmp_path):
    with pytest.raises(SuiteError, match="no such suite file"):
        load_suite(tmp_path / "none.toml")


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_shipped_suite_loads_and_expands_to_unique_trials(path):
    suite = load_suite(path, check_data=False)
    trials = suite.trials()
    encoders = suite.encoder_trials(trials)
    ids = [t.id for t in trials + encoders]
    assert trials and len(set(ids)) == len(ids)
    assert len({t.name for t in trials}) == len(trials)
    for t in trials:
        assert t.config.train.seed == t.seed and t.dataset in suite.datasets
        assert (t.variant in VARIANTS) or t.variant.split("=")[0] in AXES
    assert all(t.stage == "encoder" and t.config.model.lifter != "diffpose" for t in encoders)


def test_converged_study_trains_each_graformer_once_for_its_row_encoder_and_samplers():
    """The converged study sets GraFormer's cap in two places ([variant.graformer] and [base] encoder.epochs):
    DiffPose's encoders stay the GraFormer baseline's training and the probabilistic baselines sample it."""
    suite = load_suite(REPO / "ablations" / "mocap17_converged.toml", check_data=False)
    trials = suite.trials()
    assert suite.encoder_trials(trials) == []
    by_name = {t.name: t for t in trials}
    for seed in suite.seeds:
        graformer = by_name[f"mocap17/graformer/seed{seed}"].config
        for variant in ("full", "no_gmm", "refiner"):
            encoder = by_name[f"mocap17/{variant}/seed{seed}"].config.encoder_config()
            assert encoder.identity("fp") == graformer.identity("fp"), variant
        for variant in ("mc_dropout", "gaussian_residual"):
            assert by_name[f"mocap17/{variant}/seed{seed}"].config == graformer, variant


def test_demo_suite_trials_match_its_file():
    path = REPO / "ablations" / "demo.toml"
    raw = tomllib.loads(path.read_text())
    head, steps, hypotheses = raw["suite"], raw["axes"]["steps"], raw["axes"]["hypotheses"]
    base = Config().override(raw["base"])
    suite = load_suite(path, check_data=False)
    trials = suite.trials()
    names = [t.name for t in trials]

    extra_steps = [k for k in steps if k != base.diffusion.steps]  # K equal to full's K is full itself
    cells = [(ds, s) for ds in head["datasets"] for s in head["seeds"]]
    expected = [f"{ds}/{v}/seed{s}" for ds, s in cells for v in head["variants"]]
    expected += [f"{ds}/steps={k}/seed{s}" for ds, s in cells for k in extra_steps]
    expected += [f"{ds}/hypotheses={n}/seed{s}" for ds, s in cells for n in hypotheses]
    assert sorted(names) == sorted(expected)
    by_name = {t.name: t for t in trials}
    for t in trials:
        full = by_name[f"{t.dataset}/full/seed{t.seed}"]
        if t.variant.startswith("steps="):
            k = int(t.value)
            assert t.axis == "steps" and t.eval_only and t.eval_overrides == {"diffusion.steps": k}
            assert t.eval_config.diffusion.steps == k and t.config == full.config  # full's weights
        elif t.variant.startswith("hypotheses="):
            n = int(t.value)
            assert t.axis == "hypotheses" and t.eval_only and t.eval_overrides == {"sample.hypotheses": n}
            assert t.eval_config.sample.hypotheses == n and t.config == full.config
        elif t.variant == "no_heatmap_init":
            assert t.eval_only and t.config == full.config
            assert t.eval_overrides == {"diffusion.heatmap_init": False}
        else:
            assert not t.eval_only and (t.axis, t.value) == VARIANTS[t.variant][:2]
        assert t.config.data.eval_stride == raw["base"]["data"]["eval_stride"]
        assert t.config.data.train_stride == raw["base"]["data"]["train_stride"]
    for variant in ("full", "refiner"):  # DiffPose's own brief training
        assert by_name[f"mocap17/{variant}/seed0"].config.train.epochs == raw["variant"][variant]["train"]["epochs"]
    graformer = by_name["mocap17/graformer/seed0"].config
    assert graformer.train.epochs == raw["variant"]["graformer"]["train"]["epochs"] and graformer.train.batch_size == 64
    assert by_name["mocap17/simple_baseline/seed0"].config.train.epochs == raw["base"]["train"]["epochs"]
    assert by_name["mocap17/refiner/seed0"].config.diffusion.mode == "refiner"
    # full and the refiner condition on one encoder: the GraFormer baseline itself, trained once.
    full = by_name["mocap17/full/seed0"].config
    assert full.encoder_config().identity("fp") == graformer.identity("fp")
    assert suite.encoder_trials(trials) == []


def test_trial_ids_are_stable_and_change_with_the_base_config(tmp_path, fake_store):
    path = _write(tmp_path, _suite_text(fake_store))
    first = [t.id for t in load_suite(path).trials()]
    assert [t.id for t in load_suite(path).trials()] == first
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in first)

    text = _suite_text(fake_store).replace("train.epochs = 2", "train.epochs = 3")
    changed = _write(tmp_path, text, "other.toml")
    assert set(t.id for t in load_suite(changed).trials()).isdisjoint(first)

    seeds = _write(tmp_path, _suite_text(fake_store).replace("seeds = [0]", "seeds = [0, 1]"), "seeds.toml")
    both = load_suite(seeds).trials()
    assert [t.id for t in both if t.seed == 0] == first
    assert set(t.id for t in both if t.seed == 1).isdisjoint(first)


def test_inference_only_axes_reuse_the_training_config_of_full(tmp_path, fake_store):
    trials = {t.variant: t for t in load_suite(_write(tmp_path, _suite_text(fake_store))).trials()}
    full = trials["full"]
    for variant, key, value in (("steps=2", "diffusion.steps", 2),
                                ("hypotheses=3", "sample.hypotheses", 3)):
        t = trials[variant]
        assert t.eval_only and t.config.hash() == full.config.hash() and t.id != full.id
        changed = {k for k, v in t.eval_config.flatten().items() if full.config.flatten()[k] != v}
        assert changed == {key} and t.eval_config.flatten()[key] == value
        assert t.params()[key] == value and t.params()["trial.axis"] == variant.split("=")[0]
    kernels = trials["kernels=1"]  # a training axis: its own weights
    assert not kernels.eval_only and kernels.config.hash() != full.config.hash()
    assert kernels.config.data.kernels == 1


def test_inference_only_variants_evaluate_the_weights_of_the_variant_they_name(tmp_path, fake_store):
    text = _suite_text(fake_store).replace('"graformer"]', '"graformer", "no_heatmap_init", "mc_dropout", '
                                           '"gaussian_residual"]')
    text += "\n[variant.mc_dropout]\nsample.hypotheses = 10\n"
    trials = {t.variant: t for t in load_suite(_write(tmp_path, text)).trials()}
    for variant, parent, overrides in (
        ("no_heatmap_init", "full", {"diffusion.heatmap_init": False}),
        ("mc_dropout", "graformer", {"sample.method": "mc_dropout", "sample.hypotheses": 10}),
        ("gaussian_residual", "graformer", {"sample.method": "residual"}),
    ):
        t = trials[variant]
        assert t.eval_only and t.eval_overrides == overrides
        assert t.config == trials[parent].config and t.training == trials[parent].training
        assert t.id != trials[parent].id


def test_one_training_serves_a_baseline_and_the_encoder_it_equals(tmp_path, fake_store):
    suite = load_suite(_write(tmp_path, _suite_text(fake_store)))
    trials = suite.trials()
    graformer = next(t for t in trials if t.variant == "graformer")
    full = next(t for t in trials if t.variant == "full")
    # [base] sets train.epochs = 2 for every training, the encoders' too: the encoder is the baseline.
    assert full.config.encoder_config().identity("fp") == graformer.config.identity("fp")
    assert full.config.encoder_config().train == graformer.config.train
    assert suite.encoder_trials(trials) == [], "the baseline trains the encoder; no second training"
    solo = load_suite(_write(tmp_path, _suite_text(fake_store).replace(', "graformer"]', "]"), "solo.toml"))
    [encoder] = solo.encoder_trials(solo.trials())
    assert encoder.training == graformer.training and encoder.stage == "encoder"


def test_trial_ids_follow_the_stores_content_not_its_path(tmp_path, fake_store):
    import dataclasses

    here = load_suite(_write(tmp_path, _suite_text(fake_store))).trials()
    moved = tmp_path / "moved"
    fake_store.rename(moved)
    there = load_suite(_write(tmp_path, _suite_text(moved), "moved.toml")).trials()
    assert [t.id for t in here] == [t.id for t in there]
    other = [dataclasses.replace(t, fingerprint="0" * 64).id for t in there]
    assert set(other).isdisjoint(t.id for t in there)


def test_an_axis_value_equal_to_full_is_not_a_second_trial(tmp_path, fake_store):
    text = _suite_text(fake_store).replace("steps = [2]", f"steps = [2, {Config().diffusion.steps}]")
    variants = [t.variant for t in load_suite(_write(tmp_path, text)).trials()]
    assert variants.count("full") == 1 and f"steps={Config().diffusion.steps}" not in variants


def test_an_inference_axis_takes_its_variant_table_for_every_value(tmp_path, fake_store):
    """[variant.steps] applies to each K of the steps axis (evaluation keys only); it used to be dropped."""
    k = Config().diffusion.steps
    text = _suite_text(fake_store).replace("steps = [2]", f"steps = [2, {k}]")
    text += "\n[variant.steps]\ndiffusion.eta = 0.5\n"
    trials = {t.variant: t for t in load_suite(_write(tmp_path, text)).trials()}
    assert trials["steps=2"].eval_overrides == {"diffusion.eta": 0.5, "diffusion.steps": 2}
    assert trials[f"steps={k}"].eval_overrides == {"diffusion.eta": 0.5, "diffusion.steps": k}  # not full: eta
    bad = _write(tmp_path, text.replace("diffusion.eta = 0.5", "train.lr = 0.5"), "bad.toml")
    with pytest.raises(SuiteError, match=r"variant\.steps: train\.lr changes the training"):
        load_suite(bad)


def test_deploy_manifests_parse():
    yaml = pytest.importorskip("yaml")
    cluster = yaml.safe_load((REPO / "deploy" / "ray-cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
            "file_mounts"} <= set(cluster)
    workers = [n for name, n in cluster["available_node_types"].items() if name != cluster["head_node_type"]]
    assert workers and all(n["resources"].get("GPU", 0) >= 1 for n in workers)
    setup = "\n".join(cluster["setup_commands"])
    assert "make setup" in setup and "TORCH_INDEX" in setup and "TORCH_SPEC" in setup
    assert "/mnt/results" in setup  # the shared results directory on every node

    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rayjob.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"RayJob", "PersistentVolumeClaim"} <= kinds
    [job] = [d["spec"] for d in docs if d["kind"] == "RayJob"]
    shared = {d["metadata"]["name"] for d in docs
              if d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]}
    command = "diffpose-bench ablate --suite ablations/paper_h36m.toml --results /mnt/results"
    assert command in job["entrypoint"]
    ray = job["rayClusterSpec"]
    workers = [g["template"]["spec"] for g in ray["workerGroupSpecs"]]
    pods = [ray["headGroupSpec"]["template"]["spec"], *workers]
    for pod in pods:  # every Ray pod mounts the same shared claim at /mnt/results
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert claims.get(mounts.get("/mnt/results")) in shared
    limits = [c["resources"]["limits"] for pod in workers for c in pod["containers"]]
    assert any("nvidia.com/gpu" in lim for lim in limits)


# Ids of finished trainings in users' MLflow stores: a change of any of these retrains every suite. Change them
# only with a change of what a training computes (a default, a recipe, the convergence rule), never by a refactor.
PINNED_IDS = {
    "full": ("e611539d0ae6beac", "diffpose-562a5cee357a61d0"),
    "no_context": ("b7ff8a24f19be931", "diffpose-604fbd14678be662"),
    "no_heatmap_init": ("d40ebe214a961416", "diffpose-562a5cee357a61d0"),
    "refiner": ("e768bfbe25564836", "diffpose-017bb197baf5f00a"),
    "mc_dropout": ("dd2677b07c258316", "graformer-4b78dfb7d2d8cd33"),
    "mean_pose": ("3501b234652c1240", "mean_pose-ce74c9ff2f387de5"),
    "steps=2": ("42f65e0de3bcb487", "diffpose-562a5cee357a61d0"),
    "kernels=1": ("50d9d8272ad2cc20", "diffpose-67fd5585d8976558"),
    "encoder:graformer": ("43c80f5a7f052c29", "graformer-4b78dfb7d2d8cd33"),
}


def test_trial_ids_are_the_pinned_ones(tmp_path):
    text = """[suite]
name = "pinned"
datasets = ["mocap17"]
variants = ["full", "no_context", "no_heatmap_init", "refiner", "mc_dropout", "mean_pose"]
seeds = [0]

[axes]
steps = [2]
kernels = [1]

[datasets.mocap17]
store = "/nonexistent/store"

[base]
train.epochs = 2

[variant.mc_dropout]
sample.hypotheses = 10
"""
    suite = load_suite(_write(tmp_path, text), check_data=False)
    trials = suite.trials({"mocap17": "f" * 64})
    every = trials + suite.encoder_trials(trials)
    assert {t.variant: (t.id, t.training) for t in every} == PINNED_IDS
    assert [t.variant for t in every] == list(PINNED_IDS)
    assert trials[0].config.hash() == "288bd5bb36cc8c40"  # the store's path is part of it
