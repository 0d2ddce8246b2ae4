import tomllib

import pytest

from diffpose.config import LIFTER_MODEL_DEFAULTS, Config, ConfigError


def test_round_trip_through_toml_and_dict():
    cfg = Config().override({"train.lr": 2e-3, "data.val_subjects": ["S8"], "diffusion.steps": 10})
    assert Config.from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.hash() == Config.from_dict(cfg.to_dict()).hash()


def test_override_returns_a_new_object_and_never_mutates():
    base = Config()
    new = base.override({"train.epochs": 3})
    assert base.train.epochs == 20 and new.train.epochs == 3
    with pytest.raises(AttributeError):
        new.train.epochs = 4  # frozen


def test_flatten_gives_dotted_keys_with_strings_for_lists():
    flat = Config().override({"data.val_subjects": "S8,S1"}).flatten()
    assert flat["data.val_subjects"] == "S8,S1"
    assert flat["diffusion.steps"] == 5
    assert all("." in k for k in flat)


def test_changing_the_lifter_takes_its_published_defaults():
    cfg = Config().override({"model.lifter": "simple_baseline"})
    assert cfg.model.hidden == LIFTER_MODEL_DEFAULTS["simple_baseline"]["hidden"] == 1024
    assert cfg.model.dropout == 0.5
    explicit = Config().override({"model.lifter": "semgcn", "model.hidden": 64})
    assert explicit.model.hidden == 64 and explicit.model.blocks == 4


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
