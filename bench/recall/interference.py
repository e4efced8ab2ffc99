"""Where does a night's capability loss come from? Ablations of one kept candidate adapter (torch).

Run as: .venv/bin/python bench/recall/interference.py --home DIR --version VERSION [--out FILE]
(DIR from `bench/recall/run.py --keep DIR`; VERSION the night's candidate, e.g. v0001-...).

It loads the candidate and measures recall (bench/recall/questions.jsonl) and the capability
harness (eval/prompts.jsonl), then:
- a random-direction control: each LoRA B replaced by a random matrix scaled so that ||B_rand A|| =
  ||B A|| per module (same size of update, another direction), 3 seeds. If this costs as much
  capability as the trained update, the harness only measures the size of a change; if it costs
  less, the trained direction itself interferes;
- module ablations: the trained update kept only in some layers or some projection kinds.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from circadian.core.config import load_config  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402
from circadian.day.assistant import Assistant  # noqa: E402
from circadian.night import evaluate  # noqa: E402

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", type=Path, default=HERE / "INTERFERENCE.md")
    args = parser.parse_args()
    paths = Paths.resolve(args.home)
    config, _ = load_config(paths.config)
    assistant = Assistant(paths, config, adapter=args.version)  # the version's manifest and hashes checked
    if assistant.backend.name != "torch":
        raise SystemExit(
            f"{args.home} uses the {assistant.backend.name} backend; the ablations need torch (PEFT's LoRA)"
        )
    model = assistant.model
    capability = evaluate.load_capability()
    questions = evaluate.read_probes(HERE / "questions.jsonl")
    modules = [(n, m) for n, m in model.model.named_modules() if hasattr(m, "lora_B") and "default" in m.lora_B]
    trained = {n: m.lora_B["default"].weight.detach().clone() for n, m in modules}

    def layer(name: str) -> int:
        return int(re.search(r"layers\.(\d+)\.", name).group(1))

    def kind(name: str) -> str:
        return name.rsplit(".", 1)[-1]

    rows = []

    def measure(tag: str, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, m in modules:
                m.lora_B["default"].weight.copy_(weights[n])
        tic = time.time()
        cap = evaluate.ask_all(model, capability, key="prompt", max_tokens=config.sleep.capability_max_tokens)
        recall = evaluate.ask_all(model, questions, key="question", max_tokens=config.sleep.probe_max_tokens)
        rows.append(
            {
                "tag": tag,
                "recall": recall["score"],
                "capability": cap["score"],
                "failed": [i["prompt"] for i in cap["items"] if not i["hit"]],
            }
        )
        print(
            f"{tag}: recall {recall['score']:.0%}, capability {cap['score']:.0%} ({time.time() - tic:.0f} s)",
            flush=True,
        )

    def keep(rule) -> dict[str, torch.Tensor]:
        return {n: trained[n] * (1.0 if rule(n) else 0.0) for n, _m in modules}

    measure("trained update", trained)
    for seed in (0, 1, 2):
        generator = torch.Generator().manual_seed(seed)
        weights = {}
        for n, m in modules:
            a = m.lora_A["default"].weight.detach().float()
            r = torch.randn(trained[n].shape, generator=generator)
            weights[n] = (r * ((trained[n].float() @ a).norm() / ((r @ a).norm() + 1e-12))).to(trained[n].dtype)
        measure(f"random direction, same norm per module (seed {seed})", weights)
    layers = 1 + max(layer(n) for n, _m in modules)
    third = layers // 3
    for lo, hi in [(0, third), (third, 2 * third), (2 * third, layers), (third, layers)]:
        measure(f"layers {lo}-{hi - 1} only", keep(lambda n, lo=lo, hi=hi: lo <= layer(n) < hi))
    measure("attention projections only", keep(lambda n: kind(n) in ATTENTION))
    measure("MLP projections only", keep(lambda n: kind(n) not in ATTENTION))
    measure("none (the base model)", keep(lambda n: False))

    lines = [
        "# Capability interference of one candidate (ablations)",
        "",
        f"Reproduce: `.venv/bin/python bench/recall/interference.py --home DIR --version {args.version}` "
        "(DIR from `bench/recall/run.py --keep DIR`).",
        "",
        "| update | recall (questions.jsonl) | capability | capability items failed |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['tag']} | {r['recall']:.0%} | {r['capability']:.0%} | {'; '.join(r['failed'])} |" for r in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
