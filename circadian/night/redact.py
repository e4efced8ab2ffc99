"""Redaction of secrets and personal identifiers before anything reaches training.

Secrets: every regex detector of Yelp's detect-secrets (AWS, GitHub, Slack, Stripe, JWT, private
keys, ...), plus current key shapes it misses (OpenAI `sk-...`, GitHub fine-grained PATs) and a
generic high-entropy token rule. Personal identifiers: e-mail addresses, phone numbers (Google's
libphonenumber through `phonenumbers`), IBANs (checked with mod-97) and card numbers (checked with
Luhn). Each kind is counted; `redact_text` is pure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

PLACEHOLDER = "[redacted-{kind}]"
KINDS = ("secret", "email", "phone", "iban", "card")

_EXTRA_SECRETS = [
    re.compile(r"\bsk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{20,}"),  # OpenAI/Anthropic-style keys
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}"),  # GitHub fine-grained PAT
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9_]{30,}"),  # GitHub classic, any length
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),  # Google API key
    re.compile(r"(?i)\baws_secret_access_key\b\s*[:=]\s*\S{30,}"),
]
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"\b(?:\d[ \-]?){12,18}\d\b")
_TOKEN = re.compile(r"[A-Za-z0-9+/_\-=.]{20,}")


@lru_cache(maxsize=1)
def _detect_secrets_patterns() -> list[re.Pattern]:
    """Return the denylist regexes of detect-secrets' regex-based detectors (not the keyword or
    high-entropy ones, which flag ordinary words outside source code)."""
    import importlib
    import inspect
    import pkgutil

    import detect_secrets.plugins as plugins
    from detect_secrets.plugins.base import RegexBasedDetector

    skip = {"IPPublicDetector"}
    patterns: list[re.Pattern] = []
    for module_info in pkgutil.iter_modules(plugins.__path__):
        module = importlib.import_module(f"detect_secrets.plugins.{module_info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(cls, RegexBasedDetector)
                and cls is not RegexBasedDetector
                and cls.__module__ == module.__name__
                and name not in skip
            ):
                patterns.extend(cls().denylist)
    return patterns


def shannon_entropy(text: str) -> float:
    """Given a string, return its Shannon entropy in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _looks_random(token: str) -> bool:
    classes = sum(bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    return (
        len(token) >= 20
        and classes >= 2
        and re.search(r"\d", token) is not None
        and shannon_entropy(token) >= 3.7
        and not token.startswith("[redacted")
    )


def _iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def _luhn_valid(candidate: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", candidate)]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


@dataclass
class Redaction:
    """The redacted text and how many of each kind were replaced."""

    text: str
    counts: Counter = field(default_factory=Counter)


def _spans(text: str, default_region: str) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for pattern in [*_detect_secrets_patterns(), *_EXTRA_SECRETS]:
        for m in pattern.finditer(text):
            start, end = m.span(1) if m.groups() and m.group(1) else m.span()
            if end - start >= 8:
                spans.append((start, end, "secret"))
    for m in _TOKEN.finditer(text):
        if _looks_random(m.group()):
            spans.append((*m.span(), "secret"))
    spans += [(*m.span(), "email") for m in _EMAIL.finditer(text)]
    spans += [(*m.span(), "iban") for m in _IBAN.finditer(text) if _iban_valid(m.group())]
    spans += [(*m.span(), "card") for m in _CARD.finditer(text) if _luhn_valid(m.group())]
    import phonenumbers

    for match in phonenumbers.PhoneNumberMatcher(text, default_region, leniency=phonenumbers.Leniency.VALID):
        spans.append((match.start, match.end, "phone"))
    return spans


def redact_text(text: str, default_region: str = "US") -> Redaction:
    """Given text, return it with secrets and personal identifiers replaced by placeholders.

    Overlapping findings are merged; the earliest-starting, longest one names the kind.
    """
    spans = sorted(_spans(text, default_region), key=lambda s: (s[0], -(s[1] - s[0])))
    out: list[str] = []
    counts: Counter = Counter()
    cursor = 0
    for start, end, kind in spans:
        if start < cursor:  # overlaps a span already replaced
            continue
        out.append(text[cursor:start])
        out.append(PLACEHOLDER.format(kind=kind))
        counts[kind] += 1
        cursor = end
    out.append(text[cursor:])
    return Redaction("".join(out), counts)


def redact_messages(messages: list[dict], default_region: str = "US") -> tuple[list[dict], Counter]:
    """Given chat messages, return redacted copies and the counts of each kind."""
    counts: Counter = Counter()
    out = []
    for message in messages:
        result = redact_text(message["content"], default_region)
        counts.update(result.counts)
        out.append({**message, "content": result.text})
    return out, counts
