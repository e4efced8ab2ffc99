"""Rows as CSV: the one CSV writer. A table is a list of dicts; its columns are every key in order of
first appearance, and nested values (lists, dicts) are written as JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from circadian.core.fsutil import atomic_write_text


def to_csv(rows: list[dict]) -> str:
    """Given rows, return them as CSV text with a header line (a table with no rows has the header "empty")."""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v for k, v in row.items()}
        )
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write rows as a CSV file, atomically; return its path."""
    atomic_write_text(path, to_csv(rows), mode=0o600)
    return path
