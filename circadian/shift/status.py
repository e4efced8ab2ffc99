"""How this home's nightly job runs right now: by the daemon, by launchd or systemd, or not at all."""

from __future__ import annotations

from pathlib import Path

from circadian.core.paths import Paths
from circadian.shift.daemon import read_daemon
from circadian.shift.schedule import default_platform, installed, next_run


def describe(paths: Paths) -> dict:
    """Given a home, return {"by": "daemon"|"launchd"|"systemd"|None, "at", "next_run", ...}."""
    daemon = read_daemon(paths)
    if daemon is not None:
        return {"by": "daemon", "pid": daemon.get("pid"), "at": daemon.get("at"), "next_run": daemon.get("next_run")}
    platform = default_platform()
    job = installed(platform)
    if job and (job["home"] is None or Path(job["home"]) == paths.home):
        when = next_run(job["hour"], job["minute"])
        return {
            "by": "launchd" if platform == "macos" else "systemd",
            "file": job["file"],
            "at": f"{job['hour']:02d}:{job['minute']:02d}",
            "next_run": when.isoformat(timespec="minutes"),
        }
    return {"by": None, "at": None, "next_run": None}
