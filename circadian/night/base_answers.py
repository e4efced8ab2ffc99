"""The base model's greedy answers to evaluation questions, cached on disk per base model and way
of asking, so that a question the router sends to the base model is generated once, not every night.

One JSONL file per (base model, system prompt, repetition penalty) in `models/eval_cache/`, lines
{"prompt", "max_tokens", "reply"}, appended as batches finish; an unreadable line is skipped and
answered again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from circadian.core.fsutil import append_jsonl


def keyed_path(folder: Path, kind: str, identity, suffix: str) -> Path:
    """The cache file `<kind>-<key><suffix>` in `folder`, its key a short hash of `identity` (JSON-able)."""
    return folder / f"{kind}-{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]}{suffix}"


def base_identity(identity: str, backend: str, model) -> list:
    """What makes a base model's outputs what they are: its folder's identity (distill.model_identity),
    the backend, and the model settings' dtype and quantization."""
    return [identity, backend, model.dtype, model.quantize]


class BaseAnswers:
    """The cache for one base model and one way of asking (`identity`: any JSON-able value)."""

    def __init__(self, folder: Path, identity):
        self.path = keyed_path(folder, "answers", identity, ".jsonl")
        self.known: dict[tuple[str, int], str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").split("\n"):
                try:
                    item = json.loads(line)
                    self.known[(item["prompt"], int(item["max_tokens"]))] = item["reply"]
                except (ValueError, KeyError, TypeError):
                    continue

    def get(self, prompt: str, max_tokens: int) -> str | None:
        return self.known.get((prompt, max_tokens))

    def add(self, prompts: list[str], max_tokens: int, replies: list[str]) -> None:
        rows = [{"prompt": p, "max_tokens": max_tokens, "reply": r} for p, r in zip(prompts, replies)]
        for row in rows:
            self.known[(row["prompt"], max_tokens)] = row["reply"]
        if rows:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, rows)


def eval_cache(models: Path, identity: str, backend: str, model, asking) -> BaseAnswers:
    """The cache of a base model's evaluation answers (`identity`: distill.model_identity of its folder)
    for a backend, the model settings' dtype and quantization, and a way of asking (evaluate.Asking)."""
    from dataclasses import asdict

    return BaseAnswers(models / "eval_cache", [*base_identity(identity, backend, model), list(asdict(asking).values())])
