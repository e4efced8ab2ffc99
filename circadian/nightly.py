"""The scheduled night: `circadian sleep --scheduled` (what launchd / systemd / the daemon run),
`circadian daemon` (APScheduler 3 for machines with neither), and the morning notification.

The scheduled job is idempotent: a "night" runs from noon to noon, and a night that already has a
finished scheduled cycle in `run_log.jsonl` is a no-op with a log line (a failed or interrupted one
may run again). Before sleeping it waits, up to `schedule.chat_wait_minutes`, while a chat is open.
Every step of the job is one line in `logs/nightly.log`.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from typing import Callable

from circadian.config import Config
from circadian.errors import CircadianError
from circadian.fsutil import atomic_write_json, read_jsonl
from circadian.lock import active_sessions, holder
from circadian.paths import Paths

UNFINISHED = ("failed", "interrupted")


def night_of(moment: datetime) -> date:
    """The night a moment belongs to: noon to noon, named by the evening's date."""
    return (moment - timedelta(hours=12)).date()


def log_line(paths: Paths, message: str) -> str:
    """Append one timestamped line to logs/nightly.log and return it."""
    line = f"{datetime.now().astimezone().isoformat(timespec='seconds')} {message}"
    paths.logs.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.logs / "nightly.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return line


def ran_tonight(paths: Paths, night: date) -> dict | None:
    """Return tonight's finished scheduled run_log line, if there is one."""
    for _n, row, _raw in read_jsonl(paths.run_log):
        if row and row.get("trigger") == "scheduled" and row.get("night") == night.isoformat() \
                and row.get("outcome") not in UNFINISHED:
            return row
    return None


def notify(message: str, *, enabled: bool = True) -> str:
    """Show a desktop notification when the platform can; return how it was delivered."""
    if enabled and platform.system() == "Darwin" and shutil.which("osascript"):
        script = f"display notification {json.dumps(message)} with title \"circadian\""
        if subprocess.run(["osascript", "-e", script], capture_output=True).returncode == 0:
            return "osascript"
    if enabled and shutil.which("notify-send") and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                    or os.environ.get("DBUS_SESSION_BUS_ADDRESS")):
        if subprocess.run(["notify-send", "circadian", message], capture_output=True).returncode == 0:
            return "notify-send"
    return "log"


def outcome_line(summary: dict) -> str:
    """One line for the morning: what the night did."""
    outcome = summary.get("outcome", "?")
    if outcome in ("promoted", "rejected"):
        b, a = summary.get("before", {}), summary.get("after", {})
        recall = lambda m: (m.get("recall") or {}).get("score")  # noqa: E731
        figures = f"recall {recall(b) or 0:.0%} -> {recall(a) or 0:.0%}" if recall(a) is not None else ""
        return f"night {summary['cycle_id']}: {outcome} {summary.get('version')}" + (f" ({figures})" if figures else "")
    return f"night {summary.get('cycle_id', '?')}: {outcome}"


