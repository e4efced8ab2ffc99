"""What could a leak-free chooser capture with a whole night on every source? (bench/cycles)

Run as: .venv/bin/python bench/cycles/full_information.py --home DIR [--policy bandit] [--out FILE]

Every `cycles run --oracle` night is measured on the eval splits (the oracle's reward) and on the
selection splits. A chooser that trained every source and kept the night that lowered the mean
selection loss most is the best any policy can do without looking at eval rows, whatever it knows
about the sources; its share of the oracle's gain is the ceiling of a bandit, whose probes are the
first steps of those same nights. This script reads `circadian cycles analyze --json` of the home
and writes, per experiment of the policy, the policy's share beside that full-information share,
and per cycle the three picks (the policy's, the selection split's, the oracle's) with their rewards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from circadian.core.fsutil import read_jsonl  # noqa: E402


def analysis(home: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "circadian", "cycles", "analyze", "--json"],
        cwd=ROOT,
        env={**os.environ, "CIRCADIAN_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"circadian cycles analyze failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout)


def run_lines(home: Path, experiments: set[str]) -> dict[str, list[dict]]:
    """The run_log lines of `experiments` that carry every oracle night's selection-split progress.
    (`analyze` counts and reports broken lines; this table only needs the good ones.)"""
    out: dict[str, list[dict]] = {name: [] for name in experiments}
    for row in (line.value for line in read_jsonl(home / "data" / "runs" / "run_log.jsonl")):
        if row and row.get("experiment") in out and row.get("oracle_progress"):
            out[row["experiment"]].append(row)
    return out


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def report(home: Path, policy: str) -> str:
    result = analysis(home)
    experiments = [e for e in result["experiments"] if e["run_type"] == policy and e["complete"]]
    if not experiments:
        raise SystemExit(f"no finished {policy} experiment in {home}")
    lines_by = run_lines(home, {e["experiment"] for e in experiments})
    summary = next(s for s in result["per_run_type"] if s["run_type"] == policy)
    out = [
        f"# {__doc__.splitlines()[0]}",
        "",
        f"Reproduce: `.venv/bin/python bench/cycles/full_information.py --home DIR --policy {policy}` after "
        f"`bench/cycles/run.py --home DIR --policies {policy}`.",
        "",
        "Share of the oracle's gain (the sum over cycles of the chosen night's reward over the sum of the best "
        "night's), per experiment: the policy's own; full information (every source trained, the night that "
        "lowered the mean selection loss most kept); a uniform random pick (the mean of the oracle's rewards).",
        "",
        "| experiment | policy | full information | random pick "
        "| cycles the policy matched the selection split's pick |",
        "|---|---|---|---|---|",
    ]
    for e in experiments:
        rows = lines_by[e["experiment"]]
        agree = sum(r["chosen"] == max(r["oracle_progress"], key=r["oracle_progress"].get) for r in rows)
        out.append(
            f"| {e['experiment']} | {pct(e['oracle_gain_share'])} | {pct(e['full_information_share'])} | "
            f"{pct(e['random_reference_share'])} | {agree} of {len(rows)} |"
        )
    mean = {k: summary[k] for k in ("oracle_gain_share", "full_information_share", "random_reference_share")}
    out.append(
        f"| mean ± 95% CI | {pct(mean['oracle_gain_share']['mean'])} ± {pct(mean['oracle_gain_share']['ci95'])} | "
        f"{pct(mean['full_information_share']['mean'])} ± {pct(mean['full_information_share']['ci95'])} | "
        f"{pct(mean['random_reference_share']['mean'])} ± {pct(mean['random_reference_share']['ci95'])} | |"
    )
    out += [
        "",
        "Per cycle (rewards = decrease of the mean eval loss; progress = decrease of the mean selection loss):",
        "",
        "| experiment | cycle | policy's pick (reward) | selection "
        "split's pick (progress, reward) | oracle's pick (reward) |",
        "|---|---|---|---|---|",
    ]
    for e in experiments:
        for r in lines_by[e["experiment"]]:
            rewards, progress = r["oracle_rewards"], r["oracle_progress"]
            informed = max(progress, key=progress.get)
            best = max(rewards, key=rewards.get)
            out.append(
                f"| {e['experiment']} | {r['cycle']} | {r['chosen']} ({rewards[r['chosen']]:+.3f}) | "
                f"{informed} ({progress[informed]:+.3f}, {rewards[informed]:+.3f}) | {best} ({rewards[best]:+.3f}) |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--policy", default="bandit")
    parser.add_argument("--out", type=Path, default=HERE / "FULL_INFORMATION.md")
    args = parser.parse_args()
    text = report(args.home, args.policy)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
