"""The chat: driven through prompt_toolkit's pipe input on the tiny model, slash commands,
logging, following adapters/CURRENT between turns, and Ctrl-C in a real terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import sys
import time

from conftest import CLI, ROOT, assert_one_line_error, run_cli
from rich.console import Console

from circadian.core.config import load_config
from circadian.core.fsutil import atomic_write_text
from circadian.day.assistant import Assistant, ChatSession
from circadian.day.chat import run_chat
from circadian.store import memories


def _session(paths, log=True):
    config, _ = load_config(paths.config)
    return ChatSession(Assistant(paths, config), log=log)


def _drive(session, keys: str) -> str:
    """Type `keys` into a real prompt_toolkit session over a pipe; return what the chat printed."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    out = io.StringIO()
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_chat(session, console=Console(file=out, width=120), pt_input=pipe, pt_output=DummyOutput())
    return out.getvalue()


def test_chat_logs_turns_with_context_and_slash_commands(paths, use_tiny):
    session = _session(paths)
    shown = _drive(session, "hello\r/notrain\rmy PIN is 4921\r/forget\rthird\r/adapter\r/bogus\r/quit\r")
    assert "no-train ON" in shown and "forgot: 'my PIN is 4921'" in shown
    assert "adapter: none (base model)" in shown and "unknown command /bogus" in shown
    assert "tok/s" in shown and "first token" in shown
    records = [json.loads(line) for line in paths.memories.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in records] == ["hello", "my PIN is 4921", "third"]
    assert records[0]["tags"] == [] and records[1]["tags"] == ["no-train"] and records[2]["tags"] == ["no-train"]
    assert len({r["session"] for r in records}) == 1
    assert all(r["messages"][1]["role"] == "assistant" and r["messages"][1]["content"] for r in records)
    assert [r.messages[0].content for r in memories.live_records(paths)] == ["hello", "third"]
    # the forgotten exchange also left the context: the third turn's prompt holds only "hello"
    prompt = session.messages_for("next")
    assert [m["content"] for m in prompt if m["role"] == "user"] == ["hello", "third", "next"]


def test_chat_multiline_input_and_new_session(paths, use_tiny):
    session = _session(paths)
    _drive(session, "line one\x1b\rline two\r/new\rafter\r\x04")
    records = [json.loads(line) for line in paths.memories.read_text().splitlines()]
    assert records[0]["messages"][0]["content"] == "line one\nline two"
    assert records[0]["session"] != records[1]["session"]
    from circadian.core.config import DEFAULT_SYSTEM_PROMPT

    assert session.messages_for("x") == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "after"},
        {"role": "assistant", "content": records[1]["messages"][1]["content"]},
        {"role": "user", "content": "x"},
    ]


def test_chat_system_prompt_reaches_the_model_and_the_log(paths, use_tiny):
    session = _session(paths)
    _drive(session, "/system You are terse.\rhi\r/quit\r")
    record = json.loads(paths.memories.read_text())
    assert record["system"] == "You are terse."
    assert session.messages_for("x")[0] == {"role": "system", "content": "You are terse."}


def test_chat_follows_current_adapter_between_turns(paths, use_tiny, tiny_model):
    from test_backends import _make_peft_adapter

    session = _session(paths)
    first = session.respond("Hello there")
    _make_peft_adapter(tiny_model, paths.adapters / "v0001-20261122-031500", "v0001-20261122-031500")
    atomic_write_text(paths.current, "v0001-20261122-031500\n")
    second = session.respond("Hello there")
    assert first.adapter is None and second.adapter == "v0001-20261122-031500"
    atomic_write_text(paths.current, "base\n")
    third = session.respond("Hello there")
    assert third.adapter is None
    adapters_logged = [json.loads(line)["adapter"] for line in paths.memories.read_text().splitlines()]
    assert adapters_logged == [None, "v0001-20261122-031500", None]


