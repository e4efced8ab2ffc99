"""Training throughput: circadian's training against what a user would run instead, same model, rows,
LoRA settings, batch size and number of steps, one process.

Run as: .venv/bin/python bench/train_throughput.py [--night DAY | --bare] [--backend torch|mlx]
        [--steps 24] [--batch 8]

torch, --night DAY (the default, DAY = dev-maya): the configuration a night really runs. The day
       (bench/recall/days/DAY.json) is logged into a fresh home and one real `circadian sleep` runs;
       circadian's throughput is the night's trained tokens over the whole training stage (tokenizing,
       the teacher's top-k log-probabilities for the KL anchor, validation, learning-evolution
       snapshots, checkpoints). The plain loop then trains the same rows (the cycle's
       dataset/train.jsonl, distill rows as plain targets) for the same number of steps and batch
       size, timed over its steps only.
torch, --bare: circadian's bare training step on a fixed set of rows (no anchor, no evaluation).
mlx:   a small random Llama (4 layers, the embedded tokenizer; MLX on a Linux CPU is too slow for
       the embedded model); circadian's MLX trainer vs mlx-lm's own LoRA trainer
       (`tuner.trainer.train` with its ChatDataset(mask_prompt) and its iterate_batches).

The plain loop is what a user would write (the PEFT docs' recipe): shuffled batches padded to the
longest row, labels -100 outside assistant turns, `model(**batch, labels=...)`. Tokens/s counts
real (non-padding) tokens.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from circadian.backends import LoadRequest, get_backend  # noqa: E402
from circadian.backends.tokens import encode_chat, length_batches, padding_share  # noqa: E402
from circadian.core.config import TrainSettings  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402


def rows() -> list[dict]:
    """Fact rows from a development day (the knowledge pipeline) and general rows with long answers."""
    from circadian.night.knowledge import pipeline
    from circadian.night.knowledge import rows as fact_rows
    from circadian.night.knowledge.conversation import Conversation, Turn

    day = json.loads((ROOT / "bench/recall/days/dev-maya.json").read_text())
    conversations = [
        Conversation(f"s{n}", "chat", [Turn(m["role"], m["content"], f"s{n}t{i}", i) for i, m in enumerate(s)])
        for n, s in enumerate(day["sessions"])
    ]
    knowledge = pipeline.mine(conversations, pipeline.choose("parse"))
    out = fact_rows.build(knowledge.facts, replaced=knowledge.replaced).train
    rng = random.Random(0)
    words = (ROOT / "circadian/night/data/eval/general.txt").read_text().split()
    for i in range(40):  # general rows with long answers, as distill rows have
        start = rng.randrange(0, len(words) - 120)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"Tell me something interesting ({i})."},
                    {"role": "assistant", "content": " ".join(words[start : start + rng.randrange(20, 110)])},
                ]
            }
        )
    return out


def real_night(day_name: str, model_dir: Path) -> None:
    """One real night on a fresh home, then the plain loop on the rows it trained."""
    import importlib.util
    import tempfile

    spec = importlib.util.spec_from_file_location("recall_bench", ROOT / "bench/recall/run.py")
    recall_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recall_bench)
    day = json.loads((ROOT / "bench/recall/days" / f"{day_name}.json").read_text())
    with tempfile.TemporaryDirectory(prefix="circadian-throughput-") as tmp:
        home = Path(tmp) / "home"
        recall_bench.log_day(home, day, Path(tmp))
        summary = recall_bench.cli(home, "sleep")
        trained, stage = summary["train"], summary["timings"]["train"]
        rows_file = Paths(home).runs / summary["cycle_id"] / "dataset" / "train.jsonl"
        night_rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
        config = TrainSettings()
        ours_tps = trained["trained_tokens"] / stage
        model = get_backend("torch").load(LoadRequest("embedded", model_dir))
        examples = [encode_chat(model.tokenizer, r["messages"]) for r in night_rows]
        del model
        random.Random(0).shuffle(examples)
        plain_tps, plain_tokens = plain_peft(model_dir, examples, trained["steps"], config.batch_size)
        amp_tps, _ = plain_peft(model_dir, examples, trained["steps"], config.batch_size, autocast=True)
    print(
        f"night on {day_name}: {len(night_rows)} rows, {trained['steps']} steps of {config.batch_size}; training stage "
        f"{stage:.0f} s, of which {trained['train_seconds']:.0f} s in steps"
    )
    print(f"plain transformers+PEFT loop:     {plain_tps:7.1f} tokens/s ({plain_tokens} tokens, steps only)")
    print(f"the same loop in bf16 autocast:   {amp_tps:7.1f} tokens/s (steps only)")
    print(
        f"circadian night (whole stage):    {ours_tps:7.1f} tokens/s ({trained['trained_tokens']} tokens; "
        f"{trained['tokens_per_second']:.1f} tokens/s in its steps)"
    )
    print(
        f"circadian trained in {trained.get('precision', 'float32')}; ratio: {ours_tps / plain_tps:.2f}x (steps only: "
        f"{trained['tokens_per_second'] / plain_tps:.2f}x); against the autocast loop {ours_tps / amp_tps:.2f}x "
        f"(steps only {trained['tokens_per_second'] / amp_tps:.2f}x)"
    )


def plain_peft(model_dir: Path, examples, steps: int, batch: int, autocast: bool = False) -> tuple[float, int]:
    """The PEFT recipe's loop; `autocast`: its forward passes in bfloat16 autocast, as
    torch's mixed-precision recipe writes it."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    order = list(range(len(examples)))
    rng = random.Random(0)
    done, tokens, seconds = 0, 0, 0.0
    while done < steps:
        rng.shuffle(order)
        for i in range(0, len(order), batch):
            chunk = [examples[j] for j in order[i : i + batch]]
            width = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), width), 2)
            attention = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for r, e in enumerate(chunk):
                ids[r, : len(e)] = torch.tensor(e.ids)
                attention[r, : len(e)] = 1
                labels[r, : len(e)] = torch.tensor([t if m else -100 for t, m in zip(e.ids, e.mask)])
            tic = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
                loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds += time.perf_counter() - tic
            tokens += int(attention.sum())
            done += 1
            if done == steps:
                break
    return tokens / seconds, tokens


