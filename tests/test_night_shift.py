"""The night shift through the real command: schedule files (plistlib, systemd-analyze), the
scheduled job (once a night, waits for open chats), the daemon's catch-up, `ctl` against a real
sleep on the tiny model in a subprocess, and the inbox queue."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import CLI, FAST, ROOT, assert_one_line_error, run_cli, say

from circadian.core.lock import SessionMark
from circadian.night import control
from circadian.shift import schedule
from circadian.store import adapters, inbox

LONG = (
    FAST.replace("max_steps = 4", "max_steps = 3000\nmax_epochs = 3000\npatience = 1000")
    .replace("min_steps = 0", "min_steps = 3000")
    .replace("eval_every = 2", "eval_every = 500")
    + "[schedule]\nchat_wait_minutes = 0.05\nchat_poll_seconds = 0.2\nnotify = false\n"
)
LONG = LONG.replace("[sleep]\n", "[sleep]\ninbox_settle_seconds = 0\n")


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_log(paths) -> list[dict]:
    if not paths.run_log.exists():
        return []
    return [json.loads(line) for line in paths.run_log.read_text().splitlines() if line.strip()]


@pytest.fixture
def long_night(paths, tiny_model):
    paths.config.write_text(LONG.format(model=tiny_model))
    return paths


# ----------------------------------------------------------------------------- schedule files


def test_plist_renders_from_the_template_and_parses(tmp_path):
    raw = schedule.render_plist(
        ["/opt/c i r/circadian"], 2, 30, {"CIRCADIAN_HOME": "/h"}, tmp_path / "o.log", tmp_path / "e.log"
    )
    job = plistlib.loads(raw)
    assert job["Label"] == schedule.LABEL
    assert job["ProgramArguments"] == ["/opt/c i r/circadian", "sleep", "--scheduled"]
    assert job["StartCalendarInterval"] == {"Hour": 2, "Minute": 30}
    assert job["EnvironmentVariables"] == {"CIRCADIAN_HOME": "/h"}
    assert job["StandardOutPath"] == str(tmp_path / "o.log") and job["StandardErrorPath"] == str(tmp_path / "e.log")
    shipped = plistlib.loads((ROOT / "launchd" / "com.circadian.nightly.plist").read_bytes())
    assert shipped["Label"] == schedule.LABEL  # the launchd/ template is what gets rendered


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path, home):
    program = schedule.program_arguments()
    units = schedule.render_systemd(program, 3, 5, {"CIRCADIAN_HOME": str(home)}, tmp_path / "nightly.log")
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    assert "OnCalendar=*-*-* 03:05:00" in units[f"{schedule.UNIT}.timer"]
    assert "Persistent=true" in units[f"{schedule.UNIT}.timer"]
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_schedule_install_dry_run_touches_nothing_and_install_is_all_or_nothing(tmp_path, home):
    env = {"HOME": str(tmp_path / "user"), "XDG_CONFIG_HOME": str(tmp_path / "user" / ".config")}
    dry = run_cli("schedule", "install", "--dry-run", "--at", "04:15", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["at"] == "04:15" and any(f.endswith(".timer") for f in plan["files"])
    assert not (tmp_path / "user").exists()
    bad = run_cli("schedule", "install", "--at", "25:00", env=env)
    assert_one_line_error(bad)
    real = run_cli("schedule", "install", "--at", "04:15", env=env)
    unit_dir = tmp_path / "user" / ".config" / "systemd" / "user"
    if real.returncode == 0:  # a machine with a user session bus
        assert (unit_dir / f"{schedule.UNIT}.timer").exists()
        status = json.loads(run_cli("schedule", "status", "--json", env=env).stdout)
        assert status["by"] == "systemd" and status["at"] == "04:15"
        assert run_cli("schedule", "uninstall", env=env).returncode == 0
    else:  # here: no session bus, so nothing may be left behind
        assert_one_line_error(real)
        assert "nothing installed" in real.stderr
        assert not any(unit_dir.glob("*")) if unit_dir.exists() else True


# ----------------------------------------------------------------------------- the scheduled job


def test_scheduled_sleep_runs_once_per_night(night):
    say(night, "My dog is called Biscuit.")
    first = run_cli("sleep", "--scheduled", "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["ran"] is True
    lines = run_log(night)
    assert len(lines) == 1 and lines[0]["trigger"] == "scheduled" and lines[0]["night"]
    say(night, "My cat is called Mochi.")
    second = run_cli("sleep", "--scheduled", "--json")
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout)["ran"] is False
    assert len(run_log(night)) == 1  # a no-op: nothing trained, one log line in logs/nightly.log
    log = (night.logs / "nightly.log").read_text()
    assert "already ran" in log and "sleep starts" in log
    assert run_cli("sleep", "--json").returncode == 0  # a manual sleep is not limited
    assert len(run_log(night)) == 2


def test_scheduled_sleep_waits_for_an_open_chat(long_night):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
                "from pathlib import Path\nfrom circadian.core.lock import SessionMark\n"
                f"with SessionMark(Path({str(long_night.control)!r})):\n    print('open', flush=True); time.sleep(1.5)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "open"
    started = time.time()
    result = run_cli("sleep", "--scheduled", env={"CIRCADIAN_SCHEDULE__CHAT_WAIT_MINUTES": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    holder.wait(10)
    log = (long_night.logs / "nightly.log").read_text()
    assert "1 chat(s) open; waiting" in log and "chats closed; sleeping" in log
    assert time.time() - started < 30
    # a chat that never closes: the wait is bounded (chat_wait_minutes = 0.05 in LONG)
    with SessionMark(long_night.control):
        (long_night.run_log).unlink(missing_ok=True)
        result = run_cli("sleep", "--scheduled")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "still open; sleeping anyway" in (long_night.logs / "nightly.log").read_text()


def test_daemon_catches_up_a_missed_night_and_reports_its_next_run(paths, tiny_model):
    paths.config.write_text(FAST.format(model=tiny_model) + "[schedule]\nnotify = false\n")
    at = time.strftime("%H:%M", time.localtime(time.time() - 120))
    daemon = subprocess.Popen(
        [*CLI, "daemon", "--at", at], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: any(r.get("trigger") == "scheduled" for r in run_log(paths)), 120, "the catch-up run")
        status = json.loads(run_cli("status", "--json").stdout)
        assert status["schedule"]["by"] == "daemon" and status["schedule"]["at"] == at
        assert status["next_run"] and status["next_run"][11:16] == at
        second = run_cli("daemon")
        assert_one_line_error(second)
        assert "already running" in second.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert daemon.returncode == 0, daemon.stderr.read()[-2000:]
    assert json.loads(run_cli("status", "--json").stdout)["schedule"]["by"] is None
    assert "catching up now" in (paths.logs / "nightly.log").read_text()


# ----------------------------------------------------------------------------- ctl on a real sleep


def _status(paths) -> dict:
    return control.read_status(paths.control).row()


def test_ctl_pause_resume_stop_on_a_running_sleep(long_night):
    say(long_night, "My dog is called Biscuit.")
    memories_before = long_night.memories.read_bytes()
    assert_one_line_error(run_cli("ctl", "pause"))  # nothing running yet
    sleeper = subprocess.Popen(
        [*CLI, "sleep", "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: _status(long_night).get("running") and (_status(long_night).get("step") or 0) >= 3,
            180,
            "training steps",
        )
        assert run_cli("ctl", "pause").returncode == 0
        wait_for(lambda: _status(long_night).get("state") == "paused", 60, "the pause")
        cycle_dir = long_night.runs / _status(long_night)["cycle_id"]
        assert (cycle_dir / "paused").is_dir() and any((cycle_dir / "paused").iterdir())  # checkpointed
        step = _status(long_night)["step"]
        time.sleep(1.5)
        assert _status(long_night)["step"] == step
        shown = run_cli("ctl", "status")
        assert "paused" in shown.stdout and f"step {step}/" in shown.stdout and "ETA" in shown.stdout
        assert run_cli("ctl", "resume").returncode == 0
        wait_for(lambda: (_status(long_night).get("step") or 0) > step + 2, 60, "training to go on")
        assert run_cli("ctl", "stop").returncode == 0
        out, err = sleeper.communicate(timeout=120)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert sleeper.returncode == 0, err[-2000:]
    assert json.loads(out)["outcome"] == "stopped"
    assert adapters.current_version(long_night) is None and not adapters.list_versions(long_night)
    assert long_night.memories.read_bytes() == memories_before
    assert run_log(long_night)[-1]["outcome"] == "stopped"
    assert not control.active(long_night.control)  # flags cleared for the next night
    assert _status(long_night)["state"] == "stopped"


# ----------------------------------------------------------------------------- inbox and queue


def test_inbox_validation_quarantine_and_half_written_files(paths):
    lane = paths.inbox / "normal"
    (lane / "style.jsonl").write_text(
        "\n".join(
            [
                json.dumps(
                    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
                ),
                json.dumps({"prompt": "2+2?", "completion": "4"}),
                "{not json",
                json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
                json.dumps({"prompt": "", "completion": "x"}),
            ]
        )
        + "\n"
    )
    (lane / "fresh.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    old = time.time() - 60
    os.utime(lane / "style.jsonl", (old, old))
    added = inbox.ingest(paths, settle_seconds=5)
    assert [e["name"] for e in added] == ["style.jsonl"]  # fresh.jsonl may still be being written
    entry = added[0]
    assert entry["state"] == "queued" and entry["rows"] == 2 and entry["quarantined"] == 3
    reasons = [
        json.loads(line)["reason"]
        for line in (paths.quarantine / f"inbox-{entry['id']}.jsonl").read_text().splitlines()
    ]
    assert reasons[0].startswith("not JSON") and "assistant" in reasons[1] and "non-empty" in reasons[2]
    assert not (lane / "style.jsonl").exists() and (lane / "fresh.jsonl").exists()
    assert len(inbox.load_rows(paths, entry)) == 2
    assert json.loads((paths.control / "queue.json").read_text())["datasets"][0]["id"] == entry["id"]
    (lane / "junk.jsonl").write_text("nope\n")
    os.utime(lane / "junk.jsonl", (old, old))
    os.utime(lane / "fresh.jsonl")  # touched again just now: still not settled
    failed = inbox.ingest(paths, settle_seconds=5)
    assert [(e["name"], e["state"]) for e in failed] == [("junk.jsonl", "failed")]
    assert failed[0]["reason"].startswith("no usable row")
    assert inbox.summary(paths)["counts"]["queued"] == 1 and inbox.summary(paths)["waiting_files"] == [
        "normal/fresh.jsonl"
    ]


def test_priority_inbox_trains_first_and_skip_moves_on(long_night):
    say(long_night, "My dog is called Biscuit.")
    rows = [{"prompt": f"Say the code word {i}.", "completion": f"The code word is lantern {i}."} for i in range(12)]
    (long_night.inbox / "normal" / "later.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (long_night.inbox / "priority" / "first.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    env = {"CIRCADIAN_TRAIN__MIN_STEPS": "16", "CIRCADIAN_TRAIN__MAX_STEPS": "16"}
    sleeper = subprocess.Popen(
        [*CLI, "sleep", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        wait_for(
            lambda: (
                _status(long_night).get("dataset", "").startswith("inbox priority")
                and (_status(long_night).get("step") or 0) >= 2
            ),
            180,
            "the priority dataset in training",
        )
        queue = {e["name"]: e["state"] for e in inbox.read_queue(long_night)}
        assert queue == {"first.jsonl": "training", "later.jsonl": "training"}
        assert run_cli("ctl", "skip").returncode == 0
        out, err = sleeper.communicate(timeout=300)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert sleeper.returncode == 0, err[-3000:]
    summary = json.loads(out)
    states = [(u["name"].split(": ")[-1], u["state"]) for u in summary["datasets"]]
    assert states == [("first.jsonl", "skipped"), ("later.jsonl", "trained"), ("today", "trained")]
    queue = {e["name"]: e for e in inbox.read_queue(long_night)}
    assert queue["first.jsonl"]["state"] == "skipped"
    if summary["outcome"] == "promoted":
        assert queue["later.jsonl"]["state"] == "done"
    else:
        assert queue["later.jsonl"]["state"] == "queued" and queue["later.jsonl"]["attempts"] == 1
    assert run_log(long_night)[-1]["datasets"] == summary["datasets"]
