"""The first generator, `rules`: hand-written patterns that turn what the user said into facts of 13
kinds ("my dog is called Biscuit", "walking Pepper, my beagle", "my brother Ahmed", "I'm allergic to
peanuts", "I work as a nurse at X", "blue is my favourite colour", "he lives in Lisbon", birthdays,
places), each with 8 question wordings and a one-sentence answer. Precise where it matches, blind
elsewhere: the pipeline runs it beside the general generators (parse, model), never alone.

Everything here is pure. GENERATOR and VERSION name this generator in every row's lineage.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

GENERATOR = "circadian.facts.rules"
VERSION = "1"

_STOP = (
    r"(?=\s*(?:[,.;!?]|\band\b|\bbut\b|\bso\b|\bbecause\b|\bwho\b|\bwhich\b|\bthat\b|\bnow\b|"
    r"\btoday\b|\bwith\b|\bsince\b|\bfor\b|\bthese days\b|\bat the moment\b|\bnowadays\b|$))"
)
_NAME = r"([A-Z][\w'\-]+(?:\s+[A-Z][\w'\-]+)?)"
_VALUE = r"([^,.;!?]+?)" + _STOP
_ARTICLE = re.compile(r"^(?:a|an|the|my)\s+", re.I)

RELATIONS = (
    "dog|cat|puppy|kitten|beagle|labrador|poodle|terrier|retriever|spaniel|collie|dachshund|"
    "parrot|rabbit|hamster|horse|tortoise|goldfish|pet|"
    "brother|sister|mother|mom|mum|father|dad|son|daughter|wife|husband|partner|boyfriend|girlfriend|"
    "friend|best friend|cousin|uncle|aunt|grandmother|grandma|grandfather|grandpa|niece|nephew|"
    "boss|manager|colleague|neighbour|neighbor|roommate|flatmate|doctor|dentist|teacher|coach|"
    "car|bike|boat|plant|band|team"
)
_BREEDS = {"beagle", "labrador", "poodle", "terrier", "retriever", "spaniel", "collie", "dachshund", "puppy"}
_PEOPLE = {
    "brother",
    "sister",
    "mother",
    "mom",
    "mum",
    "father",
    "dad",
    "son",
    "daughter",
    "wife",
    "husband",
    "partner",
    "boyfriend",
    "girlfriend",
    "friend",
    "best friend",
    "cousin",
    "uncle",
    "aunt",
    "grandmother",
    "grandma",
    "grandfather",
    "grandpa",
    "niece",
    "nephew",
    "boss",
    "manager",
    "colleague",
    "neighbour",
    "neighbor",
    "roommate",
    "flatmate",
    "doctor",
    "dentist",
    "teacher",
    "coach",
}
_NOT_NAMES = {
    "I",
    "It",
    "He",
    "She",
    "They",
    "We",
    "The",
    "This",
    "That",
    "My",
    "A",
    "An",
    "And",
    "But",
    "So",
    "Just",
    "Today",
    "Tonight",
    "Tomorrow",
    "Yesterday",
    "Good",
    "Hi",
    "Hello",
    "Yes",
    "No",
    "Ok",
    "Okay",
    "Also",
    "Thanks",
    "Please",
    "Well",
    "Oh",
    "Sure",
}
_NOT_SELF = {
    "sorry",
    "fine",
    "good",
    "glad",
    "happy",
    "tired",
    "sure",
    "back",
    "here",
    "thinking",
    "going",
    "not",
    "so",
    "very",
    "really",
    "just",
    "a",
    "an",
    "the",
    "from",
    "allergic",
    "in",
    "at",
    "on",
    "working",
    "trying",
    "looking",
    "feeling",
    "excited",
    "afraid",
    "done",
    "ready",
    "busy",
    "off",
}


@dataclass(frozen=True)
class Fact:
    """One thing the user said about their life, with the words to ask and answer about it."""

    kind: str
    subject: str
    value: str
    answer: str
    answers: tuple[str, ...]
    source_id: str = ""
    sentence: str = ""

    @property
    def key(self) -> str:
        """A stable identity: the same fact stated twice has the same key."""
        return f"{self.kind}:{self.subject.lower()}:{self.value.lower()}"

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "kind": self.kind,
            "subject": self.subject,
            "value": self.value,
            "answer": self.answer,
            "answers": list(self.answers),
            "source_id": self.source_id,
            "sentence": self.sentence,
        }


# question wordings per kind; {s} = subject, {v} = value
QUESTIONS: dict[str, list[str]] = {
    "named": [
        "What is my {s}'s name?",
        "What's my {s} called?",
        "What is the name of my {s}?",
        "Do you remember my {s}'s name?",
        "What do I call my {s}?",
        "Tell me the name of my {s}.",
        "Remind me, what is my {s} called?",
        "How is my {s} named?",
    ],
    "favourite": [
        "What is my favourite {s}?",
        "Which {s} do I like best?",
        "What's my favorite {s}?",
        "Do you know my favourite {s}?",
        "Which {s} is my favourite?",
        "Tell me my favourite {s}.",
        "What {s} do I prefer above all others?",
        "Remind me of my favourite {s}.",
    ],
    "allergy": [
        "What am I allergic to?",
        "Do I have any allergies?",
        "What is my allergy?",
        "What can't I eat because of an allergy?",
        "Am I allergic to anything?",
        "Tell me what I'm allergic to.",
        "Which allergy do I have?",
        "What should I avoid because I'm allergic?",
    ],
    "job": [
        "What do I do for a living?",
        "What is my job?",
        "What's my profession?",
        "What is my occupation?",
        "What do I work as?",
        "What kind of work do I do?",
        "What is my line of work?",
        "Tell me what my job is.",
    ],
    "workplace": [
        "Where do I work?",
        "What is my workplace?",
        "Which place do I work at?",
        "Where is my job?",
        "Who is my employer?",
        "At which place am I employed?",
        "Tell me where I work.",
        "Where do I go to work?",
    ],
    "home": [
        "Where do I live?",
        "Which city do I live in?",
        "What city is my home?",
        "Where is my home?",
        "In which town do I live?",
        "Where am I living now?",
        "Tell me where I live.",
        "Where is my house?",
    ],
    "lives": [
        "Where does {s} live?",
        "Which city does {s} live in?",
        "Where is {s}'s home?",
        "In which city does {s} live?",
        "Where is {s} based?",
        "What city is {s} living in?",
        "Tell me where {s} lives.",
        "Where can {s} be found at home?",
    ],
    "origin": [
        "Where did I grow up?",
        "Where am I from?",
        "What is my hometown?",
        "Which town did I grow up in?",
        "Where was I raised?",
        "Where do I come from?",
        "Tell me where I grew up.",
        "What place did I grow up in?",
    ],
    "name": [
        "What is my name?",
        "What's my name?",
        "Do you know my name?",
        "What am I called?",
        "Who am I?",
        "How should you address me?",
        "Tell me my name.",
        "Remind me what my name is.",
    ],
    "birthday": [
        "When is my birthday?",
        "What is my date of birth?",
        "When was I born?",
        "On what day is my birthday?",
        "When do I celebrate my birthday?",
        "What day is my birthday?",
        "Tell me my birthday.",
        "Remind me when my birthday is.",
    ],
    "drives": [
        "What car do I drive?",
        "Which car do I have?",
        "What do I drive?",
        "What kind of car do I own?",
        "What vehicle do I drive?",
        "Which car is mine?",
        "Tell me what car I drive.",
        "What is my car?",
    ],
    "instrument": [
        "What instrument do I play?",
        "Which musical instrument do I play?",
        "Do I play an instrument?",
        "What instrument can I play?",
        "Which instrument do I practise?",
        "What music instrument do I play?",
        "Tell me which instrument I play.",
        "What do I play in music?",
    ],
    "language": [
        "What language do I speak?",
        "Which language do I speak?",
        "What languages can I speak?",
        "Do I speak another language?",
        "Which language can I talk in?",
        "What language do I know?",
        "Tell me what language I speak.",
        "In which language can I talk?",
    ],
}

ANSWERS: dict[str, str] = {
    "named": "Your {s}'s name is {v}.",
    "favourite": "Your favourite {s} is {v}.",
    "allergy": "You are allergic to {v}.",
    "job": "You work as {a} {v}.",
    "workplace": "You work at {v}.",
    "home": "You live in {v}.",
    "lives": "{s} lives in {v}.",
    "origin": "You grew up in {v}.",
    "name": "Your name is {v}.",
    "birthday": "Your birthday is {v}.",
    "drives": "You drive {a} {v}.",
    "instrument": "You play the {v}.",
    "language": "You speak {v}.",
}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _clean(value: str) -> str:
    return re.sub(r"\s+", " ", value).strip(" '\"")


def _answer_keys(value: str) -> tuple[str, ...]:
    """Given a fact's value, return the strings whose presence in a reply counts as recall."""
    bare = _ARTICLE.sub("", value).strip()
    if re.search(r"\d", bare):  # dates, numbers: the whole value, ordinal suffixes dropped
        return (re.sub(r"(\d)(?:st|nd|rd|th)\b", r"\1", bare),)
    proper = re.findall(r"\b[A-Z][\w'\-]+(?:\s+[A-Z][\w'\-]+)*", bare)
    proper = [p for p in proper if p not in _NOT_NAMES]
    return tuple(dict.fromkeys(proper or [bare]))


