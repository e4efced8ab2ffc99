"""Shared fixtures: every test gets its own home; models come from one shared cache.

- autouse `home`: CIRCADIAN_HOME is a fresh temp folder, CIRCADIAN_MODELS_DIR the checkout's
  model cache (the embedded model is built there once by `make setup`, or here if missing).
- `tiny_model`: a 2-layer Llama with random weights and the embedded model's tokenizer, built
  once per session; it loads in transformers and mlx-lm and generates in milliseconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from circadian.lab.tiny_model import build_tiny_model  # noqa: F401 (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("CIRCADIAN_TEST_MODELS", ROOT / "models"))
CLI = [sys.executable, "-m", "circadian"]


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The real embedded model folder (built once into the shared cache)."""
    from circadian.backends import embedded

    return embedded.build(MODELS)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh home for each test; the model cache is shared."""
    folder = tmp_path / "home"
    monkeypatch.setenv("CIRCADIAN_HOME", str(folder))
    monkeypatch.setenv("CIRCADIAN_MODELS_DIR", str(MODELS))
    for var in [v for v in os.environ if v.startswith("CIRCADIAN_") and "__" in v]:
        monkeypatch.delenv(var)
    return folder


@pytest.fixture
def paths(home):
    from circadian.core.paths import Paths

    return Paths.resolve().ensure()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_model) -> Path:
    """A tiny Llama sharing the embedded model's tokenizer and chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", embedded_model)


@pytest.fixture
def use_tiny(tiny_model, monkeypatch) -> Path:
    """Configure the current home to answer with the tiny model (through the environment)."""
    monkeypatch.setenv("CIRCADIAN_MODEL__NAME", str(tiny_model))
    monkeypatch.setenv("CIRCADIAN_CHAT__MAX_TOKENS", "24")
    return tiny_model


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 600):
    """Run the real `circadian` command in a subprocess; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=full_env, input=input, timeout=timeout, cwd=ROOT
    )


def start_held(command: str, point: str, seconds: float = 300, env: dict | None = None) -> subprocess.Popen:
    """Start `circadian <command>` holding at a crash-test point (night/cycle.py `hold`); return it once
    it says so, for the test to SIGKILL it or act beside it."""
    import time

    proc = subprocess.Popen(
        [*CLI, command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {}), "CIRCADIAN_HOLD_AT": point, "CIRCADIAN_HOLD_SECONDS": str(seconds)},
    )
    deadline = time.time() + 300
    for line in proc.stderr:
        if f"holding at {point}" in line:
            return proc
        assert time.time() < deadline
    raise AssertionError(f"{command} ended before reaching {point}: rc={proc.wait()}")


def code_rows(tokenizer, n: int = 4) -> list:
    """n short chat rows ("Say code i." -> "Code i is lantern."), tokenized for a backend to train on."""
    from circadian.backends.tokens import encode_chat

    chats = [
        [{"role": "user", "content": f"Say code {i}."}, {"role": "assistant", "content": f"Code {i} is lantern."}]
        for i in range(n)
    ]
    return [encode_chat(tokenizer, c, 64) for c in chats]


def few_steps(steps: int, **settings):
    """TrainSettings for `steps` plain steps on code_rows: batches of 4, a high learning rate, no warm-up,
    no anchor, no early stop; `settings` adds to them."""
    from circadian.core.config import TrainSettings

    plain = {"batch_size": 4, "learning_rate": 0.01, "min_steps": 0, "warmup_steps": 0, "anchor_weight": 0.0}
    return TrainSettings(max_steps=steps, max_epochs=steps, **{**plain, "eval_every": 100, **settings})


def assert_one_line_error(result) -> None:
    """A user error: non-zero exit, exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("circadian: ")


FAST = """
[model]
name = "{model}"
[sleep]
distill_prompts = 3
distill_per_fact_row = 0
probe_max_tokens = 6
capability_max_tokens = 4
capability_questions = 24
style_prompts = 6
style_max_tokens = 16
[train]
max_steps = 4
eval_every = 2
min_steps = 0
learning_rate = 0.005
[gate]
max_capability_drop = 1.0
max_total_capability_drop = 1.0
max_style_drop = 1.0
max_ppl_drift = 100.0
max_total_ppl_drift = 100.0
"""


@pytest.fixture
def night(paths, tiny_model):
    """A home configured for fast nights on the tiny model."""
    paths.config.write_text(FAST.format(model=tiny_model))
    return paths


def say(paths, *lines: str) -> None:
    """Log one chat turn per line, as the chat would."""
    from circadian.store import memories

    memories.append(
        paths,
        [
            memories.make_record(
                [{"role": "user", "content": line}, {"role": "assistant", "content": "Noted."}],
                session="s",
                model="tiny",
                adapter=None,
                source="chat",
            )
            for line in lines
        ],
    )
