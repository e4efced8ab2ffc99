"""The clock every record is stamped with: local time with its UTC offset, to the second."""

from __future__ import annotations

from datetime import datetime


def now_iso() -> str:
    """Return the local time with its UTC offset, to the second (e.g. 2026-11-22T09:14:03+01:00)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")
