"""The knowledge pipeline on ordinary phrasing: the teacher-free parse generator, grounding, updates,
the rows it makes, the model generator's parser on recorded replies, and the calibration verdict."""

from __future__ import annotations

import json
from pathlib import Path

from circadian.night.knowledge import calibration, pipeline, rows
from circadian.night.knowledge.conversation import Conversation, Turn
from circadian.night.knowledge.model import parse_reply
from circadian.night.scoring import is_hit

RECORDED = Path(__file__).parent / "data" / "model_replies.json"


def chat(*messages: str, roles: str | None = None) -> Conversation:
    """A conversation of user messages (or, with `roles` like "uau", user and assistant in that order)."""
    roles = roles or "u" * len(messages)
    turns = [Turn("user" if r == "u" else "assistant", m, f"r{i}", i) for i, (r, m) in enumerate(zip(roles, messages))]
    return Conversation("c", "chat", turns)


def facts_of(conversation: Conversation):
    return pipeline.mine([conversation], pipeline.choose("parse")).facts


def answers_of(found) -> set[str]:
    return {a.lower() for f in found for a in f.answers}


def recall_of(found, question_answers: list[str]) -> bool:
    """Whether some fact's statement or renderings would answer with one of the expected words."""
    return any(is_hit(" ".join((f.statement, *f.renderings, f.reverse_answer)), question_answers) for f in found)


def test_parse_finds_facts_in_ordinary_phrasing_the_patterns_miss():
    found = facts_of(
        chat(
            "we take Mochi, our shiba, to the beach on weekends",
            "Phoebe Bridgers is who I play most, honestly my favourite",
            "our van, a white Ford Transit, needs new brakes",
            "I work at Kessler Electrical now, I'm an electrician there",
            "we got a kitten last week, we called him Rolo",
        )
    )
    for expected in (
        ["Mochi"],
        ["shiba"],
        ["beach"],
        ["Phoebe Bridgers"],
        ["Ford Transit"],
        ["electrician"],
        ["Kessler"],
        ["Rolo"],
        ["kitten"],
    ):
        assert recall_of(found, expected), expected
    mochi = next(f for f in found if f.answers == ("Mochi",))
    assert "Your shiba is called Mochi." in mochi.renderings and mochi.reverse[0] == "Who is Mochi?"
    assert any(f.statement.startswith("You take Mochi, your shiba") for f in found)  # second person


def test_parse_reads_a_reply_with_the_assistants_question():
    found = facts_of(chat("I'm off next week", "Where are you flying to?", "Porto, on the 3rd", roles="uau"))
    porto = next(f for f in found if f.answers == ("Porto",))
    assert porto.statement == "You are flying to Porto, on the 3rd." and porto.questions[0] == "Where am I flying to?"
    assert "3rd" in answers_of(found)


def test_parse_makes_no_false_names_and_skips_questions_requests_and_hypotheticals():
    found = facts_of(
        chat(
            "My name is Maya and I'm 30",
            "I'm Dutch",
            "can you remind me to pack adapters?",
            "if i ever get a dog im naming it sphagnum",
            "is my passport still valid?",
        )
    )
    assert answers_of(found) == {"maya", "30", "dutch"}
    assert not any("Maya and" in f.statement for f in found)
    name = next(f for f in found if f.answers == ("Maya",))
    assert name.statement == "Your name is Maya."


def test_a_later_statement_replaces_an_earlier_one_but_two_brothers_stay_two():
    knowledge = pipeline.mine(
        [
            chat(
                "choir is on tuesdays",
                "choir is on mondays now instead",
                "my brother Tom lives in Leeds",
                "my brother Sam is a nurse",
            )
        ],
        pipeline.choose("parse"),
    )
    assert "tuesdays" not in answers_of(knowledge.facts) and "mondays" in answers_of(knowledge.facts)
    assert [(old.answers, new.answers) for old, new in knowledge.replaced] == [(("tuesdays",), ("mondays",))]
    assert {"tom", "sam"} <= answers_of(knowledge.facts)


