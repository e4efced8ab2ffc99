"""Learning, end to end: a real night on the embedded model, through the real `circadian` command,
learns facts the user said in ordinary words that no fact pattern matches, and the base model did
not know them before."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, say

# a short night: few distilled prompts, no learning-evolution snapshots, a small step budget
NIGHT = {
    "CIRCADIAN_SLEEP__DISTILL_PROMPTS": "8",
    "CIRCADIAN_SLEEP__DISTILL_PER_FACT_ROW": "0",
    "CIRCADIAN_SLEEP__TRACK": "false",
    "CIRCADIAN_SLEEP__CAPABILITY_MAX_TOKENS": "12",
    "CIRCADIAN_SLEEP__CAPABILITY_QUESTIONS": "8",
    "CIRCADIAN_SLEEP__STYLE_PROMPTS": "2",
    "CIRCADIAN_SLEEP__STYLE_MAX_TOKENS": "48",
    "CIRCADIAN_TRAIN__MAX_STEPS": "48",
}


@pytest.mark.slow
def test_a_night_on_the_real_model_learns_a_fact_said_in_ordinary_words(embedded_model, paths, tmp_path):
    # logged as chat logs them (the chat path itself is tested in test_chat.py; two model loads saved)
    say(
        paths,
        "we finally adopted a tortoise last month, we named her Pemberton",
        "my sister Ines teaches chemistry in Porto",
    )
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


@pytest.mark.slow
def test_the_router_keeps_the_general_answers_a_memory_adapter_breaks(embedded_model, home, tmp_path):
    """A night trained too hard (no anchor, no general rows, a high learning rate) makes an adapter
    that answers general questions with the user's facts. Through the router, chat still gets the
    base model's answers to them, word for word, while the facts reach the adapter."""
    from circadian.night.evaluate import load_capability

    env = {
        **NIGHT,
        "CIRCADIAN_SLEEP__DISTILL_PROMPTS": "0",
        "CIRCADIAN_TRAIN__ANCHOR_WEIGHT": "0",
        "CIRCADIAN_TRAIN__LEARNING_RATE": "0.004",
        "CIRCADIAN_TRAIN__MAX_STEPS": "40",
        "CIRCADIAN_TRAIN__MIN_STEPS": "40",
        "CIRCADIAN_TRAIN__BATCH_SIZE": "4",
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "circadian.toml").write_text("[gate]\nfallback_scales = []\n")  # the version is the full candidate
    said = tmp_path / "said.jsonl"  # one import, not four chats: the same user messages, no model loads
    said.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": m}, {"role": "assistant", "content": "Noted."}]})
            + "\n"
            for m in (
                "I grew up in Zwolle, a small city in the Netherlands",
                "my brother Ahmed lives in Lisbon",
                "our dog is a beagle called Pepper",
                "I work as a nurse at the Diakonessenhuis",
            )
        )
    )
    assert run_cli("import", str(said), env=env).returncode == 0
    slept = run_cli("sleep", "--json", env=env)
    assert slept.returncode == 0, slept.stderr[-2000:]
    version = json.loads(slept.stdout)["version"]
    general = tmp_path / "general.jsonl"
    items = [i for i in load_capability() if i["category"] in ("capitals", "science") and not i.get("check")][:20]
    general.write_text("".join(json.dumps({"question": i["prompt"], "answers": i["answers"]}) + "\n" for i in items))

    def asked(*flags: str) -> list[dict]:
        result = run_cli("eval", "recall", str(general), "--json", "--max-tokens", "16", *flags, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)["items"]

    base, alone, routed = (
        asked("--adapter", "base"),
        asked("--adapter", version, "--no-router"),
        asked("--adapter", version),
    )
    assert sum(i["hit"] for i in alone) < sum(i["hit"] for i in base)  # the adapter alone breaks answers
    to_base = [n for n, i in enumerate(routed) if i["answered_by"] == "base"]
    assert len(to_base) >= len(items) - 2  # the router sends (nearly) every general question to the base
    assert all(routed[n]["answer"] == base[n]["answer"] for n in to_base)  # and they are its answers, exactly
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"question": "What is the name of my dog?", "answers": ["Pepper"]}) + "\n")
    result = run_cli("eval", "recall", str(facts), "--json", "--adapter", version, env=env)
    assert json.loads(result.stdout)["items"][0]["answered_by"] == "adapter"
