"""Learning, end to end: a real night on the embedded model, through the real `circadian` command,
learns facts the user said in ordinary words that no fact pattern matches, and the base model did
not know them before."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

# a short night: few distilled prompts, no learning-evolution snapshots, a small step budget
NIGHT = {
    "CIRCADIAN_SLEEP__DISTILL_PROMPTS": "8",
    "CIRCADIAN_SLEEP__DISTILL_PER_FACT_ROW": "0",
    "CIRCADIAN_SLEEP__TRACK": "false",
    "CIRCADIAN_SLEEP__CAPABILITY_MAX_TOKENS": "12",
    "CIRCADIAN_TRAIN__MAX_STEPS": "48",
}


@pytest.mark.slow
def test_a_night_on_the_real_model_learns_a_fact_said_in_ordinary_words(embedded_model, home, tmp_path):
    for message in (
        "we finally adopted a tortoise last month, we named her Pemberton",
        "my sister Ines teaches chemistry in Porto",
    ):
        said = run_cli("ask", message, "--max-tokens", "8", "--json", env=NIGHT)
        assert said.returncode == 0, said.stderr[-2000:]
    slept = run_cli("sleep", "--json", env=NIGHT)
    assert slept.returncode == 0, slept.stderr[-2000:]
    night = json.loads(slept.stdout)
    assert night["version"], night
    probes = tmp_path / "probes.jsonl"
    probes.write_text(
        json.dumps({"question": "What's the name of our tortoise?", "answers": ["Pemberton"]})
        + "\n"
        + json.dumps({"question": "What does my sister teach?", "answers": ["chemistry"]})
        + "\n"
    )

    def recall(adapter: str) -> list[bool]:
        asked = run_cli("eval", "recall", str(probes), "--adapter", adapter, "--json", env=NIGHT)
        assert asked.returncode == 0, asked.stderr[-2000:]
        return [item["hit"] for item in json.loads(asked.stdout)["items"]]

    assert recall("base") == [False, False]
    assert recall(night["version"]) == [True, True]
