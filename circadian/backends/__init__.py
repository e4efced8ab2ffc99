"""The backend interface and its discovery through the `circadian.backends` entry-point group.

A backend is any object with the `Backend` shape below, registered by a distribution as

    [project.entry-points."circadian.backends"]
    mybackend = "my_package.module:MyBackend"

`mlx` and `torch` ship with circadian and are registered the same way. The rest of the program
talks to these Protocols only; mlx and torch are imported inside their backend modules.

Optional LoadedModel methods, used when a backend has them:
- `greedy_batch(conversations, settings, batch_size)`: greedy replies in batches (else one
  `stream` per question);
- `blend_adapter(start, factor)`: move the trained adapter back toward the one it started from
  (else the gate's blended fallback is skipped);
- the memory router (backends/router.py): `features(texts, layers)`, `router_layers()`, a `router`
  attribute the backend obeys in `stream` and `greedy_batch`, `answered_by(conversations)` and
  `base_only()` (else every turn uses the adapter, and the base model's answers are not cached).
"""

from __future__ import annotations

import platform
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

from circadian.core.config import TrainSettings  # noqa: F401  (re-exported: backends receive it in train())
from circadian.core.errors import CircadianError
from circadian.store.records import TrainCallback, TrainEvent  # noqa: F401  (the callback's contract)

GROUP = "circadian.backends"


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample one reply."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1 = off; as mlx-lm's: over the last repetition_context tokens
    repetition_context: int = 64


@dataclass
class Chunk:
    """A piece of a streamed reply: its text and how many new tokens it covers."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class LoadRequest:
    """What to load: a local model folder, backend options, and an optional adapter folder."""

    model_name: str
    model_path: Path
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    adapter_path: Path | None = None
    adapter_version: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run did; the best checkpoint (not the last) is left active in the model."""

    steps: int
    best_step: int
    initial_val_loss: float | None
    best_val_loss: float | None
    stop_reason: str
    trained_tokens: int
    tokens_per_second: float
    train_seconds: float
    peak_memory_mb: float
    curve: list[dict] = field(default_factory=list)
    precision: str = "float32"  # what the training steps computed in: the weights' dtype, or "bfloat16 autocast"


@runtime_checkable
class LoadedModel(Protocol):
    """A model in memory, ready to answer, score and train.

    `tokenizer` is a Hugging Face tokenizer with a chat template (both shipped backends use one).
    """

    backend: str
    model_name: str
    adapter_version: str | None
    device: str
    tokenizer: object

    def stream(
        self, messages: list[dict], settings: GenerationSettings, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        """Given chat messages, yield the reply as it is generated; stop early when `cancel` is set."""
        ...

    def set_adapter(self, adapter_path: Path | None, adapter_version: str | None) -> None:
        """Switch to another adapter folder (None: the base model) without restarting the program."""
        ...

    def score(self, examples: list, batch_size: int = 8) -> list[tuple[float, int]]:
        """Given tokens.Example rows, return (summed negative log-likelihood, target count) for each."""
        ...

    def train(self, train: list, valid: list, settings: TrainSettings, callback: TrainCallback) -> TrainResult:
        """Train the active adapter (continuing it, or a new one on the base) on tokens.Example rows.

        `callback` gets a TrainEvent (store.records: plain dicts with stable names) at every step and
        evaluation, and returns "stop" to end training now; the best validation step is kept.
        """
        ...

    def save_adapter(self, folder: Path) -> dict[str, str]:
        """Write the active adapter's files into folder; return {file name: sha256}."""
        ...

    def fuse_adapter(self, folder: Path) -> None:
        """Write the base model with the active adapter fused into its weights (a full model folder:
        weights, config, tokenizer) into folder; the adapter is gone from this model afterwards."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A way to run models: found by name through the entry-point group."""

    name: str

    def unavailable_reason(self) -> str | None:
        """Return None when this backend can run here, else one line saying why not."""
        ...

    def load(self, request: LoadRequest) -> LoadedModel:
        """Given a LoadRequest, return the loaded model. Raise CircadianError for user errors."""
        ...


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def backend_names() -> list[str]:
    """Return the names of every registered backend, sorted."""
    return sorted(_entry_points())


def get_backend(name: str) -> Backend:
    """Given a backend name, return an instance. Raise CircadianError listing the known ones if unknown."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise CircadianError(f"unknown backend '{name}' (installed: {known})")
    try:
        factory = eps[name].load()
    except Exception as exc:  # a broken third-party plugin must not take the CLI down with a traceback
        raise CircadianError(f"backend '{name}' failed to load: {exc}") from None
    backend = factory()
    if not isinstance(backend, Backend):
        raise CircadianError(f"backend '{name}' ({eps[name].value}) does not implement the Backend protocol")
    return backend


def describe_backends() -> list[dict]:
    """Return one row per registered backend: name, where it comes from, and whether it runs here."""
    rows = []
    for name, ep in sorted(_entry_points().items()):
        dist = ep.dist.name if ep.dist else "?"
        try:
            reason = get_backend(name).unavailable_reason()
        except CircadianError as exc:
            reason = str(exc)
        rows.append(
            {
                "name": name,
                "entry_point": ep.value,
                "distribution": dist,
                "available": reason is None,
                "reason": reason or "",
            }
        )
    return rows


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def auto_backend_name() -> str:
    """Return the backend to use when none is configured: mlx on Apple Silicon, torch elsewhere."""
    if is_apple_silicon() and "mlx" in _entry_points():
        return "mlx"
    return "torch"


def select_backend(configured: str) -> Backend:
    """Given the configured backend name ("auto" or a name), return a backend that can run here.

    Raise CircadianError if it is unknown or cannot run on this machine.
    """
    name = auto_backend_name() if configured in ("", "auto") else configured
    backend = get_backend(name)
    if reason := backend.unavailable_reason():
        raise CircadianError(f"backend '{name}' cannot run here: {reason}")
    return backend
