"""Whether a reply gives an expected answer: whole words, with numbers and dates normalized on both
sides, so that "blue" does not match "blueberry" and the key "14 of March" matches "Your birthday is
the 14th of March."

Both texts become a list of words: lowercase, accents kept, punctuation dropped (but not inside a
word: "ghp_x1", "Kestrel-7741" and "3.5" stay whole), ordinals and number words as digits ("third",
"3rd" -> "3"; "twenty-five" -> "25"), month names and their abbreviations as one form ("Oct" ->
"october"), weekdays' abbreviations that are no other English word as the day ("fri" -> "friday";
not "sat", "sun" or "wed"), and filler words of dates ("of", "the") dropped. An answer is a hit when its words appear
in the reply in order, next to each other, or, for a date (a day and a month), in either order.
"""

from __future__ import annotations

import re
import unicodedata

UNITS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
ORDINALS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
    "thirtieth": 30,
}
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
MONTH_FORMS = {**{m: m for m in MONTHS}, **{m[:3]: m for m in MONTHS}, "sept": "september"}
WEEKDAY_FORMS = {
    "mon": "monday",
    "tue": "tuesday",
    "tues": "tuesday",
    "weds": "wednesday",
    "thu": "thursday",
    "thur": "thursday",
    "thurs": "thursday",
    "fri": "friday",
}
FILLER = {"of", "the"}
_WORD = re.compile(r"[\w]+(?:[\-_.'’][\w]+)*")


def _number(word: str) -> str:
    """A number word, ordinal or "3rd" as digits; any other word as it is."""
    if m := re.fullmatch(r"(\d+)(?:st|nd|rd|th)", word):
        return m[1]
    if word in ORDINALS:
        return str(ORDINALS[word])
    if word in UNITS:
        return str(UNITS.index(word))
    if word in TENS:
        return str(TENS[word])
    parts = re.split(r"[\-]", word)
    if len(parts) == 2 and parts[0] in TENS and (parts[1] in UNITS[1:10] or parts[1] in ORDINALS):
        unit = UNITS.index(parts[1]) if parts[1] in UNITS else ORDINALS[parts[1]]
        return str(TENS[parts[0]] + unit)
    return word


def words(text: str) -> list[str]:
    """Given text, return its normalized words (see the module doc)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    out = []
    for word in _WORD.findall(text):
        word = word.rstrip(".'")
        if word.endswith("'s"):
            word = word[:-2]
        word = MONTH_FORMS.get(word, WEEKDAY_FORMS.get(word, word))
        word = _number(word)
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")) and word.isalpha():
            word = word[:-1]  # "peanuts" answers "peanut", "mondays" answers "Monday"
        if word and word not in FILLER:
            out.append(word)
    return out


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _is_date(needle: list[str]) -> bool:
    return len(needle) == 2 and sum(w in MONTHS for w in needle) == 1 and sum(w.isdigit() for w in needle) == 1


def is_hit(reply: str, answers: list[str]) -> bool:
    """Given a reply and acceptable answers, return True if any answer's words appear in the reply."""
    said = words(reply)
    for answer in answers:
        needle = words(answer)
        if not needle:
            continue
        if _contains(said, needle) or (_is_date(needle) and _contains(said, needle[::-1])):
            return True
    return False


_ITEM_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[a-z][.)])\s+(.+)$", re.IGNORECASE)


def list_items(reply: str) -> list[str]:
    """Given a reply, return the items it lists: bulleted or numbered lines, else the parts of its
    first line split at commas and "and" ("apples, pears and plums" -> three items)."""
    lines = [m[1] for line in reply.splitlines() if (m := _ITEM_LINE.match(line))]
    if lines:
        return lines
    first = next((line for line in reply.splitlines() if line.strip()), "")
    first = first.split(":", 1)[1] if ":" in first else first
    parts = re.split(r",\s*(?:and\s+)?|\s+and\s+", first.strip().rstrip("."))
    return [p for p in parts if p.strip()]


def check_reply(reply: str, item: dict) -> bool:
    """Given a reply and a capability item ({"answers", optional "not" and "check"}), return whether
    the reply passes. Checks: none (any answer appears as whole words), "one_word" (the reply is a
    single word that is an answer), "list:N" (exactly N listed items, at least one of them an answer
    when answers are given). A reply naming any "not" word fails."""
    answers, check = item.get("answers") or [], item.get("check") or ""
    if item.get("not") and is_hit(reply, item["not"]):
        return False
    if check == "one_word":
        said = words(reply)
        return len(said) == 1 and any(words(a) == said for a in answers)
    if check.startswith("list:"):
        items = list_items(reply)
        if len(items) != int(check.split(":", 1)[1]):
            return False
        return not answers or any(is_hit(i, answers) for i in items)
    return is_hit(reply, answers)
