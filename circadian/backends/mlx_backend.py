"""The MLX backend: mlx-lm used as a library. Metal on Apple Silicon (QLoRA on a quantized base);
it also runs on Linux through `mlx[cpu]`, about 50-100x slower, which is enough for tests with
tiny models.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from circadian.backends import Chunk, GenerationSettings, LoadRequest, TrainResult
from circadian.core.errors import CircadianError, first_line

if TYPE_CHECKING:
    from circadian.store.records import TrainCallback

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")  # what mlx-lm's load_adapters accepts for LoRA/DoRA


@contextlib.contextmanager
def _quiet_tuner_ui():
    """Silence mlx-lm's own training console (it prints to stdout; circadian reports through its
    callback). Its TrainUI (mlx-lm 0.32) is quiet for distributed ranks other than 0, so swap in that
    variant; an mlx-lm without TrainUI is left as it is."""
    import mlx_lm.tuner.trainer as trainer

    original = getattr(trainer, "TrainUI", None)
    if original is None:
        yield
        return

    class QuietUI(original):
        def __init__(self, total_iters: int, rank: int = 0):
            super().__init__(total_iters, rank=1)

    trainer.TrainUI = QuietUI
    try:
        yield
    finally:
        trainer.TrainUI = original


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

    def load(self, request: LoadRequest) -> MLXModel:
        return MLXModel(request)


class MLXModel:
    """An mlx-lm model (+ optional mlx-lm LoRA adapter) in memory."""

    backend = "mlx"

    def __init__(self, request: LoadRequest):
        import mlx.core as mx

        self.request = request
        self.model_name = request.model_name
        self.model_path = request.model_path
        self.device = str(mx.default_device())
        self.adapter_version: str | None = None
        self.set_adapter(request.adapter_path, request.adapter_version)

    def set_adapter(self, adapter_path: Path | None, adapter_version: str | None) -> None:
        """Given an mlx-lm adapter folder (or None), reload the model with it.

        mlx-lm applies LoRA layers in place, so switching means loading the base again.
        """
        self._trained_state = None
        from mlx_lm import load

        try:
            self.model, self._wrapper = load(
                str(self.request.model_path), adapter_path=str(adapter_path) if adapter_path else None
            )
            self.tokenizer = self._wrapper._tokenizer  # the Hugging Face tokenizer (protocol attribute)
        except (OSError, ValueError, KeyError, FileNotFoundError) as exc:
            what = f"adapter {adapter_version}" if adapter_path else self.model_name
            raise CircadianError(f"the mlx backend cannot load {what}: {first_line(exc)}") from None
        self.adapter_version = adapter_version if adapter_path else None
        self.request_adapter = adapter_path
        self.lora_config = json.loads((adapter_path / "adapter_config.json").read_text()) if adapter_path else None

    def stream(
        self, messages: list[dict], settings: GenerationSettings, cancel: threading.Event | None = None
    ) -> Iterator[Chunk]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        prompt = self._wrapper.apply_chat_template(messages, add_generation_prompt=True)
        sampler = make_sampler(temp=settings.temperature, top_p=settings.top_p if settings.temperature > 0 else 0.0)
        for response in stream_generate(
            self.model,
            self._wrapper,
            prompt,
            max_tokens=settings.max_tokens,
            sampler=sampler,
            logits_processors=self._processors(settings, len(prompt)),
        ):
            if cancel is not None and cancel.is_set():
                break
            if response.finish_reason == "stop" and not response.text:
                break
            yield Chunk(response.text, 1)

    def _processors(self, settings: GenerationSettings, prompt_length: int) -> list | None:
        """mlx-lm's repetition penalty over the reply's own last `repetition_context` tokens (the
        prompt is never penalized), with the end-of-turn tokens exempt, as the torch backend does."""
        if settings.repetition_penalty == 1.0:
            return None
        from mlx_lm.sample_utils import make_repetition_penalty

        penalty = make_repetition_penalty(settings.repetition_penalty, settings.repetition_context)
        exempt = sorted(set(self._wrapper.eos_token_ids or []) | {self.tokenizer.eos_token_id} - {None})

        def reply_repetition_penalty(tokens, logits):
            said = tokens[prompt_length:]
            if len(said) == 0:
                return logits
            kept = logits[:, exempt]
            logits = penalty(said, logits)
            logits[:, exempt] = kept
            return logits

        return [reply_repetition_penalty]

    # ----------------------------------------------------------------------------- scoring

    def _arrays(self, rows: list):
        """Given tokens.Example rows, return (ids, target mask) as right-padded mx arrays."""
        import mlx.core as mx
        import numpy as np

        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int32)
        mask = np.zeros((len(rows), width), np.float32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row.ids
            mask[i, : len(row)] = row.mask
        return mx.array(ids), mx.array(mask)

    def _train_arrays(self, rows: list):
        """(ids, target mask, token mask, anchor flags): what the training loss needs."""
        import mlx.core as mx
        import numpy as np

        ids, mask = self._arrays(rows)
        valid = np.zeros(mask.shape, np.float32)
        for i, row in enumerate(rows):
            valid[i, : len(row)] = 1.0
        return ids, mask, mx.array(valid), mx.array(np.array([float(r.anchor) for r in rows], np.float32))

    @staticmethod
    def _lora_layers(model) -> list:
        return [m for _name, m in model.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]

    @staticmethod
    def _nll(model, ids, mask):
        """Per-position NLL of ids[:, 1:] and the matching target mask (causal: padding on the right
        cannot change earlier positions, so no attention mask is needed)."""
        import mlx.nn as nn

        logits = model(ids[:, :-1])
        return nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none"), mask[:, 1:]

    def score(self, examples: list, batch_size: int = 8) -> list[tuple[float, int]]:
        from circadian.backends.tokens import length_batches

        out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
        for batch in length_batches([len(e) for e in examples], batch_size, seed=0, shuffle=False):
            nll, mask = self._nll(self.model, *self._arrays([examples[i] for i in batch]))
            sums, counts = (nll * mask).sum(axis=1).tolist(), mask.sum(axis=1).tolist()
            for i, total, count in zip(batch, sums, counts):
                out[i] = (float(total), int(count))
        return out

    # ----------------------------------------------------------------------------- training

    def _make_trainable(self, settings) -> str:
        """Give the model LoRA layers: the loaded adapter's (continuing it) or new ones."""
        from mlx_lm.tuner.utils import linear_to_lora_layers

        if self.adapter_version is not None:
            # mlx-lm's load_adapters added the LoRA layers but froze nothing: train only their leaves
            self.model.freeze()
            self.model.apply_to_modules(
                lambda _name, module: (
                    module.unfreeze(keys=list(ADAPTER_LEAVES), strict=False) if hasattr(module, "lora_a") else None
                )
            )
            return f"continued from adapter {self.adapter_version}"
        self.model.freeze()
        layers = len(self.model.layers)
        params = {"rank": settings.rank, "scale": settings.alpha / settings.rank, "dropout": settings.dropout}
        linear_to_lora_layers(self.model, layers, params, use_dora=settings.dora)
        self.lora_config = {
            "fine_tune_type": "dora" if settings.dora else "lora",
            "num_layers": layers,
            "lora_parameters": params,
        }
        return "new adapter on the base model"

    def train(self, train: list, valid: list, settings, callback: TrainCallback) -> TrainResult:
        """Train through mlx-lm's tuner (`tuner.trainer.train`) with circadian's batches (length
        buckets), loss (every assistant turn) and a callback that keeps the best checkpoint and stops
        early. Anchor rows are trained toward the base model's own distribution (KL, LoRA switched off
        for the teacher pass), as on the torch backend."""
        import time

        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten, tree_unflatten
        from mlx_lm.tuner.callbacks import TrainingCallback
        from mlx_lm.tuner.trainer import TrainingArgs
        from mlx_lm.tuner.trainer import train as tuner_train

        from circadian.backends.tokens import length_batches
        from circadian.backends.training import EarlyStopping, total_steps, warmup_cosine

        self._trained_state = None
        mx.reset_peak_memory()  # the peak this reports is training's own
        if settings.grad_accumulation > 1:
            raise CircadianError(
                "train.grad_accumulation is not supported on the mlx backend yet; lower train.batch_size instead"
            )

        mx.random.seed(settings.seed)
        started = self._make_trainable(settings)
        total = total_steps(len(train), settings)
        ops = SimpleNamespace(minimum=mx.minimum, maximum=mx.maximum, cos=mx.cos, where=mx.where)
        peak = settings.learning_rate
        schedule = lambda step: peak * warmup_cosine(step, total=total, warmup=settings.warmup_steps, ops=ops)  # noqa: E731
        optimizer = self._optimizer(schedule, settings)
        counted = {"tokens": 0}

        def batches(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
            epoch = 0
            while True:
                for batch in length_batches(
                    [len(e) for e in dataset], batch_size, seed=settings.seed + epoch, shuffle=loop
                ):
                    rows = [dataset[i] for i in batch]
                    if loop:
                        counted["tokens"] += sum(len(r) for r in rows)
                    yield self._train_arrays(rows)
                if not loop:
                    return
                epoch += 1

        lora_layers = self._lora_layers(self.model)
        kl_anchor = settings.anchor_weight > 0 and not settings.dora  # DoRA's magnitude has no "off" switch

        def loss(model, ids, mask, valid, anchor):
            """Cross-entropy on the target tokens of ordinary rows, plus anchor_weight x KL(base ||
            adapted) on every position of anchor rows (the base = every LoRA scale set to 0)."""
            logits = model(ids[:, :-1])
            nll = nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none")
            plain = (1 - anchor)[:, None] if kl_anchor else mx.ones_like(anchor)[:, None]
            targets = mask[:, 1:] * plain
            ntoks = targets.sum()
            value = (nll * targets).sum() / mx.maximum(ntoks, 1)
            if kl_anchor:
                scales = [layer.scale for layer in lora_layers]
                for layer in lora_layers:
                    layer.scale = 0.0
                teacher = mx.stop_gradient(model(ids[:, :-1]))
                for layer, scale in zip(lora_layers, scales):
                    layer.scale = scale
                log_p, log_q = nn.log_softmax(teacher, axis=-1), nn.log_softmax(logits, axis=-1)
                kl = (mx.exp(log_p) * (log_p - log_q)).sum(axis=-1)
                positions = valid[:, 1:] * anchor[:, None]
                value = value + settings.anchor_weight * (kl * positions).sum() / mx.maximum(positions.sum(), 1)
                ntoks = ntoks + positions.sum()
            return value, ntoks

        snapshot = lambda: {k: mx.array(v) for k, v in tree_flatten(self.model.trainable_parameters())}  # noqa: E731
        stopping = EarlyStopping.of(settings)
        state = {
            "best_state": snapshot(),
            "started": False,
            "reason": "reached the step budget",
            "t0": time.perf_counter(),
            "val_time": 0.0,
        }
        curve: list[dict] = []

        class _Stop(Exception):
            pass

        model = self

        class Callback(TrainingCallback):
            def on_train_loss_report(self, info):
                seconds = time.perf_counter() - state["t0"] - state["val_time"]
                event = {
                    "iteration": info["iteration"],
                    "train_loss": info["train_loss"],
                    "learning_rate": info["learning_rate"],
                    "tokens_per_second": counted["tokens"] / seconds,
                    "trained_tokens": counted["tokens"],
                    "peak_memory_mb": model._peak_memory_mb(),
                    "total_steps": total,
                }
                curve.append(event)
                if callback(event) == "stop":
                    state["reason"] = "stopped"
                    raise _Stop

            def on_val_loss_report(self, info):
                state["val_time"] += info["val_time"]
                step, val = info["iteration"], info["val_loss"]
                if not state["started"]:  # mlx-lm validates before its first step: the starting loss
                    state["started"] = True
                    stopping.start(val)
                    event = {
                        "iteration": 0,
                        "val_loss": val,
                        "best_val_loss": val,
                        "total_steps": total,
                        "note": started,
                    }
                else:
                    if stopping.observe(step, val):
                        state["best_state"] = snapshot()
                    event = {"iteration": step, "val_loss": val, "best_val_loss": stopping.best, "total_steps": total}
                curve.append(event)
                if callback(event) == "stop":
                    state["reason"] = "stopped"
                    raise _Stop
                if stopping.should_stop(step):
                    state["reason"] = EarlyStopping.REASON
                    raise _Stop

        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArgs(
                batch_size=settings.batch_size,
                iters=total,
                val_batches=-1,
                steps_per_report=1,
                steps_per_eval=settings.eval_every,
                steps_per_save=10**9,
                max_seq_length=settings.max_length,
                adapter_file=str(Path(scratch) / "a.safetensors"),
                grad_checkpoint=settings.grad_checkpoint,
            )
            try:
                with _quiet_tuner_ui():
                    tuner_train(
                        self.model,
                        optimizer,
                        train,
                        valid or None,
                        args=args,
                        loss=loss,
                        iterate_batches=batches,
                        training_callback=Callback(),
                    )
            except _Stop:
                pass
        steps = max((e["iteration"] for e in curve), default=0)
        if not valid:
            stopping.best_step, state["best_state"] = steps, snapshot()
        self.model.update(tree_unflatten(list(state["best_state"].items())))
        self.model.eval()
        self.adapter_version = "candidate"
        seconds = time.perf_counter() - state["t0"] - state["val_time"]
        return TrainResult(
            steps=steps,
            best_step=stopping.best_step,
            initial_val_loss=stopping.initial,
            best_val_loss=stopping.best,
            stop_reason=state["reason"],
            trained_tokens=counted["tokens"],
            tokens_per_second=counted["tokens"] / max(seconds, 1e-9),
            train_seconds=seconds,
            peak_memory_mb=self._peak_memory_mb(),
            curve=curve,
            precision=self.weight_dtype(),
        )

    def _optimizer(self, schedule, settings):
        """AdamW, or with `train.optimizer = "muon"` mlx's Muon for the 2-D LoRA matrices and AdamW for
        the rest. mlx's Muon has no step matching, so the matrices are grouped by their larger side d and
        each group's learning rate is scaled by 0.2 * sqrt(d), as torch's `match_rms_adamw` does."""
        import mlx.optimizers as optim
        from mlx.utils import tree_flatten

        adamw = optim.AdamW(learning_rate=schedule, weight_decay=settings.weight_decay)
        if settings.optimizer != "muon":
            return adamw
        sides = sorted({max(v.shape) for _k, v in tree_flatten(self.model.trainable_parameters()) if v.ndim == 2})
        muons = [
            optim.Muon(
                learning_rate=lambda step, d=d: 0.2 * d**0.5 * schedule(step), weight_decay=settings.weight_decay
            )
            for d in sides
        ]
        filters = [lambda _path, w, d=d: w.ndim == 2 and max(w.shape) == d for d in sides]
        return optim.MultiOptimizer([*muons, adamw], filters)

    def _peak_memory_mb(self) -> float:
        """mlx's peak since training began (backends/memory.py)."""
        import mlx.core as mx

        return mx.get_peak_memory() / 2**20

    def weight_bytes(self) -> int:
        """The bytes the model's arrays take as loaded (a LoRA layer's own matrices included)."""
        from mlx.utils import tree_flatten

        return sum(v.nbytes for _k, v in tree_flatten(self.model.parameters()))

    def weight_dtype(self) -> str:
        from mlx.utils import tree_flatten

        return str(tree_flatten(self.model.parameters())[0][1].dtype).removeprefix("mlx.core.")

    def blend_adapter(self, start: Path | None, factor: float) -> None:
        """Move the trained adapter back toward `start` (None: the base model): every adapter leaf
        becomes start + factor x (trained - start), lora_b = 0 standing in for the base (for DoRA
        the magnitude vector is blended too, an approximation). factor 1 restores the trained one."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        if getattr(self, "_trained_state", None) is None:
            self._trained_state = {
                name: mx.array(value)
                for name, value in tree_flatten(self.model.trainable_parameters())
                if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES
            }
        begin = mx.load(str(start / "adapters.safetensors")) if start else {}
        blended = []
        for name, trained in self._trained_state.items():
            origin = begin.get(name)
            if origin is None or origin.shape != trained.shape:
                origin = mx.zeros_like(trained) if name.endswith("lora_b") else trained
            blended.append((name, origin.astype(trained.dtype) + factor * (trained - origin.astype(trained.dtype))))
        self.model.load_weights(blended, strict=False)
        mx.eval(self.model.parameters())

    def fuse_adapter(self, folder: Path) -> None:
        """Write the base model with the loaded adapter fused into its weights to `folder`, as
        `mlx_lm fuse` does: each LoRA layer's fuse(), which de-quantizes a quantized base, adds the
        update and quantizes it again with the same group size and bits. The adapter is gone from
        this model afterwards."""
        from mlx.utils import tree_unflatten
        from mlx_lm.utils import load_config, save

        if self.request_adapter is None:
            raise CircadianError("no adapter to fuse: the base model is loaded alone")
        fused = [(name, module.fuse()) for name, module in self.model.named_modules() if hasattr(module, "fuse")]
        if fused:
            self.model.update_modules(tree_unflatten(fused))
        config = load_config(Path(self.request.model_path))
        save(folder, self.request.model_path, self.model, self._wrapper, config, donate_model=False)
        self.request_adapter = self.lora_config = self.adapter_version = None

    def save_adapter(self, folder: Path) -> dict[str, str]:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from circadian.core.fsutil import atomic_write_json, sha256_file

        if not getattr(self, "lora_config", None):
            raise CircadianError("no adapter to save: the model has not been trained")
        folder.mkdir(parents=True, exist_ok=True)
        weights = {
            name: value
            for name, value in tree_flatten(self.model.trainable_parameters())
            if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES
        }
        mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
        atomic_write_json(folder / "adapter_config.json", self.lora_config, mode=0o644)
        return {name: sha256_file(folder / name) for name in ("adapters.safetensors", "adapter_config.json")}
