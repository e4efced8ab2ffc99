"""`control/sleep.lock`: one sleep at a time.

The lock is an exclusive `flock` on the file, which the kernel releases when the holder dies, so
a lock left by a killed sleep is recovered by construction; the file's content (pid, cycle, start
time) only serves the message a second sleep prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from circadian.errors import CircadianError


class SleepLock:
    """Context manager holding control/sleep.lock. Raise CircadianError if another sleep holds it."""

    def __init__(self, path: Path, cycle_id: str):
        self.path = path
        self.cycle_id = cycle_id
        self.fd: int | None = None

    def __enter__(self) -> "SleepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise CircadianError(f"another sleep is running (pid {holder.get('pid', '?')}, cycle "
                                 f"{holder.get('cycle_id', '?')}, since {holder.get('started', '?')})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "cycle_id": self.cycle_id,
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, json.JSONDecodeError):
        return {}


def holder(path: Path) -> dict | None:
    """Return who holds the sleep lock ({pid, cycle_id, started}), or None if nobody does."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class SessionMark:
    """Held by a running chat (`control/sessions/<pid>.lock`, flock'ed), so the nightly job can
    tell that someone is talking and wait. A killed chat's mark is released by the kernel."""

    def __init__(self, control: Path):
        self.path = control / "sessions" / f"{os.getpid()}.lock"
        self.fd: int | None = None

    def __enter__(self) -> "SessionMark":
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.path.unlink(missing_ok=True)


def active_sessions(control: Path) -> int:
    """Return how many chats are running now; marks left by dead chats are removed."""
    count = 0
    for mark in (control / "sessions").glob("*.lock"):
        try:
            fd = os.open(mark, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            count += 1
            continue
        finally:
            os.close(fd)
        mark.unlink(missing_ok=True)
    return count
