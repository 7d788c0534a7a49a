"""Typed run configs: defaults, validation errors that name the dotted field, YAML/JSON round
trips, dotted-key overrides and command-line `key=value` parsing."""
from __future__ import annotations

import json

import pytest
import yaml

from core.config import ConfigError, RunConfig, parse_override


def _error(raw) -> str:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw)
    return str(err.value)


@pytest.mark.parametrize("raw,field", [
    ({"model": {"latent_dim": 0}}, "model.latent_dim"),
    ({"model": {"latent_dim": -1}}, "model.latent_dim"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"model": {"bogus": 1}}, "model.bogus"),
    ({"train": {"bogus": 1}}, "train.bogus"),
    ({"bogus": 1}, "bogus"),
    ({"model": {"architecture": "transformer"}}, "model.architecture"),
    ({"model": {"likelihood": "poisson"}}, "model.likelihood"),
    ({"model": {"fixed_sigma": 0}}, "model.fixed_sigma"),
    ({"data": {"binarize": "sometimes"}}, "data.binarize"),
    ({"data": {"train_limit": 0}}, "data.train_limit"),
    ({"variant_name": "iwae", "variant": {"k": 0}}, "objective.k"),  # an older config's option, now the objective's
    ({"variant_name": "iwae", "variant": {"bogus": 3}}, "variant.bogus"),
    ({"variant_name": "vae", "variant": {"beta": -0.5}}, "objective.beta"),
    ({"variant_name": "dvae", "variant": {"corruption": "masking", "noise_level": 2}}, "variant.noise_level"),
    ({"variant_name": "dvae", "variant": {"corruption": "blur"}}, "variant.corruption"),
    ({"variant_name": "cvae", "variant": {"visible_quadrants": 4}}, "variant.visible_quadrants"),
    ({"variant_name": "m2", "variant": {"num_labels": 0}}, "variant.num_labels"),
    ({"variant_name": "no-such-variant"}, "variant_name"),
])
def test_bad_config_fails_naming_the_field(raw, field):
    message = _error(raw)
    assert field in message, message
    assert "\n" not in message


def test_hidden_dims_must_be_positive():
    assert "hidden_dims" in _error({"model": {"hidden_dims": [16, 0]}})
    assert "conv_channels" in _error({"model": {"architecture": "conv", "conv_channels": []}})


def test_unknown_variant_lists_the_known_ones():
    message = _error({"variant_name": "vqvae"})
    assert "vqvae" in message
    for name in ("cvae", "dvae", "iwae", "m2", "vae"):
        assert name in message


def test_dvae_gaussian_noise_level_may_exceed_one():
    config = RunConfig.from_dict({"variant_name": "dvae", "variant": {"corruption": "gaussian", "noise_level": 2}})
    assert config.variant_options().noise_level == 2


def test_defaults_and_variant_options_are_filled():
    config = RunConfig.from_dict({"variant_name": "iwae"})
    assert config.variant == {} and config.objective.name == "iwae" and config.objective.k == 5
    assert config.model.latent_dim == 20 and config.model.architecture == "mlp"
    assert config.train.lr == 1e-3 and config.data.binarize == "dynamic"
    assert RunConfig().variant_name == "vae" and RunConfig().variant == {}
    assert RunConfig().objective.model_dump() == {"name": "elbo", "beta": 1.0, "samples": 1, "k": 5}


