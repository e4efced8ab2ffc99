"""The torch backend: transformers + peft. CUDA when present (optionally 4-bit NF4 through
bitsandbytes, the QLoRA path for a 24 GB card), else Apple's MPS, else the CPU in float32.

Generation is a plain KV-cached decoding loop in the caller's thread, yielding text as tokens
arrive; the caller cancels between tokens (an Event, or Ctrl-C's KeyboardInterrupt).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

from circadian.backends import Chunk, GenerationSettings, LoadRequest
from circadian.errors import CircadianError

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def resolve_device(requested: str) -> str:
    """Given "auto" or a device name, return the torch device to use. Raise CircadianError if absent."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise CircadianError("model.device is 'cuda' but torch sees no CUDA GPU")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise CircadianError("model.device is 'mps' but this machine has no MPS device")
    return requested


def resolve_dtype(requested: str, device: str):
    """Given "auto" or a dtype name and the device, return the torch dtype for the weights."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


class TorchBackend:
    """Backend entry point `torch`."""

    name = "torch"

    def unavailable_reason(self) -> str | None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            return f"torch/transformers not installed ({exc.name})"
        return None

    def load(self, request: LoadRequest) -> "TorchModel":
        return TorchModel(request)


class TorchModel:
    """A transformers causal LM (+ optional PEFT adapter) in memory."""

    backend = "torch"

    def __init__(self, request: LoadRequest):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_name = request.model_name
        self.device = resolve_device(request.device)
        dtype = resolve_dtype(request.dtype, self.device)
        kwargs: dict = {"dtype": dtype}
        if request.quantize == "4bit":
            if self.device != "cuda":
                raise CircadianError("model.quantize = '4bit' needs a CUDA GPU (bitsandbytes NF4)")
            try:
                from transformers import BitsAndBytesConfig
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise CircadianError("model.quantize = '4bit' needs bitsandbytes: pip install 'circadian[cuda]'") from None
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)
            kwargs["device_map"] = {"": 0}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(request.model_path)
            base = AutoModelForCausalLM.from_pretrained(request.model_path, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CircadianError(f"the torch backend cannot load {request.model_name}: {first[:200]}") from None
        if request.quantize != "4bit":
            base = base.to(self.device)
        base.eval()
        self.base = base
        self.model = base
        self.adapter_version: str | None = None
        self.eos_ids = self._eos_ids()
        if request.adapter_path is not None:
            self.set_adapter(request.adapter_path, request.adapter_version)

    def _eos_ids(self) -> set[int]:
        ids = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.base.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def set_adapter(self, adapter_path: Path | None, adapter_version: str | None) -> None:
        """Given a PEFT adapter folder (or None for the base model), make it the active one."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model = self.base
        self.adapter_version = None
        if adapter_path is not None:
            try:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_path), is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CircadianError(f"adapter {adapter_version or adapter_path} cannot be loaded: {first[:200]}") from None
            self.model.eval()
            self.adapter_version = adapter_version

    def encode_chat(self, messages: list[dict]):
        """Given chat messages, return the templated prompt as tensors on the model's device."""
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def stream(self, messages: list[dict], settings: GenerationSettings,
               cancel: threading.Event | None = None) -> Iterator[Chunk]:
        """Decode token by token in the caller's thread, with the KV cache (no worker thread:
        on a 2-core CPU a second Python thread competing with torch's own costs ~20%)."""
        import torch

        inputs = self.encode_chat(messages)
        input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        generator = None
        if settings.temperature > 0:
            generator = torch.Generator(device=input_ids.device).manual_seed(int.from_bytes(os.urandom(4), "little"))
        ids: list[int] = []
        shown = ""
        pending = 0
        cache = None
        step_input = input_ids
        with torch.inference_mode():
            for _ in range(settings.max_tokens):
                if cancel is not None and cancel.is_set():
                    break
                out = self.model(input_ids=step_input, attention_mask=mask, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                cache = out.past_key_values
                token = _pick(out.logits[0, -1].float(), settings, generator)
                if token in self.eos_ids:
                    break
                pending += 1
                ids.append(token)
                step_input = torch.tensor([[token]], device=input_ids.device)
                mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                    continue
                delta, shown = text[len(shown):], text
                yield Chunk(delta, pending)
                pending = 0
        if pending:
            yield Chunk("", pending)


def _pick(logits, settings: GenerationSettings, generator) -> int:
    """Given next-token logits, return the greedy token, or a temperature/top-p sample."""
    import torch

    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))
