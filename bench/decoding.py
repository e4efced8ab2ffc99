"""Default decoding: which settings pass the style check for the base model and for an adapter alike.

Run as: .venv/bin/python bench/decoding.py [--adapter ADAPTER_FOLDER] [--only 1,3] [--out bench/DECODING.md]

For each way of asking (the model's own template, greedy, as before; the default system prompt;
the default system prompt with a repetition penalty of 1.1 and of 1.2 over the last 64 tokens), the
embedded model answers the capability harness (227 questions, read whole) and the 30 style prompts;
with --adapter, the adapter (a PEFT folder, e.g. a night's `adapters/<version>`) answers the style
prompts too, by itself (its router off). The length range of the style check is the base model's
under the same settings. Prints a table and writes it to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from circadian.backends import LoadRequest  # noqa: E402
from circadian.backends.torch_backend import TorchBackend  # noqa: E402
from circadian.core.config import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402
from circadian.night import evaluate, style  # noqa: E402

SETTINGS = {
    "model's own template, greedy": evaluate.Asking(),
    "system prompt, greedy": evaluate.Asking(DEFAULT_SYSTEM_PROMPT),
    "system prompt, penalty 1.1 on the reply (default)": evaluate.Asking(DEFAULT_SYSTEM_PROMPT, 1.1, 64),
    "system prompt, penalty 1.2 on the reply": evaluate.Asking(DEFAULT_SYSTEM_PROMPT, 1.2, 64),
}


def style_of(model, items, asking, accepted=None) -> dict:
    replies = evaluate.answers(model, [i["prompt"] for i in items], 160, asking=asking)
    return style.check(items, replies, accepted or style.length_range(replies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a PEFT adapter folder to check the style of as well")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "DECODING.md")
    parser.add_argument("--only", help="comma-separated row numbers of the settings to run (default: all)")
    args = parser.parse_args()
    chosen = {int(n) for n in args.only.split(",")} if args.only else set(range(1, len(SETTINGS) + 1))
    from circadian.backends import embedded

    model_dir = embedded.build(Paths.resolve(None).models)
    model = TorchBackend().load(LoadRequest("embedded", model_dir))
    capability, items = evaluate.load_capability(), evaluate.load_style()
    head = (
        "| settings | capability (227) | style, base (30) | loops, base | style, adapter | loops, adapter | seconds |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for number, (name, asking) in enumerate(SETTINGS.items(), start=1):
        if number not in chosen:
            continue
        tic = time.perf_counter()
        model.set_adapter(None, None)
        cap = evaluate.ask_all(model, capability, key="prompt", max_tokens=96, asking=asking)
        base = style_of(model, items, asking)
        loops = sum(not i["checks"]["no_loop"] for i in base["items"])
        adapted = ("", "")
        if args.adapter:
            model.set_adapter(args.adapter, args.adapter.name)
            model.router = None  # the adapter itself answers every prompt: its style is what is checked
            other = style_of(model, items, asking, tuple(base["range"]))
            adapted = (f"{other['score']:.0%}", str(sum(not i["checks"]["no_loop"] for i in other["items"])))
        lines.append(
            f"| {name} | {cap['score']:.1%} | {base['score']:.0%} | {loops} | {adapted[0]} | {adapted[1]} | "
            f"{time.perf_counter() - tic:.0f} |"
        )
        print(lines[-1], flush=True)
    text = (
        "# Default decoding (bench/decoding.py)\n\nEmbedded SmolLM2-135M-Instruct, torch, CPU."
        + (f" Adapter: `{args.adapter}`." if args.adapter else "")
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )
    args.out.write_text(text, encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
