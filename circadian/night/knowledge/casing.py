"""Capitals for lowercase chat: the words of a message the base model would write with a capital.

People type "my flatmate jonas is vegan" and "flying to vienna on the 3rd". spaCy's small pipeline,
trained on edited text, reads such names as common nouns, so the `parse` generator made no naming fact
and garbled questions ("What's my flatmate jonas?"). This is truecasing with a language model (Lita et
al. 2003, "tRuEcasIng"): for each lowercase word inside a sentence of an all-lowercase message, the
night's own model scores the rest of the message with the word capitalized against the word as
written, and the capital is kept where it is likelier by `MARGIN` nats. No list of names or places is
involved, and a message that already uses capitals is taken as written.

Only the case of letters changes, so every offset in the message stays where it was; the parser reads
the capitals, and the facts keep the user's own spelling.
"""

from __future__ import annotations

import re
from functools import cache

from circadian.backends.tokens import Example, text_ids

MARGIN = 1.0  # nats the capital must win by (set once before measuring, not tuned: bench/recall/RESULTS.md)
WORD = re.compile(r"(?<![\w'’-])[a-z]{2,}(?![\w'’-])")
SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n\s*)$")
CAPITAL = re.compile(r"[A-Z]")


@cache
def _common_words() -> frozenset[str]:
    """English stop words and the chat spellings the parser writes out ("im", "shes"): never names."""
    from spacy.lang.en.stop_words import STOP_WORDS

    from circadian.night.knowledge.parse import CHAT_SPELLINGS

    return frozenset(STOP_WORDS) | frozenset(CHAT_SPELLINGS)


def is_lowercase_chat(text: str) -> bool:
    """Whether a message is typed without capitals (a standalone "I" and sentence starts aside)."""
    for m in CAPITAL.finditer(text):
        at = m.start()
        if SENTENCE_START.search(text[:at]) or re.match(r"I(?![\w])", text[at:]):
            continue
        return False
    return True


def candidates(text: str, common: frozenset[str]) -> list[re.Match]:
    """The words of a lowercase message that could be names: inside a sentence, not a common word."""
    if not is_lowercase_chat(text):
        return []
    return [m for m in WORD.finditer(text) if m.group(0) not in common and not SENTENCE_START.search(text[: m.start()])]


def _shared_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _scored_from(ids: list[int], start: int) -> Example:
    """The example that scores `ids` from position `start` to the end."""
    return Example(ids, [0] * start + [1] * (len(ids) - start))


class Capitals:
    """Truecases messages with a loaded model (any backend: its tokenizer and `score`)."""

    def __init__(self, model, margin: float = MARGIN, batch_size: int = 16):
        self.model, self.margin, self.batch_size = model, margin, batch_size

    def __call__(self, texts: list[str]) -> list[str]:
        """Given messages, return them with the capitals the model prefers (same lengths, same letters)."""
        tokenizer, common = self.model.tokenizer, _common_words()
        pairs, where = [], []
        for n, text in enumerate(texts):
            found = candidates(text, common)
            written_ids = text_ids(tokenizer, text) if found else []
            for m in found:
                capital_ids = text_ids(tokenizer, text[: m.start()] + m.group(0).capitalize() + text[m.end() :])
                shared = _shared_prefix(written_ids, capital_ids)
                if shared == 0:
                    continue  # nothing before the word to predict it from
                pairs += [_scored_from(written_ids, shared), _scored_from(capital_ids, shared)]
                where.append((n, m))
        if not pairs:
            return list(texts)
        scored = self.model.score(pairs, batch_size=self.batch_size)
        out = [list(t) for t in texts]
        for k, (n, m) in enumerate(where):
            (as_written, _), (capitalized, _) = scored[2 * k], scored[2 * k + 1]
            if capitalized < as_written - self.margin:
                out[n][m.start()] = out[n][m.start()].upper()
        return ["".join(chars) for chars in out]
