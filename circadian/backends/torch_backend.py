"""The torch backend: transformers + peft. CUDA when present (optionally 4-bit NF4 through
bitsandbytes, the QLoRA path for a 24 GB card), else Apple's MPS, else the CPU in float32.

Generation runs `model.generate` in a worker thread with a streamer that hands token ids to the
caller through a queue, so the caller can render as tokens arrive and cancel between tokens.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Iterator

from circadian.backends import Chunk, GenerationSettings, LoadRequest
from circadian.errors import CircadianError

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
_DONE = object()


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


class _QueueStreamer:
    """A transformers streamer that forwards generated token ids to a queue (skipping the prompt)."""

    def __init__(self, sink: queue.Queue):
        self.sink = sink
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sink.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


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
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        stop = cancel or threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set()

        sink: queue.Queue = queue.Queue()
        inputs = self.encode_chat(messages)
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} \
            if settings.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        kwargs = dict(inputs, max_new_tokens=settings.max_tokens, streamer=_QueueStreamer(sink),
                      stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                      pad_token_id=self.tokenizer.pad_token_id or min(self.eos_ids, default=0), **sampling)

        def _run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the caller's thread
                sink.put(exc)
            finally:
                sink.put(_DONE)

        worker = threading.Thread(target=_run, name="circadian-generate", daemon=True)
        worker.start()
        ids: list[int] = []
        shown = ""
        pending = 0
        try:
            while True:
                try:
                    item = sink.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise CircadianError(f"generation failed: {item}") from item
                new = [t for t in item if t not in self.eos_ids]
                pending += len(new)
                if not new:
                    continue
                ids.extend(new)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                    continue
                delta, shown = text[len(shown):], text
                yield Chunk(delta, pending)
                pending = 0
            if pending:
                yield Chunk("", pending)
        finally:
            stop.set()
            worker.join()
