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
