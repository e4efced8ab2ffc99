"""Same-day recall (issue 19, first part): the memory index (SQLite FTS5) fills as the user chats, and
the next reply's prompt carries what bears on the message, on the real chat path with the tiny
model. Tombstones, `#no-train`, the facts the adapter has learned (graduated) and `chat.retrieval = false`
are obeyed."""

from __future__ import annotations

import json

from circadian.core.config import load_config
from circadian.day.assistant import Assistant, ChatSession
from circadian.day.chat import handle_command
from circadian.store import adapters, ledger, memories, memory_index


def _session(paths, **overrides) -> ChatSession:
    config, _ = load_config(paths.config)
    for key, value in overrides.items():
        setattr(config.chat, key, value)
    config.chat.max_tokens = 4
    return ChatSession(Assistant(paths, config))


def test_what_was_said_this_morning_is_in_the_prompt_at_lunch(paths, use_tiny):
    morning = _session(paths)
    morning.respond("We adopted a beagle yesterday, her name is Pepper.")
    morning.respond("My PIN is 4821 #no-train")
    assert oct(memory_index.index_path(paths).stat().st_mode & 0o777) == "0o600"
    lunch = _session(paths)
    lunch.respond("What breed is our new dog? The beagle, right?")
    assert [e.text for e in lunch.recalled] == ["We adopted a beagle yesterday, her name is Pepper."]
    prompt = lunch.messages_for("x", lunch.recalled)[0]["content"]
    assert prompt.startswith(lunch.system_prompt) and "Pepper" in prompt
    logged = [json.loads(line) for line in paths.memories.read_text().splitlines()]
    assert logged[-1]["recalled"] == [logged[0]["id"]]  # the log says what the reply was given
    route = logged[-1]["stats"]["route"]  # and who answered, with the scores
    assert route["answered_by"] == "base+retrieval" and route["retrieved"] == 1 and route["retrieval_score"] < 0
    assert logged[0]["stats"]["route"] == {
        "answered_by": "base",
        "adapter_score": None,
        "retrieved": 0,
        "retrieval_score": None,
    }
    assert "recalled for the last reply" in handle_command("/memory", lunch).text
    lunch.respond("What is the capital of France?")  # nothing of substance in common: nothing recalled
    assert lunch.recalled == [] and "nothing was recalled" in handle_command("/memory", lunch).text
    lunch.respond("What is my PIN?")
    assert lunch.recalled == []  # a #no-train turn is never indexed
    lunch.respond("What is a beagle?")  # shares a word, but speaks neither of the user nor of a name
    assert lunch.recalled == []
    lunch.respond("Tell me about Pepper.")  # a name the memory holds
    assert [e.turn_id for e in lunch.recalled] == [logged[0]["id"]]
    morning.respond("Is our beagle still called Pepper?")  # in this session's context already: not recalled
    assert morning.recalled == []


def _adapter_version(paths, tiny_model, n: int, parent: str | None, asked: list[dict]) -> str:
    """A stored version with real (untrained) LoRA weights on the tiny model, and what its night asked."""
    from datetime import datetime

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from circadian.core.fsutil import sha256_file

    name = adapters.version_name(n, datetime(2026, 11, 22, 3, 15, n))
    staging = adapters.staging_dir(paths, f"c{n}")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(str(staging))
    weights = {f: sha256_file(staging / f) for f in ("adapter_model.safetensors", "adapter_config.json")}
    manifest = {"version": name, "parent": parent, "backend": "torch", "weights": weights}
    adapters.commit(paths, staging, manifest, [], asked)
    return name


def test_forgotten_graduated_and_switched_off_are_not_recalled(paths, use_tiny):
    first = _session(paths)
    first.respond("My sister Ines teaches chemistry in Porto.")
    turn = first.history[-1].record_id
    assert _session(paths).recall("What does Ines teach?")
    assert _session(paths, retrieval=False).recall("What does Ines teach?") == []
    assert "retrieval is off" in handle_command("/memory", _session(paths, retrieval=False)).text
    fact = {"key": "f-ines", "statement": "Your sister Ines teaches chemistry.", "source_id": turn}
    memory_index.add_facts(paths, [fact], source="chat")  # a night wrote a fact from the turn: it stands for it
    assert [e.text for e in _session(paths).recall("What does Ines teach?")] == [fact["statement"]]
    missed = _adapter_version(paths, use_tiny, 1, None, [{"fact": "f-ines", "turn": turn, "hit": False}])
    adapters.set_current(paths, missed, reason="test")  # trained on it, but its night's probe missed
    assert [e.kind for e in _session(paths).recall("What does Ines teach?")] == ["fact"]  # still recalled
    learned = _adapter_version(paths, use_tiny, 2, missed, [{"fact": "f-ines", "turn": turn, "hit": True}])
    adapters.set_current(paths, learned, reason="test")
    later = _session(paths)
    assert memory_index.search(paths, "What does Ines teach?")  # still indexed
    assert later.recall("What does Ines teach?") == []  # but the adapter answers it: graduated
    assert ledger.states(paths, learned)["f-ines"].nights_to_graduate == 2
    adapters.rollback(paths)  # back to the version that had not learned it: recalled again
    assert later.assistant.follow_current() == f"now answering with adapter {missed}"
    assert [e.kind for e in later.recall("What does Ines teach?")] == ["fact"]
    memories.forget(paths, turn)
    assert memory_index.search(paths, "What does Ines teach?") == []
    assert memory_index.rebuild(paths) == 0  # the index is derived: rebuilt from the memories, the tombstone obeyed


