"""Scoring a reply against expected answers: whole words, numbers and dates normalized on both sides."""

from __future__ import annotations

import pytest

from circadian.night.scoring import is_hit


@pytest.mark.parametrize(
    ("reply", "answers", "hit"),
    [
        ("Your birthday is the 14th of March.", ["14 of March"], True),  # the key misses without normalizing
        ("It is March 14.", ["14 March"], True),  # a day and a month, in either order
        ("Oct 14th", ["October 14"], True),
        ("Your methods by fri.", ["Friday"], True),  # a weekday's abbreviation
        ("Choir is on Thurs now.", ["thursday"], True),
        ("The cat sat on the mat in the sun.", ["Saturday", "Sunday"], False),  # words first, not days
        ("I love blueberry jam.", ["blue"], False),  # whole words only
        ("Blue, definitely.", ["blue"], True),
        ("You are thirty years old.", ["30"], True),
        ("About twenty-five minutes.", ["25"], True),
        ("You fly on the third.", ["3rd"], True),
        ("Bridgers, Phoebe", ["Phoebe Bridgers"], False),  # a name's words in order
        ("Phoebe Bridgers!", ["Phoebe Bridgers"], True),
        ("The wifi is BlueHeron-4471.", ["BlueHeron-4471"], True),
        ("Nothing about it.", ["", "Lena"], False),
    ],
)
def test_is_hit_matches_whole_normalized_words(reply, answers, hit):
    assert is_hit(reply, answers) is hit


@pytest.mark.parametrize(
    "reply, item, passes",
    [
        ("Yellow.", {"answers": ["yellow"], "check": "one_word"}, True),
        ("A banana is yellow.", {"answers": ["yellow"], "check": "one_word"}, False),  # not one word
        ("Green", {"answers": ["yellow"], "check": "one_word"}, False),
        ("1. Apples\n2. Pears\n3. Plums", {"answers": ["apple", "pear"], "check": "list:3"}, True),
        ("Apples, pears and plums.", {"answers": ["apple"], "check": "list:3"}, True),
        ("1. Bananas", {"answers": ["banana"], "check": "list:3"}, False),  # one item, three asked
        ("Red, blue, green, yellow", {"answers": ["red"], "check": "list:3"}, False),  # four
        ("1. Rock\n2. Paper\n3. Scissors", {"answers": ["apple"], "check": "list:3"}, False),  # none of them
        ("No, it is not.", {"answers": ["no"], "not": ["yes"]}, True),
        ("Yes, no doubt.", {"answers": ["no"], "not": ["yes"]}, False),  # names a wrong word
        ("The answer to this classic problem is that 2 + 2 = 4.", {"answers": ["4", "four"]}, True),
    ],
)
def test_check_reply_reads_the_whole_answer_and_its_format(reply, item, passes):
    from circadian.night.scoring import check_reply

    assert check_reply(reply, item) is passes


def test_the_capability_harness_is_large_and_every_item_is_checkable():
    """At least 200 questions over six kinds, each with a check the scorer knows, ids unique."""
    from circadian.night.evaluate import load_capability, load_style
    from circadian.night.scoring import check_reply

    items = load_capability()
    assert len(items) >= 200
    assert {i["category"] for i in items} >= {"arithmetic", "capitals", "science", "language", "common_sense", "format"}
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert item.get("check", "") in ("", "one_word") or item["check"].startswith("list:")
        right = item["answers"][0] if item.get("check") != "list:3" else ", ".join(item["answers"][:3])
        assert check_reply(right, item), item  # its own first answer passes: the item can be scored
        assert not check_reply("I am not sure.", item), item  # a non-answer fails: the item can fail
    assert len(load_style()) == 30
    assert len(load_capability(40)) == 40 and {i["category"] for i in load_capability(40)} == {
        i["category"] for i in items
    }
