"""The memory index: what the user has said, searchable while they chat, before any night has learned
it (`data/memory_index.sqlite`, 0600).

SQLite's FTS5 through the standard library's `sqlite3`: BM25 ranking, a Porter stemmer, one file, no
server and no new dependency, and SQLite's own locking between the chat and the night. Entries are
the user's own turns as they are logged (kind "turn"; a turn that only asks or requests is left out)
and the facts a night wrote from them (kind "fact"), each with its turn id, time and source; once a
night has written facts from a turn, they stand for it in every search, and a fact the adapter has
learned (store/ledger.py) is no longer given. A turn tagged `no-train` (or interrupted) is never
indexed, a tombstoned turn is left out of every search, and a purge deletes its entries. The index
is derived data: `rebuild` makes it again from the memories (the next night adds its facts again),
as happens by itself to a file that is no longer a database (moved aside as
`<name>.unreadable-<time>`).

A query keeps only the content words of the message (spaCy's English stop-word list, read without
loading spaCy), so a question that shares no word of substance with anything said finds nothing."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from circadian.core.paths import Paths
from circadian.store import memories

SCHEMA = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS entries USING fts5("
    "text, kind UNINDEXED, turn_id UNINDEXED, ts UNINDEXED, source UNINDEXED, fact UNINDEXED, "
    "tokenize = 'porter unicode61')"
)
SKIP_TAGS = {memories.NO_TRAIN_TAG, "interrupted"}


@dataclass(frozen=True)
class Entry:
    """One search result: what was said (or the fact written from it), where from, and its BM25 score
    (lower is better, as SQLite returns it)."""

    text: str
    kind: str
    turn_id: str
    ts: str
    source: str
    fact: str
    score: float


def index_path(paths: Paths) -> Path:
    return paths.data / "memory_index.sqlite"


@contextmanager
def _db(paths: Paths) -> Iterator[sqlite3.Connection]:
    """A connection to the index, in one transaction (committed on success), closed after."""
    path = index_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # private before SQLite writes a byte
    connection = sqlite3.connect(path, timeout=10)
    try:
        connection.execute(SCHEMA)
    except sqlite3.DatabaseError:  # not a database any more: it is derived, so it is made again
        connection.close()
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(aside)
        rebuild(paths)
        connection = sqlite3.connect(path, timeout=10)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


@cache
def stop_words() -> frozenset[str]:
    """spaCy's English stop words, read from its source file without importing spaCy (2 s)."""
    spec = importlib.util.find_spec("spacy")
    if spec is None or spec.origin is None:
        return frozenset()
    file = Path(spec.origin).parent / "lang" / "en" / "stop_words.py"
    namespace: dict = {}
    exec(compile(file.read_text(encoding="utf-8"), str(file), "exec"), namespace)  # a set literal, no imports
    return frozenset(namespace.get("STOP_WORDS", set()))


def content_words(text: str) -> list[str]:
    """The words of a message that carry its subject: not stop words, at least 3 letters, in order."""
    seen = dict.fromkeys(w for w in re.findall(r"[^\W\d_]{3,}|\d+", text.lower()) if w not in stop_words())
    return list(seen)


# a message that speaks of the user: these words, or a name the memory holds (below)
PERSONAL = frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "i'm", "i've", "i'd", "i'll"})


def about_the_user(message: str, found: list[Entry]) -> list[Entry]:
    """Keep what was found only when the message speaks of the user: it says "my", "we", ... or it
    names someone or something the found entries name (a capitalised word inside a sentence: "Lena",
    "Porto"). A general question that merely shares a word ("What is the boiling point of water?")
    gets nothing. On the bench's development days this cut the general prompts given anything from
    10-47% to 0-5% (bench/recall/SAME_DAY.md)."""
    if not found:
        return []
    if set(re.findall(r"[a-z']+", message.lower())) & PERSONAL:
        return found
    names = set()
    for entry in found:
        tokens = re.findall(r"[^\W\d_][\w'-]*", entry.text)
        names |= {t.lower() for n, t in enumerate(tokens) if n > 0 and t[0].isupper()}
    return found if set(content_words(message)) & names else []


REQUESTS = frozenset(
    ["tell", "show", "give", "explain", "write", "list", "remind", "describe", "summarize", "summarise"]
    + ["translate", "help", "please", "can", "could", "would", "will", "let"]
)


def tells_something(text: str) -> bool:
    """Whether a message states anything: a sentence that is neither a question nor a request ("Tell
    me about Pepper.", "Can you ...?" are asked, not told, and would crowd out what was told)."""
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text.strip()):
        words = re.findall(r"[\w']+", sentence.lower())
        if len(words) >= 2 and not sentence.rstrip().endswith("?") and words[0] not in REQUESTS:
            return True
    return False


def add_turn(paths: Paths, record: dict) -> bool:
    """Index what the user said in a logged turn; return whether it was indexed (never a no-train or
    interrupted turn, nor one that only asks)."""
    if SKIP_TAGS & set(record.get("tags") or []):
        return False
    said = " ".join(str(m.get("content", "")) for m in record.get("messages") or [] if m.get("role") == "user").strip()
    if not tells_something(said):
        return False
    with _db(paths) as db:
        db.execute(
            "INSERT INTO entries VALUES (?, 'turn', ?, ?, ?, '')",
            (said, record["id"], record.get("ts", ""), record.get("source", "")),
        )
    return True


