"""General behaviour kept by construction: the style check, the repetition penalty and the memory
router (a question it sends to the base model is answered exactly as the base model answers it)."""

from __future__ import annotations

import pytest
from test_backends import _make_peft_adapter

from circadian.backends import GenerationSettings, LoadRequest, get_backend
from circadian.night import evaluate, style

PERSONAL = [
    "What is my dog called?",
    "Where does my brother live?",
    "What is my partner's name?",
    "Which hospital do I work at?",
    "What am I allergic to?",
    "When is my birthday?",
    "What colour is my car?",
    "Who is my best friend?",
    "What is my cat's name?",
    "Where did I grow up?",
    "What instrument do I play?",
    "What is my favourite band?",
]
GENERAL = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Write a short poem about the sea.",
    "What is 12 times 12?",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
    "What is the boiling point of water?",
    "Translate 'good morning' into Spanish.",
    "Name three planets.",
    "What does a thermometer measure?",
    "How do volcanoes form?",
    "Explain photosynthesis simply.",
]


def test_a_loop_is_caught_and_an_ordinary_reply_is_not():
    assert style.has_loop("Avoid heavy meals close to bedtime. Keep cool. Avoid heavy meals close to bedtime.")
    assert style.has_loop("je vous recommandons de faire des résultats, " * 3)
    assert not style.has_loop("Go to bed at the same time every night, keep the room dark, and skip late coffee.")


def test_the_style_check_fails_a_reply_in_the_wrong_language_or_length():
    items = [{"id": "a", "prompt": "How can I sleep better?", "language": "en"}] * 3
    replies = [
        "Go to bed at the same time every night and keep the room dark and cool.",
        "Je vous recommande de dormir dans une chambre sombre et fraîche tous les soirs.",
        "Sleep " + "well and rest often, " * 60,
    ]
    result = style.check(items, replies, (5, 40))
    assert [r["hit"] for r in result["items"]] == [True, False, False]
    assert result["items"][1]["checks"]["language"] is False
    assert result["items"][2]["checks"]["length"] is False and result["items"][2]["checks"]["no_loop"] is False
    assert result["score"] == pytest.approx(1 / 3)


@pytest.fixture
def adapted(tiny_model, tmp_path):
    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    folder = _make_peft_adapter(tiny_model, tmp_path / "v0001-test", "v0001-test", scale=2.0)
    base = evaluate.answers(model, PERSONAL + GENERAL, 8)
    model.set_adapter(folder, "v0001-test")
    return model, base


def test_the_router_sends_general_questions_to_the_base_model_exactly(adapted):
    from circadian.backends import router

    model, base = adapted
    with_adapter = evaluate.answers(model, PERSONAL + GENERAL, 8)
    assert with_adapter != base  # the adapter changes replies: the comparison below means something
    layers = model.router_layers()
    model.router = router.fit(
        model.features(PERSONAL, layers), model.features(GENERAL, layers), layers=layers, questions=PERSONAL
    )
    routed = evaluate.answers(model, PERSONAL + GENERAL, 8, batch_size=5)
    who = model.answered_by([[{"role": "user", "content": q}] for q in PERSONAL + GENERAL])
    assert who == ["adapter"] * len(PERSONAL) + ["base"] * len(GENERAL)  # it separates what it was fitted on
    assert routed[len(PERSONAL) :] == base[len(PERSONAL) :]  # general: the base model's replies, exactly
    assert routed[: len(PERSONAL)] == with_adapter[: len(PERSONAL)]  # personal: the adapter's
    single = "".join(c.text for c in model.stream([{"role": "user", "content": GENERAL[0]}], GenerationSettings(8)))
    assert single.strip() == base[len(PERSONAL)] and model.last_route == "base"
    assert model.last_route_score < model.router.threshold  # the score the chat logs with the turn
    "".join(c.text for c in model.stream([{"role": "user", "content": PERSONAL[0]}], GenerationSettings(4)))
    assert model.last_route == "adapter" and model.last_route_score >= model.router.threshold


def test_a_router_survives_saving_and_its_cache_answers_as_the_base_model(adapted, tmp_path):
    from circadian.backends import router
    from circadian.night.base_answers import BaseAnswers

    model, base = adapted
    layers = model.router_layers()
    fitted = router.fit(model.features(PERSONAL, layers), model.features(GENERAL, layers), layers=layers, questions=[])
    fitted.save(tmp_path)
    model.router = router.load(tmp_path)
    cache = BaseAnswers(tmp_path / "cache", ["tiny"])
    first = evaluate.answers(model, PERSONAL + GENERAL, 8, cache=cache)
    assert len(BaseAnswers(tmp_path / "cache", ["tiny"]).known) == len(GENERAL)  # only the base's answers
    cache.known = {k: "cached" for k in cache.known}  # proves the second pass reads the cache
    second = evaluate.answers(model, PERSONAL + GENERAL, 8, cache=cache)
    assert first[len(PERSONAL) :] == base[len(PERSONAL) :]
    assert second[len(PERSONAL) :] == ["cached"] * len(GENERAL) and second[: len(PERSONAL)] == first[: len(PERSONAL)]


def test_the_feature_cache_gives_the_base_models_features_and_reads_the_model_once(adapted, tmp_path):
    import torch

    from circadian.night.base_features import BaseFeatures

    model, _base = adapted  # the adapter is on: features are read with it off, as the router reads them
    layers = model.router_layers()
    fresh = model.features(GENERAL, layers)
    cache = BaseFeatures(tmp_path / "cache", ["tiny", layers])
    assert torch.allclose(cache.features(model, GENERAL, layers), fresh, atol=1e-4)
    again = BaseFeatures(tmp_path / "cache", ["tiny", layers])  # a later night, from the file
    assert set(again.known) == set(GENERAL)
    assert torch.allclose(again.features(None, GENERAL[::-1], layers), fresh.flip(0), atol=1e-4)  # no model read
    assert BaseFeatures(tmp_path / "cache", ["tiny", [0]]).known == {}  # other layers: another file
    again.path.write_bytes(b"torn")  # an unreadable file is read again from the model
    assert BaseFeatures(tmp_path / "cache", ["tiny", layers]).known == {}
    assert torch.allclose(
        BaseFeatures(tmp_path / "cache", ["tiny", layers]).features(model, GENERAL, layers), fresh, atol=1e-4
    )


def test_the_repetition_penalty_changes_replies_the_same_way_streamed_and_batched(tiny_model):
    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    asking = evaluate.Asking(repetition_penalty=1.8, repetition_context=16)
    plain = evaluate.answers(model, GENERAL[:4], 16)
    penalized = evaluate.answers(model, GENERAL[:4], 16, asking=asking, batch_size=3)
    assert penalized != plain
    assert [evaluate.answer(model, q, 16, asking) for q in GENERAL[:4]] == penalized