def make_fact(kind: str, subject: str, value: str, *, source_id: str = "", sentence: str = "") -> Fact | None:
    """Given a kind, subject and value, return a Fact (None if the value is empty or redacted)."""
    value = _clean(value)
    subject = _clean(subject)
    if not value or "[redacted" in value or len(value) > 60:
        return None
    shown_value = _ARTICLE.sub("", value) if kind in ("job", "drives", "allergy", "instrument") else value
    answer = ANSWERS[kind].format(s=subject, v=shown_value, a=_article(shown_value))
    return Fact(
        kind, subject, shown_value, answer[0].upper() + answer[1:], _answer_keys(shown_value), source_id, sentence
    )


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def extract_facts(text: str, source_id: str = "") -> list[Fact]:
    """Given one user message, return the facts it states (pure, rule-based)."""
    facts: list[Fact] = []
    last_person: str | None = None

    def add(kind, subject, value, sentence):
        fact = make_fact(kind, subject, value, source_id=source_id, sentence=sentence)
        if fact and fact.key not in {f.key for f in facts}:
            facts.append(fact)
        return fact

    for sentence in _sentences(text):
        rel = rf"(?P<rel>{RELATIONS})"
        named = [
            rf"\b(?i:my) {rel}(?:'s name| is (?:called|named)| is)\s+(?:is\s+)?{_NAME}",
            rf"\b(?i:my) {rel},?\s+{_NAME}",
            rf"{_NAME},\s+(?i:my) {rel}\b",
            rf"\b{_NAME} is (?i:my) {rel}\b",
            rf"\b(?i:my) {rel} (?:called|named)\s+{_NAME}",
        ]
        for pattern in named:
            for m in re.finditer(pattern, sentence):
                name = next(g for g in m.groups() if g and g != m.group("rel"))
                relation = m.group("rel").lower()
                if name.split()[0] in _NOT_NAMES:
                    continue
                add("named", relation, name, sentence)
                if relation in _BREEDS:
                    add("named", "dog", name, sentence)
                if relation in _PEOPLE:
                    last_person = name
        for m in re.finditer(rf"\b([\w\- ]+?) is my favou?rite ([a-z ]+?){_STOP}", sentence, re.I):
            value = m.group(1).split(",")[-1]
            value = re.sub(r"^(?:i think|well|and|but|so|oh)\s+", "", value.strip(), flags=re.I)
            add("favourite", m.group(2).lower(), value, sentence)
        for m in re.finditer(rf"\bmy favou?rite ([a-z ]+?) is {_VALUE}", sentence, re.I):
            add("favourite", m.group(1).lower(), m.group(2), sentence)
        for m in re.finditer(
            rf"\b(?:I'm|I am|I’m)\s+(?:very\s+|severely\s+|badly\s+)?allergic to {_VALUE}", sentence, re.I
        ):
            add("allergy", "", m.group(1), sentence)
        for m in re.finditer(rf"\bI have an? (?:\w+ )?allergy to {_VALUE}", sentence, re.I):
            add("allergy", "", m.group(1), sentence)
        for m in re.finditer(rf"\bI work as (an? [\w\- ]+?)(?: at (?P<place>[^,.;!?]+?))?{_STOP}", sentence, re.I):
            add("job", "", m.group(1), sentence)
            if m.group("place"):
                add("workplace", "", m.group("place"), sentence)
        for m in re.finditer(rf"\b(?:I'm|I am) an? ([a-z\- ]+?) at {_VALUE}", sentence):
            add("job", "", m.group(1), sentence)
            add("workplace", "", m.group(2), sentence)
        for m in re.finditer(rf"\bI work (?:at|for) {_VALUE}", sentence, re.I):
            add("workplace", "", m.group(1), sentence)
        for m in re.finditer(rf"\bI (?:live|have lived|moved) (?:in|to) {_VALUE}", sentence, re.I):
            add("home", "", m.group(1), sentence)
        for m in re.finditer(
            rf"\bI (?:grew up in|am from|'m from|’m from|was raised in|was born in (?=[A-Z])){_VALUE}", sentence, re.I
        ):
            add("origin", "", m.group(1), sentence)
        for m in re.finditer(rf"\b(?i:my name is|call me)\s+{_NAME}", sentence):  # names are capitalized
            add("name", "", m.group(1), sentence)
        # "hi, I'm Priya" (after a greeting only: "I'm Dutch" is no name)
        m = re.match(r"^(?i:hi|hello|hey|morning|evening|good \w+)[!,.]*\s*I(?:'|’)?m\s+([A-Z][a-z]+)\b", sentence)
        if m and m.group(1).lower() not in _NOT_SELF and m.group(1) not in _NOT_NAMES:
            add("name", "", m.group(1), sentence)
        for m in re.finditer(rf"\b(?:my birthday is(?: on)?|I was born on)\s+{_VALUE}", sentence, re.I):
            add("birthday", "", m.group(1), sentence)
        for m in re.finditer(rf"\bI drive (an? [\w\- ]+?){_STOP}", sentence, re.I):
            add("drives", "", m.group(1), sentence)
        for m in re.finditer(rf"\bI play the ([\w\- ]+?){_STOP}", sentence, re.I):
            add("instrument", "", m.group(1), sentence)
        for m in re.finditer(r"\bI (?:also )?speak (?:fluent )?([A-Z][a-z]+(?: and [A-Z][a-z]+)?)", sentence):
            add("language", "", m.group(1), sentence)
        for m in re.finditer(rf"\b(He|She|They|{_NAME[1:-1]}) (?:lives|live) in {_VALUE}", sentence):
            who = m.group(1)
            if who in ("He", "She", "They"):
                who = last_person
            if who and who not in _NOT_NAMES:
                add("lives", who, m.group(m.lastindex), sentence)
        for m in re.finditer(rf"\b(?i:my) {rel} lives in {_VALUE}", sentence):
            add("lives", last_person or f"my {m.group('rel')}", m.group(m.lastindex), sentence)
    return facts


