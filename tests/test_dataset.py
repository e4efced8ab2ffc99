"""The night's data: fact extraction, redaction, masking of every assistant turn, length
batching, selection and leak-free splits."""

from __future__ import annotations

import pytest

from circadian.backends import tokens
from circadian.core.config import SleepSettings
from circadian.core.errors import CircadianError
from circadian.night import dataset, redact
from circadian.night.knowledge import rules as facts
from circadian.night.lineage import is_fact
from circadian.store.memories import MemoryRecord, make_record


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("My dog is called Biscuit.", [("named", "dog", "Biscuit")], id="called"),
        pytest.param(
            "Just back from walking Pepper, my beagle.",
            [("named", "beagle", "Pepper"), ("named", "dog", "Pepper")],
            id="apposition",
        ),
        pytest.param(
            "My brother Ahmed is visiting. He lives in Lisbon.",
            [("named", "brother", "Ahmed"), ("lives", "Ahmed", "Lisbon")],
            id="possessive_and_coreference",
        ),
        pytest.param("I'm allergic to peanuts, so no satay.", [("allergy", "", "peanuts")], id="allergy"),
        pytest.param(
            "I work as a nurse at the Diakonessenhuis hospital.",
            [("job", "", "nurse"), ("workplace", "", "the Diakonessenhuis hospital")],
            id="job_at",
        ),
        pytest.param("Teal is my favourite colour.", [("favourite", "colour", "Teal")], id="favourite_inverted"),
        pytest.param("My favorite food is pad thai.", [("favourite", "food", "pad thai")], id="favorite_us"),
        pytest.param("My birthday is on March 3rd.", [("birthday", "", "March 3rd")], id="date"),
        pytest.param(
            "I grew up in Zwolle and I live in Amsterdam now.",
            [("home", "", "Amsterdam"), ("origin", "", "Zwolle")],
            id="places",
        ),
        pytest.param("I'm tired today.", [], id="no_fact"),
    ],
)
def test_extract_facts_handles_ordinary_phrasing(text, expected):
    assert sorted((f.kind, f.subject, f.value) for f in facts.extract_facts(text)) == sorted(expected)


def test_extract_facts_skips_redacted_values():
    assert facts.extract_facts("My favourite number is [redacted-card].") == []


def test_wordings_are_disjoint_and_stable():
    fact = facts.extract_facts("My dog is called Biscuit.")[0]
    words = facts.wordings(fact)
    assert len(words.probe) == 1 and len(words.valid) == 1 and len(words.train) >= 4
    assert not set(words.train) & (set(words.valid) | set(words.probe))
    assert facts.wordings(fact) == words


@pytest.mark.parametrize(
    "text, kind",
    [
        pytest.param("key AKIAIOSFODNN7EXAMPLE here", "secret", id="aws"),
        pytest.param("token ghp_16C7e42F292c6912E7710c838347Ae178B4a ok", "secret", id="github"),
        pytest.param("use sk-proj-Abc123def456GHI789jkl012MNO345 now", "secret", id="openai"),
        pytest.param("blob 7f9a8b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a", "secret", id="high_entropy"),
        pytest.param("write to maya.jansen@example.org", "email", id="email"),
        pytest.param("call +31 6 12345678 tonight", "phone", id="phone"),
        pytest.param("pay NL91 ABNA 0417 1643 00 please", "iban", id="iban"),
        pytest.param("card 4111 1111 1111 1111 exp", "card", id="card"),
    ],
)
def test_redact_text_replaces_and_counts(text, kind):
    result = redact.redact_text(text)
    assert f"[redacted-{kind}]" in result.text and result.counts[kind] == 1


def test_redact_text_leaves_ordinary_text_alone():
    text = "My dog Biscuit was born in 2019 and weighs 12 kg; the meeting is at 10:30."
    assert redact.redact_text(text).text == text


@pytest.fixture(scope="module")
def tokenizer(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


def test_encode_chat_targets_every_assistant_turn_only(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": "Still here."},
    ]
    example = tokens.encode_chat(tokenizer, messages)
    targeted = tokenizer.decode([t for t, m in zip(example.ids, example.mask) if m])
    assert "Hello there." in targeted and "Still here." in targeted
    assert "Hi" not in targeted and "And again?" not in targeted
    assert targeted.count("<|im_end|>") == 2  # each turn learns to stop


def test_validate_refuses_missing_assistant_span_and_implausible_ratio():
    with pytest.raises(CircadianError, match="no assistant tokens"):
        tokens.validate([tokens.Example([1, 2, 3], [0, 0, 0])])
    with pytest.raises(CircadianError, match="implausible trained-token ratio"):
        tokens.validate([tokens.Example(list(range(10)), [1] * 10)])


def test_length_batches_cover_everything_with_little_padding():
    lengths = [5, 50, 6, 48, 7, 52, 5, 49, 3]
    batches = tokens.length_batches(lengths, 4, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches[-1]) <= 4  # smaller than a batch still trains
    naive = [list(range(i, min(i + 4, len(lengths)))) for i in range(0, len(lengths), 4)]
    assert tokens.padding_share(lengths, batches) < tokens.padding_share(lengths, naive) / 2


def _record(text, **kw):
    return MemoryRecord.model_validate(
        make_record(
            [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}],
            session="s",
            model="m",
            adapter=None,
            source=kw.pop("source", "chat"),
            **kw,
        )
    )


