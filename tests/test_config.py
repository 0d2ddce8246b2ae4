import dataclasses
import pickle
import tomllib

import pytest

from diffpose.config import (
    ENCODER_TRAIN_KEYS,
    EVALUATES,
    EVALUATION_KEYS,
    LIFTER_DEFAULTS,
    VARIANTS,
    Config,
    ConfigError,
)


def test_round_trip_through_toml_and_dict():
    cfg = Config().override({"train.lr": 2e-3, "data.val_subjects": ["S8"], "diffusion.steps": 10})
    assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.hash() == Config.from_dict(cfg.to_dict()).hash()


def test_override_returns_a_new_object_and_never_mutates():
    base = Config()
    new = base.override({"train.epochs": 3})
    assert base.train.epochs == 80 and new.train.epochs == 3
    with pytest.raises(AttributeError):
        new.train.epochs = 4  # frozen


def test_to_dict_is_every_field_of_every_section_in_order_with_lists_for_tuples():
    cfg = Config().override({"data.val_subjects": ["S8", "S1"], "model.lifter": "graformer"})
    expected = {s: {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
                for s, sec in dataclasses.asdict(cfg).items()}
    view = cfg.to_dict()
    assert [(s, list(sec.items())) for s, sec in view.items()] == [(s, list(sec.items())) for s, sec in
                                                                   expected.items()]
    view["data"]["val_subjects"].append("S9")  # a view, not the config
    assert cfg.data.val_subjects == ("S8", "S1")


def test_flatten_gives_dotted_keys_with_strings_for_lists():
    flat = Config().override({"data.val_subjects": "S8,S1"}).flatten()
    assert flat["data.val_subjects"] == "S8,S1"
    assert flat["diffusion.steps"] == 5
    assert all("." in k for k in flat)


def test_changing_the_lifter_takes_its_published_defaults():
    cfg = Config().override({"model.lifter": "simple_baseline"})
    assert cfg.model.hidden == LIFTER_DEFAULTS["simple_baseline"]["model.hidden"] == 1024
    assert cfg.model.dropout == 0.5
    # Martinez et al.'s recipe: batch 64, lr x0.96 every 100k steps, 200 epochs, no gradient clipping.
    t = cfg.train
    assert (t.batch_size, t.lr_schedule, t.lr_gamma, t.lr_step, t.epochs, t.grad_clip) == (64, "steps", 0.96,
                                                                                            100_000, 200, 0.0)
    assert not t.draw_kernels and not t.flip_augment
    explicit = Config().override({"model.lifter": "semgcn", "model.hidden": 64, "train.epochs": 3})
    assert explicit.model.hidden == 64 and explicit.model.blocks == 4 and explicit.train.epochs == 3
    back = cfg.override({"model.lifter": "diffpose"})
    assert back == Config(), "switching back restores every per-lifter default"


def test_the_command_line_composes_a_file_a_variant_and_settings_as_a_suite_does(tmp_path):
    """A key the --config file gives survives the --variant's lifter and a --set encoder lifter: applied one
    after another, the variant's recipe replaced the file's 2 epochs by MixSTE's 120 (a test meant to train 2
    epochs trained 120), where a suite's [base] with the same variant keeps them."""
    from benchmark.cli import _config, build_parser

    file = tmp_path / "c.toml"
    file.write_text('train.epochs = 2\nencoder.epochs = 1\nmodel.hidden = 32\n')
    args = build_parser().parse_args(["train", "--config", str(file), "--variant", "mixste", "--set",
                                      "model.blocks=2", "--set", "encoder.lifter=\"mixste\""])
    cfg = _config(args)
    assert (cfg.model.lifter, cfg.train.epochs, cfg.model.hidden, cfg.model.blocks) == ("mixste", 2, 32, 2)
    assert (cfg.encoder.lifter, cfg.encoder.epochs) == ("mixste", 1)
    recipe = Config().override({"model.lifter": "mixste", "encoder.lifter": "mixste"})
    assert cfg.model.heads == recipe.model.heads and cfg.train.lr == recipe.train.lr   # the rest: the recipe's
    assert cfg.encoder.hidden == recipe.encoder.hidden
    assert _config(build_parser().parse_args(["train"])) == Config()


def test_the_command_line_trains_the_context_encoder_a_suite_with_the_same_base_trains(tmp_path):
    """The file's and the settings' recipe keys reach the encoder, as a suite's [base] keys do: the command line
    gave a 2-epoch DiffPose a 100-epoch GraFormer encoder where the suite gave it a 2-epoch one."""
    from benchmark.cli import _config, build_parser
    from benchmark.suite import load_suite

    file = tmp_path / "c.toml"
    file.write_text('[train]\nepochs = 2\n')
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nname = "s"\ndatasets = ["mocap17"]\nvariants = ["refiner"]\nseeds = [0]\n'
                     '[datasets.mocap17]\nstore = "/nonexistent"\n'
                     '[base]\ntrain.epochs = 2\ntrain.lr = 5e-4\nencoder.batch_size = 128\n')
    [trial] = load_suite(suite, check_data=False).trials({"mocap17": "f" * 64})
    args = build_parser().parse_args(["train", "--config", str(file), "--variant", "refiner", "--set",
                                      "train.lr=5e-4", "--set", "encoder.batch_size=128"])
    cfg = _config(args)
    assert cfg.encoder == trial.config.encoder
    assert (cfg.encoder.epochs, cfg.encoder.lr, cfg.encoder.batch_size) == (2, 5e-4, 128)
    assert cfg.override({"data.store": "/nonexistent", "train.threads": 1}) == trial.config


