"""`circadian status` and `circadian paths`: what the home holds right now (read-only)."""

from __future__ import annotations

from circadian import adapters, memories
from circadian.backends import auto_backend_name
from circadian.config import Config
from circadian.fsutil import read_jsonl
from circadian.paths import Paths


def last_line(path) -> dict | None:
    """Return the last readable JSON object of a JSONL file, or None."""
    last = None
    for _n, row, _raw in read_jsonl(path):
        if row is not None:
            last = row
    return last


def gather(paths: Paths, config: Config) -> dict:
    """Given the home and config, return the status as a JSON-able dict (no model is loaded)."""
    from circadian import control, inbox, schedule

    backend = config.model.backend
    sleep_now = control.read_status(paths.control)
    when = schedule.describe(paths)
    return {
        "home": str(paths.home),
        "home_source": paths.home_source,
        "model": config.model.name,
        "backend": auto_backend_name() if backend == "auto" else backend,
        "adapter": adapters.current_version(paths),
        "memories": memories.counts(paths),
        "last_cycle": last_line(paths.run_log),
        "schedule": when,
        "next_run": when["next_run"],
        "sleep": sleep_now if sleep_now.get("running") else None,
        "queue": inbox.summary(paths),
    }