def test_select_and_build_leave_out_no_train_forgotten_and_trained():
    fresh = _record("My dog is called Biscuit.")
    secret = _record("My cat is called Whiskers. #no-train")
    gone = _record("My sister Lena lives in Oslo.")
    old = _record("I grew up in Zwolle.")
    selection = dataset.select([fresh, secret, gone, old], trained={old.id}, forgotten={gone.id})
    assert [r.id for r in selection.new] == [fresh.id] and [r.id for r in selection.replay_pool] == [old.id]
    assert selection.skipped == {"no-train": 1, "forgotten": 1}
    plan = dataset.build(selection, SleepSettings())
    text = str(plan.train + plan.valid + plan.probes)
    assert "Biscuit" in text and "Zwolle" in text and "Whiskers" not in text and "Lena" not in text
    assert plan.trained_ids == [fresh.id]
    assert plan.retention_probes and all(p["answers"] == ["Zwolle"] for p in plan.retention_probes)


def test_older_facts_not_yet_graduated_are_replayed_first():
    fresh = _record("My dog is called Biscuit.")
    older = [_record(t) for t in ("I grew up in Zwolle.", "My sister Lena lives in Oslo.", "I work as a nurse.")]
    selection = dataset.select([fresh, *older], trained={r.id for r in older}, forgotten=set())
    settings = SleepSettings(replay_facts=1)
    everything = dataset.build(selection, settings.model_copy(update={"replay_facts": 10}))
    keys = set(f["key"] for f in everything.replayed_facts)
    assert len(keys) == 3
    for left in keys:  # whichever fact alone has not graduated is the one replayed (and asked again)
        plan = dataset.build(selection, settings, graduated=keys - {left})
        assert {f["key"] for f in plan.replayed_facts} == {p["fact"] for p in plan.retention_probes} == {left}


def test_replay_rows_sets_how_many_rows_each_older_fact_trains():
    fresh = _record("My dog is called Biscuit.")
    older = _record("My sister Lena lives in Oslo and works as a nurse.")
    selection = dataset.select([fresh, older], trained={older.id}, forgotten=set())

    def per_fact(rows: int) -> list[int]:
        plan = dataset.build(selection, SleepSettings(replay_rows=rows))
        replayed = {f["key"] for f in plan.replayed_facts}
        return [sum(r.get("lineage", {}).get("fact") == key for r in plan.train) for key in sorted(replayed)]

    assert per_fact(1) and set(per_fact(1)) == {1}
    assert max(per_fact(5)) > 3 and all(n <= 5 for n in per_fact(5))


def test_two_nights_facts_worded_alike_never_train_a_held_out_wording():
    """Two brothers, one told on each night: both are asked "What is my brother's name?". Replayed, the
    older one's rows must not train a wording tonight holds out, nor its probe be asked in one tonight trains
    (this night stopped with the leak check's AssertionError before)."""
    older = _record("My brother Arjun is a dentist in Pune.")
    fresh = _record("My brother Kacper just turned twelve.")
    selection = dataset.select([older, fresh], trained={older.id}, forgotten=set())
    plan = dataset.build(selection, SleepSettings(replay_facts=10))
    dataset.check_no_leak(plan)
    assert plan.replayed_facts and any("Arjun" in str(r) for r in plan.train)  # the older brother still replays
    trained = {r["messages"][0]["content"] for r in plan.train}
    held = {r["messages"][0]["content"] for r in plan.valid} | {p["question"] for p in plan.probes}
    assert not trained & held and not trained & {p["question"] for p in plan.retention_probes}


