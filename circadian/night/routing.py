"""Step 5b of a night: fit the candidate's memory router (backends/router.py), before it is measured.

The router learns "a question about the user" from the night's fact questions (the first user
message of every fact row, plus every question the current adapter's router was fitted on) against
general prompts: `eval/router_general.jsonl` and the distill prompts. None of these is an evaluation
item, so the misroutes reported here are measured on sets the router never saw: the recall and
retention probes should reach the adapter, the capability questions and style prompts the base model.
"""

from __future__ import annotations

import json
import time

from circadian.backends.router import Router, fit
from circadian.night import distill
from circadian.night.base_features import BaseFeatures
from circadian.night.evaluate import eval_text
from circadian.night.lineage import is_fact


def general_prompts() -> list[str]:
    """The general prompts a router is fitted against (never an evaluation item)."""
    shipped = [json.loads(line)["prompt"] for line in eval_text("router_general.jsonl").splitlines() if line.strip()]
    return shipped + list(distill.prompts())


def fact_questions(train_rows: list[dict], earlier: Router | None) -> list[str]:
    """The fact questions of tonight's rows and of every earlier night (the current router's), once each."""
    questions = list(earlier.questions) if earlier else []
    for row in train_rows:
        if is_fact(row):
            questions += [m["content"] for m in row["messages"][:2] if m["role"] == "user"][:1]
    return list(dict.fromkeys(q for q in questions if q.strip()))


def fit_router(model, train_rows: list[dict], earlier: Router | None, cache: BaseFeatures) -> Router | None:
    """Given the trained model (it reads features with its adapter off), tonight's training rows and
    the current adapter's router, return the candidate's router (None when there is no fact question).
    `cache` holds the base model's features of the general prompts (night/base_features.py)."""
    questions = fact_questions(train_rows, earlier)
    if not questions:
        return None
    layers = model.router_layers()
    general = cache.features(model, general_prompts(), layers)
    return fit(model.features(questions, layers), general, layers=layers, questions=questions)


def misroutes(model, router: Router, *, facts: list[str], general: list[str], cache: BaseFeatures) -> dict:
    """Given held-out fact questions and shipped general prompts (their features from `cache`), return
    how many the router sends the wrong way, and the router's cost for one turn (seconds, features of
    one message and the classifier)."""
    to_adapter = router.wants_adapter(model.features(facts, router.layers)) if facts else []
    general_to_adapter = router.wants_adapter(cache.features(model, general, router.layers)) if general else []
    tic = time.perf_counter()
    for text in general[:8] or ["hello"]:
        router.wants_adapter(model.features([text], router.layers))
    per_turn = (time.perf_counter() - tic) / max(1, len(general[:8]) or 1)
    return {
        "facts": len(facts),
        "facts_to_base": sum(not x for x in to_adapter),
        "general": len(general),
        "general_to_adapter": sum(general_to_adapter),
        "seconds_per_turn": round(per_turn, 4),
        "fitted_on": {"facts": len(router.questions), "general": router.general},
    }