def test_a_message_interrupted_before_its_first_token_is_logged_not_lost(paths, use_tiny):
    """Ctrl-C before any reply token: the user's message is still in memories.jsonl, tagged, and the
    night reads it without quarantining it (and does not train on it)."""
    import threading

    from circadian.store import memories

    session = _session(paths)
    stopped = threading.Event()
    stopped.set()  # stopped before the first token: the reply is empty
    result = session.respond("My cat is called Saffron", cancel=stopped)
    assert result.reply == "" and result.interrupted
    record = json.loads(paths.memories.read_text())
    assert record["messages"] == [{"role": "user", "content": "My cat is called Saffron"}]
    assert "interrupted" in record["tags"] and result.record_id == record["id"]
    scanned = memories.scan(paths)
    assert not scanned.bad_lines and [r.id for r in scanned.records] == [record["id"]]


def test_respond_interrupted_keeps_partial_reply_and_session(paths, use_tiny):
    session = _session(paths)
    seen = []

    def on_text(text):
        seen.append(text)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of streaming

    result = session.respond("Tell me a story", on_text)
    assert result.interrupted and result.reply == "".join(seen).strip()
    assert result.tags == ["interrupted"]
    after = session.respond("still there?")
    assert not after.interrupted and after.reply
    assert len(session.history) == 2


def test_ask_no_log_and_json(paths, use_tiny):
    from conftest import run_cli

    logged = run_cli("ask", "hello", "--json")
    assert logged.returncode == 0, logged.stderr
    result = json.loads(logged.stdout)
    assert result["logged"] and result["tokens"] == 24 and result["reply"]
    unlogged = run_cli("ask", "hello", "--no-log")
    assert unlogged.returncode == 0 and unlogged.stdout.strip() == result["reply"]
    assert len(paths.memories.read_text().splitlines()) == 1
    assert run_cli("ask", "  ").returncode != 0


def _read_until(fd, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.time() + timeout
    while needle not in seen and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_chat_ctrl_c_in_a_real_terminal_stops_reply_and_keeps_session(paths, use_tiny):
    env = {**os.environ, "CIRCADIAN_CHAT__MAX_TOKENS": "30000", "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:  # child: the real command on a real terminal
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a login shell (a background job inherits SIG_IGN)
        os.chdir(ROOT)
        os.execvpe(sys.executable, [*CLI, "chat"], env)
    try:
        assert b"you>" in _read_until(fd, b"you>", 120)
        os.write(fd, b"Tell me a very long story\r")
        assert b"story" in _read_until(fd, b"story", 20)
        time.sleep(2.0)
        os.write(fd, b"\x03")  # Ctrl-C while the reply streams
        shown = _read_until(fd, b"stopped", 30)
        assert b"stopped" in shown, shown[-500:]
        os.write(fd, b"/quit\r")
        assert b"bye" in _read_until(fd, b"bye", 20)
    finally:
        for _ in range(100):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    record = json.loads(paths.memories.read_text())
    assert record["tags"] == ["interrupted"] and 0 < record["stats"]["tokens"] < 30000


def test_a_full_disk_while_logging_is_one_line_and_keeps_what_was_logged(paths, use_tiny):
    """The real `circadian ask` under a file-size limit just above memories.jsonl (what a full disk does
    to its append): one line on stderr, no traceback, and the turns logged before are intact."""
    import resource
    import signal
    import subprocess

    assert run_cli("ask", "first message", "--json").returncode == 0
    before = paths.memories.read_bytes()

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 20, resource.RLIM_INFINITY))

    full = subprocess.run(
        [*CLI, "ask", "second message"], capture_output=True, text=True, cwd=ROOT, preexec_fn=limited, timeout=300
    )
    assert full.returncode != 0 and "Traceback" not in full.stderr
    assert full.stderr.splitlines()[-1] == f"circadian: File too large: {paths.memories}"
    assert paths.memories.read_bytes().startswith(before)
    assert json.loads(before.decode().splitlines()[0])["messages"][0]["content"] == "first message"


def test_a_config_that_is_not_utf8_is_one_line(paths):

    paths.config.write_bytes(b'[chat]\nsystem_prompt = "caf\xe9"\n')
    result = run_cli("config", "show")
    assert_one_line_error(result)
    assert "not UTF-8" in result.stderr and "circadian.toml" in result.stderr


