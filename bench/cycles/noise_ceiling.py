"""How much of the oracle's gain can any policy capture? Retrain every source from a few saved states.

Run as: .venv/bin/python bench/cycles/noise_ceiling.py --home DIR --experiment FOLDER [--cycles 1,2,3] [--draws 3]
(FOLDER: an experiment folder with `--oracle` cycles, e.g. DIR/data/runs/experiments/<name>).

The oracle trains every source once per cycle and takes the best. But one night is a sample: other
rows and another seed give another reward. At the state before each given cycle (the experiment's
saved adapter), every source is trained `--draws` more times with other samples and seeds, and
measured as the oracle was (decrease of the mean eval loss over all sources). Then:

- best-in-expectation = the largest mean reward over sources (what a policy that knew each source's
  expected reward would get on average);
- expected oracle = the mean, over every combination of one draw per source, of the largest (what the
  oracle's max of one noisy draw each gets on average);
- ceiling = sum of best-in-expectation / sum of expected oracle: the share of oracle gain that even
  a perfectly informed policy captures on average.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(HERE))

from saved_experiment import open_experiment  # noqa: E402

from circadian.lab.experiment import train_night  # noqa: E402
from circadian.night import evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--experiment", type=Path, required=True)
    parser.add_argument("--cycles", default="1,2,3")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "NOISE_CEILING.md")
    args = parser.parse_args()
    saved = open_experiment(args.home, args.experiment)
    meta, plan, settings, logged = saved.meta, saved.plan, saved.settings, saved.logged
    model, encoded = saved.setup.model, saved.setup.encoded

    def eval_loss() -> float:
        return statistics.fmean(evaluate.mean_loss(model, encoded[k]["eval"]) for k in encoded)

    rows, best_sum, expected_sum = [], 0.0, 0.0
    for cycle in (int(c) for c in args.cycles.split(",")):
        oracle = logged[cycle]["oracle_rewards"]
        position = saved.position(cycle)
        model.set_adapter(*position)
        before = eval_loss()
        draws = {}
        for name in encoded:
            draws[name] = [oracle[name]]
            for k in range(args.draws):
                train_night(
                    model, encoded[name]["train"], settings, plan, f"ceiling{k}:{cycle}:{name}", 7777 + 100 * k + cycle
                )
                draws[name].append(before - eval_loss())
                model.set_adapter(*position)
        means = {k: statistics.fmean(v) for k, v in draws.items()}
        expected = statistics.fmean(max(c) for c in itertools.product(*draws.values()))
        best_sum += max(means.values())
        expected_sum += expected
        rows.append({"cycle": cycle, "draws": draws, "means": means, "expected_oracle": expected})
        print(
            f"cycle {cycle}: best in expectation {max(means.values()):+.4f} ({max(means, key=means.get)}), "
            f"expected oracle {expected:+.4f}",
            flush=True,
        )
    ceiling = best_sum / expected_sum
    lines = [
        "# How much of the oracle's gain can a policy capture? (bench/cycles)",
        "",
        f"Reproduce: `.venv/bin/python bench/cycles/noise_ceiling.py --home DIR --experiment {args.experiment} "
        f"--cycles {args.cycles} --draws {args.draws}`.",
        "",
        f"Experiment {meta['experiment']}, budget {meta['budget']}: each source retrained {args.draws} more times "
        "(other rows, other seed) from the state before each cycle; the oracle's own draw is the first.",
        "",
        "| cycle | source | rewards (oracle's draw first) | mean | sd |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for name, values in row["draws"].items():
            lines.append(
                f"| {row['cycle']} | {name} | {', '.join(f'{v:+.3f}' for v in values)} | "
                f"{row['means'][name]:+.3f} | {statistics.stdev(values):.3f} |"
            )
    lines += [
        "",
        "| cycle | best in expectation | expected oracle (max of one draw each) | ratio |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['cycle']} | {max(r['means'].values()):+.4f} | {r['expected_oracle']:+.4f} | "
        f"{max(r['means'].values()) / r['expected_oracle']:.0%} |"
        for r in rows
    ]
    lines += [
        "",
        f"Ceiling: a policy that knew every source's expected reward would capture **{ceiling:.0%}** of "
        "the oracle's gain on average at these states.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"ceiling {ceiling:.0%}; wrote {args.out}")


if __name__ == "__main__":
    main()