def test_parse_reads_lowercase_chat_without_inventing_names():
    found = facts_of(
        chat(
            "choir was on tuesdays but that's changing",
            "my mum Els turns 62 on the 14th of March",
            "she loves gardening, especially roses",
        )
    )
    choir = next(f for f in found if f.answers == ("tuesdays",))
    assert choir.questions[0] == "When was choir?"
    assert not any(f.answers == ("choir",) or "choir" in f.statement.lower() for f in found if f is not choir)
    els = next(f for f in found if f.answers == ("Els",))
    assert "What is my mum's name?" in els.questions
    van = next(
        f for f in facts_of(chat("our van, a white Ford Transit, needs new brakes")) if "Transit" in f.answers[0]
    )
    assert van.questions[0] == "What kind of van do I have?"  # parsed as "Our van, ...": an apposition
    vienna = facts_of(chat("Where are you flying to?", "vienna, on the 3rd", roles="au"))
    assert [f.answers for f in vienna][:1] == [("vienna",)]  # a place, lowercase as written


def test_chat_spellings_without_apostrophes_read_as_the_contractions_they_are():
    found = facts_of(chat("my supervisor Fiona wants it by friday", "shes v old school, passive voice everything"))
    statements = [f.statement for f in found]
    assert not any("Fionas" in s for s in statements), statements  # "shes" was read as "she" + "s"
    assert any("Fiona is v old school" in s for s in statements), statements


def test_a_name_after_a_possessed_noun_is_that_nouns_name_however_the_parser_attaches_them():
    """spaCy reads "my flatmate Oskar is vegan" with "my" and "flatmate" both on "Oskar" (not "my mum
    Els", with the name on the noun): the fact is still Oskar's name, and the answer is the name alone."""
    from circadian.night.knowledge.parse import ParseGenerator

    found = pipeline.mine([chat("my flatmate Oskar is vegan so no butter pls")], [ParseGenerator()]).facts
    oskar = [f for f in found if "Oskar" in " ".join(f.answers)]
    assert [f.answers for f in oskar] == [("Oskar",)], [f.answers for f in found]
    assert "What is my flatmate's name?" in oskar[0].questions and "Who is Oskar?" in oskar[0].reverse


def test_the_night_model_capitalizes_names_in_lowercase_chat_and_parse_then_asks_for_them(embedded_model):
    """Lowercase names ("my flatmate jonas") read as common nouns give no naming question; the embedded
    model's capitals (casing.py) make them names. A message typed with capitals is taken as written."""
    from circadian.backends import LoadRequest, get_backend
    from circadian.night.knowledge.casing import Capitals
    from circadian.night.knowledge.parse import ParseGenerator

    capitals = Capitals(get_backend("torch").load(LoadRequest("embedded", embedded_model)))
    said = [
        "my flatmate jonas is vegan so swap the ghee",
        "im flying to vienna on the 3rd",
        "my flatmate Jonas cooks",
        "my flatmate oskar is vegan so no butter pls",
    ]
    recased = capitals(said)
    assert recased[0] == "my flatmate Jonas is vegan so swap the ghee"
    assert "Vienna" in recased[1] and recased[1].lower() == said[1]
    assert recased[2] == said[2]  # already has its capitals: taken as written

    def questions(generator, message: str = said[0], name: str = "jonas") -> list[str]:
        found = pipeline.mine([chat(message)], [generator, pipeline.generators()["rules"]]).facts
        return [q for f in found if any(a.lower() == name for a in f.answers) for q in f.questions]

    assert "What is my flatmate's name?" not in questions(ParseGenerator())
    named = questions(ParseGenerator(capitals=capitals))
    assert "What is my flatmate's name?" in named and "Who is my flatmate?" in named
    # "oskar" after "my flatmate" is parsed as the head with "flatmate" its modifier: the model's capital
    # is what makes it a name (the words are kept lowercase, as the user wrote them)
    assert recased[3] == "my flatmate Oskar is vegan so no butter pls"
    assert "What is my flatmate's name?" not in questions(ParseGenerator(), said[3], "oskar")
    assert "What is my flatmate's name?" in questions(ParseGenerator(capitals=capitals), said[3], "oskar")


