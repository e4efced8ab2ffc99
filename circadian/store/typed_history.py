"""The chat's typed-line history, `chat_history` in the home: prompt_toolkit's FileHistory format
(`# <time>` then one `+<line>` per line of an entry), private (0600).

`drop` rewrites it atomically without some entries: `/forget` drops the line just typed, and
`circadian forget --purge` every message of a purged turn.
"""

from __future__ import annotations

from pathlib import Path

from circadian.core.fsutil import atomic_write_text


def entries(path: Path) -> list[str]:
    """Return the typed entries, oldest first ([] if there is no history yet)."""
    from prompt_toolkit.history import FileHistory

    if not path.exists():
        return []
    return list(reversed(list(FileHistory(str(path)).load_history_strings())))


def drop(path: Path, texts: set[str]) -> int:
    """Rewrite the history without every entry equal to one of `texts`; return how many went."""
    found = entries(path)
    kept = [entry for entry in found if entry not in texts]
    if len(kept) == len(found):
        return 0
    atomic_write_text(path, "".join("\n# kept\n" + "".join(f"+{line}\n" for line in s.split("\n")) for s in kept))
    return len(found) - len(kept)
