"""Self-distillation replay: general prompts answered by the base model itself, mixed into every
night so the adapter keeps the base model's general behaviour (without it the 135M model collapses
onto the day's facts: EMBEDDED_MODEL_NOTES.md). Answers are cached per base model in
`data/replay_cache/`, so only the first night pays for them.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from circadian.backends import LoadedModel
from circadian.evaluate import answer
from circadian.fsutil import atomic_write_text

GENERATOR = "self-distillation"
VERSION = "1"
MAX_TOKENS = 48


def prompts() -> list[str]:
    return json.loads(resources.files("circadian").joinpath("replay_prompts.json").read_text(encoding="utf-8"))


def model_identity(model_path: Path) -> str:
    """Return a short content identity of a model folder (its build manifest, else its config)."""
    for name in ("circadian-model.json", "config.json"):
        if (model_path / name).is_file():
            return hashlib.sha256((model_path / name).read_bytes()).hexdigest()[:16]
    return hashlib.sha256(str(model_path).encode()).hexdigest()[:16]


def cache_path(cache_dir: Path, model_path: Path, limit: int) -> Path:
    key = hashlib.sha256(json.dumps([model_identity(model_path), prompts()[:limit], MAX_TOKENS]).encode()).hexdigest()[:16]
    return cache_dir / f"{key}.jsonl"


def cached_rows(cache_dir: Path, model_path: Path, limit: int) -> list[dict] | None:
    path = cache_path(cache_dir, model_path, limit)
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _whole_sentences(reply: str) -> str:
    """Cut a reply that hit the token limit back to its last complete sentence ("" if none)."""
    if reply.endswith((".", "!", "?", ")", '"')):
        return reply
    cut = max(reply.rfind(". "), reply.rfind("! "), reply.rfind("? "), reply.rfind(".\n"))
    return reply[:cut + 1].strip() if cut > 0 else ""


def general_rows(model: LoadedModel, restore, cache_dir: Path, model_path: Path, limit: int,
                 on_item=None) -> list[dict]:
    """Return `limit` general rows answered by the base model (from the cache when possible).

    `restore` is called after generating, to put the current adapter back.
    """
    if limit <= 0:
        return []
    rows = cached_rows(cache_dir, model_path, limit)
    if rows is not None:
        return rows
    had_adapter = model.adapter_version is not None
    if had_adapter:
        model.set_adapter(None, None)
    rows = []
    try:
        for prompt in prompts()[:limit]:
            reply = _whole_sentences(answer(model, prompt, MAX_TOKENS))
            if reply:
                rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
                             "lineage": {"generator": GENERATOR, "version": VERSION, "model": model.model_name}})
            if on_item:
                on_item()
    finally:
        if had_adapter:
            restore()
    atomic_write_text(cache_path(cache_dir, model_path, limit), "".join(json.dumps(r) + "\n" for r in rows))
    return rows
