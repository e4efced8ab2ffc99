"""The inbox and its queue: JSONL datasets the user drops into `data/inbox/priority/` or
`data/inbox/normal/`, trained at the next sleep, priority first.

At the start of a sleep (`ingest`) every settled `*.jsonl` file (unchanged for `settle_seconds`,
so a file still being written is left for the next night) is validated row by row: chat rows
(`{"messages": [...]}` with an assistant turn) and prompt/completion rows are kept, anything else
goes to `data/quarantine/inbox-<id>.jsonl` with the reason. The good rows move to
`data/inbox/accepted/<id>.jsonl`, the original file is removed only after that copy is on disk,
and the dataset is recorded in `control/queue.json` with its state:

    queued -> training -> done                  (the night's candidate was promoted)
                       -> queued (attempts + 1) (rejected, stopped or crashed; tried again)
                       -> failed                (no usable row, or rejected `max_attempts` times)
                       -> skipped               (`circadian ctl skip` while it trained)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import ValidationError

from circadian.core.clock import now_iso
from circadian.core.fsutil import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    lock_for,
    parse_lines,
    read_state_json,
)
from circadian.core.paths import Paths
from circadian.store import memories

PRIORITIES = ("priority", "normal")
STATES = ("queued", "training", "done", "failed", "skipped")
MAX_ATTEMPTS = 3


def queue_path(paths: Paths) -> Path:
    return paths.control / "queue.json"


def read_queue(paths: Paths) -> list[dict]:
    """The queue's entries; a corrupt queue.json is moved aside with a one-line error, never read as empty
    (the next write would drop every entry)."""
    shape = lambda v: isinstance(v, dict) and isinstance(v.get("datasets"), list)  # noqa: E731
    return read_state_json(queue_path(paths), {"datasets": []}, valid=shape)["datasets"]


def _write_queue(paths: Paths, entries: list[dict]) -> None:
    atomic_write_json(queue_path(paths), {"datasets": entries})


def parse_row(value) -> tuple[list[dict] | None, str | None]:
    """Given one parsed JSONL value, return (messages, None) or (None, why it is unusable) (pure)."""
    if not isinstance(value, dict):
        return None, "not a JSON object"
    if "messages" not in value and {"prompt", "completion"} <= value.keys():
        prompt, completion = value["prompt"], value["completion"]
        if (
            not (isinstance(prompt, str) and isinstance(completion, str))
            or not prompt.strip()
            or not completion.strip()
        ):
            return None, "prompt and completion must be non-empty strings"
        value = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]}
    if "messages" not in value:
        return None, 'neither {"messages": [...]} nor {"prompt", "completion"}'
    try:
        conversation = memories.Conversation.model_validate({"messages": value["messages"]})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return None, f"{where}: {first['msg']}" if where else first["msg"]
    messages = [m.model_dump() for m in conversation.messages]
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no assistant turn to learn from"
    return messages, None


def validate_text(text: str) -> tuple[list[list[dict]], list[dict]]:
    """Given a dataset file's text, return (good rows' messages, bad rows with line/reason/raw) (pure)."""
    good, bad = [], []
    for line in parse_lines(text):
        messages, why = (None, line.error) if line.error else parse_row(line.value)
        if why:
            bad.append({"line": line.number, "reason": why, "raw": line.raw})
        else:
            good.append(messages)
    return good, bad


def waiting_files(paths: Paths) -> list[tuple[str, Path]]:
    """Return (priority, file) for every dataset file in the inbox, priority first, oldest first."""
    found = []
    for priority in PRIORITIES:
        folder = paths.inbox / priority
        if folder.is_dir():
            files = [p for p in folder.iterdir() if p.is_file() and p.suffix == ".jsonl" and not p.name.startswith(".")]
            found += [(priority, p) for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name))]
    return found


def _next_id(entries: list[dict]) -> str:
    return f"q{len(entries) + 1:04d}-{time.strftime('%Y%m%d-%H%M%S')}"


def ingest(paths: Paths, *, settle_seconds: float = 5.0, now: float | None = None) -> list[dict]:
    """Validate settled inbox files into the queue; return the entries added (see the module doc)."""
    now = time.time() if now is None else now
    added = []
    with lock_for(queue_path(paths)):
        entries = read_queue(paths)
        for priority, file in waiting_files(paths):
            if now - file.stat().st_mtime < settle_seconds:
                continue  # still being written, or just dropped: the next sleep takes it
            data = file.read_bytes()
            text = data.decode("utf-8", errors="replace")
            good, bad = validate_text(text)
            entry = {
                "id": _next_id(entries),
                "name": file.name,
                "priority": priority,
                "sha256": hashlib.sha256(data).hexdigest(),
                "rows": len(good),
                "quarantined": len(bad),
                "state": "queued" if good else "failed",
                "attempts": 0,
                "added": now_iso(),
                "updated": now_iso(),
                "history": [],
            }
            if not good:
                entry["reason"] = "no usable row" + (f" ({bad[0]['reason']}, line {bad[0]['line']})" if bad else "")
            if bad:
                append_jsonl(
                    paths.quarantine / f"inbox-{entry['id']}.jsonl",
                    [{**row, "file": file.name, "quarantined_at": now_iso()} for row in bad],
                )
            accepted = paths.inbox / "accepted" / f"{entry['id']}.jsonl"
            accepted.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_jsonl(accepted, [{"messages": m} for m in good])
            entry["path"] = str(accepted.relative_to(paths.home))
            entries.append(entry)
            _write_queue(paths, entries)
            os.unlink(file)  # only once its rows are safe in accepted/ and the queue says so
            added.append(entry)
    return added


def load_rows(paths: Paths, entry: dict) -> list[list[dict]]:
    """Return the accepted rows (messages lists) of a queue entry."""
    text = (paths.home / entry["path"]).read_text(encoding="utf-8")
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def queued(paths: Paths) -> list[dict]:
    """Return the entries waiting to be trained, priority first, then in arrival order."""
    entries = [e for e in read_queue(paths) if e["state"] == "queued"]
    return sorted(entries, key=lambda e: (PRIORITIES.index(e["priority"]), e["id"]))


def set_state(
    paths: Paths,
    ids: list[str],
    state: str,
    *,
    cycle_id: str | None = None,
    reason: str | None = None,
    retry: bool = False,
) -> None:
    """Move the given entries to `state`; with `retry`, a rejected dataset goes back to queued
    until it has been tried MAX_ATTEMPTS times, then fails."""
    if not ids:
        return
    with lock_for(queue_path(paths)):
        entries = read_queue(paths)
        for entry in entries:
            if entry["id"] not in ids:
                continue
            new_state = state
            if retry:
                entry["attempts"] = entry.get("attempts", 0) + 1
                new_state = "queued" if entry["attempts"] < MAX_ATTEMPTS else "failed"
                if new_state == "failed":
                    reason = f"{reason}; tried {entry['attempts']} times"
            entry["state"] = new_state
            entry["updated"] = now_iso()
            if cycle_id:
                entry["cycle_id"] = cycle_id
            if reason:
                entry["reason"] = reason
            entry.setdefault("history", []).append(
                {
                    "state": new_state,
                    "at": entry["updated"],
                    "cycle_id": cycle_id,
                    **({"reason": reason} if reason else {}),
                }
            )
        _write_queue(paths, entries)


def release_training(paths: Paths, reason: str) -> list[str]:
    """Put entries left in `training` by a cycle that ended without deciding back in the queue."""
    ids = [e["id"] for e in read_queue(paths) if e["state"] == "training"]
    set_state(paths, ids, "queued", reason=reason)
    return ids


def summary(paths: Paths) -> dict:
    """Counts per state plus files still waiting in the inbox (not yet validated)."""
    entries = read_queue(paths)
    counts = {state: sum(1 for e in entries if e["state"] == state) for state in STATES}
    return {
        "counts": counts,
        "waiting_files": [f"{p}/{f.name}" for p, f in waiting_files(paths)],
        "next": [e["name"] for e in queued(paths)],
    }
