"""The torch backend: transformers + peft. CUDA when present (optionally 4-bit NF4 through
bitsandbytes, the QLoRA path for a 24 GB card), else Apple's MPS, else the CPU in float32.

Generation is a plain KV-cached decoding loop in the caller's thread, yielding text as tokens
arrive; the caller cancels between tokens (an Event, or Ctrl-C's KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from circadian.backends import Chunk, GenerationSettings, LoadRequest, TrainResult, precision, router
from circadian.backends.router import Router
from circadian.core.errors import CircadianError, first_line

if TYPE_CHECKING:
    from circadian.store.records import TrainCallback

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
TEACHER_TOP_K = 64  # cached teacher log-probabilities per position of an anchor row
LOSS_CHUNK = 1024  # positions whose logits exist at once in the loss
# peft asks transformers a question transformers has renamed; the answer is the same
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# transformers 5 renames `past_key_values` (still accepted; older versions know only it): not the user's concern
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*", category=FutureWarning)


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


def load_failure(exc: BaseException, what: str, device: str) -> CircadianError | None:
    """Given an exception raised while loading `what` onto `device`, return the one-line error a user
    should read (out of memory, unreadable weights, a missing file), or None if it is a bug."""
    first, lowered = first_line(exc), str(exc).lower()
    if isinstance(exc, MemoryError) or any(
        w in lowered for w in ("out of memory", "can't allocate memory", "cannot allocate memory")
    ):
        hint = (
            "model.quantize = '4bit', a smaller model, or fewer other programs"
            if device == "cuda"
            else "a smaller model"
        )
        return CircadianError(f"out of memory loading {what} on {device} ({first}); try {hint}")
    if type(exc).__name__ in ("SafetensorError", "HeaderTooLarge") or isinstance(exc, (OSError, ValueError, KeyError)):
        return CircadianError(f"the torch backend cannot load {what}: {first}")
    if isinstance(exc, RuntimeError) and ("CUDA" in str(exc) or "bitsandbytes" in lowered):
        return CircadianError(f"the GPU failed loading {what}: {first}")
    return None


def _set_checkpointing(model, on: bool) -> None:
    """Turn gradient checkpointing on or off, non-reentrant (no input-grad hook needed, no torch warning)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 (the old names warn)
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    elif model.is_gradient_checkpointing:
        model.gradient_checkpointing_disable()


def _top_k_kl(logits, index, teacher):
    """KL(teacher || student) per position, the distributions coarsened to the teacher's top-k tokens plus
    the rest of the vocabulary as one bucket (exact for that coarsening; the tail mass of the top 64 is
    tiny). `logits` [n, vocab] are the student's; `index`, `teacher` [n, k] the cached top-k."""
    import torch
    import torch.nn.functional as F

    chosen = F.log_softmax(logits, -1).gather(-1, index)
    p = teacher.exp()
    kl = torch.where(p > 0, p * (teacher - chosen), torch.zeros_like(p)).sum(-1)
    p_rest = (1 - p.sum(-1)).clamp(min=1e-8)
    q_rest = (1 - chosen.exp().sum(-1)).clamp(min=1e-8)
    return kl + p_rest * (p_rest.log() - q_rest.log())


def resolve_dtype(requested: str, device: str):
    """Given "auto" or a dtype name and the device, return the torch dtype for the weights (and the
    4-bit compute): on CUDA, bfloat16 where the card has it, else float16; float32 elsewhere."""
    import torch

    if device == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if requested == "auto":
            return torch.bfloat16 if bf16 else torch.float16
        if requested == "bfloat16" and not bf16:
            raise CircadianError("model.dtype = 'bfloat16' needs a GPU of compute capability 8.0 or newer; use 'auto'")
    elif requested == "auto":
        return torch.float32
    return getattr(torch, requested)


