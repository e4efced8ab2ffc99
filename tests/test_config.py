"""Configuration: defaults, file, environment overrides, clear errors naming the key."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, run_cli

from circadian.core.config import load_config
from circadian.core.errors import CircadianError


def test_load_config_defaults_when_no_file(tmp_path):
    config, sources = load_config(tmp_path / "circadian.toml", environ={})
    assert config.model.name == "embedded" and config.model.backend == "auto"
    assert set(sources.values()) == {"default"}


def test_load_config_env_overrides_file(tmp_path):
    path = tmp_path / "circadian.toml"
    path.write_text('[model]\nname = "org/model"\nbackend = "torch"\n[chat]\nmax_tokens = 64\n')
    config, sources = load_config(path, environ={"CIRCADIAN_CHAT__MAX_TOKENS": "32"})
    assert config.model.name == "org/model" and config.chat.max_tokens == 32
    assert sources["model.name"] == str(path)
    assert sources["chat.max_tokens"] == "CIRCADIAN_CHAT__MAX_TOKENS"
    assert sources["chat.temperature"] == "default"


@pytest.mark.parametrize(
    "text, fragment",
    [
        pytest.param('[model]\nnmae = "x"\n', "unknown config key 'model.nmae'", id="typo_in_key"),
        pytest.param('[modle]\nname = "x"\n', "unknown config key 'modle'", id="typo_in_section"),
        pytest.param('[chat]\nmax_tokens = "lots"\n', "chat.max_tokens", id="bad_value"),
        pytest.param("[chat\n", "not valid TOML", id="bad_toml"),
    ],
)
def test_load_config_errors_name_the_key(tmp_path, text, fragment):
    path = tmp_path / "circadian.toml"
    path.write_text(text)
    with pytest.raises(CircadianError) as info:
        load_config(path, environ={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_load_config_unknown_env_key_is_an_error(tmp_path):
    with pytest.raises(CircadianError, match="CIRCADIAN_MODEL__NAM"):
        load_config(tmp_path / "none.toml", environ={"CIRCADIAN_MODEL__NAM": "x"})


@pytest.mark.parametrize(
    "var, value, said",
    [
        ("CIRCADIAN_TRAIN__MAX_STEPS", "abc", "valid integer"),
        ("CIRCADIAN_CHAT__MAX_TOKENS", "-3", "greater than or equal to 1"),
        ("CIRCADIAN_TRAIN_MAX_STEPS", "5", "CIRCADIAN_TRAIN__MAX_STEPS (two underscores)"),
        ("CIRCADIAN_TRAIN", "5", "CIRCADIAN_TRAIN__"),
        ("CIRCADIAN_BOGUS__X", "1", "unknown config key 'bogus.x'"),
    ],
)
def test_a_bad_environment_override_is_one_line(home, var, value, said):
    result = run_cli("status", env={var: value})
    assert_one_line_error(result)
    assert var in result.stderr and said in result.stderr


def test_cli_config_show_reports_sources(home):
    home.mkdir(parents=True)
    (home / "circadian.toml").write_text("[chat]\ntemperature = 0.5\n")
    result = run_cli("config", "show", "--json", env={"CIRCADIAN_MODEL__BACKEND": "torch"})
    assert result.returncode == 0, result.stderr
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert rows["chat.temperature"] == {"key": "chat.temperature", "value": 0.5, "source": str(home / "circadian.toml")}
    assert rows["model.backend"]["source"] == "CIRCADIAN_MODEL__BACKEND"
    assert rows["model.name"]["source"] == "default"


def test_cli_config_typo_is_one_line_error(home):
    home.mkdir(parents=True)
    (home / "circadian.toml").write_text("[chat]\nmax_tokns = 5\n")
    result = run_cli("status")
    assert_one_line_error(result)
    assert "chat.max_tokns" in result.stderr