def run_scheduled(paths: Paths, config: Config, *, console=None, now: Callable[[], datetime] | None = None) -> dict:
    """The job launchd / systemd / the daemon start. Return {"ran": bool, "line": ..., "summary": ...}."""
    from circadian.sleep import run_sleep

    clock = now or (lambda: datetime.now().astimezone())
    night = night_of(clock())
    done = ran_tonight(paths, night)
    if done:
        line = log_line(paths, f"night {night}: already ran (cycle {done.get('cycle_id')}, {done.get('outcome')}); nothing to do")
        return {"ran": False, "line": line}
    running = holder(paths.control / "sleep.lock")
    if running:
        line = log_line(paths, f"night {night}: a sleep is already running (pid {running.get('pid')}); nothing to do")
        return {"ran": False, "line": line}
    deadline = time.monotonic() + config.schedule.chat_wait_minutes * 60
    open_chats = active_sessions(paths.control)
    if open_chats:
        log_line(paths, f"night {night}: {open_chats} chat(s) open; waiting up to {config.schedule.chat_wait_minutes:g} min")
        while open_chats and time.monotonic() < deadline:
            time.sleep(min(config.schedule.chat_poll_seconds, max(0.1, deadline - time.monotonic())))
            open_chats = active_sessions(paths.control)
        log_line(paths, f"night {night}: " + ("chats closed; sleeping" if not open_chats
                                              else f"{open_chats} chat(s) still open; sleeping anyway"))
    log_line(paths, f"night {night}: sleep starts")
    try:
        summary = run_sleep(paths, config, console=console, trigger="scheduled", night=night.isoformat())
    except CircadianError as exc:
        line = log_line(paths, f"night {night}: failed: {exc}")
        notify(f"circadian: the night failed: {exc}", enabled=config.schedule.notify)
        raise
    message = outcome_line(summary)
    how = notify(message, enabled=config.schedule.notify)
    line = log_line(paths, f"{message} (notified by {how})")
    return {"ran": True, "line": line, "summary": summary, "notified_by": how}


# ----------------------------------------------------------------------------- daemon

def daemon_state_path(paths: Paths):
    return paths.control / "daemon.json"


def read_daemon(paths: Paths) -> dict | None:
    """Return the running daemon's state (pid, at, next_run), or None when no daemon runs."""
    if holder(paths.control / "daemon.lock") is None:
        return None
    try:
        return json.loads(daemon_state_path(paths).read_text())
    except (OSError, ValueError):
        return {}


def _job_command(paths: Paths) -> list[str]:
    return [sys.executable, "-m", "circadian", "sleep", "--scheduled", "--home", str(paths.home)]


def run_daemon(paths: Paths, config: Config, say: Callable[[str], None]) -> None:
    """Run the nightly job at schedule.at until interrupted; catch up a missed night once on start."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    from circadian.schedule import parse_at, previous_run

    hour, minute = parse_at(config.schedule.at)
    paths.control.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.control / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        state = read_daemon(paths) or {}
        raise CircadianError(f"a daemon is already running for this home (pid {state.get('pid', '?')})") from None

    def job() -> None:
        say(log_line(paths, "daemon: starting the nightly job"))
        done = subprocess.run(_job_command(paths), capture_output=True, text=True)
        tail = (done.stdout.strip().splitlines() or [""])[-1] if done.returncode == 0 else \
            (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        say(log_line(paths, f"daemon: nightly job ended (exit {done.returncode}) {tail}"))
        publish_state()

    scheduler = BlockingScheduler()
    grace = int(config.schedule.misfire_grace_hours * 3600)
    trigger = CronTrigger(hour=hour, minute=minute)
    scheduler.add_job(job, trigger, id="nightly", coalesce=True, misfire_grace_time=grace, max_instances=1)

    def publish_state() -> None:
        nightly = scheduler.get_job("nightly")
        next_time = getattr(nightly, "next_run_time", None) if nightly else None
        if next_time is None:
            next_time = trigger.get_next_fire_time(None, datetime.now().astimezone())
        atomic_write_json(daemon_state_path(paths), {"pid": os.getpid(), "at": config.schedule.at,
                                                     "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                                                     "next_run": next_time.isoformat() if next_time else None})

    missed = previous_run(hour, minute)
    if ran_tonight(paths, night_of(missed)) is None:
        say(log_line(paths, f"daemon: the night of {night_of(missed)} has no scheduled sleep yet; catching up now"))
        scheduler.add_job(job, id="catch-up", max_instances=1)
    scheduler.add_listener(lambda _event: publish_state())
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    say(log_line(paths, f"daemon: pid {os.getpid()}, nightly sleep at {config.schedule.at}"))
    publish_state()
    try:
        scheduler.start()  # blocks
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        say(log_line(paths, "daemon: stopped"))
        daemon_state_path(paths).unlink(missing_ok=True)
        os.close(fd)
