"""Locks between processes: `control/sleep.lock` (one sleep at a time), `control/daemon.lock` (one
daemon per home) and the marks open chats hold in `control/sessions/`.

Each lock is an exclusive `flock` on the file, which the kernel releases when the holder dies, so
a lock left by a killed process is recovered by construction; the file's content (pid, start time,
cycle) only serves the message a second one prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from circadian.core.errors import CircadianError

READER_GRACE_SECONDS = 2.0  # how long a lock whose file names no holder is waited for


class HeldLock:
    """Context manager holding an exclusive flock on `path`, with a holder record (pid, start time and
    `record`) written into the file, readable by `holder()` while it is held.

    Raise CircadianError with `refused(holder record)` if another process holds it. A lock taken
    with no holder record is a reader's (`holder()`, which the dashboard runs twice a second): it
    lasts microseconds, so it is waited for, up to READER_GRACE_SECONDS.
    """

    def __init__(self, path: Path, record: dict, refused: Callable[[dict], str]):
        self.path = path
        self.record = record
        self.refused = refused
        self.fd: int | None = None

    def __enter__(self) -> HeldLock:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + READER_GRACE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = _read(fd)
                if not held_by and time.monotonic() < deadline:  # a reader's `holder()` check, not a holder
                    time.sleep(0.01)
                    continue
                os.close(fd)
                raise CircadianError(self.refused(held_by)) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.record}).encode(),
            0,
        )
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def sleep_lock(path: Path, cycle_id: str) -> HeldLock:
    """Given control/sleep.lock and tonight's cycle id, return the lock one sleep at a time holds."""
    return HeldLock(
        path,
        {"cycle_id": cycle_id},
        lambda held: (
            f"another sleep is running (pid {held.get('pid', '?')}, cycle {held.get('cycle_id', '?')}, "
            f"since {held.get('started', '?')})"
        ),
    )


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

    def __enter__(self) -> SessionMark:
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