def test_a_fact_that_is_one_clause_of_a_sentence_answers_with_the_whole_sentence():
    found = facts_of(chat("we finally adopted a tortoise last month, we named her Pemberton"))
    adopted = next(f for f in found if f.answers == ("tortoise",))
    made = rows.build(found)
    first = next(r for r in made.train if r["lineage"]["fact"] == adopted.key)
    assert "Pemberton" in first["messages"][1]["content"]  # the name comes along with the sibling question


def test_rows_probe_in_a_wording_no_training_row_uses_and_train_away_the_old_answer():
    knowledge = pipeline.mine(
        [chat("my partner Lars is a carpenter", "choir is on tuesdays", "choir is on mondays now instead")],
        pipeline.choose("parse"),
    )
    made = rows.build(knowledge.facts, replaced=knowledge.replaced)
    trained = {r["messages"][0]["content"] for r in made.train}
    assert made.probes and not trained & {p["question"] for p in made.probes}
    assert not trained & {r["messages"][0]["content"] for r in made.valid}
    assert not any(t.format(topic="x").split(" x")[0] in q for t in rows.PROBE_TEMPLATES for q in trained)
    old_questions = [r for r in made.train if r["lineage"].get("replaces")]
    assert old_questions and all("monday" in r["messages"][1]["content"].lower() for r in old_questions)


def test_coverage_marks_a_personal_message_nothing_was_learned_from():
    knowledge = pipeline.mine(
        [chat("My dog is called Biscuit.", "honestly i just feel tired all the time lately")], pipeline.choose("parse")
    )
    assert [bool(c["facts"]) for c in knowledge.coverage] == [True, False]


def test_grounding_rejects_an_answer_the_user_never_said_and_a_redacted_secret():
    conversation = chat("My dog is called Biscuit and my token is [redacted-secret].")
    reply = json.dumps(
        {
            "facts": [
                {
                    "statement": "Your dog is called Biscuit.",
                    "answer": "Biscuit",
                    "subject": "my dog",
                    "questions": ["What is my dog called?"],
                    "reverse": "Who is Biscuit?",
                },
                {"statement": "Your cat is called Felix.", "answer": "Felix", "subject": "my cat", "questions": []},
                {"statement": "Your token is [redacted-secret].", "answer": "[redacted-secret]", "subject": "my token"},
            ]
        }
    )
    mined = parse_reply(reply, conversation)
    checked = [(f.answers, pipeline.grounded(f, conversation)) for f in mined.facts]
    assert checked[0] == (("Biscuit",), None)
    assert checked[1][1] == "its answer is not in what the user said"
    assert checked[2][1] == "built on a redacted secret"


def test_model_replies_recorded_from_the_embedded_model_are_not_capable_and_a_good_reply_is():
    recorded = json.loads(RECORDED.read_text())
    embedded = calibration.judge(recorded["embedded"])
    assert not embedded.capable and embedded.valid_json < calibration.MIN_VALID
    capable = calibration.judge(recorded["capable"])
    assert capable.capable, capable.reason
    mined = parse_reply(recorded["capable"][0], calibration.cases()[0][0])
    assert {"Pixie", "Idris"} <= {a for f in mined.facts for a in f.answers}


def test_a_where_question_keeps_from_at_its_end():
    """ "from Bergen" is asked "Where is Oskar from?": without its preposition the question asks where
    Oskar is now, which the statement does not say."""
    found = facts_of(chat("Oskar is from Bergen", "my sister comes from Lyon", "we moved here from Leeds in 2019"))
    questions = {q for f in found for q in f.questions}
    for asked in ("Where is Oskar from?", "Where does my sister come from?", "Where did we move from in 2019?"):
        assert asked in questions, sorted(questions)
    assert "Where is Oskar?" not in questions and "Tell me where my sister comes from." in questions
    # "from Leeds" hangs on "here": the year's question keeps both, not "When did we move Leeds?"
    assert "When did we move here from Leeds?" in questions, sorted(questions)
