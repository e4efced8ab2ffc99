"""How well does a probe predict what a night on a source teaches? Two probe designs at saved states.

Run as: .venv/bin/python bench/cycles/probe_quality.py --home DIR --experiment FOLDER [--cycles 2,4,6] [--steps 2]
(FOLDER: an experiment folder with `--oracle` cycles, e.g. DIR/data/runs/experiments/<name>).

At the state before each given cycle (the experiment's saved adapter), every source is probed twice:

- `own rows` (the design up to session 6): `--steps` steps on 8 rows sampled for the probe alone;
- `night start` (trials.py now): the first `--steps` steps of the very night the oracle trained on that
  source at that cycle (its rows, settings and seed), so the probe shares the night's sampling luck.

Each probe's progress (decrease of the mean selection loss) is set against the oracle's reward for that
source and cycle (decrease of the mean eval loss after the whole night), read from the run log:
within-cycle correlation (each cycle's mean removed), and the share of the oracle's gain that choosing
the best-probed source would capture.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(HERE))

from saved_experiment import open_experiment  # noqa: E402

from circadian.lab.experiment import night_sample  # noqa: E402
from circadian.night import evaluate, trials  # noqa: E402


def within_cycle_correlation(rows: list[dict], key: str) -> float:
    xs, ys = [], []
    for row in rows:
        mx, my = statistics.fmean(row[key].values()), statistics.fmean(row["oracle"].values())
        for name in row["oracle"]:
            xs.append(row[key][name] - mx)
            ys.append(row["oracle"][name] - my)
    return statistics.correlation(xs, ys)


def argmax_share(rows: list[dict], key: str) -> float:
    chosen = sum(row["oracle"][max(row[key], key=row[key].get)] for row in rows)
    return chosen / sum(max(row["oracle"].values()) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--experiment", type=Path, required=True)
    parser.add_argument("--cycles", default="2,4,6,8,10")
    parser.add_argument("--steps", type=int, default=trials.TRIAL_STEPS)
    parser.add_argument("--out", type=Path, default=HERE / "PROBE_QUALITY.md")
    args = parser.parse_args()
    saved = open_experiment(args.home, args.experiment)
    meta, plan, settings, logged = saved.meta, saved.plan, saved.settings, saved.logged
    model, encoded, seed = saved.setup.model, saved.setup.encoded, meta["seed"]
    select = {k: v["select"] for k, v in encoded.items()}
    rows, seconds = [], {"own rows": [], "night start": []}
    for cycle in (int(c) for c in args.cycles.split(",")):
        position = saved.position(cycle)
        model.set_adapter(*position)
        before = statistics.fmean(evaluate.mean_loss(model, select[k]) for k in encoded)
        row = {"cycle": cycle, "oracle": logged[cycle]["oracle_rewards"], "own rows": {}, "night start": {}}
        night_settings = settings.model_copy(update={"seed": seed * 1000 + cycle})
        for name in encoded:
            designs = {
                "own rows": random.Random(f"probe:{seed}:{cycle}:{name}").sample(
                    encoded[name]["train"], min(8, len(encoded[name]["train"]))
                ),
                "night start": night_sample(encoded[name]["train"], plan, f"{seed}:{cycle}:{name}"),
            }
            for design, sample in designs.items():
                tic = time.time()
                row[design][name] = trials.trial(
                    model,
                    sample,
                    night_settings,
                    select,
                    before,
                    lambda position=position: model.set_adapter(*position),
                    steps=args.steps,
                )
                seconds[design].append(time.time() - tic)
        rows.append(row)
        print(
            f"cycle {cycle}: "
            + "; ".join(
                f"{n} oracle {row['oracle'][n]:+.3f} own {row['own rows'][n]:+.3f} night {row['night start'][n]:+.3f}"
                for n in encoded
            ),
            flush=True,
        )
    lines = [
        "# How well does a probe predict a night? (bench/cycles)",
        "",
        f"Reproduce: `.venv/bin/python bench/cycles/probe_quality.py --home DIR --experiment {args.experiment} "
        f"--cycles {args.cycles} --steps {args.steps}`.",
        "",
        f"Experiment {meta['experiment']}, budget {meta['budget']} ({plan.steps} steps a night); probes of "
        f"{args.steps} steps. Oracle = the decrease of the mean eval loss after the whole night on that source.",
        "",
        "| cycle | source | oracle reward | probe on own rows | probe = the night's first steps |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines += [
            f"| {row['cycle']} | {n} | {row['oracle'][n]:+.3f} | "
            f"{row['own rows'][n]:+.3f} | {row['night start'][n]:+.3f} |"
            for n in row["oracle"]
        ]
    lines += [
        "",
        "| probe design | within-cycle correlation with the oracle | share "
        "of oracle gain by the best-probed source | seconds per probe |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {d} | {within_cycle_correlation(rows, d):.2f} | "
        f"{argmax_share(rows, d):.0%} | {statistics.fmean(seconds[d]):.0f} |"
        for d in ("own rows", "night start")
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
