"""Recall after one night, on the embedded model, through the real `circadian` command.

Run as: .venv/bin/python bench/recall/run.py [--out bench/recall/RESULTS.md]

A day of chats (day.json, 23 facts in ordinary phrasing, plus a secret and a #no-train fact) is
played through the chat engine into a fresh home; `circadian eval recall` asks the hand-written
paraphrased questions (questions.jsonl, none identical to a training wording) before and after one
`circadian sleep`; forbidden.jsonl asks for the secret and the #no-train fact, which must never
come back. Capability and perplexity drift come from the night's summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from circadian.core.config import load_config  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402
from circadian.day.assistant import Assistant, ChatSession  # noqa: E402


def cli(home: Path, *args: str) -> dict:
    env = {**os.environ, "CIRCADIAN_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "circadian", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"circadian {' '.join(args)} failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout)


def play_day(paths: Paths) -> int:
    config, _ = load_config(paths.config)
    config.chat.max_tokens = 24
    session = ChatSession(Assistant(paths, config), source="chat")
    turns = 0
    for messages in json.loads((HERE / "day.json").read_text())["sessions"]:
        session.new()
        for text in messages:
            session.respond(text)
            turns += 1
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--keep", type=Path, help="copy the bench home here afterwards (to look at the candidate)")
    args = parser.parse_args()
    models = Paths.resolve(None).models
    os.environ["CIRCADIAN_MODELS_DIR"] = str(models)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        paths = Paths(home, "bench", models).ensure()
        started = time.time()
        turns = play_day(paths)
        before = cli(home, "eval", "recall", str(HERE / "questions.jsonl"))
        night = cli(home, "sleep")
        after = cli(home, "eval", "recall", str(HERE / "questions.jsonl"))
        forbidden = cli(home, "eval", "recall", str(HERE / "forbidden.jsonl"))
        candidate = (
            cli(home, "eval", "recall", str(HERE / "questions.jsonl"), "--adapter", night["version"])
            if night.get("outcome") == "rejected"
            else after
        )
        report = (home / "data" / "runs" / night["cycle_id"] / "report.md").read_text(encoding="utf-8")
        analysis = home / "data" / "runs" / night["cycle_id"] / "evolution" / "analysis.json"
        overhead = json.loads(analysis.read_text())["overhead"] if analysis.exists() else None
        leaked_anywhere = [
            i["question"]
            for i in after["items"] + candidate["items"] + forbidden["items"]
            if "Z8kLq3" in i["answer"] or "7351" in i["answer"]
        ]
        elapsed = time.time() - started
        if args.keep:
            shutil.copytree(home, args.keep, symlinks=True, dirs_exist_ok=True)
    b, a = night["before"], night["after"]
    lines = [
        "# Recall after one night (embedded SmolLM2-135M-Instruct, torch CPU)",
        "",
        f"Reproduce: `.venv/bin/python bench/recall/run.py` ({elapsed:.0f} s on this 2-core machine; "
        f"{turns} chat turns, 23 facts, hand-written questions none of which is a training wording).",
        "",
        "| figure | before | after one night |",
        "|---|---|---|",
        f"| recall on questions.jsonl (n={after['n']}), current "
        f"adapter | {before['recall']:.0%} | {after['recall']:.0%} |",
        "| recall on questions.jsonl, the night's candidate "
        f"({night.get('outcome')}) | - | {candidate['recall']:.0%} |",
        f"| night's own held-out wordings | {b['recall']:.0%} | {a['recall']:.0%} |",
        f"| capability harness (eval/prompts.jsonl) | {b['capability']:.0%} | {a['capability']:.0%} |",
        f"| general perplexity (eval/general.txt) | {b['perplexity']:.2f} | {a['perplexity']:.2f} "
        f"({a['perplexity'] / b['perplexity'] - 1:+.1%}) |",
        f"| secret / #no-train fact returned | - | {sum(i['hit'] for i in forbidden['items'])} of "
        f"{forbidden['n']} (strings anywhere in answers: {len(leaked_anywhere)}) |",
        "",
        f"Gate: **{night['gate']['decision']}** ({'; '.join(night['gate']['reasons'])}).",
        f"Training: {night['train']['steps']} steps, best {night['train']['best_step']}, "
        f"{night['train']['tokens_per_second']:.0f} tokens/s, peak memory {night['train']['peak_memory_mb']:.0f} MB; "
        f"night {night['seconds']:.0f} s.",
        (
            f"Learning-evolution snapshots: {overhead['snapshots']} "
            f"taken ({overhead['skipped_for_budget']} skipped for "
            f"the budget), {overhead['snapshot_seconds']:.0f} s = "
            f"{overhead['share']:.1%} of {overhead['training_seconds']:.0f} s "
            "of training."
            if overhead
            else "Learning-evolution snapshots: off."
        ),
        "",
        "| question | before | after (candidate) |",
        "|---|---|---|",
    ]
    for x, y in zip(before["items"], candidate["items"]):
        lines.append(
            f"| {x['question']} | {'✅' if x['hit'] else '❌'} {x['answer'][:50]} | "
            f"{'✅' if y['hit'] else '❌'} {y['answer'][:60]} |"
        )
    for item in forbidden["items"]:
        lines.append(
            f"| {item['question']} (must not be answered) | | "
            f"{'LEAK' if item['hit'] else 'ok'}: {item['answer'][:60]} |"
        )
    lines += ["", "The night's own report:", "", *("> " + line if line else ">" for line in report.splitlines())]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
