"""Same-day recall (issue 19, first part): the memory index (SQLite FTS5) fills as the user chats, and
the next reply's prompt carries what bears on the message, on the real chat path with the tiny
model. Tombstones, `#no-train`, what the adapter learned and `chat.retrieval = false` are obeyed."""

from __future__ import annotations

import json

from circadian.core.config import load_config
from circadian.day.assistant import Assistant, ChatSession
from circadian.day.chat import handle_command
from circadian.store import adapters, memories, memory_index


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


def test_forgotten_learned_and_switched_off_are_not_recalled(paths, use_tiny):
    from test_store import _version

    first = _session(paths)
    first.respond("My sister Ines teaches chemistry in Porto.")
    turn = first.history[-1].record_id
    assert _session(paths).recall("What does Ines teach?")
    assert _session(paths, retrieval=False).recall("What does Ines teach?") == []
    assert "retrieval is off" in handle_command("/memory", _session(paths, retrieval=False)).text
    later = _session(paths)
    adapters.set_current(paths, _version(paths, 1, ids=[turn]), reason="test")  # an adapter that learned it
    assert memory_index.search(paths, "What does Ines teach?")  # still indexed
    assert later.recall("What does Ines teach?") == []  # but the adapter answers it now
    adapters.set_current(paths, None, reason="test")  # rolled back: recalled again
    assert later.recall("What does Ines teach?")
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
