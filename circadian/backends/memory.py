"""How much memory a night's training will take, predicted before it starts, and the peak it really took.

The estimate is built up from the parts that hold memory while an adapter trains:
- weights: every parameter of the base at the dtype it is loaded in (4-bit: the decoder's linear
  weights at about half a byte each, the rest as loaded);
- adapter: the LoRA matrices in fp32 with their gradients, the optimizer's state (AdamW: two
  moments; Muon: one) and the two copies training keeps (the best checkpoint, the start);
- activations: what autograd keeps for the backward pass, per token and layer, from the model's
  shape (norm inputs, q/k/v/o, the MLP's three projections; no attention probabilities, as the
  attention is fused: transformers' SDPA keeps none); with gradient checkpointing only each layer's
  input, plus one layer's worth recomputed; in bfloat16 autocast (`train.mixed_precision`) what the
  products keep is bfloat16 but the norms' and the residual stream's float32 (AUTOCAST_KEPT bytes an
  element on average, fitted), plus the bfloat16 copies of the decoder's weights that the products keep;
- logits: the vocabulary-wide rows of the loss. The torch backend computes them `LOSS_CHUNK`
  positions at a time (logits, their log-softmax and its gradient); MLX keeps the batch's whole
  logits, and the base's too for the KL anchor;
- runtime: what the process holds besides: measured (its resident memory, minus the weights when
  they are loaded), on the CPU only. A GPU's and MLX's peaks count tensors alone.

`measured_peak` reads the real peak since `reset_peak`: torch.cuda's allocator peak, mlx's peak, or
on a CPU the process's high-water mark (Linux: VmHWM, reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from circadian.backends import precision

MB = 2**20
LOSS_CHUNK = 1024  # torch_backend's positions per logits chunk
ADAPTER_BYTES = {"adamw": 24, "muon": 20}  # fp32 param, grad, optimizer state, two snapshots
# elements autograd keeps per token and layer (fitted once against measured peaks: bench/memory_estimate.py)
PER_HIDDEN, PER_ATTENTION, PER_KV, PER_MLP = 4, 3, 2, 4
AUTOCAST_KEPT = 2.75  # bytes per kept element in bfloat16 autocast (fitted the same way: bench/MEMORY.md)
M_MMAP_THRESHOLD = -3  # glibc mallopt: allocations above this size are mmapped, and unmapped when freed


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a model: its shape (config.json) and its parameter counts."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    params: int  # every parameter
    linear_params: int  # those of the decoder's linear layers (what LoRA wraps and 4 bit quantizes)

    @classmethod
    def of_folder(cls, folder: Path) -> Shape:
        """Read a model folder's config.json and its safetensors headers (no weights are loaded)."""
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        params = linear = 0
        for file in sorted(folder.glob("*.safetensors")):
            with file.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for d in info["shape"]:
                    count *= d
                params += count
                if ".layers." in name and name.endswith("proj.weight"):
                    linear += count
        return cls(
            layers=config["num_hidden_layers"],
            hidden=hidden,
            intermediate=config.get("intermediate_size", 4 * hidden),
            heads=heads,
            kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or hidden // heads,
            vocab=config["vocab_size"],
            params=params,
            linear_params=linear,
        )

    def lora_params(self, rank: int) -> int:
        """LoRA parameters on every linear layer of the decoder (q, k, v, o, gate, up, down)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * rank * per_layer


@dataclass
class Estimate:
    """A predicted peak, in bytes by part, and what it was predicted for."""

    backend: str
    device: str
    batch_size: int
    tokens: int  # the longest row, as batches are padded to it
    checkpointing: bool
    weights: int
    adapter: int
    activations: int
    logits: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.runtime

    def row(self) -> dict:
        """The estimate as a manifest keeps it: the parts and the total in MB."""
        parts = ("weights", "adapter", "activations", "logits", "runtime")
        return {
            **{k: v for k, v in asdict(self).items() if k not in parts},
            **{f"{k}_mb": round(getattr(self, k) / MB, 1) for k in parts},
            "total_mb": round(self.total / MB, 1),
        }

    def line(self) -> str:
        return (
            f"{self.total / MB:,.0f} MB (weights {self.weights / MB:,.0f}, adapter and optimizer "
            f"{self.adapter / MB:,.0f}, activations {self.activations / MB:,.0f}"
            f"{' checkpointed' if self.checkpointing else ''}, logits {self.logits / MB:,.0f}, runtime "
            f"{self.runtime / MB:,.0f}) for batches of {self.batch_size} rows of up to {self.tokens} tokens"
        )


def element_bytes(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}.get(dtype.replace("torch.", ""), 4)


def estimate(
    shape: Shape,
    *,
    backend: str,
    device: str,
    dtype: str,
    quantize: str,
    rank: int,
    optimizer: str,
    batch_size: int,
    tokens: int,
    checkpointing: bool,
    anchored: bool,
    runtime: int,
    loss_positions: int | None = None,
    teacher_positions: int = 0,
    autocast: bool = False,
) -> Estimate:
    """Predict the peak of training with these settings (`dtype`: the weights as loaded; `tokens`:
    the longest row; `anchored`: whether the night has KL-anchor rows; `runtime`: measured;
    `loss_positions`: the most positions one batch computes the loss on, its targets and its anchor
    rows' every position (default: all); `teacher_positions`: the most anchor positions one batch of
    the teacher's cache reads; `autocast`: the steps in bfloat16 autocast)."""
    width = element_bytes(dtype)
    kept = AUTOCAST_KEPT if autocast else width  # what one element autograd keeps takes
    if quantize == "4bit":
        weights = int(shape.linear_params * 0.56) + (shape.params - shape.linear_params) * width
    else:
        weights = shape.params * width
    adapter = shape.lora_params(rank) * ADAPTER_BYTES.get(optimizer, 24)
    positions = batch_size * tokens
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    per_token = PER_HIDDEN * h + PER_ATTENTION * q + PER_KV * kv + PER_MLP * i  # SDPA: no [s, s] probabilities
    if checkpointing:  # each layer's input (the residual stream, in the weights' dtype), one layer recomputed
        activations = int(positions * (width * shape.layers * h + kept * per_token))
    else:
        activations = int(positions * kept * shape.layers * per_token)
    if autocast:  # each product's bfloat16 copy of its weight, kept for the backward pass (one layer's if recomputed)
        activations += 2 * (shape.linear_params // shape.layers if checkpointing else shape.linear_params)
    if backend == "mlx":
        logits = positions * shape.vocab * width * (10 if anchored else 6)
    else:  # the loss: logits, log-softmax, their gradient; the teacher's cache: logits, log-softmax
        loss = min(LOSS_CHUNK, positions if loss_positions is None else loss_positions)
        logits = max(3 * loss, 2 * min(LOSS_CHUNK, teacher_positions)) * shape.vocab * 4
    return Estimate(backend, device, batch_size, tokens, checkpointing, weights, adapter, activations, logits, runtime)


HEAP_FACTOR = 1.7  # a CPU night's resident peak over its tensors' when glibc's heap keeps what steps free


def return_freed_memory() -> bool:
    """On Linux with glibc, have every allocation of 64 kB or more mapped on its own, so that a freed
    tensor goes back to the system at once. Without it the heap keeps what a step freed, fragments,
    and a night's resident peak runs 1.6-2x its tensors' (bench/MEMORY.md); with it the peak is what
    the estimate counts, but training runs about 20% slower (75 against 94 tokens/s on the embedded
    model's night-sized rows), so the night sets it only when memory is short. Return whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        return False


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_bytes() -> int:
    """The process's resident memory now (Linux; elsewhere its peak so far)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak(backend: str, device: str) -> bool:
    """Start measuring the peak from now; return whether the platform could reset it."""
    if backend == "mlx":
        import mlx.core as mx

        mx.reset_peak_memory()
        return True
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def measured_peak(backend: str, device: str) -> int:
    """The peak since reset_peak, in bytes, as the estimate counts it."""
    if backend == "mlx":
        import mlx.core as mx

        return int(mx.get_peak_memory())
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_bytes(backend: str, device: str) -> int | None:
    """The memory training may use here: the GPU's, Metal's working set, or the RAM available now
    plus what the process holds (None when it cannot be told)."""
    if backend == "mlx":
        import mlx.core as mx

        info = mx.device_info() if hasattr(mx, "device_info") else {}
        return info.get("max_recommended_working_set_size") or info.get("memory_size")
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    free = free_bytes()
    if free is not None:
        return free + resident_bytes()
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def free_bytes() -> int | None:
    """The RAM a new process could take now (Linux's MemAvailable), or None where it cannot be told."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def address_space_limit() -> int | None:
    """This process's address-space limit (`ulimit -v`) in bytes, or None when there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _run_estimate(shape: Shape, settings, examples: list, **known) -> Estimate:
    """estimate() for a training run's rows: the longest row, and the loss and teacher positions of the
    worst batch (rows are length-bucketed, so the longest rows share one)."""
    micro = -(-settings.batch_size // settings.grad_accumulation)
    worst = lambda values: sum(sorted(values, reverse=True)[:micro])  # noqa: E731
    return estimate(
        shape,
        rank=settings.rank,
        optimizer=settings.optimizer,
        batch_size=micro,
        tokens=min(settings.max_length, max((len(e) for e in examples), default=1)),
        checkpointing=settings.grad_checkpoint or known["quantize"] == "4bit",
        autocast=known["backend"] == "torch"
        and precision.training_autocast(settings.mixed_precision, known["device"], known["dtype"]),
        anchored=any(getattr(e, "anchor", False) for e in examples),
        loss_positions=worst([len(e) - 1 if getattr(e, "anchor", False) else e.targets for e in examples]),
        teacher_positions=worst([len(e) - 1 for e in examples if getattr(e, "anchor", False)]),
        **known,
    )


def for_training(model, settings, examples: list, *, quantize: str = "none") -> Estimate:
    """Given a loaded model (LoadedModel), the train settings and the tokenized rows of a training run,
    the estimate of its peak: the weights as loaded, the runtime measured now, the rest predicted."""
    device = "mlx" if model.backend == "mlx" else model.device
    weights = model.weight_bytes()
    cpu = model.backend == "torch" and device == "cpu"
    found = _run_estimate(
        Shape.of_folder(Path(model.model_path)),
        settings,
        examples,
        backend=model.backend,
        device=device,
        dtype=model.weight_dtype(),
        quantize=quantize,
        runtime=max(0, resident_bytes() - weights) if cpu else 0,
    )
    found.weights = weights
    return found


def fit_to_limit(model, settings, examples: list, *, quantize: str, limit: int | None):
    """Given the limit in bytes (None: none known), return (settings, estimate, note): the settings
    as they are when the estimate fits; on torch, with the batch split into more micro-batches
    (gradient accumulation: the same rows per optimizer step) until it fits, said in `note`. Raise
    CircadianError, before anything trains, when nothing fits."""
    from circadian.core.errors import CircadianError

    found = for_training(model, settings, examples, quantize=quantize)
    heap = model.backend == "torch" and found.device == "cpu"
    if heap and limit is not None and found.total * HEAP_FACTOR > limit and return_freed_memory():
        heap_note = "memory: freed tensors go back to the system at once (the heap would not fit; slower)"
    else:
        heap_note = None
    if limit is None or found.total <= limit:
        return settings, found, heap_note
    first, tried = found, settings
    while model.backend == "torch" and tried.grad_accumulation < settings.batch_size:
        tried = tried.model_copy(update={"grad_accumulation": min(settings.batch_size, 2 * tried.grad_accumulation)})
        found = for_training(model, tried, examples, quantize=quantize)
        if found.total <= limit:
            micro = -(-tried.batch_size // tried.grad_accumulation)
            return (
                tried,
                found,
                f"memory: the estimate {first.total / MB:,.0f} MB is above the limit {limit / MB:,.0f} MB; training "
                f"in micro-batches of {micro} rows ({tried.grad_accumulation} per step, the same rows per step)",
            )
    raise CircadianError(
        f"training would take about {found.line()}, more than the {limit / MB:,.0f} MB "
        "it may use (train.memory_limit_mb, or what this machine has); lower train.max_length or train.rank, or set "
        "train.grad_checkpoint = true"
    )


def before_loading(model_path: Path, backend: str, model_settings, settings, examples: list) -> Estimate:
    """The estimate before any model is loaded (`circadian sleep --estimate`): the weights from the
    folder's safetensors headers at the dtype the backend will load them in, the runtime measured now
    with the backend's libraries imported."""
    shape = Shape.of_folder(model_path)
    if backend == "mlx":
        import mlx.core  # noqa: F401

        device, dtype = "mlx", "float16"
        stored = sum(p.stat().st_size for p in model_path.glob("*.safetensors"))
    else:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401

        wanted = model_settings.device
        device = "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"
        dtype = (
            model_settings.dtype if model_settings.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
        )
        stored = None
    found = _run_estimate(
        shape,
        settings,
        examples,
        backend=backend,
        device=device,
        dtype=dtype,
        quantize=model_settings.quantize,
        runtime=resident_bytes() if backend == "torch" and device == "cpu" else 0,
    )
    if stored is not None:
        found.weights = stored
    return found
