"""Step 6 of a night: measure a model (current or candidate) on the same sets.

- validation loss on the night's held-out rows;
- recall: the day's facts asked in wordings never trained on, a hit when an answer appears;
- capability: `eval/prompts.jsonl`, general questions with checkable answers;
- drift: perplexity on the fixed general text `eval/general.txt`.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

from circadian.backends import GenerationSettings, LoadedModel
from circadian.backends.tokens import Example, encode_text
from circadian.core.errors import CircadianError
from circadian.night.scoring import is_hit


def eval_text(name: str) -> str:
    """Return a shipped evaluation file's text (package data: `circadian/night/data/eval/`)."""
    return resources.files("circadian.night").joinpath("data", "eval", name).read_text(encoding="utf-8")


def answer(model: LoadedModel, question: str, max_tokens: int) -> str:
    """Return the model's greedy reply to one question, without any system prompt."""
    settings = GenerationSettings(max_tokens=max_tokens, temperature=0.0)
    return "".join(c.text for c in model.stream([{"role": "user", "content": question}], settings)).strip()


def answers(model: LoadedModel, questions: list[str], max_tokens: int, on_item=None, batch_size: int = 16) -> list[str]:
    """Return the greedy replies to many questions: in batches when the backend offers
    `greedy_batch`, else one by one. `on_item` is called once per answered question."""
    batch = getattr(model, "greedy_batch", None)
    if batch is None:
        replies = []
        for question in questions:
            replies.append(answer(model, question, max_tokens))
            if on_item:
                on_item()
        return replies
    replies = []
    for start in range(0, len(questions), batch_size):
        part = questions[start : start + batch_size]
        replies += batch([[{"role": "user", "content": q}] for q in part], max_tokens, batch_size)
        for _ in part:
            if on_item:
                on_item()
    return replies


def ask_all(model: LoadedModel, items: list[dict], *, key: str, max_tokens: int, on_item=None) -> dict:
    """Given items with a question under `key` and "answers", return {"score", "n", "items"}."""
    replies = answers(model, [item[key] for item in items], max_tokens, on_item)
    results = [{**item, "answer": reply, "hit": is_hit(reply, item["answers"])} for item, reply in zip(items, replies)]
    hits = sum(r["hit"] for r in results)
    return {"score": hits / len(results) if results else None, "n": len(results), "items": results}


def read_probes(path: Path) -> list[dict]:
    """Given a JSONL file of {"question", "answers"} rows, return them.

    Raise CircadianError naming the first bad line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CircadianError(f"{path}: no such file") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise CircadianError(f"{path}: line {number} is not JSON") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("question"), str)
            or not row["question"].strip()
            or not isinstance(row.get("answers"), list)
            or not all(isinstance(a, str) for a in row["answers"])
            or not row["answers"]
        ):
            raise CircadianError(f'{path}: line {number} needs {{"question": text, "answers": [text, ...]}}')
        items.append({"question": row["question"], "answers": row["answers"]})
    if not items:
        raise CircadianError(f"{path}: no probes")
    return items


def load_capability() -> list[dict]:
    return [json.loads(line) for line in eval_text("prompts.jsonl").splitlines() if line.strip()]


def general_examples(tokenizer, chunk: int = 256) -> list[Example]:
    return encode_text(tokenizer, eval_text("general.txt"), chunk)


def mean_loss(model: LoadedModel, examples: list[Example], batch_size: int = 8) -> float | None:
    """Return the mean per-token negative log-likelihood over examples (None when empty)."""
    if not examples:
        return None
    scored = model.score(examples, batch_size)
    return sum(s for s, _ in scored) / max(1, sum(n for _, n in scored))


def perplexity(model: LoadedModel, examples: list[Example]) -> float:
    return math.exp(mean_loss(model, examples))


def score_of(metrics: dict | None, key: str) -> float | None:
    """Given measure() output (or a brief of it), return the score under key (a dict's "score")."""
    value = (metrics or {}).get(key)
    return value.get("score") if isinstance(value, dict) else value


def brief_metrics(metrics: dict) -> dict:
    """Given measure()'s output, return its figures without the per-question items."""
    return {
        "val_loss": metrics["val_loss"],
        "recall": score_of(metrics, "recall"),
        "retention": score_of(metrics, "retention"),
        "capability": score_of(metrics, "capability"),
        "perplexity": metrics["perplexity"],
    }


def measure(
    model: LoadedModel,
    *,
    valid: list[Example],
    probes: list[dict],
    retention: list[dict],
    capability: list[dict],
    general: list[Example],
    probe_tokens: int,
    capability_tokens: int,
    on_item=None,
) -> dict:
    """Return every figure the gate and the report need for one model state."""
    return {
        "val_loss": mean_loss(model, valid),
        "recall": ask_all(model, probes, key="question", max_tokens=probe_tokens, on_item=on_item),
        "retention": ask_all(model, retention, key="question", max_tokens=probe_tokens, on_item=on_item),
        "capability": ask_all(model, capability, key="prompt", max_tokens=capability_tokens, on_item=on_item),
        "perplexity": perplexity(model, general),
    }