def _repetition_processor(settings: GenerationSettings, exempt: list[int]):
    """Given the settings and the token ids never penalized (end of turn, padding), return a
    transformers logits processor that applies the repetition penalty over the reply's own last
    `repetition_context` tokens, or None when it is off. `processor.start` is where the reply begins
    in the ids it is given (the prompt's width). The prompt is never penalized: a penalty on it
    pushed "What is the capital of Germany?" into German, and a long chat into another language
    (transformers' own `repetition_penalty` sees the whole sequence, mlx-lm's the last tokens of it)."""
    if settings.repetition_penalty == 1.0:
        return None
    from transformers.generation.logits_process import LogitsProcessor, RepetitionPenaltyLogitsProcessor

    penalty, context = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty), settings.repetition_context

    class ReplyRepetitionPenalty(LogitsProcessor):
        start = 0

        def __call__(self, input_ids, scores):
            said = input_ids[:, self.start :][:, -context:]
            if not said.shape[1]:
                return scores
            kept = scores[:, exempt].clone()
            scores = penalty(said, scores)
            scores[:, exempt] = kept
            return scores

    return ReplyRepetitionPenalty()


def _pick(logits, settings: GenerationSettings, generator, history=None, processor=None) -> int:
    """Given next-token logits (and the token history for the repetition penalty), return the
    greedy token, or a temperature/top-p sample."""
    import torch

    if processor is not None and history is not None:
        logits = processor(history, logits[None])[0]
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


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

    def load(self, request: LoadRequest) -> TorchModel:
        return TorchModel(request)


