"""The knowledge pipeline: every conversation through the chosen generators, then the checks.

1. each generator reads each whole conversation and proposes facts;
2. the grounding check (after sleeping-llm's firewall) rejects a fact unless one of its answers is
   in what the user said in that conversation (the subject may come from the assistant's question),
   and rejects any fact built on a redacted secret; the rejected facts go to the report;
3. facts of different generators that give the same answer from the same message become one fact,
   with the questions of both;
4. updates: a later fact about the same subject and relation (its `slot`) replaces the earlier one;
   two names for the same relation ("my brother Tom", "my brother Sam") stay two facts;
5. coverage: every user message that carried personal information, with the facts learned from it;
   one with none is "not understood".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from circadian.core.errors import CircadianError
from circadian.night.knowledge.conversation import Conversation
from circadian.night.knowledge.fact import Fact, Generator, Rejected
from circadian.night.scoring import words

GROUP = "circadian.generators"


def generators() -> dict[str, Generator]:
    """The built-in generators plus any registered through the `circadian.generators` entry points."""
    from circadian.night.knowledge.parse import ParseGenerator
    from circadian.night.knowledge.rules import RulesGenerator

    found: dict[str, Generator] = {"parse": ParseGenerator(), "rules": RulesGenerator()}
    for entry in entry_points(group=GROUP):
        if entry.name not in found:
            found[entry.name] = entry.load()()
    return found


@dataclass
class Knowledge:
    """What the night learned from the conversations."""

    facts: list[Fact] = field(default_factory=list)  # tonight's facts, updates applied
    replaced: list[tuple[Fact, Fact]] = field(default_factory=list)  # (earlier fact, the one that replaces it)
    rejected: list[Rejected] = field(default_factory=list)
    coverage: list[dict] = field(default_factory=list)
    generators: list[str] = field(default_factory=list)

    @property
    def coverage_share(self) -> float | None:
        """The share of personal messages from which at least one fact was learned."""
        return sum(1 for c in self.coverage if c["facts"]) / len(self.coverage) if self.coverage else None


def grounded(fact: Fact, conversation: Conversation) -> str | None:
    """None when one of the fact's answers is in what the user said in the conversation, else why not."""
    said = words(" ".join(t.content for t in conversation.user_turns))
    if any("redacted" in a for a in fact.answers) or "[redacted" in fact.statement:
        return "built on a redacted secret"
    for answer in fact.answers:
        needle = words(answer)
        if needle and all(w in said for w in needle):
            return None
    return "its answer is not in what the user said"


def _merge(facts: list[Fact]) -> list[Fact]:
    """One fact per (message, answer): a second generator's questions and statements join the first's."""
    merged: dict[tuple[str, str], Fact] = {}
    for fact in facts:
        key = (f"{fact.source_id}#{fact.turn}", " ".join(words(fact.answers[0])) if fact.answers else fact.statement)
        if key not in merged:
            merged[key] = fact
            continue
        kept = merged[key]
        merged[key] = Fact(
            **{
                **kept.__dict__,
                "questions": tuple(dict.fromkeys(kept.questions + fact.questions)),
                "reverse": kept.reverse or fact.reverse,
                "reverse_answer": kept.reverse_answer or fact.reverse_answer,
                "context": kept.context or fact.context,
                "topics": tuple(dict.fromkeys(kept.topics + fact.topics)),
                "renderings": tuple(dict.fromkeys(kept.renderings + (fact.statement,) + fact.renderings)),
                "generator": kept.generator
                if kept.generator == fact.generator
                else f"{kept.generator}+{fact.generator}",
            }
        )
    return list(merged.values())


def replaces(new: Fact, old: Fact) -> bool:
    """Whether a later fact replaces an earlier one: the same subject and relation (slot), said in another
    message. Names are part of their slot, so two brothers stay two facts."""
    return (
        bool(new.slot)
        and new.slot == old.slot
        and not new.slot.startswith("name|")
        and (new.source_id, new.turn) != (old.source_id, old.turn)
    )


PERSONAL = re.compile(r"\b(i|i'm|im|i've|ive|my|mine|me|we|we're|our|ours|us)\b", re.I)


def carries_personal(text: str) -> bool:
    """Whether a user message looks like it tells something about the user (first person, more than a
    few words, not a question): what coverage counts, whatever the generators made of it."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    return any(PERSONAL.search(s) and not s.strip().endswith("?") and len(s.split()) >= 3 for s in sentences)


def resolve_updates(facts: list[Fact]) -> tuple[list[Fact], list[tuple[Fact, Fact]]]:
    """Given facts oldest first, return (the facts that stand, [(replaced, replacement)])."""
    standing: list[Fact] = []
    replaced = []
    for fact in facts:
        for old in [f for f in standing if replaces(fact, f)]:
            standing.remove(old)
            replaced.append((old, fact))
        standing.append(fact)
    return standing, replaced


def mine(conversations: list[Conversation], chosen: list[Generator]) -> Knowledge:
    """Run the generators over the conversations (oldest first); return the night's Knowledge."""
    out = Knowledge(generators=[f"{g.name} {g.version}" for g in chosen])
    facts: list[Fact] = []
    for conversation in conversations:
        personal: dict[str, set[str]] = {}
        found: list[Fact] = []
        for generator in chosen:
            mined = generator.mine(conversation)
            out.rejected += mined.rejected
            for text in mined.personal:
                personal.setdefault(text, set())
            for fact in mined.facts:
                why = grounded(fact, conversation)
                if why:
                    out.rejected.append(Rejected(fact.statement, why, fact.generator, fact.sentence, fact.source_id))
                else:
                    found.append(fact)
        found = _merge(found)
        facts += found
        for turn in conversation.user_turns:
            learned = [f.statement for f in found if f.source_id == turn.record_id and f.turn == turn.index]
            if turn.content in personal or carries_personal(turn.content):
                out.coverage.append(
                    {"message": turn.content, "record_id": turn.record_id, "facts": list(dict.fromkeys(learned))}
                )
    out.facts, out.replaced = resolve_updates(facts)
    return out


def choose(name: str, available: dict[str, Generator] | None = None) -> list[Generator]:
    """Given `sleep.generator` ("auto" and "model" are decided by the caller; here a generator's name, or
    "parse" for the default), return the generators to run: that one, with `rules` beside it.

    Raise CircadianError if it is unknown or cannot run here.
    """
    found = available if available is not None else generators()
    if name not in found:
        raise CircadianError(f"unknown generator {name!r} (known: {', '.join(sorted(found))})")
    chosen = found[name]
    if reason := chosen.unavailable_reason():
        raise CircadianError(f"generator {name!r} cannot run here: {reason}")
    return [chosen] + ([found["rules"]] if name != "rules" else [])