def mlx_lm_own(model_dir: Path, data: list[dict], steps: int, batch: int) -> tuple[float, int]:
    """mlx-lm's trainer as its CLI would run it: ChatDataset + mask_prompt, its batching and loss."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model, tokenizer = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 16, "scale": 2.0, "dropout": 0.0})
    dataset = CacheDataset(ChatDataset(data, tokenizer, mask_prompt=True))
    counted = {"tokens": 0}

    def counting(*a, **kw):
        for batch, lengths in iterate_batches(*a, **kw):
            counted["tokens"] += int(lengths[:, 1].sum().item())
            yield batch, lengths

    from circadian.backends.mlx_backend import _quiet_tuner_ui

    tic = time.perf_counter()
    with _quiet_tuner_ui():
        train(
            model,
            optim.AdamW(learning_rate=1e-3),
            dataset,
            None,
            args=TrainingArgs(
                batch_size=batch,
                iters=steps,
                steps_per_report=steps,
                steps_per_eval=10**9,
                steps_per_save=10**9,
                adapter_file=str(Path("/tmp") / "bench-mlx-adapter.safetensors"),
            ),
            iterate_batches=counting,
        )
    return counted["tokens"] / (time.perf_counter() - tic), counted["tokens"]


def mlx_main(args, tokenizer_dir: Path) -> None:
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "small", tokenizer_dir, max_positions=2048, hidden=256, layers=4)
        data = rows()
        theirs_tps, theirs_tokens = mlx_lm_own(model_dir, data, args.steps, args.batch)
        ours = get_backend("mlx").load(LoadRequest("small", model_dir))
        examples = [encode_chat(ours.tokenizer, r["messages"]) for r in data]
        settings = TrainSettings(
            batch_size=args.batch,
            max_steps=args.steps,
            max_epochs=100,
            anchor_weight=0.0,
            rank=16,
            alpha=32.0,
            warmup_steps=0,
        )
        tic = time.perf_counter()
        result = ours.train(examples, [], settings, lambda e: None)
        ours_tps = result.trained_tokens / (time.perf_counter() - tic)
    print(f"mlx-lm's own LoRA trainer: {theirs_tps:7.1f} tokens/s ({theirs_tokens} tokens, {args.steps} steps)")
    print(f"circadian MLX trainer:     {ours_tps:7.1f} tokens/s ({result.trained_tokens} tokens, {result.steps} steps)")
    print(f"ratio: {ours_tps / theirs_tps:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "mlx"], default="torch")
    parser.add_argument("--night", default="dev-maya", help="torch: the development day a real night trains on")
    parser.add_argument("--bare", action="store_true", help="torch: time the bare training step instead")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from circadian.backends import embedded

    model_dir = embedded.build(Paths.resolve(None).models)
    if args.backend == "mlx":
        mlx_main(args, model_dir)
        return
    if not args.bare:
        real_night(args.night, model_dir)
        return
    ours = get_backend("torch").load(LoadRequest("embedded", model_dir))
    examples = [encode_chat(ours.tokenizer, r["messages"]) for r in rows()]
    lengths = [len(e) for e in examples]
    naive = [list(range(i, min(i + args.batch, len(lengths)))) for i in range(0, len(lengths), args.batch)]
    random.Random(0).shuffle(examples)
    print(
        f"{len(examples)} rows, {sum(lengths)} tokens, lengths {min(lengths)}-{max(lengths)}; "
        f"padding: length batches {padding_share(lengths, length_batches(lengths, args.batch, seed=0)):.1%}, "
        f"arrival order {padding_share(lengths, naive):.1%}"
    )
    plain_tps, plain_tokens = plain_peft(model_dir, examples, args.steps, args.batch)
    settings = TrainSettings(batch_size=args.batch, max_steps=args.steps, max_epochs=100, anchor_weight=0.0)
    result = ours.train(examples, [], settings, lambda e: None)
    print(f"plain transformers+PEFT loop: {plain_tps:7.1f} tokens/s ({plain_tokens} tokens, {args.steps} steps)")
    print(
        f"circadian torch trainer:      {result.tokens_per_second:7.1f} tokens/s ({result.trained_tokens} tokens, "
        f"{result.steps} steps)"
    )
    print(f"ratio: {result.tokens_per_second / plain_tps:.2f}x")


if __name__ == "__main__":
    main()
