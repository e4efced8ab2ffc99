"""The day's memory: every turn appended to `data/memories.jsonl`, never rewritten.

One JSON object per line, compatible with the plain `{"messages": [...]}` format:
`{"id", "ts", "session", "model", "adapter", "tags", "source", "messages": [...], ...}`.
A user message containing `#no-train` (or a session switched to no-train) tags the turn
`no-train`; such turns never reach training. `/forget` does not rewrite history: it appends a
tombstone naming the forgotten id to `data/tombstones.jsonl`, and readers leave that turn out.
`purge` is the one exception, on the user's explicit request: it rewrites the file without a turn.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from circadian.core.clock import now_iso
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, atomic_write_text, lock_for, read_jsonl
from circadian.core.paths import Paths

NO_TRAIN_TAG = "no-train"
NO_TRAIN_MARK = "#no-train"
ROLES = ("system", "user", "assistant")
CONVERSATION_SOURCES = ("import:", "inbox:")


class Message(BaseModel):
    """One chat message: a role and non-empty text."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content is empty")
        return value


class Conversation(BaseModel):
    """A `{"messages": [...]}` row as other tools write it; extra keys are kept, not validated."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(min_length=1)
    tags: list[str] = []

    @field_validator("messages")
    @classmethod
    def _has_exchange(cls, messages: list[Message]) -> list[Message]:
        roles = {m.role for m in messages}
        if "user" not in roles or "assistant" not in roles:
            raise ValueError("needs at least one user and one assistant message")
        return messages


class MemoryRecord(BaseModel):
    """One logged turn as read back; unknown keys from newer writers are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str
    ts: str
    session: str = ""
    model: str = ""
    adapter: str | None = None
    tags: list[str] = []
    source: str = "chat"
    messages: list[Message]

    @property
    def is_conversation(self) -> bool:
        """Whether the turn is a whole conversation from elsewhere (an import), trained as it was said,
        rather than a chat turn whose facts are extracted."""
        return self.source.startswith(CONVERSATION_SOURCES)


def new_id() -> str:
    """Return a new unique id for a turn or a session."""
    return uuid.uuid4().hex


def has_no_train_mark(messages: list[dict]) -> bool:
    """Given messages, return True if any user message contains `#no-train` (any case)."""
    return any(m.get("role") == "user" and NO_TRAIN_MARK in str(m.get("content", "")).lower() for m in messages)


def make_record(
    messages: list[dict],
    *,
    session: str,
    model: str,
    adapter: str | None,
    source: str,
    tags: list[str] | tuple[str, ...] = (),
    no_train: bool = False,
    **extra,
) -> dict:
    """Given a turn's messages and context, return the record to log (pure)."""
    all_tags = list(dict.fromkeys(tags))
    if (no_train or has_no_train_mark(messages)) and NO_TRAIN_TAG not in all_tags:
        all_tags.append(NO_TRAIN_TAG)
    record = {
        "id": new_id(),
        "ts": now_iso(),
        "session": session,
        "model": model,
        "adapter": adapter,
        "tags": all_tags,
        "source": source,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def append(paths: Paths, records: list[dict], *, lock: bool = True) -> int:
    """Given records, append them to memories.jsonl (whole lines, fsynced, 0600, under the lock).

    Return the file's size afterwards. `lock=False` when the caller already holds the lock.
    """
    paths.ensure()
    return append_jsonl(paths.memories, records, lock=lock)


def check_writable(paths: Paths) -> None:
    """Make sure a turn can be logged (the lock and the file can be opened for appending), before a
    reply is spent on it. Raise CircadianError naming the file if not (a read-only home, a full disk)."""
    try:
        paths.ensure()
        with lock_for(paths.memories):
            os.close(os.open(paths.memories, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise CircadianError(
            f"cannot log turns to {paths.memories}: {exc.strerror or exc}; `--no-log` talks without logging"
        ) from None


def forget(paths: Paths, record_id: str, *, session: str = "", reason: str = "/forget") -> dict:
    """Given a turn id, append a tombstone for it and return the tombstone."""
    paths.ensure()
    tombstone = {"id": new_id(), "ts": now_iso(), "forgets": record_id, "session": session, "reason": reason}
    append_jsonl(paths.tombstones, [tombstone])
    return tombstone


def purge(paths: Paths, record_id: str) -> dict | None:
    """Rewrite memories.jsonl atomically without the turn `record_id` (the one exception to
    append-only, on the user's explicit request; night/purge.py writes its tombstone first). Return
    the removed record as it was stored, or None if no line has that id. Unreadable lines are kept
    as they are."""
    if not paths.memories.exists():
        return None
    with lock_for(paths.memories):
        lines = list(read_jsonl(paths.memories))
        gone = [line for line in lines if line.value is not None and line.value.get("id") == record_id]
        if not gone:
            return None
        atomic_write_text(paths.memories, "".join(line.raw + "\n" for line in lines if line not in gone))
    return gone[0].value


_FORGETS = re.compile(r'"forgets"\s*:\s*"([0-9A-Za-z_-]+)"')


def forgotten_ids(paths: Paths) -> set[str]:
    """Return the ids named by tombstones.

    A line that does not parse still forgets the id it names (an append cut off after it). One that
    names none raises CircadianError naming the file and the line: a forgotten turn must never come
    back silently.
    """
    gone = set()
    for line in read_jsonl(paths.tombstones):
        named = (line.value or {}).get("forgets")
        if not isinstance(named, str) and (found := _FORGETS.search(line.raw)):
            named = found.group(1)
        if not isinstance(named, str):
            raise CircadianError(
                f"{paths.tombstones} line {line.number} is unreadable and names no turn, so a forgotten turn "
                "could come back; fix or remove that line (and forget the turn again) before going on"
            )
        gone.add(named)
    return gone


@dataclass
class MemoryScan:
    """What a pass over memories.jsonl found."""

    records: list[MemoryRecord]
    bad_lines: list[int]
    end_offset: int


def scan(paths: Paths, *, end: int | None = None) -> MemoryScan:
    """Return every readable record up to byte offset `end` (default: the whole file now).

    Broken lines are returned by number, never silently dropped.
    """
    size = paths.memories.stat().st_size if paths.memories.exists() else 0
    end = size if end is None else min(end, size)
    records: list[MemoryRecord] = []
    bad: list[int] = []
    for line in read_jsonl(paths.memories, end=end):
        try:
            records.append(MemoryRecord.model_validate(line.value))
        except ValidationError:
            bad.append(line.number)
    return MemoryScan(records, bad, end)


def live_records(paths: Paths) -> Iterator[MemoryRecord]:
    """Yield the records that are not tombstoned."""
    gone = forgotten_ids(paths)
    for record in scan(paths).records:
        if record.id not in gone:
            yield record


def counts(paths: Paths) -> dict[str, int]:
    """Return counts for `status`: turns, no-train turns, forgotten turns, unreadable lines, sessions."""
    found = scan(paths)
    gone = forgotten_ids(paths)
    return {
        "turns": len(found.records),
        "no_train": sum(NO_TRAIN_TAG in r.tags for r in found.records),
        "forgotten": sum(r.id in gone for r in found.records),
        "unreadable_lines": len(found.bad_lines),
        "sessions": len({r.session for r in found.records}),
    }
