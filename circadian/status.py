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


def inbox_queue(paths: Paths) -> dict[str, int]:
    """Return how many JSONL files wait in each inbox lane."""
    return {lane: len(list((paths.inbox / lane).glob("*.jsonl"))) for lane in ("priority", "normal")}


def gather(paths: Paths, config: Config) -> dict:
    """Given the home and config, return the status as a JSON-able dict (no model is loaded)."""
    backend = config.model.backend
    return {
        "home": str(paths.home),
        "home_source": paths.home_source,
        "model": config.model.name,
        "backend": auto_backend_name() if backend == "auto" else backend,
        "adapter": adapters.current_version(paths),
        "memories": memories.counts(paths),
        "last_cycle": last_line(paths.run_log),
        "next_run": None,
        "queue": inbox_queue(paths),
    }
