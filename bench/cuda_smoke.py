"""An 8B model in 4 bit on a 24 GB GPU: one 20-step night on a hand-labelled bench day, through the
real `circadian` command. Untested here (this project's machines have no GPU); for a person who has one:

    pip install -e '.[cuda]'        # bitsandbytes
    hf auth login                   # Llama is gated: request access on its page first
    python bench/cuda_smoke.py --model meta-llama/Llama-3.1-8B-Instruct [--day dev-maya] [--steps 20]

It logs the day into a fresh home (`--home`, default /tmp/circadian-cuda-smoke), runs `circadian
sleep` with model.quantize = "4bit" and train.max_steps = --steps, asks the day's probes of the base
model and of the night's candidate, and prints the peak GPU memory of training, the training
throughput (tokens/s), recall before and after, capability before and after, and the night's time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def recall_bench():
    """bench/recall/run.py as a module: its day logging, CLI calls and measurement."""
    spec = importlib.util.spec_from_file_location("recall_bench", HERE / "recall" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a Hugging Face repo id or a local model folder")
    parser.add_argument("--day", default="dev-maya", help="a day in bench/recall/days/ (default dev-maya)")
    parser.add_argument("--steps", type=int, default=20, help="train.max_steps of the night (default 20)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/circadian-cuda-smoke"))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: this smoke test is for a machine with one (bench/cuda_check.py runs on a CPU too)")
        return 2
    bench = recall_bench()
    day = json.loads((HERE / "recall" / "days" / f"{args.day}.json").read_text())
    shutil.rmtree(args.home, ignore_errors=True)
    home, files = args.home / "home", args.home / "files"
    files.mkdir(parents=True)
    from circadian.core.paths import Paths

    Paths(home).ensure()
    (home / "circadian.toml").write_text(
        f'[model]\nname = "{args.model}"\ndevice = "cuda"\nquantize = "4bit"\n'
        f"[train]\nmax_steps = {args.steps}\nmin_steps = 0\n"
        "[gate]\nfallback_scales = []\n"
    )
    bench.log_day(home, day, files)
    started = time.time()
    summary = bench.cli(home, "sleep")
    seconds = time.time() - started
    row = bench.measure_day(home, files, day, summary, summary.get("version"))
    train = summary.get("train") or {}
    print(f"model {args.model} in 4 bit on {torch.cuda.get_device_name(0)}, day {args.day}, {args.steps} steps")
    print(f"outcome          {summary.get('outcome')}")
    print(f"peak memory      {train.get('peak_memory_mb', 0) / 1024:.1f} GiB (training)")
    print(f"throughput       {train.get('tokens_per_second', 0):.0f} trained tokens/s")
    print(f"recall           {bench.fmt(row['recall_before'])} -> {bench.fmt(row['recall_after'])}")
    print(f"capability       {bench.fmt(row['capability_before'])} -> {bench.fmt(row['capability_after'])}")
    print(f"night            {seconds:.0f} s")
    return 0 if summary.get("outcome") in ("promoted", "rejected") else 1


if __name__ == "__main__":
    sys.exit(main())
