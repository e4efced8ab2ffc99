"""Steering a running sleep through files in `control/`, and the live status it publishes.

`circadian ctl pause|resume|stop|skip` (and the dashboard) create or remove `.pause`, `.stop` and
`.skip`; the sleep reads them at every training step boundary. The sleep writes what it is doing
to `control/status.json` (atomically) so `ctl status`, `circadian status` and the dashboard can
show step, loss and ETA without talking to the process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from circadian.core.fsutil import atomic_write_json
from circadian.core.lock import holder
from circadian.store.records import LiveStatus

ACTIONS = ("pause", "resume", "stop", "skip")
FLAGS = ("pause", "stop", "skip")


def flag_path(control: Path, name: str) -> Path:
    return control / f".{name}"


def request(control: Path, action: str) -> str:
    """Given an action, set or clear the flags; return what was done, in words."""
    control.mkdir(parents=True, exist_ok=True)
    if action == "resume":
        flag_path(control, "pause").unlink(missing_ok=True)
        return "resume requested"
    if action not in FLAGS:
        raise ValueError(action)
    flag_path(control, action).write_text(f"{time.time()}\n", encoding="utf-8")
    return f"{action} requested"


def active(control: Path) -> set[str]:
    return {name for name in FLAGS if flag_path(control, name).exists()}


def clear(control: Path, *names: str) -> None:
    for name in names or FLAGS:
        flag_path(control, name).unlink(missing_ok=True)


def status_path(control: Path) -> Path:
    return control / "status.json"


def publish(control: Path, status: LiveStatus) -> None:
    """Write the running sleep's status, stamped with its pid and the time, atomically."""
    fields = status.model_copy(update={"pid": os.getpid(), "updated": time.time()}).row()
    atomic_write_json(status_path(control), {k: v for k, v in fields.items() if k not in ("running", "flags")})


def read_status(control: Path) -> LiveStatus:
    """Return the last published status, with `running` telling whether a sleep holds the lock now and
    `flags` the control flags set."""
    try:
        status = LiveStatus.model_validate(json.loads(status_path(control).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        status = LiveStatus()
    owner = holder(control / "sleep.lock")
    state = "ended" if owner is None and status.state in ("running", "paused") else status.state  # died silently
    return status.model_copy(update={"running": owner is not None, "flags": sorted(active(control)), "state": state})


class Stopped(Exception):
    """The user asked the running sleep to stop (`circadian ctl stop`)."""


class Steering:
    """What the training callback asks at each step boundary: go on, skip this dataset, or stop.

    `checkpoint` is called once when a pause begins (the adapter so far is saved, so a pause that
    ends in a power cut loses nothing that matters); `wait` is how the pause waits (tests shorten it).
    """

    def __init__(
        self,
        control: Path,
        *,
        checkpoint: Callable[[], None] | None = None,
        on_pause: Callable[[bool], None] | None = None,
        poll_seconds: float = 0.5,
    ):
        self.control = control
        self.checkpoint = checkpoint
        self.on_pause = on_pause
        self.poll_seconds = poll_seconds

    def check(self) -> str | None:
        """Return None (go on), "skip" or "stop"; while `.pause` exists, wait here."""
        flags = active(self.control)
        if "pause" in flags and not flags & {"stop", "skip"}:
            if self.checkpoint:
                self.checkpoint()
            if self.on_pause:
                self.on_pause(True)
            while "pause" in flags and not flags & {"stop", "skip"}:
                time.sleep(self.poll_seconds)
                flags = active(self.control)
            if self.on_pause:
                self.on_pause(False)
        if "stop" in flags:
            return "stop"
        if "skip" in flags:
            clear(self.control, "skip")
            return "skip"
        return None