def _rich_config() -> RunConfig:
    return RunConfig.from_dict({
        "variant_name": "cvae",
        "variant": {"condition": "quadrants", "visible_quadrants": 2},
        "model": {"architecture": "conv", "latent_dim": 4, "hidden_dims": [64, 32], "conv_channels": [8, 16],
                  "likelihood": "gaussian_fixed", "fixed_sigma": 0.25, "activation": "elu"},
        "data": {"dataset": "/data/x", "binarize": "none", "train_limit": 500, "test_limit": None},
        "train": {"epochs": 3, "lr": 2.5e-4, "grad_clip": 1.0, "lr_schedule": "cosine", "seed": 17},
    })


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_yaml_and_json_round_trip(tmp_path, suffix):
    config = _rich_config()
    text = config.to_json() if suffix == ".json" else config.to_yaml()
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    loaded = RunConfig.from_file(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    # the text really is the format its name says
    parsed = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert parsed == config.to_dict()


def test_from_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        RunConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        RunConfig.from_file(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_file(scalar)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  latent_dim: 0\n")
    with pytest.raises(ConfigError, match="model.latent_dim"):
        RunConfig.from_file(wrong)


def test_with_overrides_on_dotted_keys():
    config = RunConfig.from_dict({"variant_name": "iwae"})
    new = config.with_overrides({"train.epochs": 3, "variant.k": 7, "model.hidden_dims": [8, 4],
                                 "data.train_limit": None, "model.latent_dim": 2})
    assert new.train.epochs == 3 and new.variant == {} and new.objective.k == 7
    assert new.model.hidden_dims == [8, 4] and new.model.latent_dim == 2 and new.data.train_limit is None
    # the original is untouched and everything else is kept
    assert config.train.epochs == 10 and config.objective.k == 5
    assert new.model.conv_channels == config.model.conv_channels and new.train.lr == config.train.lr
    assert new.with_overrides({}) == new


@pytest.mark.parametrize("overrides,field", [
    ({"train.bogus": 1}, "train.bogus"),
    ({"nosection.x": 1}, "nosection"),
    ({"model.latent_dim": 0}, "model.latent_dim"),
    ({"variant.k": 0}, "objective.k"),
    ({"objective.k": 0}, "objective.k"),
    ({"objective.beta": 2}, "objective.beta"),  # a field of the other objective
    ({"variant.beta": 1}, "variant.beta"),  # an option of another variant
])
def test_with_overrides_fails_naming_the_key(overrides, field):
    config = RunConfig.from_dict({"variant_name": "iwae"})
    with pytest.raises(ConfigError) as err:
        config.with_overrides(overrides)
    assert field in str(err.value)


@pytest.mark.parametrize("text,expected", [
    ("train.epochs=3", ("train.epochs", 3)),
    ("train.lr=0.0005", ("train.lr", 5e-4)),
    ("model.hidden_dims=[16, 8]", ("model.hidden_dims", [16, 8])),
    ("data.train_limit=null", ("data.train_limit", None)),
    ("data.dataset=a=b", ("data.dataset", "a=b")),
    ("train.grad_clip=", ("train.grad_clip", "")),
    (" variant.k =5", ("variant.k", 5)),
])
def test_parse_override_reads_values_as_yaml(text, expected):
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


def test_command_line_overrides_reach_typed_fields():
    # YAML 1.1 reads "1e-4" as a string; the typed field still gets the number.
    overrides = dict(parse_override(t) for t in ["train.lr=1e-4", "model.hidden_dims=[16]", "variant.k=3",
                                                  "data.test_limit=50", "train.grad_clip=null"])
    config = RunConfig.from_dict({"variant_name": "iwae"}).with_overrides(overrides)
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.model.hidden_dims == [16] and config.objective.k == 3
    assert config.data.test_limit == 50 and config.train.grad_clip is None


def test_parse_override_needs_an_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.epochs")


def test_another_variant_starts_from_its_own_objective_and_options():
    """`--variant iwae` on a vae config trains the IWAE bound (the preset's objective), not the
    vae's ELBO that the config carried; an objective given with it still applies on top."""
    vae = RunConfig.from_dict({"variant_name": "vae", "variant": {"samples": 3}})
    iwae = vae.with_variant("iwae")
    assert (iwae.objective.name, iwae.objective.k) == ("iwae", 5) and iwae.variant == {}
    assert vae.with_overrides({"variant_name": "iwae"}) == iwae
    assert vae.with_overrides({"objective.k": 9, "variant_name": "iwae"}).objective.k == 9
    dvae = RunConfig.from_dict({"variant_name": "iwae"}).with_variant("dvae")
    assert dvae.objective.name == "elbo" and dvae.variant_options().corruption == "gaussian"
