"""The one way to write a file safely and the one way to append a JSONL line, used everywhere.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: temp file in the same folder,
  fsync, `os.replace`, fsync of the folder. A reader sees the old file or the new one, never half.
- `append_jsonl`: one whole line per call, under a file lock, written with a single `write` on an
  `O_APPEND` descriptor and fsynced, so concurrent writers from several processes never interleave.
- `read_jsonl` / `parse_lines`: the one JSONL reader (blank lines skipped, broken lines reported).
- `private_dir` / `private_file_mode`: the home is 0700, files holding conversations 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock

from circadian.core.errors import CircadianError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Given a folder path, create it (and parents) if needed with mode 0700 and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Given a path and bytes, replace the file atomically (temp + fsync + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, mode: int = PRIVATE_FILE_MODE) -> None:
    """Given a path and text, replace the file atomically (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_jsonl(path: Path, rows, mode: int = PRIVATE_FILE_MODE) -> None:
    """Given a path and JSON objects, replace the file atomically with one object per line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), mode)


def atomic_write_json(path: Path, obj: Any, mode: int = PRIVATE_FILE_MODE) -> None:
    """Given a path and a JSON-able object, write it pretty-printed with sorted keys, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", mode)


def publish_folder(staging: Path, final: Path, manifest_name: str, manifest: dict) -> Path:
    """Given a staged folder, make it and its files private, write its manifest last (atomically), and
    rename it to `final` whole, so a folder with a manifest is always complete. Return `final`."""
    for file in staging.iterdir():
        os.chmod(file, PRIVATE_FILE_MODE)
    os.chmod(staging, PRIVATE_DIR_MODE)
    atomic_write_json(staging / manifest_name, manifest)
    os.replace(staging, final)
    return final


def lock_for(path: Path, timeout: float = 30.0) -> FileLock:
    """Given a data file, return the FileLock that guards its appends (`<file>.lock` beside it)."""
    return FileLock(str(path) + ".lock", timeout=timeout, mode=PRIVATE_FILE_MODE)


def read_state_json(path: Path, default: Any, *, valid=lambda value: True) -> Any:
    """Given a state file (JSON), what a missing one means, and a check of its shape, return its value.

    A file that exists but cannot be read (not UTF-8, not JSON, or the wrong shape) is moved aside to
    `<name>.unreadable-<time>`, never deleted, and a CircadianError names both: nothing is reset
    silently, and the next run starts without it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        problem = f"cannot be read ({exc.__class__.__name__})"
    else:
        try:
            value = json.loads(text)
            if valid(value):
                return value
            problem = "has the wrong shape"
        except ValueError as exc:
            problem = f"is not JSON ({getattr(exc, 'msg', exc)})"
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    raise CircadianError(f"{path} {problem}; moved aside to {aside.name} (the next run starts without it)")


def append_jsonl(path: Path, rows: Iterable[dict], *, lock: bool = True) -> int:
    """Given a path and dicts, append each as one JSON line; return the byte offset after the write.

    The lines are written with one `os.write` on an O_APPEND descriptor and fsynced, under the
    file's lock unless the caller already holds it (`lock=False`). The file is created 0600. A file
    whose last line was cut off (a full disk mid-append) first gets its newline, so the new rows
    are not glued onto the broken one: that line alone stays unreadable (and is quarantined).
    """
    payload = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)
    data = payload.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)

    def _write() -> int:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            view = memoryview(data if not size or os.pread(fd, 1, size - 1) == b"\n" else b"\n" + data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    try:
        if lock:
            with lock_for(path):
                return _write()
        return _write()
    except OSError as exc:
        if exc.filename or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # say which file the disk refused


class Line(NamedTuple):
    """One non-blank line of a JSONL file: its number (from 1), the JSON object or None, the raw text,
    and why the value is None ("not JSON (...)", "not a JSON object")."""

    number: int
    value: dict | None
    raw: str
    error: str | None = None


def parse_lines(text: str) -> Iterator[Line]:
    """Given JSONL text, yield a Line for every non-blank line (blank lines hold nothing and are skipped)."""
    # lines end at "\n" only: str.splitlines() would also cut a record at a U+2028 inside a message
    for number, raw in enumerate(text.removesuffix("\n").split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield Line(number, None, raw, f"not JSON ({exc.msg})")
            continue
        yield Line(number, value, raw) if isinstance(value, dict) else Line(number, None, raw, "not a JSON object")


def read_jsonl(path: Path, *, end: int | None = None) -> Iterator[Line]:
    """Given a JSONL path, yield a Line for every non-blank line; the one JSONL reader.

    A line that is not a JSON object has None as its value, so callers count or quarantine it
    instead of crashing. `end` limits reading to the first `end` bytes (a snapshot by offset).
    """
    if not path.exists():
        return
    with path.open("rb") as f:
        data = f.read() if end is None else f.read(end)
    yield from parse_lines(data.decode("utf-8", errors="replace"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Given a file path, return the hex sha256 of its contents."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
