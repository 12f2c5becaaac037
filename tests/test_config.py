import pytest

from hirex.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
)


def test_round_trip_through_toml(tmp_path):
    cfg = apply_overrides(RunConfig(), ["train.lr=0.01", "eval.ks=[5, 10]", 'model.scorer="mol"'])
    save_config(cfg, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == cfg
    assert cfg.eval.ks == (5, 10) and cfg.train.lr == 0.01


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown keys \['lrr'\] in \[train\].*'lr'"):
        config_from_dict({"train": {"lrr": 1}})


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown config sections"):
        config_from_dict({"optim": {}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"lr": "fast"}}, "train.lr must be float"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be int"),
        ({"train": {"epochs": True}}, "train.epochs must be int"),
        ({"model": {"scorer": "cosine"}}, r"choose one of \['dot', 'mol'\]"),
        ({"model": {"dim": 0}}, "model.dim must be positive"),
        ({"model": {"dim": 30, "n_heads": 4}}, "must divide"),
        ({"eval": {"ks": [0]}}, "positive"),
        ({"model": {"user_encoder": "none", "use_user_id": False}}, "no input"),
    ],
)
def test_bad_values_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_int_is_accepted_for_float():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_bad_override_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(RunConfig(), ["lr=1"])
    (tmp_path / "bad.toml").write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
