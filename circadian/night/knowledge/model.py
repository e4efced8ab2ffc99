"""The generator written by a model: the configured model (or `sleep.teacher`) reads a conversation and
writes the user's facts and questions as JSON, validated by pydantic.

This is the path for the 3B and 8B models people run on a Mac or a 24 GB card; the embedded 135M model
cannot write questions about a message, and the calibration (calibration.py) finds that out before a
night relies on it. `parse_reply` is pure: it turns a recorded reply into facts, so the parser and the
grounding check are tested on recorded outputs.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circadian.night.knowledge.conversation import Conversation
from circadian.night.knowledge.fact import Fact, Mined, Rejected

NAME = "model"
VERSION = "1"
PROMPT_VERSION = "1"
MAX_TOKENS = 700
JSON_WITHIN = 48  # tokens a reply may take before its JSON starts

PROMPT = """Read this conversation between a user and an assistant. List every fact the user stated about
themselves or the people, pets, places and things in their life. Include answers the user gave to the
assistant's questions. Do not include questions, wishes, hypotheticals, or anything the assistant said.

For each fact write:
- "statement": the fact as one sentence addressed to the user ("Your dog is called Mochi.");
- "answer": the shortest words of the user's own message that answer it ("Mochi");
- "subject": what it is about, as the user would say it ("my dog");
- "questions": three different questions the user could ask to get it back, in the user's voice
  ("What is my dog called?");
- "reverse": one question in the other direction if it makes sense ("Who is Mochi?"), else "".

Reply with JSON only: {"facts": [{"statement": ..., "answer": ..., "subject": ..., "questions": [...], "reverse": ...}]}

Conversation:
"""


class WrittenFact(BaseModel):
    """One fact as the model writes it."""

    model_config = ConfigDict(extra="ignore")

    statement: str = Field(min_length=3)
    answer: str = Field(min_length=1)
    subject: str = ""
    questions: list[str] = []
    reverse: str = ""


class Written(BaseModel):
    model_config = ConfigDict(extra="ignore")

    facts: list[WrittenFact] = []


def render(conversation: Conversation) -> str:
    """The conversation as the prompt shows it: one "user:" or "assistant:" line per message."""
    return "\n".join(f"{t.role}: {' '.join(t.content.split())}" for t in conversation.turns)


def _json_object(text: str) -> str | None:
    """The first balanced {...} in a reply (models wrap JSON in prose or code fences)."""
    start = text.find("{")
    while start != -1:
        depth = 0
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def parse_reply(reply: str, conversation: Conversation) -> Mined:
    """Given the model's reply for a conversation, return its facts (pure). A reply that is not the JSON
    asked for yields one rejection saying so; each fact is tied to the user message holding its answer."""
    out = Mined()
    found = _json_object(reply)
    try:
        written = Written.model_validate(json.loads(found)) if found else None
    except (json.JSONDecodeError, ValidationError) as exc:
        written = None
        why = f"not the JSON asked for ({str(exc).splitlines()[0][:80]})"
    else:
        why = "no JSON object in the reply"
    if written is None:
        out.rejected.append(Rejected(reply[:200], why, NAME))
        return out
    for item in written.facts:
        turn = next((t for t in conversation.user_turns if item.answer.lower() in t.content.lower()), None)
        questions = tuple(q.strip() for q in item.questions if q.strip().endswith("?"))
        subject = re.sub(r"^(the|a|an)\s+", "", item.subject.strip(), flags=re.I)
        fact = Fact(
            statement=item.statement.strip(),
            answers=(item.answer.strip(),),
            questions=questions,
            reverse=(item.reverse.strip(),) if item.reverse.strip().endswith("?") else (),
            reverse_answer=item.statement.strip(),
            topics=(subject,) if subject else (),
            slot=f"model|{subject.lower()}|{' '.join(questions[:1]).lower()}",
            source_id=turn.record_id if turn else "",
            turn=turn.index if turn else -1,
            sentence=turn.content if turn else "",
            generator=NAME,
            version=VERSION,
            prompt_version=PROMPT_VERSION,
        )
        out.facts.append(fact)  # the pipeline's grounding check rejects an answer the user never said
        if turn is not None and turn.content not in out.personal:
            out.personal.append(turn.content)
    return out


class ModelGenerator:
    """Generator entry `model`: a loaded model (backends.LoadedModel) writes the facts."""

    name = NAME
    version = VERSION

    def __init__(self, model, max_tokens: int = MAX_TOKENS):
        self.model = model
        self.max_tokens = max_tokens

    def unavailable_reason(self) -> str | None:
        return None if self.model is not None else "no model loaded to write the facts"

    def ask(self, conversation: Conversation) -> str:
        """The model's reply to the prompt for this conversation (greedy). A reply with no "{" in its first
        JSON_WITHIN tokens is cut there: it is not going to be the JSON asked for."""
        import threading

        from circadian.backends import GenerationSettings

        cancel, parts, tokens = threading.Event(), [], 0
        settings = GenerationSettings(max_tokens=self.max_tokens, temperature=0.0)
        for chunk in self.model.stream([{"role": "user", "content": PROMPT + render(conversation)}], settings, cancel):
            parts.append(chunk.text)
            tokens += chunk.tokens
            if tokens >= JSON_WITHIN and "{" not in "".join(parts):
                cancel.set()
                break
        return "".join(parts).strip()

    def mine(self, conversation: Conversation) -> Mined:
        return parse_reply(self.ask(conversation), conversation)
