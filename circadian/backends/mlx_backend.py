"""The MLX backend: mlx-lm used as a library. Metal on Apple Silicon (QLoRA on a quantized base);
it also runs on Linux through `mlx[cpu]`, about 50-100x slower, which is enough for tests with
tiny models.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from circadian.backends import Chunk, GenerationSettings, LoadRequest
from circadian.errors import CircadianError


class MLXBackend:
    """Backend entry point `mlx`."""

    name = "mlx"

    def unavailable_reason(self) -> str | None:
        try:
            import mlx.core  # noqa: F401
            import mlx_lm  # noqa: F401
        except ImportError as exc:
            return f"mlx/mlx-lm not installed ({exc.name})"
        return None

    def load(self, request: LoadRequest) -> "MLXModel":
        return MLXModel(request)


class MLXModel:
    """An mlx-lm model (+ optional mlx-lm LoRA adapter) in memory."""

    backend = "mlx"

    def __init__(self, request: LoadRequest):
        import mlx.core as mx

        self.request = request
        self.model_name = request.model_name
        self.device = str(mx.default_device())
        self.adapter_version: str | None = None
        self.set_adapter(request.adapter_path, request.adapter_version)

    def set_adapter(self, adapter_path: Path | None, adapter_version: str | None) -> None:
        """Given an mlx-lm adapter folder (or None), reload the model with it.

        mlx-lm applies LoRA layers in place, so switching means loading the base again.
        """
        from mlx_lm import load

        try:
            self.model, self.tokenizer = load(str(self.request.model_path),
                                              adapter_path=str(adapter_path) if adapter_path else None)
        except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            what = f"adapter {adapter_version}" if adapter_path else self.model_name
            raise CircadianError(f"the mlx backend cannot load {what}: {first[:200]}") from None
        self.adapter_version = adapter_version if adapter_path else None

    def stream(self, messages: list[dict], settings: GenerationSettings,
               cancel: threading.Event | None = None) -> Iterator[Chunk]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p if settings.temperature > 0 else 0.0)
        for response in stream_generate(self.model, self.tokenizer, prompt,
                                        max_tokens=settings.max_tokens, sampler=sampler):
            if cancel is not None and cancel.is_set():
                break
            if response.finish_reason == "stop" and not response.text:
                break
            yield Chunk(response.text, 1)
