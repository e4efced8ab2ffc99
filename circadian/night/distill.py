"""Self-distillation replay: general prompts answered by the base model itself, mixed into every
night so the adapter keeps the base model's general behaviour (without it the 135M model collapses
onto the day's facts: EMBEDDED_MODEL_NOTES.md). Answers are cached per base model in
`models/distill_cache/`, so only the first night pays for them.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from circadian.backends import LoadedModel
from circadian.core.fsutil import append_jsonl
from circadian.night.base_answers import keyed_path
from circadian.night.evaluate import PLAIN, Asking
from circadian.night.evaluate import answers as answer_many
from circadian.night.lineage import DISTILL

GENERATOR = DISTILL
VERSION = "1"
MAX_TOKENS = 48
BATCH = 16  # answers appended to the cache per batch: an interrupted night keeps the finished ones


def prompts() -> list[str]:
    return json.loads(
        resources.files("circadian.night").joinpath("data/distill_prompts.json").read_text(encoding="utf-8")
    )


def model_identity(model_path: Path) -> str:
    """Return a short content identity of a model folder (its build manifest, else its config)."""
    for name in ("circadian-model.json", "config.json"):
        if (model_path / name).is_file():
            return hashlib.sha256((model_path / name).read_bytes()).hexdigest()[:16]
    return hashlib.sha256(str(model_path).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, model_path: Path, asking: Asking = PLAIN) -> Path:
    """One cache file per base model, reply length and way of asking (system prompt, repetition
    penalty): {"prompt", "reply"} lines, grown as needed."""
    identity = [model_identity(model_path), MAX_TOKENS]
    if asking != PLAIN:
        identity.append([asking.system_prompt, asking.repetition_penalty, asking.repetition_context])
    return keyed_path(cache_dir, "answers", identity, ".jsonl")


def _read_cache(path: Path) -> dict[str, str]:
    answers = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").split("\n"):
            try:
                item = json.loads(line)
                answers[item["prompt"]] = item["reply"]
            except (ValueError, KeyError, TypeError):
                continue  # a cache line is rebuilt, never trusted half-written
    return answers


def _row(prompt: str, reply: str, model_name: str) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
        "lineage": {"generator": GENERATOR, "version": VERSION, "model": model_name},
    }


def cached_rows(cache_dir: Path, model_path: Path, limit: int, asking: Asking = PLAIN) -> tuple[list[dict], int]:
    """Return (the rows already answered among the first `limit` prompts, how many are still missing)."""
    answers = _read_cache(cache_path(cache_dir, model_path, asking))
    wanted = prompts()[:limit]
    rows = [_row(p, answers[p], model_path.name) for p in wanted if answers.get(p)]
    return rows, sum(1 for p in wanted if p not in answers)


def missing(cache_dir: Path, model_path: Path, limit: int, asking: Asking = PLAIN) -> int:
    return cached_rows(cache_dir, model_path, limit, asking)[1]


def _whole_sentences(reply: str) -> str:
    """Cut a reply that hit the token limit back to its last complete sentence ("" if none)."""
    if reply.endswith((".", "!", "?", ")", '"')):
        return reply
    cut = max(reply.rfind(". "), reply.rfind("! "), reply.rfind("? "), reply.rfind(".\n"))
    return reply[: cut + 1].strip() if cut > 0 else ""


def distilled_rows(
    model: LoadedModel,
    restore,
    cache_dir: Path,
    model_path: Path,
    limit: int,
    on_item=None,
    asking: Asking = PLAIN,
) -> list[dict]:
    """Return the general rows of the first `limit` prompts, answering the ones not cached yet with
    the base model (adapter switched off; `restore` puts the current adapter back afterwards).
    Each batch of answers is appended to the cache as soon as it exists, so an interrupted night keeps them."""
    if limit <= 0:
        return []
    path = cache_path(cache_dir, model_path, asking)
    answers = _read_cache(path)
    todo = [p for p in prompts()[:limit] if p not in answers]
    if todo:
        had_adapter = model.adapter_version is not None
        if had_adapter:
            model.set_adapter(None, None)
        try:
            for start in range(0, len(todo), BATCH):
                part = todo[start : start + BATCH]
                replies = answer_many(model, part, MAX_TOKENS, on_item, batch_size=BATCH, asking=asking)
                for prompt, reply in zip(part, replies):
                    answers[prompt] = _whole_sentences(reply)
                append_jsonl(path, [{"prompt": p, "reply": answers[p]} for p in part])
        finally:
            if had_adapter:
                restore()
    return [_row(p, answers[p], model.model_name) for p in prompts()[:limit] if answers[p]]
