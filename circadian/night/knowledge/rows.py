"""Facts as chat rows: what a night trains, validates with, and asks to measure recall.

For each fact (after Physics of LMs 3.1: several renderings, order permuted; both directions):
- its questions (wh-questions, the rule generator's wordings), each answered with the statement or
  one of its renderings, in turn; the first with the whole sentence when the fact is one of its clauses,
  so a question that calls up a sibling clause's answer ("What did we adopt?" beside "What is my
  tortoise called?") still gets both;
- "what do you know about <topic>" rows, answered with every statement about that topic, in an order
  that changes from row to row;
- its reverse questions ("Who is Lars?" -> "Lars is your partner.");
- an update also trains the replaced fact's questions with the new statement, so the old answer is
  trained away.

One of a fact's questions validates (never a question any training row asks). The recall probe asks
in a wording no training row was made with: "What do you remember about <topic>?" (PROBE_TEMPLATES,
never used for training); a fact with no topic is probed with one of its own questions, held out of
training for it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from circadian.night.knowledge.fact import Fact

ABOUT_TEMPLATES = ("What do you know about {topic}?", "Tell me about {topic}.", "What did I tell you about {topic}?")
PROBE_TEMPLATES = ("What do you remember about {topic}?",)
PROFILE_QUESTIONS = ("What do you know about me?", "What have I told you about myself?")
MAX_ABOUT = 4  # statements in one "what do you know about" answer
MAX_QUESTIONS = 8  # a fact's own questions trained (the first ones: the most specific)


def _share(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def row(question: str, answer: str, of: Fact, **extra) -> dict:
    """A chat row with the lineage of the fact it is `of` (its answers go with it); `extra` adds to the lineage."""
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "lineage": {**of.lineage(), "answers": list(of.answers), **extra},
    }


def probe(question: str, fact: Fact) -> dict:
    return {
        "question": question,
        "answers": list(fact.answers),
        "fact": fact.key,
        "statement": fact.statement,
        "source_id": fact.source_id,
    }


@dataclass
class FactRows:
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)


def _topic_statements(facts: list[Fact]) -> dict[str, list[str]]:
    about: dict[str, list[str]] = {}
    for fact in facts:
        for topic in fact.topics:
            statements = about.setdefault(topic.lower(), [])
            if fact.statement not in statements:
                statements.append(fact.statement)
    return about


def build(
    facts: list[Fact],
    *,
    replaced: list[tuple[Fact, Fact]] = (),
    salt: str = "v1",
    seed: int = 0,
    valid: bool = True,
    probes: bool = True,
) -> FactRows:
    """Given tonight's facts (and the updates that replaced earlier ones), return their rows (pure)."""
    rng = random.Random(f"{seed}|{salt}")
    about = _topic_statements(facts)
    out = FactRows()
    held: set[str] = set()
    for fact in facts:
        answers = list(dict.fromkeys([fact.context or fact.statement, fact.statement, *fact.renderings]))
        questions = list(dict.fromkeys(fact.questions))
        if probes:
            if fact.topics:
                out.probes.append(probe(PROBE_TEMPLATES[0].format(topic=fact.topics[0]), fact))
            elif questions:
                held_out = max(questions, key=lambda q: _share(q, salt))
                questions.remove(held_out)
                held.add(held_out)
                out.probes.append(probe(held_out, fact))
        if valid and len(questions) >= 2:
            chosen = max(questions, key=lambda q: _share(q + "|valid", salt))
            questions.remove(chosen)
            out.valid.append(row(chosen, fact.statement, fact))
        for n, question in enumerate(questions[:MAX_QUESTIONS]):
            out.train.append(row(question, answers[n % len(answers)], fact))
        reverse_answers = [a for a in (fact.reverse_answer, fact.statement) if a]
        for n, question in enumerate(fact.reverse):  # both answers, so the name is bound to the fact itself
            out.train.append(row(question, reverse_answers[n % len(reverse_answers)], fact))
        for topic in fact.topics[:2]:
            statements = about.get(topic.lower(), [fact.statement])
            for template in ABOUT_TEMPLATES[:2]:
                order = statements[:]
                rng.shuffle(order)
                chosen = [fact.statement] + [s for s in order if s != fact.statement][: MAX_ABOUT - 1]
                rng.shuffle(chosen)
                out.train.append(row(template.format(topic=topic), " ".join(chosen), fact))
    for old, new in replaced:  # the old fact's questions now get the new answer
        for question in list(dict.fromkeys(old.questions))[:4]:
            out.train.append(row(question, new.statement, new, replaces=old.key))
    if facts:
        statements = list(dict.fromkeys(f.statement for f in facts))
        for question in PROFILE_QUESTIONS:
            for start in range(0, len(statements), MAX_ABOUT):
                part = statements[start : start + MAX_ABOUT]
                rng.shuffle(part)
                out.train.append(
                    row(question, " ".join(part), facts[0], profile=True, answers=[], **{"fact": "profile"})
                )
    asked = {r["messages"][0]["content"] for r in out.train}
    out.valid = [r for r in out.valid if r["messages"][0]["content"] not in asked]
    out.train = [r for r in out.train if r["messages"][0]["content"] not in held]
    return out