def test_eval_recall_with_retrieval_gives_each_question_what_chat_would(paths, use_tiny, tmp_path):
    from conftest import run_cli

    _session(paths).respond("My sister Ines teaches chemistry in Porto.")
    probes = tmp_path / "probes.jsonl"
    probes.write_text(
        json.dumps({"question": "What does my sister teach?", "answers": ["chemistry"]})
        + "\n"
        + json.dumps({"question": "What is the capital of France?", "answers": ["Paris"]})
        + "\n"
    )
    result = run_cli("eval", "recall", str(probes), "--retrieval", "--json", "--adapter", "base")
    assert result.returncode == 0, result.stderr[-2000:]
    items = json.loads(result.stdout)["items"]
    assert [len(i["recalled"]) for i in items] == [1, 0] and "Ines" in items[0]["recalled"][0]
    plain = json.loads(run_cli("eval", "recall", str(probes), "--json", "--adapter", "base").stdout)
    assert [i["recalled"] for i in plain["items"]] == [[], []] and plain["retrieval"] is False


def test_an_index_that_is_no_longer_a_database_is_made_again(paths):
    record = memories.make_record(
        [{"role": "user", "content": "My sister Lena lives in Trondheim."}, {"role": "assistant", "content": "ok"}],
        session="s",
        model="m",
        adapter=None,
        source="chat",
    )
    memories.append(paths, [record])
    assert memory_index.add_turn(paths, record)
    memory_index.index_path(paths).write_bytes(b"not a database" * 300)
    found = memory_index.search(paths, "Where does my sister live?")
    assert [e.turn_id for e in found] == [record["id"]]  # rebuilt from the memories
    assert list(paths.data.glob("memory_index.sqlite.unreadable-*"))  # the broken file kept aside, not deleted


def test_the_real_chat_writes_a_turns_facts_to_the_index_after_the_reply(paths, use_tiny):
    """`circadian chat` on a real terminal: each turn's facts (the parse generator, no model) are written
    in the background once the reply has ended, beside the turn's own words, and the chat waits for them
    before it exits. A night's facts of the turn replace the day's and stand for the turn."""
    import os
    import pty
    import sys

    from conftest import CLI, ROOT
    from test_chat import _read_until

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execvpe(sys.executable, [*CLI, "chat"], {**os.environ, "TERM": "xterm", "CIRCADIAN_CHAT__MAX_TOKENS": "6"})
    try:
        assert b"you>" in _read_until(fd, b"you>", 120)
        os.write(fd, b"We adopted a beagle last week, we named her Pepper.\r")
        seen = _read_until(fd, b"you>", 60)
        assert b"you>" in seen, seen[-500:]
        os.write(fd, b"/quit\r")
        assert b"bye" in _read_until(fd, b"bye", 30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    logged = json.loads(paths.memories.read_text().splitlines()[0])
    turn = logged["id"]
    found = memory_index.search(paths, "Is Pepper our beagle?")
    assert found and all(e.turn_id == turn for e in found) and {e.kind for e in found} == {"turn", "fact"}
    assert all(e.ts == logged["ts"] for e in found)  # each entry: its turn id, time and source
    assert all(e.source == "day" for e in found if e.kind == "fact")
    assert any("Pepper" in e.text and e.text.startswith("You") for e in found)  # a statement, beside the message
    night = {"key": "night-1", "statement": "You adopted a beagle called Pepper.", "source_id": turn}
    memory_index.add_facts(paths, [night], source="night c1", turns={turn})
    assert [e.text for e in memory_index.facts(paths)] == [night["statement"]]  # the night's replace the day's
    assert [e.text for e in memory_index.search(paths, "Is Pepper our beagle?")] == [night["statement"]]  # and the turn


def test_a_known_fact_that_matches_as_well_keeps_a_weaker_one_out(paths):
    """After a night: "What town do I live in?" matches "You live in Haarlem." (learned) and "Tobias lives
    in Gdansk." (not learned) on one word each. The adapter answers the first; giving the second only
    lures the reply to Gdansk (bench dev-priya). An unknown fact that matches better is still given."""
    facts = [
        {"key": "haarlem", "statement": "You live in Haarlem.", "source_id": "t1"},
        {"key": "tobias", "statement": "Tobias lives in Gdansk.", "source_id": "t2"},
        {"key": "ines", "statement": "Your sister Ines teaches chemistry in Porto.", "source_id": "t3"},
    ]
    memory_index.add_facts(paths, facts, source="night c1")
    asked = "What town do I live in?"
    assert {e.fact for e in memory_index.search(paths, asked)} == {"haarlem", "tobias"}
    assert memory_index.search(paths, asked, known={"haarlem"}) == []
    found = memory_index.search(paths, "Where does my sister Ines live?", known={"haarlem"})
    assert [e.fact for e in found] == ["ines"]  # it matches better than the known fact: given
