"""Self-choice cycles on the embedded model: 10 cycles x {self, fixed:today, random, bandit} x 3 seeds.

Run as: .venv/bin/python bench/cycles/run.py [--home DIR] [--cycles 10] [--seeds 0,1,2] [--budget small]

Set-up (once per home, through the real `circadian` command): the first four chats of
bench/recall/day.json are played and learned in one night (so `replay` has older facts), the rest
of the day is played (so `today` has new facts), and bench/cycles/inbox.jsonl (30 rows about the
user's pharmacy) is dropped in the inbox. The set-up night runs with a relaxed capability and
perplexity gate (printed below): the point of it is an older day to replay, and the recall bench
measures the gate on its own.

Then every policy x seed runs `circadian cycles run --oracle` from that same home (experiments never
touch the home's CURRENT), and `circadian cycles analyze --json` gives the table written to
bench/cycles/RESULTS.md. Finished experiments are kept; a rerun with the same home only runs the
missing ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from circadian.core.config import load_config  # noqa: E402
from circadian.core.paths import Paths  # noqa: E402
from circadian.day.assistant import Assistant, ChatSession  # noqa: E402
from circadian.lab.experiment import BUDGETS  # noqa: E402

SETUP_GATE = {
    "CIRCADIAN_GATE__MAX_CAPABILITY_DROP": "0.5",
    "CIRCADIAN_GATE__MAX_PPL_DRIFT": "0.2",
    "CIRCADIAN_GATE__MAX_TOTAL_PPL_DRIFT": "0.2",
}
POLICIES = ("self", "fixed:today", "random", "bandit")
EARLIER = HERE / "EARLIER_RUNS.md"  # runs whose logs are gone, kept verbatim below the table
FULL_SEEDS = "0,1,2"


def cli(home: Path, *args: str, env: dict | None = None) -> dict:
    full = {**os.environ, "CIRCADIAN_HOME": str(home), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "circadian", *args, "--json"], cwd=ROOT, env=full, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"circadian {' '.join(args)} failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout)


def play(paths: Paths, sessions: list[list[str]]) -> None:
    config, _ = load_config(paths.config)
    config.chat.max_tokens = 24
    session = ChatSession(Assistant(paths, config), source="chat")
    for messages in sessions:
        session.new()
        for text in messages:
            session.respond(text)


def set_up(home: Path, models: Path) -> dict:
    marker = home / "bench-setup.json"
    if marker.exists():
        return json.loads(marker.read_text())
    if home.exists():
        shutil.rmtree(home)
    paths = Paths(home, "bench", models).ensure()
    sessions = json.loads((ROOT / "bench" / "recall" / "day.json").read_text())["sessions"]
    tic = time.time()
    play(paths, sessions[:4])
    print(f"set-up: day A played; night with a relaxed gate {SETUP_GATE}", flush=True)
    night = cli(home, "sleep", env=SETUP_GATE)
    if night.get("outcome") != "promoted":
        raise SystemExit(f"set-up night was not promoted: {night.get('outcome')} {night.get('gate')}")
    play(paths, sessions[4:])
    target = paths.data / "inbox" / "normal" / "pharmacy.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "inbox.jsonl", target)
    past = time.time() - 3600
    os.utime(target, (past, past))
    info = {
        "night": {k: night.get(k) for k in ("cycle_id", "version", "outcome", "before", "after", "gate", "seconds")},
        "seconds": round(time.time() - tic),
    }
    marker.write_text(json.dumps(info, indent=1))
    return info


def finished(home: Path) -> set[tuple[str, int]]:
    done = set()
    for file in (home / "data" / "runs" / "experiments").glob("*/experiment.json"):
        meta = json.loads(file.read_text())
        if meta.get("ended"):
            done.add((meta["policy"], meta["seed"]))
    return done


def fmt(stat: dict | None, spec: str = ".3f") -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    half = stat.get("ci95")
    return f"{stat['mean']:{spec}}" + (f" ± {half:{spec.lstrip('+')}}" if half is not None else "")


def write_results(result: dict, setup: dict, args) -> str:
    complete = {(e["run_type"], e["seed"]) for e in result["experiments"] if e["complete"]}
    planned = [(p, int(s)) for s in args.seeds.split(",") for p in args.policies.split(",")]
    probes = (
        "the whole night each would get (`--trial-steps`: the budget's steps), measured on the selection splits; "
        "it takes the best, and the chosen probe is kept as the night (with `--oracle` every probe stands in "
        "for that source's oracle night)"
        if args.trial_steps >= BUDGETS[args.budget].steps
        else "the first two steps of the night each would get, measured on the selection splits, undone"
    )
    missing = [f"{p} seed {s}" for p, s in planned if (p, s) not in complete]
    status = f" — PARTIAL: {len(planned) - len(missing)} of {len(planned)} experiments" if missing else ""
    lines = [
        f"# Self-choice cycles (embedded SmolLM2-135M-Instruct, torch CPU){status}",
        "",
        *(
            [f"Not run yet: {', '.join(missing)}. `bench/cycles/run.py --home DIR` resumes where it stopped.", ""]
            if missing
            else []
        ),
        f"Reproduce: `.venv/bin/python bench/cycles/run.py --policies {args.policies} --seeds {args.seeds}"
        + (f" --trial-steps {args.trial_steps}" if args.trial_steps else "")
        + f"` ({args.cycles} cycles, budget {args.budget}, `--oracle`; `--shard i/3` runs one of three workers on one "
        "home).",
        "",
        "Sources: `today` (the second half of bench/recall/day.json, not yet learned), `replay` (the first half, "
        "learned in the set-up night), `inbox` (bench/cycles/inbox.jsonl), `distill` (general prompts answered by "
        "the base model). Reward = decrease of the mean eval loss over all sources; oracle = every source trained "
        "from the same checkpoint each cycle. Mean ± 95% CI "
        "half-width over seeds. Before each choice the bandit probes "
        "the sources it has too little recent evidence about in their present "
        "state (most sources, most nights; with whole-night probes every source): "
        f"{probes}; its seconds per cycle include the probes. Full information = a chooser that trained every source "
        "and kept the night that lowered the mean selection loss most (FULL_INFORMATION.md). No "
        "policy can capture all of the oracle's gain: one night's reward is a sample, and the "
        "oracle keeps the luckiest of four (a policy that knew every source's expected reward would capture 96% at "
        "cycles 1-3 and 82% at cycles 4-10: NOISE_CEILING.md, NOISE_CEILING_LATE.md). "
        "Earlier bandits: v1 (a forced night on every source first) "
        "captured 42% and 63% of the oracle gain on seeds 0 and 1; v2 (probes, blind to a source's state) 67% and 46% "
        "over 9 cycles (it crashed before the 10th); v3 (state-aware, probes of two steps on rows of their own, only "
        "for sources with no recent evidence) 36%, 41% and 47% (PROBE_QUALITY.md compares the two probe designs); v4 "
        "(probes of the night's first two steps, every source every night) 71%, 54% and 66% (logs in the bench home's "
        "`data/runs/superseded/bandit-v4/`; those of v1-v3 went with an earlier home).",
        "",
        "| policy | final recall | perplexity drift | capability change | cumulative oracle regret | "
        "share of oracle gain | full-information share | mean-choice share | s / cycle (of it probes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["per_run_type"]:
        lines.append(
            f"| {row['run_type']} | {fmt(row['final_recall'], '.0%')} | {fmt(row['perplexity_drift'], '+.1%')} | "
            f"{fmt(row['capability_drift'], '+.0%')} | {fmt(row['cumulative_oracle_regret'], '.4f')} | "
            f"{fmt(row['oracle_gain_share'], '.0%')} | {fmt(row['full_information_share'], '.0%')} | "
            f"{fmt(row['random_reference_share'], '.0%')} | "
            f"{fmt(row['seconds_per_cycle'], '.0f')} ({fmt(row['trial_seconds_per_cycle'], '.0f')}) |"
        )
    cells = {(r["source"], r["state"]): f"{fmt(r, '+.3f')} (n={r['n']})" for r in result["oracle_reward_by_state"]}
    lines += [
        "",
        "What a night on a source teaches, by the source's state (the oracle's reward over every cycle of every "
        "experiment here; tired = trained the night before; mean ± 95% CI): a source just trained has little left to "
        "teach the next night, which is why the bandit judges each source by the evidence of its present state.",
        "",
        "| source | fresh (never trained) | tired | rested |",
        "|---|---|---|---|",
    ]
    for source in sorted({r["source"] for r in result["oracle_reward_by_state"]}):
        lines.append(
            f"| {source} | " + " | ".join(cells.get((source, st), "-") for st in ("fresh", "tired", "rested")) + " |"
        )
    lines += [
        "",
        "Per experiment:",
        "",
        "| experiment | choices | recall c0 -> final | eval loss c0 -> final | share of oracle gain |",
        "|---|---|---|---|---|",
    ]
    for e in result["experiments"]:
        share = f"{e['oracle_gain_share']:.0%}" if e["oracle_gain_share"] is not None else "-"
        recall = (
            f"{e['recall_cycle0']:.0%} -> {e['final_recall']:.0%}"
            if e["recall_cycle0"] is not None and e["final_recall"] is not None
            else "-"
        )
        name = e["experiment"] + ("" if e["complete"] else " (never ended: not in the means)")
        lines.append(
            f"| {name} | {json.dumps(e['choices'])} | {recall} | "
            f"{e['eval_loss_cycle0']:.3f} -> {e['final_eval_loss']:.3f} | {share} |"
        )
    counts = result["integrity"]["counts"]
    lines += [
        "",
        "Integrity: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; missing cycle ids: {len(result['integrity']['missing_cycle_ids'])}; "
        f"broken lines: {len(result['integrity']['broken_lines'])}.",
        "",
        f"Set-up night: {setup['night']['outcome']} {setup['night']['version']} "
        f"(recall {setup['night']['before']['recall']:.0%} -> {setup['night']['after']['recall']:.0%}, "
        f"{setup['night']['seconds']:.0f} s).",
    ]
    if EARLIER.exists():
        lines += [
            "",
            f"Runs whose logs this home no longer has (the baselines among them), from {EARLIER.name}:",
            "",
            EARLIER.read_text().rstrip(),
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "circadian-bench" / "cycles")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--seeds", default=FULL_SEEDS)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--budget", default="small")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th experiment from the i-th (parallel workers on one home)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the experiments (0: torch's default)")
    parser.add_argument(
        "--trial-steps", type=int, default=0, help="passed to `cycles run --trial-steps` (0: its default)"
    )
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    models = Paths.resolve(None).models
    os.environ.setdefault("CIRCADIAN_MODELS_DIR", str(models))
    models = Path(os.environ["CIRCADIAN_MODELS_DIR"])
    setup = set_up(args.home, models)
    print(f"set-up: {setup}", flush=True)
    shard, shards = (int(x) for x in args.shard.split("/"))
    plan = [(policy, int(seed)) for seed in args.seeds.split(",") for policy in args.policies.split(",")]
    for policy, seed in plan[shard::shards]:
        if (policy, seed) in finished(args.home):
            continue
        started = time.time()
        summary = cli(
            args.home,
            "cycles",
            "run",
            "-n",
            str(args.cycles),
            "--policy",
            policy,
            "--seed",
            str(seed),
            "--budget",
            args.budget,
            "--oracle",
            *(["--trial-steps", str(args.trial_steps)] if args.trial_steps else []),
        )
        print(
            f"{policy} seed {seed}: recall {summary['cycle0'].get('recall')} -> {summary['final'].get('recall')}, "
            f"{time.time() - started:.0f} s",
            flush=True,
        )
    result = cli(args.home, "cycles", "analyze", "--csv", str(args.home / "csv"))
    text = write_results(result, setup, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