def test_build_redacts_before_training_and_splits_without_leaks():
    records = [
        _record("My email is maya@example.org and my dog is called Biscuit."),
        _record("I work as a nurse at Diakonessenhuis."),
        _record("we call the laptop Pixel, its github token is ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
    ]
    plan = dataset.build(dataset.select(records, trained=set(), forgotten=set()), SleepSettings())
    assert plan.redactions["email"] == 1 and plan.redactions["secret"] == 1
    trained = str(plan.train + plan.valid + plan.probes)
    assert "Biscuit" in trained and "Pixel" in trained  # the sentences were learned from, their secrets not
    assert "maya@example.org" not in trained and "ghp_16C7e42F" not in trained
    dataset.check_no_leak(plan)
    train_q = {r["messages"][0]["content"] for r in plan.train}
    assert not train_q & {p["question"] for p in plan.probes}
    assert all(
        r["lineage"]["generator"] in ("parse", "rules", "parse+rules") and r["lineage"]["version"]
        for r in plan.train
        if is_fact(r)
    )


def test_build_imported_conversations_split_by_conversation():
    records = [_record(f"conversation {i}", source="import:x.jsonl") for i in range(12)]
    plan = dataset.build(dataset.select(records, trained=set(), forgotten=set()), SleepSettings())
    train_ids = {r["lineage"]["source_id"] for r in plan.train}
    valid_ids = {r["lineage"]["source_id"] for r in plan.valid}
    assert train_ids and valid_ids and not train_ids & valid_ids
    assert len(train_ids | valid_ids) == 12


def test_build_newer_fact_replaces_older_one():
    old = _record("I live in Utrecht.")
    new = _record("I live in Rotterdam.")
    plan = dataset.build(dataset.select([old, new], trained={old.id}, forgotten=set()), SleepSettings())
    assert [f["value"] for f in plan.facts] == ["Rotterdam"] and plan.replayed_facts == []


def test_distill_prompts_grows_with_the_fact_rows():
    many = [
        _record(text)
        for text in (
            "My dog is called Biscuit.",
            "My cat is called Mochi.",
            "I grew up in Zwolle.",
            "I work as a nurse.",
            "My sister Lena lives in Oslo.",
            "I play the cello.",
            "My favourite colour is green.",
            "I drive a Volvo.",
            "I speak Dutch.",
        )
    ]
    plan = dataset.build(dataset.select(many, trained=set(), forgotten=set()), SleepSettings())
    fact_rows = sum(is_fact(r) for r in plan.train)
    assert fact_rows > 40
    assert dataset.distill_wanted(plan, SleepSettings(), available=150) == fact_rows
    assert dataset.distill_wanted(plan, SleepSettings(), available=40) == 40  # no more than there are prompts
    assert dataset.distill_wanted(plan, SleepSettings(distill_per_fact_row=0), available=150) == 50
    one = dataset.build(dataset.select(many[:1], trained=set(), forgotten=set()), SleepSettings())
    assert dataset.distill_wanted(one, SleepSettings(), available=150) == 50  # the floor: distill_prompts


def test_inbox_units_come_before_today_with_their_own_splits():
    plan = dataset.build(
        dataset.select([_record("My dog is called Biscuit.")], trained=set(), forgotten=set()), SleepSettings()
    )
    rows = [
        [{"role": "user", "content": f"Say code {i}."}, {"role": "assistant", "content": f"Code {i}."}]
        for i in range(10)
    ]
    plan = dataset.add_inbox(plan, [({"id": "q1", "name": "a.jsonl", "priority": "priority"}, rows)], SleepSettings())
    assert [u.name for u in plan.datasets] == ["inbox priority: a.jsonl", "today"]
    unit = plan.datasets[0]
    assert unit.queue_id == "q1" and len(unit.valid) >= 1 and len(unit.train) + len(unit.valid) == 10
    assert not {str(r["messages"]) for r in unit.train} & {str(r["messages"]) for r in unit.valid}
    assert plan.counts["inbox_rows"] == 10 and plan.new_material == 1 + 10


def test_the_same_day_imported_into_two_homes_gives_the_same_dataset(tmp_path, tiny_model):
    """The validation split is keyed by what was said, not by the random record ids: two fresh homes
    importing one file plan the same rows (the same dataset hash), so they reach the same decision."""
    import json as _json

    from conftest import MODELS, run_cli

    day = tmp_path / "day.jsonl"
    day.write_text(
        "".join(
            _json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Please remember code word number {i}: lantern-{i * 7}."},
                        {"role": "assistant", "content": f"Code word {i} is lantern-{i * 7}."},
                    ]
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    hashes = []
    for name in ("one", "two"):
        env = {
            "CIRCADIAN_HOME": str(tmp_path / name),
            "CIRCADIAN_MODELS_DIR": str(MODELS),
            "CIRCADIAN_MODEL__NAME": str(tiny_model),
        }
        assert run_cli("import", str(day), env=env).returncode == 0
        planned = run_cli("sleep", "--dry-run", "--json", env=env)
        assert planned.returncode == 0, planned.stderr[-2000:]
        hashes.append(_json.loads(planned.stdout)["dataset_sha256"])
    assert hashes[0] == hashes[1]
