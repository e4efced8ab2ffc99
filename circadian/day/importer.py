"""`circadian import FILE`: add transcripts (`{"messages": [...]}` per line) to the memories.

Every line is validated before anything is written; a file with any bad line is rejected whole,
naming the bad lines. A file already imported (same sha256) is skipped with a message. Each
import is recorded in `data/imports.jsonl`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from circadian.core.clock import now_iso
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, lock_for, parse_lines, read_jsonl
from circadian.core.paths import Paths
from circadian.store import memories, memory_index

MAX_REPORTED = 10


@dataclass
class ImportResult:
    """What an import did."""

    file: str
    sha256: str
    added: int
    skipped_duplicate: bool
    no_train: int = 0
    previous_ts: str | None = None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def validate_lines(text: str) -> tuple[list[memories.Conversation], list[str]]:
    """Given a JSONL file's text, return (parsed rows, problems as "line N: why") (pure)."""
    rows: list[memories.Conversation] = []
    problems: list[str] = []
    for line in parse_lines(text):
        if line.error:
            problems.append(f"line {line.number}: {line.error}")
            continue
        try:
            rows.append(memories.Conversation.model_validate(line.value))
        except ValidationError as exc:
            problems.append(f"line {line.number}: {_describe(exc)}")
    return rows, problems


def import_file(paths: Paths, file: Path) -> ImportResult:
    """Given a JSONL transcript file, append its conversations to memories; return what happened.

    Raise CircadianError if the file is missing, unreadable, empty, or has any bad line.
    """
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise CircadianError(f"{file}: no such file") from None
    except OSError as exc:
        raise CircadianError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CircadianError(f"{file}: not UTF-8 text") from None
    rows, problems = validate_lines(text)
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise CircadianError(f"{file}: rejected, {len(problems)} bad line(s), nothing imported: {shown}{more}")
    if not rows:
        raise CircadianError(f"{file}: no conversations in the file, nothing imported")
    digest = hashlib.sha256(data).hexdigest()
    paths.ensure()
    with lock_for(paths.memories):
        for line in read_jsonl(paths.imports):
            if line.value and line.value.get("sha256") == digest:
                return ImportResult(str(file), digest, 0, True, previous_ts=line.value.get("ts"))
        session = f"import-{digest[:12]}"
        records = [
            memories.make_record(
                [m.model_dump() for m in row.messages],
                session=session,
                model="",
                adapter=None,
                source=f"import:{file.name}",
                tags=row.tags,
            )
            for row in rows
        ]
        memories.append(paths, records, lock=False)
        append_jsonl(
            paths.imports, [{"ts": now_iso(), "file": str(file.absolute()), "sha256": digest, "rows": len(records)}]
        )
    for record in records:  # what the user said in them is recalled in chat until a night learns it
        memory_index.add_turn(paths, record)
    no_train = sum(memories.NO_TRAIN_TAG in r["tags"] for r in records)
    return ImportResult(str(file), digest, len(records), False, no_train)