def test_the_dataclass_defaults_are_diffposes_and_the_encoders_graformers():
    assert Config() == Config.from_dict({})
    assert Config().encoder_config() == Config().override({"model.lifter": "graformer"})
    for lifter, defaults in LIFTER_DEFAULTS.items():
        cfg = Config().override({"model.lifter": lifter, "data.frames": 27})
        flat = cfg.flatten()
        assert {k: flat[k] for k in defaults} == defaults, lifter


def test_a_run_and_its_encoder_train_by_their_own_recipes():
    cfg = Config()
    enc = cfg.encoder_config()
    assert (cfg.train.batch_size, enc.train.batch_size) == (1024, 64)
    assert (cfg.train.lr_schedule, enc.train.lr_schedule) == ("step", "steps")
    shared = Config().override({"train.seed": 3, "train.steps_per_epoch": 7, "encoder.epochs": 9})
    enc = shared.encoder_config()
    assert (enc.train.seed, enc.train.steps_per_epoch, enc.train.epochs) == (3, 7, 9)
    assert set(ENCODER_TRAIN_KEYS) <= set(cfg.flatten())


def test_identity_leaves_out_the_machine_and_the_sections_a_lifter_does_not_use():
    cfg = Config().override({"model.lifter": "graformer"})
    same = cfg.override({"data.store": "/elsewhere", "train.device": "cpu", "train.threads": 3,
                         "diffusion.steps": 9, "encoder.lr": 5e-4})
    assert same.identity("abc") == cfg.identity("abc")
    assert cfg.identity("abc") != cfg.identity("abd"), "the store's content is part of a training"
    assert cfg.override({"train.lr": 5e-4}).identity("abc") != cfg.identity("abc")
    full = Config()
    assert full.override({"encoder.lr": 5e-4}).identity("a") != full.identity("a")
    no_context = full.override({"diffusion.context": False})
    assert no_context.override({"encoder.lr": 5e-4}).identity("a") == no_context.identity("a")


def test_identity_is_pinned_and_each_config_keeps_its_own():
    # Ids of finished trainings in users' MLflow stores: change them only with what a training computes.
    cfg = Config()
    assert cfg.identity("fp") == "diffpose-b6962baaacd8d478"
    assert Config().override({"model.lifter": "graformer"}).identity("fp") == "graformer-9fa6f0ca5278107b"
    assert cfg.identity("fp") == Config().identity("fp") and cfg.identity("other") != cfg.identity("fp")
    # identity is computed once per config and fingerprint: a config built from this one is a new object
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=5e-4))
    assert changed.identity("fp") == cfg.override({"train.lr": 5e-4}).identity("fp") != cfg.identity("fp")
    assert pickle.loads(pickle.dumps(cfg)).identity("fp") == cfg.identity("fp")


def test_variants_that_evaluate_another_change_evaluation_keys_only():
    for variant, parent in EVALUATES.items():
        _, _, overrides = VARIANTS[variant]
        _, _, parent_overrides = VARIANTS[parent]
        def training(changes: dict) -> dict:
            return {k: v for k, v in changes.items() if k not in EVALUATION_KEYS}

        assert training(overrides) == training(parent_overrides), variant
        assert Config().override(overrides).identity("") != Config().override(parent_overrides).identity("")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"train.lrr": 1.0}, "unknown key train.lrr"),
        ({"train.lr": "fast"}, "train.lr must be float"),
        ({"train.epochs": 2.5}, "train.epochs must be int"),
        ({"model.lifter": "transformerzilla"}, "unknown lifter 'transformerzilla'"),
        ({"diffusion.steps": 500}, "diffusion.steps"),
        ({"data.frames": 4}, "data.frames"),
        ({"nonsense.key": 1}, "unknown section 'nonsense'"),
        ({"data.flip_test": "maybe"}, "data.flip_test must be bool"),
    ],
)
def test_bad_keys_and_values_name_the_key(changes, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        Config().override(changes)


def test_from_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=f"{p}: unknown key train.epochz"):
        Config.from_toml(p)
    with pytest.raises(ConfigError, match="no such config file"):
        Config.from_toml(tmp_path / "missing.toml")


def test_encoder_config_is_a_baseline_with_the_same_data_and_seed():
    cfg = Config().override({"train.seed": 7, "encoder.epochs": 3, "data.store": "x"})
    enc = cfg.encoder_config()
    assert enc.model.lifter == "graformer" and enc.train.epochs == 3 and enc.train.seed == 7
    assert enc.data == cfg.data


@pytest.mark.parametrize(("changes", "needle"), [
    ({"sample.method": "mc_dropout"}, "sample.method"),                      # DiffPose samples itself
    ({"model.lifter": "graformer", "sample.hypotheses": 5}, "sample.hypotheses"),
    ({"model.lifter": "semgcn", "sample.method": "mc_dropout"}, "model.dropout"),
    ({"encoder.lifter": "simple_baseline"}, "encoder.lifter"),
    ({"encoder.optimizer": "sgd"}, "encoder.optimizer"),
    ({"train.lr_schedule": "linear"}, "train.lr_schedule"),
])
def test_sampling_and_recipe_values_are_checked(changes, needle):
    with pytest.raises(ConfigError, match=needle):
        Config().override(changes)
