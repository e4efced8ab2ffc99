"""Facts of a turn the moment it is logged: the chat mines each turn it logs in the background, once
the reply has ended, with the generators that need no model (parse, with rules beside it), and
writes them to the memory index beside the turn's own words, so the same day's recall can also find
second-person statements ("Your dog is called Bruno."). The night writes its own facts of the turn
over them (memory_index.add_facts with `turns`), and those stand for the turn.

Measured (bench/recall/SAME_DAY.md, embedded model): in place of the turn's words, these facts
lowered same-day recall on every dev day but one; beside them, they are about even with the words
alone. `chat.day_facts = false` turns them off."""

from __future__ import annotations

from functools import cache

from circadian.core.errors import CircadianError
from circadian.night.knowledge import pipeline
from circadian.night.knowledge.conversation import conversations_of
from circadian.store import memory_index
from circadian.store.memories import MemoryRecord


@cache
def generators() -> tuple:
    """The generators that need no model: parse with rules beside it, or rules alone without spaCy."""
    try:
        return tuple(pipeline.choose("parse"))
    except CircadianError:
        return tuple(pipeline.choose("rules"))


def index_turn(paths, records: list[dict], turn_id: str, *, region: str = "US") -> int:
    """Given the records of a conversation so far (oldest first; the assistant's questions give a short
    answer its subject) and the turn just logged, write that turn's facts to the memory index; return
    how many."""
    conversations = conversations_of([MemoryRecord.model_validate(r) for r in records], region)
    found = pipeline.mine(conversations, list(generators()))
    said_at = next((str(r.get("ts") or "") for r in records if r.get("id") == turn_id), "")
    facts = [{**f.to_dict(), "ts": said_at} for f in found.facts if f.source_id == turn_id]
    return memory_index.add_facts(paths, facts, source="day", turns={turn_id}) if facts else 0