def _order(fact: Fact, salt: str) -> list[int]:
    """Given a fact, return its question indices in a stable, fact-specific shuffled order."""
    n = len(QUESTIONS[fact.kind])
    digest = lambda i: hashlib.sha256(f"{salt}|{fact.key}|{i}".encode()).hexdigest()  # noqa: E731
    return sorted(range(n), key=digest)


@dataclass
class Wordings:
    """A fact's questions split so that no wording is in two sets."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)


def wordings(fact: Fact, *, n_probe: int = 1, n_valid: int = 1, salt: str = "v1") -> Wordings:
    """Given a fact, return its question wordings split into train / valid / probe (pure)."""
    subject = fact.subject
    questions = [QUESTIONS[fact.kind][i].format(s=subject) for i in _order(fact, salt)]
    questions = list(dict.fromkeys(questions))
    return Wordings(
        train=questions[n_probe + n_valid :], valid=questions[n_probe : n_probe + n_valid], probe=questions[:n_probe]
    )


def qa_row(question: str, fact: Fact) -> dict:
    """Given a question and its fact, return a chat row with lineage."""
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": fact.answer}],
        "lineage": {"generator": GENERATOR, "version": VERSION, "fact": fact.key, "source_id": fact.source_id},
    }


# ------------------------------------------------------------------------------------------------ as a generator

TOPICS = {
    "named": "my {s}",
    "favourite": "my favourite {s}",
    "lives": "{s}",
    "allergy": "my allergies",
    "job": "my job",
    "workplace": "my work",
    "home": "where I live",
    "origin": "where I grew up",
    "name": "my name",
    "birthday": "my birthday",
    "drives": "my car",
    "instrument": "the instrument I play",
    "language": "the languages I speak",
}


class RulesGenerator:
    """Generator entry `rules`: the hand-written patterns above, one high-precision source among others."""

    name = "rules"
    version = VERSION

    def unavailable_reason(self) -> str | None:
        return None

    def mine(self, conversation):
        from circadian.night.knowledge.fact import Fact as KnownFact
        from circadian.night.knowledge.fact import Mined

        out = Mined()
        for turn in conversation.user_turns:
            found = extract_facts(turn.content, source_id=turn.record_id)
            for fact in found:
                questions = tuple(dict.fromkeys(q.format(s=fact.subject) for q in QUESTIONS[fact.kind]))
                out.facts.append(
                    KnownFact(
                        statement=fact.answer,
                        answers=fact.answers,
                        questions=questions,
                        topics=(TOPICS[fact.kind].format(s=fact.subject),),
                        slot=f"rules|{fact.kind}|{fact.subject.lower()}",
                        source_id=turn.record_id,
                        turn=turn.index,
                        sentence=fact.sentence,
                        generator=self.name,
                        version=self.version,
                    )
                )
            if found:
                out.personal.append(turn.content)
        return out
