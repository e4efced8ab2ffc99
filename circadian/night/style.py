"""The style check: does a model still chat like the base model? Over ordinary chat prompts
(`eval/style.jsonl`), a reply passes when

- it is in the language of the prompt (py3langid, a maintained fork of langid.py whose model loads in
  a second rather than six; restricted to the languages the set uses and their neighbours);
- its length in words is within the base model's range on the same prompts (half its shortest
  reply to one and a half times its longest);
- it has no repeated-phrase loop: no four-word phrase three times, and no sentence twice.

The base model's range is measured once (on the first night, when the current model is the base)
and kept in the manifest, like the base perplexity.
"""

from __future__ import annotations

import json
import re
from functools import cache

from circadian.night.scoring import words

LANGUAGES = ["en", "fr", "es", "de", "nl", "it", "pt"]
_SENTENCE = re.compile(r"[^.!?\n]+")


@cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(LANGUAGES)
    return identifier


def language(text: str) -> str:
    """Given text, return its language code (one of LANGUAGES)."""
    return _identifier().classify(text)[0]


def has_loop(text: str) -> bool:
    """Given a reply, return whether it repeats itself: a four-word phrase three times, or one
    sentence of four words or more twice."""
    said = words(text)
    grams: dict[tuple, int] = {}
    for i in range(len(said) - 3):
        gram = tuple(said[i : i + 4])
        grams[gram] = grams.get(gram, 0) + 1
        if grams[gram] >= 3:
            return True
    seen = set()
    for sentence in _SENTENCE.findall(text):
        key = tuple(words(sentence))
        if len(key) >= 4:
            if key in seen:
                return True
            seen.add(key)
    return False


def length_range(replies: list[str]) -> tuple[int, int]:
    """Given the base model's replies to the style prompts, return the accepted (low, high) word counts."""
    counts = [len(r.split()) for r in replies] or [0]
    return max(1, min(counts) // 2), max(counts) * 3 // 2 + 1


def check(items: list[dict], replies: list[str], accepted: tuple[int, int]) -> dict:
    """Given the style items, a model's replies and the accepted length range, return
    {"score", "n", "range", "items"} with each reply's checks."""
    low, high = accepted
    results = []
    for item, reply in zip(items, replies):
        length = len(reply.split())
        checks = {
            "language": language(reply) == item.get("language", "en") if length >= 3 else True,
            "length": low <= length <= high,
            "no_loop": not has_loop(reply),
        }
        results.append({**item, "answer": reply, "checks": checks, "hit": all(checks.values())})
    hits = sum(r["hit"] for r in results)
    return {
        "score": hits / len(results) if results else None,
        "n": len(results),
        "range": [low, high],
        "items": results,
    }


def load_style(text: str) -> list[dict]:
    """Given the text of `eval/style.jsonl`, return its items."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
