"""The memory estimate against the measured training peak (circadian/backends/memory.py).

Run as: .venv/bin/python bench/memory_estimate.py [--only NAME,...] [--out bench/MEMORY.md]

Each configuration runs in a process of its own: load the model on its backend, build chat rows of a
given length (half of them KL-anchor rows, as a night's distilled rows are), estimate the peak the
way the night does (the runtime part measured, the rest from the model's shape and the settings),
then train a few steps through the backend's own `train` and read the real peak since training
began. Reported: each part of the estimate, the measured peak, and the error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIGS = {
    # name: (model, backend, batch size, row tokens, gradient checkpointing, optimizer, train.mixed_precision)
    "embedded-torch-b8-256": ("embedded", "torch", 8, 256, False, "adamw", "off"),
    "embedded-torch-b8-256-muon": ("embedded", "torch", 8, 256, False, "muon", "off"),
    "embedded-torch-b4-512-ckpt": ("embedded", "torch", 4, 512, True, "adamw", "off"),
    "embedded-torch-b8-256-bf16": ("embedded", "torch", 8, 256, False, "adamw", "bfloat16"),
    "embedded-torch-b4-512-ckpt-bf16": ("embedded", "torch", 4, 512, True, "adamw", "bfloat16"),
    "tiny-torch-b8-512": ("tiny", "torch", 8, 512, False, "adamw", "off"),
    "tiny-mlx-b8-256": ("tiny", "mlx", 8, 256, False, "adamw", "off"),
    "tiny-mlx-b4-128": ("tiny", "mlx", 4, 128, False, "adamw", "off"),
}


def model_folder(which: str) -> Path:
    from circadian.backends import embedded

    folder = embedded.build(ROOT / "models")
    if which == "embedded":
        return folder
    from circadian.lab.tiny_model import build_tiny_model

    tiny = Path("/tmp/circadian-bench-tiny")
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, folder)
    return tiny


def one(name: str) -> dict:
    """Run one configuration in this process; return its row."""
    from circadian.backends import LoadRequest, get_backend, memory
    from circadian.backends.tokens import encode_chat
    from circadian.core.config import TrainSettings

    which, backend_name, batch, tokens, ckpt, optimizer, mixed = CONFIGS[name]
    memory.return_freed_memory()  # the tensors' peak, which the estimate counts (nights: when memory is short)
    folder = model_folder(which)
    model = get_backend(backend_name).load(LoadRequest(which, folder))
    words = " ".join(f"word{i % 97}" for i in range(tokens))
    rows = []
    for i in range(2 * batch):
        messages = [{"role": "user", "content": f"Tell me {i}."}, {"role": "assistant", "content": words}]
        row = encode_chat(model.tokenizer, messages, tokens)
        row.anchor = i % 2 == 1
        rows.append(row)
    settings = TrainSettings(
        batch_size=batch,
        max_steps=3,
        min_steps=0,
        eval_every=100,
        warmup_steps=0,
        max_length=tokens,
        grad_checkpoint=ckpt,
        optimizer=optimizer,
        mixed_precision=mixed,
    )
    weights = model.weight_bytes()
    predicted = memory.for_training(model, settings, rows)  # what the night does before it trains
    result = model.train(rows, rows[:2], settings, lambda _e: None)
    return {
        "config": name,
        "estimate": predicted.row(),
        "measured_mb": round(result.peak_memory_mb, 1),
        "error": predicted.total / (result.peak_memory_mb * memory.MB) - 1,
        "weights_loaded_mb": round(weights / memory.MB, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated configuration names: " + ", ".join(CONFIGS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    names = args.only.split(",") if args.only else list(CONFIGS)
    rows = []
    for name in names:
        done = subprocess.run(
            [sys.executable, __file__, "--one", name], capture_output=True, text=True, cwd=ROOT, check=False
        )
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    lines = [
        "# Memory estimate against the measured training peak (bench/memory_estimate.py)",
        "",
        "| configuration | weights | adapter + optimizer | activations | logits | runtime | estimate | measured "
        "| error | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["estimate"]
        lines.append(
            f"| {r['config']} | {e['weights_mb']:.0f} | {e['adapter_mb']:.0f} | {e['activations_mb']:.0f} | "
            f"{e['logits_mb']:.0f} | {e['runtime_mb']:.0f} | {e['total_mb']:.0f} MB | {r['measured_mb']:.0f} MB | "
            f"{r['error']:+.0%} | {r['tokens_per_second']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