def add_facts(paths: Paths, facts: list[dict], *, source: str, turns: set[str] = frozenset()) -> int:
    """Index facts a night (or the chat, as a turn is logged) wrote ({"key", "statement",
    "source_id"}, and "ts" when known), each replacing an older entry with its key (an update), after removing the facts
    written earlier from `turns` (tonight's facts of a turn stand in for the day's); return how many."""
    rows = list(
        {
            str(f["key"]): (
                str(f["statement"]),
                str(f.get("source_id") or ""),
                str(f.get("ts") or ""),
                source,
                str(f["key"]),
            )
            for f in facts
            if f.get("statement") and f.get("key")
        }.values()
    )  # one entry a key: a statement with two answers is two facts of one key
    with _db(paths) as db:
        db.executemany("DELETE FROM entries WHERE kind = 'fact' AND turn_id = ?", [(t,) for t in sorted(turns)])
        db.executemany("DELETE FROM entries WHERE kind = 'fact' AND fact = ?", [(r[4],) for r in rows])
        db.executemany("INSERT INTO entries VALUES (?, 'fact', ?, ?, ?, ?)", rows)
    return len(rows)


def remove_turn(paths: Paths, turn_id: str) -> int:
    """Delete every entry of a turn (a purge) so that its words are nowhere in the file: the rows, then
    FTS5's index segments merged, then the file rebuilt (VACUUM); return how many entries went."""
    if not index_path(paths).exists():
        return 0
    with _db(paths) as db:
        db.execute("PRAGMA secure_delete = ON")
        removed = db.execute("DELETE FROM entries WHERE turn_id = ?", (turn_id,)).rowcount
        db.execute("INSERT INTO entries(entries) VALUES ('optimize')")
    connection = sqlite3.connect(index_path(paths), isolation_level=None)
    try:
        connection.execute("VACUUM")
    finally:
        connection.close()
    return removed


def rebuild(paths: Paths) -> int:
    """Make the index again from the memories' turns (the nights add their facts); return the entries."""
    index_path(paths).unlink(missing_ok=True)
    gone = memories.forgotten_ids(paths)
    count = 0
    for record in memories.scan(paths).records:
        if record.id not in gone:
            count += add_turn(paths, record.model_dump())
    return count


def search(
    paths: Paths,
    message: str,
    *,
    limit: int = 3,
    skip_turns: set[str] = frozenset(),
    skip_facts: set[str] = frozenset(),
    known: set[str] = frozenset(),
) -> list[Entry]:
    """The entries that best match the content words of `message` (BM25), best first; never a
    tombstoned turn's, nor those in `skip_turns` / `skip_facts`. The `known` facts (those the adapter
    has learned) take their place in the ranking but are not given, nor is anything that does not
    match better than one: when a fact the adapter answers matches as well, a weaker match only
    distracts. A turn a night has written facts from is found through its facts, not its own words."""
    words = content_words(message)
    if not words or not index_path(paths).exists():
        return []
    query = " OR ".join('"' + w.replace('"', "") + '"' for w in words)
    gone = memories.forgotten_ids(paths) | set(skip_turns)
    with _db(paths) as db:
        rows = db.execute(
            "SELECT text, kind, turn_id, ts, source, fact, bm25(entries) FROM entries WHERE entries MATCH ? "
            "ORDER BY bm25(entries) LIMIT ?",
            (query, limit * 4 + len(gone)),
        ).fetchall()
        mined = {  # a night's facts stand for the turn; the chat's own (source "day") sit beside it
            turn
            for (turn,) in db.execute("SELECT DISTINCT turn_id FROM entries WHERE kind = 'fact' AND source != 'day'")
        }
    found = [Entry(*row) for row in rows if row[2] not in gone and row[5] not in skip_facts]
    ranked = [e for e in found if e.kind == "fact" or e.turn_id not in mined][:limit]  # its facts stand for a turn
    best_known = min((e.score for e in ranked if e.fact in known), default=float("inf"))
    return [e for e in ranked if e.fact not in known and e.score < best_known - 1e-9]  # lower is better


def facts(paths: Paths) -> list[Entry]:
    """Every fact the nights wrote to the index (never a tombstoned turn's), oldest first."""
    if not index_path(paths).exists():
        return []
    gone = memories.forgotten_ids(paths)
    with _db(paths) as db:
        rows = db.execute(
            "SELECT text, kind, turn_id, ts, source, fact, 0.0 FROM entries WHERE kind = 'fact' ORDER BY rowid"
        ).fetchall()
    return [Entry(*row) for row in rows if row[2] not in gone]


def recall(
    paths: Paths, message: str, *, limit: int, known: set[str] = frozenset(), skip_turns: set[str] = frozenset()
) -> list[Entry]:
    """What the chat gives a message: the search, kept only when the message speaks of the user
    (about_the_user); the chat then cuts it to its token budget."""
    return about_the_user(message, search(paths, message, limit=limit, known=known, skip_turns=skip_turns))