def test_the_typed_line_history_is_private_and_keeps_no_private_line(paths, use_tiny):
    """The real prompt_toolkit history file: 0600, no `#no-train` line, no line typed in a /notrain
    session, and a /forget takes the forgotten line out of it."""
    import stat

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    session = _session(paths)
    keys = "hello\rmy PIN is 4921 #no-train\rmy bike is red\r/forget\r/notrain\rsecret plans\r/notrain\rbye\r/quit\r"
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        run_chat(
            session,
            console=Console(file=io.StringIO(), width=120),
            pt_input=pipe,
            pt_output=DummyOutput(),
            history_path=paths.chat_history,
        )
    text = paths.chat_history.read_text()
    assert stat.S_IMODE(paths.chat_history.stat().st_mode) == 0o600
    assert "+hello" in text and "+bye" in text
    assert "4921" not in text and "secret plans" not in text and "bike" not in text


def _read_only(home, *args: str):
    """Run the real `circadian ARGS` with the home bind-mounted read-only (a private mount namespace)."""
    import subprocess

    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(home), *CLI, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_a_read_only_home_answers_in_one_line_and_changes_nothing(paths, use_tiny, tmp_path):
    """Every command on a home mounted read-only: the reading ones work, the writing ones say in one
    line which file they could not write (a chat says so before it answers), and no file changes."""
    import shutil

    import pytest
    from test_store import _version

    if shutil.which("unshare") is None or _read_only(paths.home, "--version").returncode != 0:
        pytest.skip("no private mount namespace here (unshare --mount)")
    assert run_cli("ask", "first message", "--json").returncode == 0
    stored = _version(paths, 1)  # a stored version (its weights a stand-in: it is made current, never loaded)

    def snapshot() -> dict:
        return {p: p.read_bytes() for p in paths.home.rglob("*") if p.is_file()}

    before = snapshot()
    for args in (("status",), ("ask", "--no-log", "hello")):
        result = _read_only(paths.home, *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr[-1500:])
    for args, file in (
        (("ask", "hello"), "memories.jsonl"),
        (("sleep",), "sleep.lock"),
        (("forget", "--last"), "tombstones.jsonl"),
        (("adapters", "use", stored), "CURRENT"),
    ):
        result = _read_only(paths.home, *args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr[-1500:])
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("circadian: ") and file in last and "Read-only file system" in last, (args, last)
        assert result.stdout == "" or args[0] != "ask", result.stdout  # no reply spent on a turn it cannot log
    assert snapshot() == before


def test_a_full_disk_is_one_line_and_the_next_append_starts_on_a_new_line(paths, use_tiny, tmp_path):
    """ENOSPC for real: data/ on a one-page tmpfs (in a private mount namespace) that the log almost
    fills. `ask` fails in one line naming memories.jsonl; the turns before are intact, and a later
    append (disk space back) is not glued onto the line the full disk cut off."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("unshare") is None or _read_only(paths.home, "--version").returncode != 0:
        pytest.skip("no private mount namespace here (unshare --mount)")
    assert run_cli("ask", "first: " + "remember this " * 250, "--json", "--max-tokens", "4").returncode == 0
    before = paths.memories.read_bytes()
    assert 3000 < len(before) < 4096, len(before)  # one page; the next turn needs a second one
    kept = tmp_path / "after.jsonl"
    script = (
        'cp -a "$1/data" "$2/data-copy" && rm -f "$2/data-copy/memory_index.sqlite" && '
        'mount -t tmpfs -o size=4k tmpfs "$1/data" && '
        'cp -a "$2/data-copy/." "$1/data/" && shift 2 && "$@"; rc=$?; '
        f'cp "{paths.memories}" "{kept}"; exit $rc'
    )
    full = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(paths.home), str(tmp_path), *CLI, "ask", "second " * 200],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert full.returncode != 0 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert full.stderr.strip().splitlines()[-1] == f"circadian: No space left on device: {paths.memories}"
    after = kept.read_bytes()
    assert after.startswith(before) and len(after) > len(before)  # a cut-off line, as a full disk leaves it
    paths.memories.write_bytes(after)  # the disk has room again; the cut-off line is still there
    assert run_cli("ask", "third message", "--json", "--max-tokens", "4").returncode == 0
    lines = paths.memories.read_text().splitlines()
    assert json.loads(lines[0])["messages"][0]["content"].startswith("first")
    assert json.loads(lines[-1])["messages"][0]["content"] == "third message"  # on a line of its own
    assert memories.scan(paths).bad_lines == [2]  # only the cut-off line is unreadable (and is quarantined)
