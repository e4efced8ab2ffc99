"""What a generator writes: facts, each a second-person statement with the words that answer it,
the questions that ask for it, and its lineage; and the facts it rejected, with the reason."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Protocol

from circadian.night.knowledge.conversation import Conversation


@dataclass(frozen=True)
class Fact:
    """One atomic thing the user said, ready to be trained.

    - `statement`: a second-person sentence ("Your shiba is called Mochi.");
    - `answers`: the words a correct reply must contain (any one of them), taken from the user's words;
    - `questions`: forward wordings in the user's voice ("What is my shiba called?");
    - `reverse`: questions in the other direction ("Who is Mochi?"), answered by `reverse_answer`;
    - `topics`: what the fact is about, for "what do you know about ..." questions ("my shiba", "Mochi");
    - `slot`: the subject and relation, so a later fact with the same slot replaces this one;
    - `source_id`, `sentence`: the memory record and the user's own words it came from;
    - `generator`, `version`, `prompt_version`: its lineage.
    """

    statement: str
    answers: tuple[str, ...]
    questions: tuple[str, ...] = ()
    reverse: tuple[str, ...] = ()
    reverse_answer: str = ""
    topics: tuple[str, ...] = ()
    slot: str = ""
    source_id: str = ""
    turn: int = -1  # the user message's index in its conversation
    sentence: str = ""
    generator: str = ""
    version: str = ""
    prompt_version: str | None = None
    change: bool = False  # said as a change ("now", "instead", "anymore"): it replaces, it does not add
    renderings: tuple[str, ...] = ()  # the statement in other words, each also containing an answer
    context: str = ""  # the whole sentence, when the fact is one of its clauses ("..., we named her Pemberton")

    @property
    def key(self) -> str:
        """A stable identity: the same statement from the same message has the same key."""
        return hashlib.sha256(f"{self.source_id}|{self.statement.lower()}".encode()).hexdigest()[:16]

    def lineage(self) -> dict:
        return {
            "generator": self.generator,
            "version": self.version,
            "prompt_version": self.prompt_version,
            "fact": self.key,
            "source_id": self.source_id,
        }

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "statement": self.statement,
            "answer": self.statement,
            "answers": list(self.answers),
            "value": self.answers[0] if self.answers else "",
            "questions": list(self.questions),
            "reverse": list(self.reverse),
            "topics": list(self.topics),
            "slot": self.slot,
            "source_id": self.source_id,
            "sentence": self.sentence,
            "generator": self.generator,
            "version": self.version,
            "prompt_version": self.prompt_version,
            "change": self.change,
        }


@dataclass(frozen=True)
class Rejected:
    """A fact a generator proposed that did not pass a check, and why."""

    statement: str
    reason: str
    generator: str
    sentence: str = ""
    source_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Mined:
    """What one generator found in one conversation."""

    facts: list[Fact] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    personal: list[str] = field(default_factory=list)  # user messages (text) it judged to carry personal information


class Generator(Protocol):
    """A way to turn a conversation into facts; found by name (entry-point group circadian.generators)."""

    name: str
    version: str

    def unavailable_reason(self) -> str | None:
        """None when it can run here, else one line saying why not."""
        ...

    def mine(self, conversation: Conversation) -> Mined:
        """Read the whole conversation, every turn in order; return the facts the user stated."""
        ...