class TorchModel:
    """A transformers causal LM (+ optional PEFT adapter) in memory."""

    backend = "torch"

    def __init__(self, request: LoadRequest):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model_name = request.model_name
        self.model_path = request.model_path
        self.device = resolve_device(request.device)
        dtype = resolve_dtype(request.dtype, self.device)
        kwargs: dict = {"dtype": dtype}
        if request.quantize == "4bit":
            if self.device != "cuda":
                raise CircadianError("model.quantize = '4bit' needs a CUDA GPU (bitsandbytes NF4)")
            try:
                import bitsandbytes  # noqa: F401
                from transformers import BitsAndBytesConfig
            except ImportError:
                raise CircadianError(
                    "model.quantize = '4bit' needs bitsandbytes: pip install 'circadian[cuda]'"
                ) from None
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            kwargs["device_map"] = {"": 0}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(request.model_path)
            base = AutoModelForCausalLM.from_pretrained(request.model_path, **kwargs)
            if request.quantize != "4bit":
                base = base.to(self.device)
        except Exception as exc:
            if (failure := load_failure(exc, request.model_name, self.device)) is None:
                raise
            raise failure from None
        base.eval()
        self.base = base
        self.model = base
        self.adapter_version: str | None = None
        self.adapter_path: Path | None = None
        self.quantized = request.quantize == "4bit"
        self.kbit_prepared = False
        self.trunk_ok: bool | None = None  # whether head(decoder(x)) is the model's logits (_trunk_is_forward)
        self.eos_ids = self._eos_ids()
        self.router: Router | None = None  # per turn, adapter or base model (backends/router.py)
        self.last_route: str | None = None  # "adapter" | "base" for the last reply streamed
        self.last_route_score: float | None = None  # the router's probability for the adapter, that reply
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
        self._trained_state = None
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        self.model = self.base
        self.adapter_version = None
        self.adapter_path = adapter_path
        self.router = router.load(adapter_path)
        if adapter_path is not None:
            try:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_path), is_trainable=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise CircadianError(
                    f"adapter {adapter_version or adapter_path} cannot be loaded: {first_line(exc)}"
                ) from None
            self.model.eval()
            self.adapter_version = adapter_version

    # ----------------------------------------------------------------------------- routing

    def _adapter_off(self):
        """A context in which the base model answers (the adapter switched off), if one is loaded."""
        from peft import PeftModel

        return self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()

    def router_layers(self) -> list[int]:
        """The hidden-state layers the router reads: a middle one and the last one."""
        n = self.base.config.num_hidden_layers
        return [n // 2, n]

    def features(self, texts: list[str], layers: list[int] | None = None, batch_size: int = 32):
        """Given texts, return the base model's mean hidden state over each one's tokens at `layers`
        (concatenated) as an [n, d * len(layers)] CPU tensor: what the router reads."""
        import torch

        layers = layers or self.router_layers()
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:256] or [self._pad_id()] for t in texts]
        out = []
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with self._adapter_off(), torch.inference_mode():
                for start in range(0, len(encoded), batch_size):
                    rows = encoded[start : start + batch_size]
                    width = max(len(r) for r in rows)
                    ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for i, r in enumerate(rows):
                        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
                    hidden = self.model(
                        input_ids=ids.to(self.model.device),
                        attention_mask=mask.to(self.model.device),
                        output_hidden_states=True,
                    ).hidden_states
                    weights = mask.to(hidden[0].device).unsqueeze(-1).float()
                    pooled = [(hidden[k].float() * weights).sum(1) / weights.sum(1) for k in layers]
                    out.append(torch.cat(pooled, dim=-1).cpu())
        finally:
            if was_training:
                self.model.train()
        width = self.base.config.hidden_size * len(layers)
        return torch.cat(out) if out else torch.zeros((0, width))

    def route_scores(self, conversations: list[list[dict]]) -> list[float | None]:
        """Given conversations, return the router's probability that the adapter should answer each
        (read on the last user message); None for each when there is no router or no adapter."""
        from peft import PeftModel

        if self.router is None or not isinstance(self.model, PeftModel) or not conversations:
            return [None] * len(conversations)
        last = [next((m["content"] for m in reversed(c) if m["role"] == "user"), "") for c in conversations]
        return self.router.scores(self.features(last, self.router.layers or None))

    def routes(self, conversations: list[list[dict]]) -> list[bool]:
        """Given conversations, return for each whether the adapter answers it (True) or the base
        model does: the router's call on the last user message; True when there is no router."""
        return [self._adapter_answers(s) for s in self.route_scores(conversations)]

    def _adapter_answers(self, score: float | None) -> bool:
        """The router's call on one score: no score (no router, no adapter) means the adapter's turn."""
        return score is None or score >= self.router.threshold

    def answered_by(self, conversations: list[list[dict]]) -> list[str]:
        """Given conversations, return who answers each: "base" (no adapter on, or the router sends
        it to the base model) or "adapter"."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return ["base"] * len(conversations)
        return ["adapter" if r else "base" for r in self.routes(conversations)]

    @contextlib.contextmanager
    def base_only(self):
        """A context in which every reply comes from the base model (adapter and router off)."""
        kept, self.router = self.router, None
        try:
            with self._adapter_off():
                yield
        finally:
            self.router = kept

    def encode_chat(self, messages: list[dict]):
        """Given chat messages, return the templated prompt as tensors on the model's device."""
        encoded = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def stream(
        self, messages: list[dict], settings: GenerationSettings, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
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
        processor = _repetition_processor(settings, sorted(self.eos_ids | {self._pad_id()}))
        history = input_ids[:, :0] if processor else None  # the reply so far: the prompt is not penalized
        from peft import PeftModel

        score = self.route_scores([messages])[0]
        use_adapter = self._adapter_answers(score)
        self.last_route = "adapter" if use_adapter and isinstance(self.model, PeftModel) else "base"
        self.last_route_score = None if score is None else round(score, 4)
        was_training = self.model.training  # asked mid-training (learning evolution): answer as in eval
        if was_training:
            self.model.eval()
        try:
            with contextlib.nullcontext() if use_adapter else self._adapter_off(), torch.inference_mode():
                for _ in range(settings.max_tokens):
                    if cancel is not None and cancel.is_set():
                        break
                    out = self.model(
                        input_ids=step_input,
                        attention_mask=mask,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    cache = out.past_key_values
                    token = _pick(out.logits[0, -1].float(), settings, generator, history, processor)
                    if token in self.eos_ids:
                        break
                    pending += 1
                    ids.append(token)
                    step_input = torch.tensor([[token]], device=input_ids.device)
                    if processor:
                        history = torch.cat([history, step_input], dim=1)[:, -settings.repetition_context :]
                    mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                        continue
                    delta, shown = text[len(shown) :], text
                    yield Chunk(delta, pending)
                    pending = 0
        finally:
            if was_training:
                self.model.train()
        if pending:
            yield Chunk("", pending)

    def _pad_id(self) -> int:
        """The padding token: the tokenizer's, else the smallest end-of-sequence id."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)

    def greedy_batch(
        self, conversations: list[list[dict]], settings: GenerationSettings, batch_size: int = 16
    ) -> list[str]:
        """Given chat conversations, return each one's greedy reply, decoded in left-padded batches
        of similar length (evaluation and snapshots ask dozens of short questions: one batch of 16
        costs about as much as two single answers on a CPU)."""
        import torch
        from transformers.generation.logits_process import LogitsProcessorList

        prompts = [self.encode_chat(m)["input_ids"][0].tolist() for m in conversations]
        processor = _repetition_processor(settings, sorted(self.eos_ids | {self._pad_id()}))
        processors = LogitsProcessorList([processor] if processor else [])
        routes = self.routes(conversations)
        replies: list[str] = [""] * len(prompts)
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            for use_adapter in (True, False):
                group = [i for i in range(len(prompts)) if routes[i] == use_adapter]
                if not group:
                    continue
                order = sorted(group, key=lambda i: len(prompts[i]))
                with contextlib.nullcontext() if use_adapter else self._adapter_off(), torch.inference_mode():
                    self._greedy_group(prompts, order, settings, processors, batch_size, replies)
        finally:
            if was_training:
                self.model.train()
        return replies

    def _greedy_group(self, prompts, order, settings, processors, batch_size, replies) -> None:
        """Decode the prompts at `order` (sorted by length) in batches, writing into `replies`."""
        import torch

        pad = self._pad_id()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            for processor in processors:
                processor.start = width  # the replies begin after the (left-padded) prompts
            out = self.model.generate(
                input_ids=ids.to(self.model.device),
                attention_mask=mask.to(self.model.device),
                max_new_tokens=settings.max_tokens,
                logits_processor=processors,
                do_sample=False,
                num_beams=1,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for row, i in enumerate(chunk):
                new = [t for t in out[row, width:].tolist() if t not in self.eos_ids and t != pad]
                replies[i] = self.tokenizer.decode(new, skip_special_tokens=True).strip()

    # ----------------------------------------------------------------------------- scoring

    def _pad(self, rows: list) -> tuple:
        """Given tokens.Example rows, return (input_ids, attention_mask, target_mask) tensors."""
        import torch

        width = max(len(r) for r in rows)
        pad = self._pad_id()
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row.ids)
            attention[i, : len(row)] = 1
            targets[i, : len(row)] = torch.tensor(row.mask, dtype=torch.float32)
        device = self.model.device
        return ids.to(device), attention.to(device), targets.to(device)

    def _trunk(self):
        """(decoder, output head) of the model, PEFT-wrapped or not. LoRA layers sit inside the decoder,
        so calling it applies the adapter (and `disable_adapter()` still turns it off)."""
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return inner.get_decoder(), inner.get_output_embeddings()

    def _trunk_is_forward(self, ids, attention) -> bool:
        """Whether head(decoder(x)) is the model's own logits, checked once per loaded model on a few
        tokens. Architectures that scale their logits after the head (Cohere, Granite, ...) are not:
        for them the loss takes the model's full logits, as before."""
        import torch

        if self.trunk_ok is None:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                n = min(8, ids.shape[1])
                full = self.model(input_ids=ids[:1, :n], attention_mask=attention[:1, :n]).logits.float()
                decoder, head = self._trunk()
                hidden = decoder(input_ids=ids[:1, :n], attention_mask=attention[:1, :n]).last_hidden_state
                self.trunk_ok = True  # so that _logits applies the head
                self.trunk_ok = bool(torch.allclose(full, self._logits(hidden), rtol=1e-3, atol=1e-3))
            if was_training:
                self.model.train()
        return self.trunk_ok

    def _hidden(self, ids, attention):
        """What `_logits` turns into next-token logits, at every position that predicts one:
        the last hidden state [batch, width-1, hidden] (or the logits themselves, see _trunk_is_forward)."""
        if not self._trunk_is_forward(ids, attention):
            return self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        decoder, _head = self._trunk()
        return decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state[:, :-1]

    def _logits(self, hidden):
        """fp32 logits from `_hidden`'s output rows."""
        import torch

        if not self.trunk_ok:
            return hidden.float()
        _decoder, head = self._trunk()
        logits = head(hidden).float()
        config = (
            self.base.config.get_text_config() if hasattr(self.base.config, "get_text_config") else self.base.config
        )
        if cap := getattr(config, "final_logit_softcapping", None):
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _per_position(self, fn, hidden, *extra):
        """fn(fp32 logits [n, vocab], *extra rows) for selected positions [n, hidden], LOSS_CHUNK at a time,
        so full logits never exist at once; with gradients, each chunk's logits are recomputed in the
        backward pass instead of kept (a 128k vocabulary at 4,096 tokens is 2 GB per fp32 tensor)."""
        import torch
        from torch.utils.checkpoint import checkpoint

        def piece(h, *rest):
            return fn(self._logits(h), *rest)

        out = []
        for start in range(0, hidden.shape[0], LOSS_CHUNK):
            args = [hidden[start : start + LOSS_CHUNK], *(x[start : start + LOSS_CHUNK] for x in extra)]
            grads = torch.is_grad_enabled() and hidden.requires_grad
            out.append(checkpoint(piece, *args, use_reentrant=False) if grads else piece(*args))
        return torch.cat(out) if out else hidden.new_zeros((0,), dtype=torch.float32)

    def score(self, examples: list, batch_size: int = 8) -> list[tuple[float, int]]:
        import torch
        import torch.nn.functional as F

        from circadian.backends.tokens import length_batches

        out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for batch in length_batches([len(e) for e in examples], batch_size, seed=0, shuffle=False):
                ids, attention, targets = self._pad([examples[i] for i in batch])
                weights = targets[:, 1:]
                where = weights > 0
                nll = self._per_position(
                    lambda logits, labels: F.cross_entropy(logits, labels, reduction="none"),
                    self._hidden(ids, attention)[where],
                    ids[:, 1:][where],
                )
                rows = torch.arange(len(batch), device=ids.device)[:, None].expand_as(where)[where]
                sums = torch.zeros(len(batch), device=ids.device).index_add_(0, rows, nll * weights[where])
                for i, total, count in zip(batch, sums.tolist(), weights.sum(dim=1).tolist()):
                    out[i] = (float(total), int(count))
        if was_training:
            self.model.train()
        return out

    def _mean_loss(self, examples: list, batch_size: int) -> float:
        scored = self.score(examples, batch_size)
        return sum(s for s, _ in scored) / max(1, sum(n for _, n in scored))

    # ----------------------------------------------------------------------------- training

    def _batch_loss(self, rows: list, anchor_weight: float):
        """Cross-entropy on the target tokens of ordinary rows, plus anchor_weight x the KL from the
        base model (adapter disabled) to the adapted model on every position of anchor rows. Logits
        exist only for those positions, a chunk at a time (`_per_position`)."""
        import torch
        import torch.nn.functional as F

        ids, attention, targets = self._pad(rows)
        hidden = self._hidden(ids, attention)
        anchor = torch.tensor([r.anchor and anchor_weight > 0 for r in rows], device=ids.device)  # weight 0: plain rows
        loss = torch.zeros((), device=ids.device)
        weights = targets[:, 1:] * (~anchor)[:, None]
        where = weights > 0
        if where.any():
            nll = self._per_position(
                lambda logits, labels: F.cross_entropy(logits, labels, reduction="none"),
                hidden[where],
                ids[:, 1:][where],
            )
            loss = loss + (nll * weights[where]).sum() / weights.sum()
        if anchor.any():
            anchored = [r for r, a in zip(rows, anchor.tolist()) if a]
            spots = attention[:, 1:].bool() & anchor[:, None]  # row by row: the first len(row) - 1 positions
            if all(r.teacher is not None for r in anchored):
                index = torch.cat([r.teacher[0] for r in anchored]).to(ids.device)
                teacher = torch.cat([r.teacher[1] for r in anchored]).to(ids.device)
                kl = self._per_position(_top_k_kl, hidden[spots], index, teacher)
            else:
                with torch.no_grad(), self.model.disable_adapter():
                    base = self._hidden(ids[anchor], attention[anchor])[attention[anchor][:, 1:].bool()]

                def to_base(logits, base_rows):  # the base's log-probs a chunk at a time, like the student's
                    with torch.no_grad():
                        target = F.log_softmax(self._logits(base_rows), -1)
                    return F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="none").sum(-1)

                kl = self._per_position(to_base, hidden[spots], base)
            loss = loss + anchor_weight * kl.sum() / spots.sum()
        return loss

    def _cache_teacher(self, rows: list, batch_size: int) -> None:
        """Once per run, the base model's top-k log-probabilities at every position of each anchor row, so the
        KL anchor needs no teacher pass at every step (the usual remedy: distillation from cached top-k)."""
        import torch
        import torch.nn.functional as F

        from circadian.backends.tokens import length_batches

        todo = [r for r in rows if r.anchor and r.teacher is None]
        if not todo:
            return
        context = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        with torch.no_grad(), context:
            for batch in length_batches([len(r) for r in todo], batch_size, seed=0, shuffle=False):
                part = [todo[i] for i in batch]
                ids, attention, _ = self._pad(part)
                spots = attention[:, 1:].bool()
                # [n, 2k]: the top-k token ids (as floats, exact below 2**24), then their log-probs
                top = self._per_position(
                    lambda logits: torch.cat(
                        [t.float() for t in F.log_softmax(logits, -1).topk(min(TEACHER_TOP_K, logits.shape[-1]))][::-1],
                        -1,
                    ),
                    self._hidden(ids, attention)[spots],
                )
                k = top.shape[-1] // 2
                for row, found in zip(part, top.split(spots.sum(1).tolist())):
                    row.teacher = (found[:, :k].long().cpu(), found[:, k:].cpu())

    def _make_trainable(self, settings) -> str:
        """Turn the loaded model into a trainable PEFT model; return how it started."""
        from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

        if isinstance(self.model, PeftModel):
            self.base = self.model.unload()
        if self.quantized and not self.kbit_prepared:  # once per loaded model: layer norms to fp32, base frozen
            self.base = prepare_model_for_kbit_training(self.base, use_gradient_checkpointing=False)
            self.kbit_prepared = True
        _set_checkpointing(self.base, settings.grad_checkpoint or self.quantized)  # 4 bit: always, for memory
        if self.adapter_path is not None:
            self.model = PeftModel.from_pretrained(self.base, str(self.adapter_path), is_trainable=True)
            started = f"continued from adapter {self.adapter_version}"
        else:
            config = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules="all-linear",
                use_dora=settings.dora,
                task_type="CAUSAL_LM",
            )
            self.model = get_peft_model(self.base, config)
            started = "new adapter on the base model"
        return started

    def _optimizers(self, params, settings) -> list:
        """The optimizers of a training run: AdamW (paged 8-bit in 4 bit), or with `train.optimizer =
        "muon"` torch's Muon for the 2-D LoRA matrices, its step scaled to match AdamW's RMS (so the
        same learning rate means the same step size), and AdamW for anything else (DoRA magnitudes)."""
        import torch

        if settings.optimizer != "muon":
            return [self._optimizer(params, settings)]
        matrices = [p for p in params if p.ndim == 2]
        rest = [p for p in params if p.ndim != 2]
        found = [
            torch.optim.Muon(
                matrices, lr=settings.learning_rate, weight_decay=settings.weight_decay, adjust_lr_fn="match_rms_adamw"
            )
        ]
        return found + ([self._optimizer(rest, settings)] if rest else [])

    def _optimizer(self, params, settings):
        import torch

        if self.quantized:
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)

    def _peak_memory_mb(self) -> float:
        """The peak since training began (backends/memory.py): the CUDA allocator's, or the process's."""
        from circadian.backends import memory

        return memory.measured_peak("torch", self.device) / memory.MB

    def weight_bytes(self) -> int:
        """The bytes the base model's parameters and buffers take as loaded."""
        tensors = [*self.base.parameters(), *self.base.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def weight_dtype(self) -> str:
        return str(next(self.base.parameters()).dtype).removeprefix("torch.")

    def train(self, train: list, valid: list, settings, callback: TrainCallback) -> TrainResult:
        import time

        import torch
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        from circadian.backends import memory
        from circadian.backends.tokens import length_batches
        from circadian.backends.training import EarlyStopping, total_steps, warmup_cosine

        memory.reset_peak("torch", self.device)  # the peak this reports is training's own
        torch.manual_seed(settings.seed)
        self._trained_state = None
        started = self._make_trainable(settings)
        autocast = precision.training_autocast(settings.mixed_precision, self.device, self.weight_dtype())

        def steps_precision():  # the steps' forward passes (backward follows the dtypes they chose), validation
            if not autocast:
                return contextlib.nullcontext()
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

        if settings.anchor_weight > 0:
            self._cache_teacher(train, settings.batch_size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizers = self._optimizers(params, settings)
        lengths = [len(e) for e in train]
        total = total_steps(len(train), settings)
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(
                o, lambda step: warmup_cosine(step, total=total, warmup=settings.warmup_steps)
            )
            for o in optimizers
        ]
        curve: list[dict] = []

        def snapshot():
            return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model).items()}

        stopping = EarlyStopping.of(settings)
        with steps_precision():
            stopping.start(self._mean_loss(valid, settings.batch_size) if valid else None)
        best_state = snapshot()
        event = {
            "iteration": 0,
            "val_loss": stopping.initial,
            "best_val_loss": stopping.best,
            "total_steps": total,
            "note": started,
        }
        curve.append(event)
        stop_reason = "finished" if callback(event) != "stop" else "stopped"
        step, trained_tokens, train_seconds = 0, 0, 0.0
        epoch = 0
        self.model.train()
        while step < total and stop_reason == "finished":
            for batch in length_batches(lengths, settings.batch_size, seed=settings.seed + epoch):
                tic = time.perf_counter()
                rows = [train[i] for i in batch]
                loss = torch.zeros(())
                micro = -(-len(rows) // settings.grad_accumulation)  # rows per micro-batch, same step
                for start in range(0, len(rows), micro):
                    part = rows[start : start + micro]
                    with steps_precision():
                        share = self._batch_loss(part, settings.anchor_weight) * (len(part) / len(rows))
                    share.backward()
                    loss = loss + share.detach().cpu()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                for optimizer, scheduler in zip(optimizers, schedulers):
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens = sum(len(r) for r in rows)
                trained_tokens += tokens
                train_seconds += time.perf_counter() - tic
                event = {
                    "iteration": step,
                    "train_loss": float(loss.detach()),
                    "learning_rate": schedulers[0].get_last_lr()[0],
                    "tokens_per_second": trained_tokens / train_seconds,
                    "trained_tokens": trained_tokens,
                    "peak_memory_mb": self._peak_memory_mb(),
                    "epoch": epoch + 1,
                    "total_steps": total,
                }
                if valid and (step % settings.eval_every == 0 or step == total):
                    with steps_precision():
                        val = self._mean_loss(valid, settings.batch_size)
                    event["val_loss"] = val
                    if stopping.observe(step, val):
                        best_state = snapshot()
                    event["best_val_loss"] = stopping.best
                    if stopping.should_stop(step):
                        stop_reason = EarlyStopping.REASON
                curve.append(event)
                if callback(event) == "stop":
                    stop_reason = "stopped"
                if stop_reason != "finished" or step >= total:
                    break
            epoch += 1
        if not valid:
            stopping.best_step, best_state = step, snapshot()
        set_peft_model_state_dict(self.model, best_state)
        self.model.eval()
        self.adapter_version = "candidate"
        return TrainResult(
            steps=step,
            best_step=stopping.best_step,
            initial_val_loss=stopping.initial,
            best_val_loss=stopping.best,
            stop_reason=stop_reason if stop_reason != "finished" else "reached the step budget",
            trained_tokens=trained_tokens,
            tokens_per_second=trained_tokens / train_seconds if train_seconds else 0.0,
            train_seconds=train_seconds,
            peak_memory_mb=self._peak_memory_mb(),
            curve=curve,
            precision="bfloat16 autocast" if autocast else self.weight_dtype(),
        )

    def blend_adapter(self, start: Path | None, factor: float) -> None:
        """Move the trained adapter back toward `start` (the adapter training continued from; None:
        the base model): every LoRA matrix becomes start + factor x (trained - start), with B = 0
        standing in for the base. factor 1 restores the trained adapter. Weight interpolation as in
        WiSE-FT (Wortsman et al., 2022): most of what was learned, less of the drift."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        if getattr(self, "_trained_state", None) is None:
            self._trained_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        begin = load_file(str(start / "adapter_model.safetensors")) if start else {}
        blended = {}
        for key, trained in self._trained_state.items():
            origin = begin.get(key)
            if origin is None or origin.shape != trained.shape:
                origin = trained.new_zeros(trained.shape) if "lora_B" in key else trained
            origin = origin.to(device=trained.device, dtype=trained.dtype)  # load_file gives CPU tensors
            blended[key] = origin + factor * (trained - origin)
        set_peft_model_state_dict(self.model, blended)

    def fuse_adapter(self, folder: Path) -> None:
        """Write the base model with the loaded adapter merged into its weights (PEFT's
        merge_and_unload) to `folder`: safetensors in the dtype the model runs in here (a bf16 base
        run in fp32 on a CPU is fused in fp32: rounding the merged weights back to bf16 changed 4 of
        227 greedy capability answers of the embedded model), config, tokenizer. The adapter is gone
        from this model afterwards. A 4-bit base is loaded again unquantized in its compute dtype and
        merged there (merging into NF4 weights would round the update away); the fused base is
        quantized again when it is loaded."""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if not isinstance(self.model, PeftModel):
            raise CircadianError("no adapter to fuse: the base model is loaded alone")
        dtype = next(self.base.parameters()).dtype
        if self.quantized:
            import torch

            dtype = getattr(self.base.config, "dtype", None) or torch.bfloat16
            plain = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
            merged = PeftModel.from_pretrained(plain, str(self.adapter_path)).merge_and_unload()
        else:
            merged = self.model.merge_and_unload()
            self.model = self.base = merged
            self.adapter_version = self.adapter_path = self.router = None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder.mkdir(parents=True, exist_ok=True)
        merged.to(dtype).save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))

    def save_adapter(self, folder: Path) -> dict[str, str]:
        from peft import PeftModel

        from circadian.core.fsutil import sha256_file

        if not isinstance(self.model, PeftModel):
            raise CircadianError("no adapter to save: the model has not been trained")
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        return {
            p.name: sha256_file(p)
            for p in sorted(folder.iterdir())
            if p.name in ("adapter_model.safetensors", "adapter_config.json")
        }
