"""The conversations a night reads: chat turns grouped by session and ordered, and imported or inbox
conversations as they came, each turn knowing the memory record it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

from circadian.night.redact import redact_messages
from circadian.store.memories import MemoryRecord


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: str
    content: str
    record_id: str
    index: int  # position in the conversation


@dataclass
class Conversation:
    """A whole conversation, every turn in order."""

    id: str
    source: str
    turns: list[Turn] = field(default_factory=list)

    def before(self, turn: Turn) -> Turn | None:
        """The turn just before `turn`, or None."""
        return self.turns[turn.index - 1] if turn.index > 0 else None

    @property
    def user_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "user"]


def conversations_of(records: list[MemoryRecord], region: str, redactions=None) -> list[Conversation]:
    """Given memory records (oldest first), return their conversations with every message redacted:
    a chat's turns in session order (one conversation per session), each imported record as its own.
    `redactions` (a Counter) counts what was redacted."""
    out: dict[str, Conversation] = {}
    for record in records:
        key = record.id if record.is_conversation else f"session:{record.session}"
        conversation = out.setdefault(key, Conversation(key, record.source))
        messages, counts = redact_messages([m.model_dump() for m in record.messages], region)
        if redactions is not None:
            redactions.update(counts)
        for message in messages:
            if message["role"] == "system":
                continue
            conversation.turns.append(Turn(message["role"], message["content"], record.id, len(conversation.turns)))
    return list(out.values())


def inbox_conversations(queue_id: str, rows: list[list[dict]], region: str, redactions=None) -> list[Conversation]:
    """Given an inbox dataset's rows (messages lists), return them as conversations to mine."""
    out = []
    for n, messages in enumerate(rows):
        clean, counts = redact_messages(messages, region)
        if redactions is not None:
            redactions.update(counts)
        turns = [
            Turn(m["role"], m["content"], f"{queue_id}:{n}", i)
            for i, m in enumerate(m for m in clean if m["role"] != "system")
        ]
        out.append(Conversation(f"{queue_id}:{n}", f"inbox:{queue_id}", turns))
    return out
