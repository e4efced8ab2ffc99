"""The torch backend on a CUDA GPU, end to end on a tiny random Llama, as one command:

    python bench/cuda_check.py                 # on a machine with a GPU (and `pip install -e .`)
    python bench/cuda_check.py --device cpu    # the same checks on the CPU, to try the script itself

Two nights in bf16 (fp16 where the card has no bf16): the first trains a new LoRA adapter with
KL-anchored rows (the cached teacher), the second continues from the first's saved adapter and is
blended back toward it (the WiSE-FT fallback, which crashed on CUDA from the second night on: the
start's weights were loaded onto the CPU). Then save, a fresh load and verify (the manifest's
sha256s, the same scores), and a night in 4-bit NF4 when bitsandbytes is installed (skipped
otherwise). Each check prints one line: ok or FAILED, its seconds and the peak GPU memory; the exit
status is the number that failed. Output goes in STATE.md.

The tokenizer is the embedded model's (`models/smollm2-135m-instruct`, about 3.5 MB; `--tokenizer`
names another), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows(tokenizer, n: int, *, anchor_every: int = 3):
    from circadian.backends.tokens import encode_chat

    out = []
    for i in range(n):
        row = encode_chat(
            tokenizer,
            [
                {"role": "user", "content": f"Please remember code word {i}: lantern-{i * 7}."},
                {"role": "assistant", "content": f"Code word {i} is lantern-{i * 7}."},
            ],
            128,
            "You are a helpful assistant.",
        )
        row.anchor = i % anchor_every == 0
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    args = parser.parse_args()

    import torch

    from circadian.backends import LoadRequest
    from circadian.backends.torch_backend import TorchModel, resolve_dtype
    from circadian.core.config import TrainSettings
    from circadian.core.fsutil import sha256_file
    from circadian.lab.tiny_model import build_tiny_model

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here (torch.cuda.is_available() is False); --device cpu runs the checks on the CPU")
        return 2
    cuda = args.device == "cuda"
    dtype = resolve_dtype("auto", "cuda") if cuda else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    print(f"torch {torch.__version__}, device {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
    work = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    tiny = build_tiny_model(work / "tiny-llama", args.tokenizer, hidden=128, layers=2)
    settings = TrainSettings(max_steps=12, eval_every=4, min_steps=0, warmup_steps=2, batch_size=4, learning_rate=5e-3)
    failed = 0
    state: dict = {}

    def check(name: str, step) -> None:
        nonlocal failed
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        try:
            detail = step() or ""
            status = "ok"
        except Exception:
            failed += 1
            status, detail = "FAILED", traceback.format_exc(limit=4).strip().splitlines()[-1]
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else "n/a"
        print(f"{status:<7} {name:<44} {time.time() - started:6.1f} s  peak {peak:>9}  {detail}", flush=True)

    def load(adapter: Path | None = None, quantize: str = "none") -> TorchModel:
        return TorchModel(
            LoadRequest("tiny", tiny, args.device, dtype_name, quantize, adapter, "v" if adapter else None)
        )

    def night_one():
        model = state["model"] = load()
        train, valid = rows(model.tokenizer, 16), rows(model.tokenizer, 4, anchor_every=99)
        result = model.train(train, valid, settings, lambda event: None)
        assert next(model.model.parameters()).device.type == args.device
        state["first"] = work / "v0001"
        state["first_hashes"] = model.save_adapter(state["first"])
        return f"{result.steps} steps, best val {result.best_val_loss:.3f}, {dtype_name}"

    def night_two_and_blend():
        model = state["model"]
        model.set_adapter(state["first"], "v0001")
        train, valid = rows(model.tokenizer, 12), rows(model.tokenizer, 4, anchor_every=99)
        model.train(train, valid, settings, lambda event: None)
        probe = rows(model.tokenizer, 3, anchor_every=99)
        trained = [s for s, _ in model.score(probe)]
        model.blend_adapter(state["first"], 0.5)  # the start's weights come from disk, onto the GPU
        halfway = [s for s, _ in model.score(probe)]
        model.blend_adapter(state["first"], 1.0)
        back = [s for s, _ in model.score(probe)]
        assert halfway != trained and all(abs(a - b) < 1e-2 * max(1.0, abs(a)) for a, b in zip(back, trained))
        state["second"] = work / "v0002"
        state["second_hashes"] = model.save_adapter(state["second"])
        state["scores"] = back
        return "blend 0.5 moves the scores, 1.0 restores them"

    def load_and_verify():
        for name, expected in state["second_hashes"].items():
            assert sha256_file(state["second"] / name) == expected, name
        fresh = load(state["second"])
        again = [s for s, _ in fresh.score(rows(fresh.tokenizer, 3, anchor_every=99))]
        assert all(abs(a - b) < 1e-2 * max(1.0, abs(a)) for a, b in zip(again, state["scores"])), (
            again,
            state["scores"],
        )
        reply = fresh.greedy_batch([[{"role": "user", "content": "Hello"}]], _greedy(8))[0]
        return f"sha256 of {len(state['second_hashes'])} files match; scores match; replies ({len(reply)} chars)"

    def nf4_night():
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return "skipped: bitsandbytes is not installed"
        model = load(quantize="4bit")
        result = model.train(
            rows(model.tokenizer, 16), rows(model.tokenizer, 4, anchor_every=99), settings, lambda e: None
        )
        model.train(rows(model.tokenizer, 8), rows(model.tokenizer, 4, anchor_every=99), settings, lambda e: None)
        assert model.kbit_prepared and model.base.is_activation_checkpointing
        return f"{result.steps} steps in NF4, trained twice with one k-bit preparation"

    check("night 1: new LoRA adapter, KL anchor", night_one)
    check("night 2: continue, blend toward night 1", night_two_and_blend)
    check("save, fresh load, verify", load_and_verify)
    if cuda:
        check("night in 4-bit NF4", nf4_night)
    print(f"{failed} check(s) failed" if failed else "all checks passed")
    return failed


def _greedy(tokens: int):
    from circadian.backends import GenerationSettings

    return GenerationSettings(max_tokens=tokens, temperature=0.0)


if __name__ == "__main__":
    sys.exit(main())
