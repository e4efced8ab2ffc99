"""`circadian daemon`: the nightly job on schedule from this process (APScheduler 3), for machines with
neither launchd nor systemd.

One daemon per home (`control/daemon.lock`); its state (pid, time, next run) is in
`control/daemon.json` while it runs. At start it catches up once on a night whose due time has
passed without a scheduled sleep. Each night it runs `circadian sleep --scheduled` in a subprocess,
so a crash of the night never takes the daemon down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime

from circadian.core.config import Config
from circadian.core.fsutil import atomic_write_json
from circadian.core.lock import HeldLock, holder
from circadian.core.paths import Paths
from circadian.shift.job import log_line, night_of, ran_tonight
from circadian.shift.schedule import parse_at, previous_run


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


def job_command(paths: Paths) -> list[str]:
    """The command the daemon runs each night for this home."""
    return [sys.executable, "-m", "circadian", "sleep", "--scheduled", "--home", str(paths.home)]


def run_daemon(paths: Paths, config: Config, say: Callable[[str], None]) -> None:
    """Run the nightly job at schedule.at until interrupted; catch up a missed night once on start.

    Raise CircadianError if a daemon already runs for this home.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    hour, minute = parse_at(config.schedule.at)
    refused = lambda held: f"a daemon is already running for this home (pid {held.get('pid', '?')})"  # noqa: E731
    with HeldLock(paths.control / "daemon.lock", {"at": config.schedule.at}, refused):

        def job() -> None:
            say(log_line(paths, "daemon: starting the nightly job"))
            done = subprocess.run(job_command(paths), capture_output=True, text=True)
            tail = (
                (done.stdout.strip().splitlines() or [""])[-1]
                if done.returncode == 0
                else (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            )
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
            atomic_write_json(
                daemon_state_path(paths),
                {
                    "pid": os.getpid(),
                    "at": config.schedule.at,
                    "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                    "next_run": next_time.isoformat() if next_time else None,
                },
            )

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
