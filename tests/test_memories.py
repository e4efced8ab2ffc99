"""Memories: record shape, no-train tagging, tombstones, import validation and de-duplication."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import assert_one_line_error, run_cli

from circadian.core.errors import CircadianError
from circadian.day.importer import import_file, validate_lines
from circadian.store import memories


def _exchange(user="hi", assistant="hello"):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_make_record_tags_no_train_mark_in_user_message():
    tagged = memories.make_record(
        _exchange("my PIN is 1234 #No-Train"), session="s", model="m", adapter=None, source="chat"
    )
    plain = memories.make_record(_exchange("my dog is Biscuit"), session="s", model="m", adapter=None, source="chat")
    assert tagged["tags"] == ["no-train"] and plain["tags"] == []
    assistant_only = memories.make_record(
        _exchange("hi", "#no-train"), session="s", model="m", adapter=None, source="chat"
    )
    assert assistant_only["tags"] == []


def test_make_record_session_no_train_switch():
    record = memories.make_record(_exchange(), session="s", model="m", adapter="v0001", source="chat", no_train=True)
    assert record["tags"] == ["no-train"]
    assert set(record) >= {"id", "ts", "session", "model", "adapter", "tags", "messages"}
    assert record["ts"][-6] in "+-"  # local time with its offset


def test_append_keeps_file_private_and_home_private(paths):
    memories.append(paths, [memories.make_record(_exchange(), session="s", model="m", adapter=None, source="chat")])
    assert stat.S_IMODE(paths.memories.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.home.stat().st_mode) == 0o700
    row = json.loads(paths.memories.read_text())
    assert row["messages"] == _exchange()


def test_forget_appends_tombstone_and_leaves_history_untouched(paths):
    first = memories.make_record(_exchange("a"), session="s", model="m", adapter=None, source="chat")
    second = memories.make_record(_exchange("b"), session="s", model="m", adapter=None, source="chat")
    memories.append(paths, [first, second])
    before = paths.memories.read_bytes()
    memories.forget(paths, second["id"], session="s")
    assert paths.memories.read_bytes() == before
    assert [r.id for r in memories.live_records(paths)] == [first["id"]]
    assert memories.counts(paths)["forgotten"] == 1


def test_validate_lines_names_each_bad_line():
    text = "\n".join(
        [
            json.dumps({"messages": _exchange()}),
            "{broken",
            json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}),
            json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
            json.dumps([1, 2]),
        ]
    )
    rows, problems = validate_lines(text)
    assert len(rows) == 1
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 5", "line 6"]
    assert "content is empty" in problems[2]


def test_import_rejects_whole_file_with_bad_line(paths, tmp_path):
    src = tmp_path / "chats.jsonl"
    src.write_text(json.dumps({"messages": _exchange()}) + "\nnot json\n")
    result = run_cli("import", str(src))
    assert_one_line_error(result)
    assert "line 2" in result.stderr and "nothing imported" in result.stderr
    assert not paths.memories.exists() or paths.memories.read_text() == ""


def test_import_appends_and_skips_duplicate(paths, tmp_path):
    src = tmp_path / "chats.jsonl"
    src.write_text(
        "\n".join(json.dumps({"messages": _exchange(f"q{i} #no-train" if i == 2 else f"q{i}")}) for i in range(3))
        + "\n"
    )
    first = import_file(paths, src)
    assert (first.added, first.no_train, first.skipped_duplicate) == (3, 1, False)
    again = run_cli("import", str(src))
    assert again.returncode == 0 and "already imported" in again.stdout
    records = list(memories.live_records(paths))
    assert len(records) == 3
    assert [r.source for r in records] == ["import:chats.jsonl"] * 3
    assert records[2].tags == ["no-train"]


def test_cli_import_missing_file_is_one_line_error(tmp_path):
    assert_one_line_error(run_cli("import", str(tmp_path / "nope.jsonl")))


def test_cli_paths_and_status_json(home):
    result = run_cli("paths", "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert table["home"] == str(home) and table["memories"] == str(home / "data" / "memories.jsonl")
    status = json.loads(run_cli("status", "--json").stdout)
    assert status["adapter"] is None and status["memories"]["turns"] == 0
    assert status["queue"]["counts"]["queued"] == 0 and status["queue"]["waiting_files"] == []
    assert status["schedule"]["by"] is None and status["next_run"] is None and status["sleep"] is None
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_cut_off_tombstone_still_forgets_and_one_naming_nothing_stops_with_its_file(paths):
    record = memories.make_record(_exchange("secret"), session="s", model="m", adapter=None, source="chat")
    memories.append(paths, [record])
    memories.forget(paths, record["id"], session="s")
    raw = paths.tombstones.read_text()
    cut = raw.index(record["id"]) + len(record["id"]) + 1
    paths.tombstones.write_text(raw[:cut])  # an append cut off just after the id it forgets
    assert memories.forgotten_ids(paths) == {record["id"]}
    assert [r.id for r in memories.live_records(paths)] == []
    paths.tombstones.write_text('{"id": "t1", "ts": "2026-12-01T00:00:00", "forg\n')
    with pytest.raises(CircadianError, match="tombstones.jsonl line 1 is unreadable"):
        memories.forgotten_ids(paths)
    shown = run_cli("sleep", "--dry-run")
    assert_one_line_error(shown)
    assert "tombstones.jsonl" in shown.stderr and "secret" not in shown.stdout
