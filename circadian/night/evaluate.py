"""Step 6 of a night: measure a model (current or candidate) on the same sets, asking as `chat`
does (its system prompt and repetition penalty, greedy).

- validation loss on the night's held-out rows;
- recall: the day's facts asked in wordings never trained on, a hit when an answer appears;
- capability: `eval/capability.jsonl`, 227 general questions with checkable answers, each answer
  read whole (to the end of the reply or `sleep.capability_max_tokens`);
- style: `eval/style.jsonl`, 30 ordinary chat prompts (night/style.py);
- drift: perplexity on the fixed general text `eval/general.txt`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from circadian.backends import GenerationSettings, LoadedModel
from circadian.backends.tokens import Example, encode_text
from circadian.core.config import ChatSettings
from circadian.core.errors import CircadianError
from circadian.night import style
from circadian.night.base_answers import BaseAnswers
from circadian.night.scoring import check_reply


def eval_text(name: str) -> str:
    """Return a shipped evaluation file's text (package data: `circadian/night/data/eval/`)."""
    return resources.files("circadian.night").joinpath("data", "eval", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Asking:
    """How evaluation asks: the chat's system prompt and repetition penalty, greedy, so that what is
    measured is what `chat` and `ask` give. The default (no system prompt, no penalty) is the
    model's own template."""

    system_prompt: str = ""
    repetition_penalty: float = 1.0
    repetition_context: int = 64

    @classmethod
    def of(cls, chat: ChatSettings) -> Asking:
        return cls(chat.system_prompt, chat.repetition_penalty, chat.repetition_context)

    def conversation(self, question: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": question}]

    def settings(self, max_tokens: int) -> GenerationSettings:
        return GenerationSettings(
            max_tokens=max_tokens,
            temperature=0.0,
            repetition_penalty=self.repetition_penalty,
            repetition_context=self.repetition_context,
        )


PLAIN = Asking()  # the model's own template, no penalty


def answer(model: LoadedModel, question: str, max_tokens: int, asking: Asking = PLAIN) -> str:
    """Return the model's greedy reply to one question."""
    chunks = model.stream(asking.conversation(question), asking.settings(max_tokens))
    return "".join(c.text for c in chunks).strip()


def answers(
    model: LoadedModel,
    questions: list[str],
    max_tokens: int,
    on_item=None,
    batch_size: int = 16,
    asking: Asking = PLAIN,
    cache: BaseAnswers | None = None,
) -> list[str]:
    """Return the greedy replies to many questions: in batches when the backend offers
    `greedy_batch`, else one by one. `on_item` is called once per answered question.

    With a `cache` and a backend that says who answers (`answered_by`: the base model when no
    adapter is on or the router sends the question there), the base model's answers come from the
    cache, and the ones not cached yet are generated with the adapter off and added to it."""
    if cache is None or not hasattr(model, "answered_by"):
        return _generated(model, questions, max_tokens, on_item, batch_size, asking)
    who = model.answered_by([asking.conversation(q) for q in questions])
    replies: list[str | None] = [cache.get(q, max_tokens) if w == "base" else None for q, w in zip(questions, who)]
    for _ in range(sum(r is not None for r in replies)):
        if on_item:
            on_item()
    todo = [i for i, w in enumerate(who) if w == "base" and replies[i] is None]
    if todo:
        with model.base_only():
            fresh = _generated(model, [questions[i] for i in todo], max_tokens, on_item, batch_size, asking)
        cache.add([questions[i] for i in todo], max_tokens, fresh)
        for i, reply in zip(todo, fresh):
            replies[i] = reply
    rest = [i for i, w in enumerate(who) if w != "base"]
    for i, reply in zip(rest, _generated(model, [questions[i] for i in rest], max_tokens, on_item, batch_size, asking)):
        replies[i] = reply
    return replies


def _generated(model, questions, max_tokens, on_item, batch_size, asking) -> list[str]:
    if not questions:
        return []
    batch = getattr(model, "greedy_batch", None)
    if batch is None:
        replies = []
        for question in questions:
            replies.append(answer(model, question, max_tokens, asking))
            if on_item:
                on_item()
        return replies
    replies = []
    for start in range(0, len(questions), batch_size):
        part = questions[start : start + batch_size]
        replies += batch([asking.conversation(q) for q in part], asking.settings(max_tokens), batch_size)
        for _ in part:
            if on_item:
                on_item()
    return replies


def ask_all(
    model: LoadedModel,
    items: list[dict],
    *,
    key: str,
    max_tokens: int,
    on_item=None,
    asking: Asking = PLAIN,
    cache: BaseAnswers | None = None,
) -> dict:
    """Given items with a question under `key` and "answers" (and, for capability items, optional
    "not" and "check": scoring.check_reply), return {"score", "n", "items"}."""
    replies = answers(model, [item[key] for item in items], max_tokens, on_item, asking=asking, cache=cache)
    results = [{**item, "answer": reply, "hit": check_reply(reply, item)} for item, reply in zip(items, replies)]
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


def spread(items: list, limit: int) -> list:
    """Given items and a limit (0: all), return at most `limit` of them spread evenly over the list
    (every category of a sorted set keeps its share)."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def load_capability(limit: int = 0) -> list[dict]:
    """Return the capability harness (`eval/capability.jsonl`), or `limit` questions spread over it."""
    items = [json.loads(line) for line in eval_text("capability.jsonl").splitlines() if line.strip()]
    return spread(items, limit)


def load_style(limit: int = 0) -> list[dict]:
    """Return the style check's chat prompts (`eval/style.jsonl`), or `limit` of them spread over it."""
    return spread(style.load_style(eval_text("style.jsonl")), limit)


def changes(before: dict | None, after: dict | None) -> dict:
    """Given two ask_all / style results over the same items, return {"broke": [...], "fixed": [...]}:
    the items one model passed and the other did not, with both answers."""
    out: dict[str, list] = {"broke": [], "fixed": []}
    if not before or not after:
        return out
    was = {item.get("id") or item.get("prompt") or item.get("question"): item for item in before.get("items", [])}
    for item in after.get("items", []):
        key = item.get("id") or item.get("prompt") or item.get("question")
        old = was.get(key)
        if old is None or old["hit"] == item["hit"]:
            continue
        entry = {
            "id": key,
            "prompt": item.get("prompt") or item.get("question"),
            "before": old["answer"],
            "after": item["answer"],
        }
        out["fixed" if item["hit"] else "broke"].append(entry)
    return out


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


def routed_perplexity(model: LoadedModel, examples: list[Example]) -> float:
    """Perplexity of the text as the user gets it: each passage scored by whoever the router sends
    it to (the base model, or the adapter); the plain perplexity when there is no router."""
    if not getattr(model, "router", None) or not hasattr(model, "answered_by"):
        return perplexity(model, examples)
    texts = [model.tokenizer.decode(e.ids, skip_special_tokens=True) for e in examples]
    who = model.answered_by([[{"role": "user", "content": t}] for t in texts])
    to_base = [e for e, w in zip(examples, who) if w == "base"]
    with model.base_only():
        scored = model.score(to_base, 8) if to_base else []
    rest = [e for e, w in zip(examples, who) if w != "base"]
    scored += model.score(rest, 8) if rest else []
    return math.exp(sum(s for s, _ in scored) / max(1, sum(n for _, n in scored)))


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
        "style": score_of(metrics, "style"),
        "perplexity": metrics["perplexity"],
        "perplexity_adapter": metrics.get("perplexity_adapter"),
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
    style_items: list[dict] = (),
    style_tokens: int = 160,
    style_range: tuple[int, int] | None = None,
    asking: Asking = PLAIN,
    cache: BaseAnswers | None = None,
    on_item=None,
) -> dict:
    """Return every figure the gate and the report need for one model state. The style check
    measures reply lengths against `style_range` (the base model's); without one, this model is
    taken as the base and its own range is used (and returned under "style"["range"])."""
    ask = dict(on_item=on_item, asking=asking, cache=cache)
    metrics = {
        "val_loss": mean_loss(model, valid),
        "recall": ask_all(model, probes, key="question", max_tokens=probe_tokens, **ask),
        "retention": ask_all(model, retention, key="question", max_tokens=probe_tokens, **ask),
        "capability": ask_all(model, capability, key="prompt", max_tokens=capability_tokens, **ask),
        "perplexity": routed_perplexity(model, general),
        "perplexity_adapter": perplexity(model, general),
        "style": None,
    }
    if style_items:
        replies = answers(model, [item["prompt"] for item in style_items], style_tokens, **ask)
        metrics["style"] = style.check(style_items, replies, style_range or style.length_range(replies))
    return metrics
