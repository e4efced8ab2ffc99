"""The base model's router features of the shipped general prompts, cached on disk per base model, so
that a night reads them once, not every night (they are a third of a night's routing stage).

Only shipped prompts are cached (`eval/router_general.jsonl`, the distill prompts, the capability
questions and the style prompts): never a user's words, which live in the home and nowhere else.
One file per (base model, backend, dtype, quantization, layers) in `models/eval_cache/`, a torch
pickle of {"texts", "features"} written atomically; an unreadable file is read again from the model.
"""

from __future__ import annotations

import io
from pathlib import Path

from circadian.core.fsutil import atomic_write_bytes
from circadian.night.base_answers import base_identity, keyed_path


class BaseFeatures:
    """The cache for one base model and one set of router layers (`identity`: any JSON-able value)."""

    def __init__(self, folder: Path, identity):
        self.path = keyed_path(folder, "features", identity, ".pt")
        self.known: dict = {}
        self._load()

    def _load(self) -> None:
        import torch

        try:
            saved = torch.load(self.path, weights_only=True)
            self.known = dict(zip(saved["texts"], saved["features"], strict=True))
        except Exception:  # missing, torn or from another torch: the unpickler's errors vary
            self.known = {}

    def features(self, model, texts: list[str], layers: list[int]):
        """Given the model (adapter off, as the router reads it), shipped texts and the router's layers,
        return their features as model.features would, reading only the ones not cached yet."""
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self.known))
        if missing:
            self.known.update(zip(missing, model.features(missing, layers), strict=True))
            buffer = io.BytesIO()
            texts_known = list(self.known)
            torch.save({"texts": texts_known, "features": torch.stack([self.known[t] for t in texts_known])}, buffer)
            atomic_write_bytes(self.path, buffer.getvalue(), mode=0o644)
        return torch.stack([self.known[t] for t in texts])


def feature_cache(models: Path, identity: str, backend: str, model, layers: list[int]) -> BaseFeatures:
    """The router-feature cache of a base model (`identity`: distill.model_identity of its folder) for a
    backend, the model settings' dtype and quantization, and the router's layers."""
    return BaseFeatures(models / "eval_cache", [*base_identity(identity, backend, model), list(layers)])


__all__ = ["BaseFeatures", "feature_cache"]
