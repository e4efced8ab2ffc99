"""The scheduled night: `circadian sleep --scheduled`, what launchd, systemd and the daemon run, and
the morning notification.

The scheduled job is idempotent: a "night" runs from noon to noon, and a night that already has a
finished scheduled cycle in `run_log.jsonl` is a no-op with a log line (a failed or interrupted one
may run again). Before sleeping it waits, up to `schedule.chat_wait_minutes`, while a chat is open.
Every step of the job is one line in `logs/nightly.log`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta

from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.lock import active_sessions, holder
from circadian.core.paths import Paths
from circadian.store.records import CycleSummary, Measurement, RunLogLine, read_all

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


def ran_tonight(paths: Paths, night: date) -> RunLogLine | None:
    """Return tonight's finished scheduled run_log line, if there is one."""
    return next(
        (
            line
            for line in read_all(paths.run_log, RunLogLine)
            if line.trigger == "scheduled" and line.night == night.isoformat() and line.outcome not in UNFINISHED
        ),
        None,
    )


def notify(message: str, *, enabled: bool = True) -> str:
    """Show a desktop notification when the platform can; return how it was delivered."""
    if enabled and platform.system() == "Darwin" and shutil.which("osascript"):
        script = f'display notification {json.dumps(message)} with title "circadian"'
        if subprocess.run(["osascript", "-e", script], capture_output=True).returncode == 0:
            return "osascript"
    if (
        enabled
        and shutil.which("notify-send")
        and (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        )
    ) and subprocess.run(["notify-send", "circadian", message], capture_output=True).returncode == 0:
        return "notify-send"
    return "log"


def outcome_line(summary: CycleSummary) -> str:
    """One line for the morning: what the night did."""
    if summary.outcome in ("promoted", "rejected"):
        b, a = (summary.before or Measurement()).recall.score, (summary.after or Measurement()).recall.score
        figures = f" (recall {b or 0:.0%} -> {a:.0%})" if a is not None else ""
        return f"night {summary.cycle_id}: {summary.outcome} {summary.version}{figures}"
    return f"night {summary.cycle_id}: {summary.outcome}"


def run_scheduled(paths: Paths, config: Config, *, console=None, now: Callable[[], datetime] | None = None) -> dict:
    """The job launchd / systemd / the daemon start. Return {"ran": bool, "line": ..., "summary": ...}."""
    from circadian.night.sleep import run_sleep

    clock = now or (lambda: datetime.now().astimezone())
    night = night_of(clock())
    done = ran_tonight(paths, night)
    if done:
        line = log_line(paths, f"night {night}: already ran (cycle {done.cycle_id}, {done.outcome}); nothing to do")
        return {"ran": False, "line": line}
    running = holder(paths.control / "sleep.lock")
    if running:
        line = log_line(
            paths, f"night {night}: a sleep is already running (pid {running.get('pid', '?')}); nothing to do"
        )
        return {"ran": False, "line": line}
    deadline = time.monotonic() + config.schedule.chat_wait_minutes * 60
    open_chats = active_sessions(paths.control)
    if open_chats:
        log_line(
            paths, f"night {night}: {open_chats} chat(s) open; waiting up to {config.schedule.chat_wait_minutes:g} min"
        )
        while open_chats and time.monotonic() < deadline:
            time.sleep(min(config.schedule.chat_poll_seconds, max(0.1, deadline - time.monotonic())))
            open_chats = active_sessions(paths.control)
        log_line(
            paths,
            f"night {night}: "
            + ("chats closed; sleeping" if not open_chats else f"{open_chats} chat(s) still open; sleeping anyway"),
        )
    log_line(paths, f"night {night}: sleep starts")
    try:
        summary = run_sleep(paths, config, console=console, trigger="scheduled", night=night.isoformat())
    except CircadianError as exc:
        line = log_line(paths, f"night {night}: failed: {exc}")
        notify(f"circadian: the night failed: {exc}", enabled=config.schedule.notify)
        raise
    message = outcome_line(summary)
    fused = consolidate_if_due(paths, config, night) if summary.outcome == "promoted" else None
    if fused:
        message += f"; {fused}"
    how = notify(message, enabled=config.schedule.notify)
    line = log_line(paths, f"{message} (notified by {how})")
    return {"ran": True, "line": line, "summary": summary, "notified_by": how, "consolidation": fused}


def consolidate_if_due(paths: Paths, config: Config, night: date) -> str | None:
    """After a promoted night, `circadian consolidate` when the lineage is long enough
    (night/consolidate.py `due`); return what it did in a few words, None when it was not due. A
    consolidation that cannot run or is refused leaves the night's adapter current and is logged."""
    from circadian.night import consolidate

    why = consolidate.due(paths, config)
    if why is None:
        return None
    log_line(paths, f"night {night}: consolidating: {why}")
    try:
        result = consolidate.consolidate(paths, config, say=lambda m: log_line(paths, f"night {night}: {m}"))
    except CircadianError as exc:
        log_line(paths, f"night {night}: consolidation did not run: {exc}")
        return f"consolidation did not run ({exc})"
    if result["outcome"] == "consolidated":
        return f"consolidated {result['adapter_version']} into {result['name']}"
    return f"not consolidated ({'; '.join(result['check']['reasons'])})"
