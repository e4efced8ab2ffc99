"""`circadian cycles analyze`: regret, choice distribution, per-policy summaries, stability vs drift,
the oracle's reward by source state (fresh, tired = trained the night before, rested), and an
integrity account of every line read. With oracle runs, the share of the oracle's gain is set beside
two references: a uniform random choice (the oracle rewards' mean) and full information (train every
source, keep the one whose night lowered the selection loss most: the best a leak-free chooser could
do with a night on every source).

Integrity first: the logs are counted at each stage, raw -> parsed -> cleaned -> joined -> filtered
-> displayed, with the resolved paths (mtime, line count) and the cycle_ids present in one log but
not the other. A broken line is counted and listed (file, line number, why), never a crash and
never silently dropped.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from circadian.core.paths import Paths
from circadian.core.tables import write_csv as write_csv_file
from circadian.night.policies import arm_state
from circadian.store.records import ChoiceLine, RunLogLine, Trials, read_lines

T = TypeVar("T")

# two-sided 95% Student t quantiles for small samples (df 1..30); normal beyond
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def mean_ci(values: list[float]) -> dict:
    """Return mean, std and the 95% confidence half-width (Student t) of values."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    if len(values) == 1:
        return {"n": 1, "mean": values[0], "std": None, "ci95": None}
    std = statistics.stdev(values)
    t = _T95[len(values) - 2] if len(values) - 1 <= len(_T95) else 1.96
    return {"n": len(values), "mean": statistics.fmean(values), "std": std, "ci95": t * std / math.sqrt(len(values))}


@dataclass
class Cycle:
    """One cycle of an experiment (or a nightly sleep with a policy): its run_log line and its choice."""

    run: RunLogLine
    choice: ChoiceLine

    @property
    def experiment(self) -> str:
        return self.run.experiment or self.run.cycle_id


def _read(path: Path, label: str, model: type[T], broken: list[dict]) -> tuple[list[tuple[int, T]], dict]:
    """Read a log; return (its records with their line numbers, the file's account) and list every line
    that is not such a record in `broken`. Counts: `lines` non-blank lines, `parsed` JSON objects."""
    info = {"path": str(path.resolve()), "exists": path.exists(), "lines": 0, "parsed": 0, "mtime": None}
    rows: list[tuple[int, T]] = []
    if path.exists():
        info["mtime"] = datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    for line, record in read_lines(path, model):
        info["lines"] += 1
        if line.error:
            broken.append({"file": label, "line": line.number, "why": line.error, "raw": line.raw[:120]})
            continue
        info["parsed"] += 1
        if record is None:
            missing = [k for k in ("cycle_id", "run_type") if not line.value.get(k)]
            why = f"missing {', '.join(missing)}" if missing else f"not a {model.__name__} line"
            broken.append({"file": label, "line": line.number, "why": why})
            continue
        rows.append((line.number, record))
    return rows, info


def load(paths: Paths, *, experiment: str | None = None, policy: str | None = None) -> dict:
    """Read both logs; return the cycles joined by cycle_id (`rows`: Cycle), with the integrity account."""
    broken: list[dict] = []
    runs, run_info = _read(paths.run_log, "run_log", RunLogLine, broken)
    choices, choice_info = _read(paths.choice_log, "choice_log", ChoiceLine, broken)
    counts = {
        "raw": {"run_log": run_info["lines"], "choice_log": choice_info["lines"]},
        "parsed": {"run_log": run_info["parsed"], "choice_log": choice_info["parsed"]},
        "cleaned": {"run_log": len(runs), "choice_log": len(choices)},
    }
    run_lines = [r for _n, r in runs]
    # nightly cycles without a choice are expected (no policy configured); experiments must have both
    with_choice = {r.cycle_id for r in run_lines if r.experiment or r.chosen}
    by_choice = {c.cycle_id: c for _n, c in choices}
    joined = [Cycle(r, by_choice[r.cycle_id]) for r in run_lines if r.cycle_id in by_choice]
    counts["joined"] = len(joined)
    filtered = [
        c
        for c in joined
        if (experiment is None or c.run.experiment == experiment) and (policy is None or c.run.run_type == policy)
    ]
    counts["filtered"] = len(filtered)
    for info in (run_info, choice_info):
        info.pop("parsed")
    return {
        "rows": filtered,
        "counts": counts,
        "broken": broken,
        "logs": {"run_log": run_info, "choice_log": choice_info},
        "missing": {
            "in_choice_log_not_run_log": sorted(set(by_choice) - with_choice),
            "in_run_log_not_choice_log": sorted(with_choice - set(by_choice)),
        },
        "nightly_without_choice": sum(1 for r in run_lines if not (r.experiment or r.chosen)),
    }


def _experiment_meta(paths: Paths, name: str) -> dict:
    folder = paths.runs / "experiments" / name
    meta = {}
    for file in ("experiment.json", "cycle0.json"):
        try:
            meta[file.split(".")[0]] = json.loads((folder / file).read_text())
        except (OSError, ValueError):
            meta[file.split(".")[0]] = None
    return meta


def _experiment(paths: Paths, name: str, cycles: list[Cycle], by_state: dict) -> tuple[list[dict], dict]:
    """Given one experiment's cycles in order, return (its per-cycle rows, its summary row); oracle rewards
    are added to `by_state` by source and arm state."""
    meta = _experiment_meta(paths, name)
    per_cycle = []
    cum_regret = cum_loss_regret = 0.0
    chosen_sum = best_sum = mean_sum = 0.0
    informed_sum, informed_cycles = 0.0, 0
    matches = 0
    last, trained = None, set()
    for c in cycles:
        run, loss_regret = c.run, c.choice.loss_regret
        cum_loss_regret += loss_regret or 0.0
        oracle = run.oracle_rewards or None
        regret = None
        if oracle:
            best = max(oracle.values())
            chosen = oracle.get(run.chosen, run.reward)
            regret = best - chosen
            cum_regret += regret
            chosen_sum += chosen
            best_sum += best
            mean_sum += statistics.fmean(oracle.values())
            matches += regret <= 1e-9
            progress = run.oracle_progress or {}
            if progress.keys() == oracle.keys():  # older logs lack the selection-split measure
                informed_sum += oracle[max(sorted(progress), key=progress.get)]
                informed_cycles += 1
            for source, value in oracle.items():
                by_state[(source, arm_state(source, last, trained))].append(value)
        last = run.chosen
        trained.add(last)
        per_cycle.append(
            {
                "experiment": name,
                "run_type": run.run_type,
                "seed": run.seed,
                "cycle": run.cycle,
                "cycle_id": run.cycle_id,
                "chosen": run.chosen,
                "reward": run.reward,
                "loss_regret": loss_regret,
                "cumulative_loss_regret": cum_loss_regret,
                "oracle_regret": regret,
                "cumulative_oracle_regret": cum_regret if oracle else None,
                "eval_loss": run.eval_loss,
                "perplexity_drift": run.perplexity_drift,
            }
        )
    cycle0 = meta.get("cycle0") or {}
    first, final = cycles[0].run, cycles[-1].run
    planned = (meta.get("experiment") or {}).get("n")
    has_oracle = any(c.run.oracle_rewards for c in cycles)
    share = lambda total: total / best_sum if has_oracle and best_sum > 0 else None  # noqa: E731
    trials = [c.choice.trials or Trials() for c in cycles]
    losses = [c.run.eval_loss for c in cycles if c.run.eval_loss is not None]
    summary = {
        "experiment": name,
        "run_type": first.run_type,
        "seed": first.seed,
        "cycles": len(cycles),
        "planned_cycles": planned,
        "complete": not first.experiment or bool((meta.get("experiment") or {}).get("ended")),
        "final_recall": final.recall,
        "recall_cycle0": cycle0.get("recall"),
        "final_capability": final.capability,
        "capability_cycle0": cycle0.get("capability"),
        "capability_drift": final.capability - cycle0["capability"]
        if final.capability is not None and cycle0.get("capability") is not None
        else None,
        "perplexity_drift": final.perplexity_drift,
        "final_eval_loss": final.eval_loss,
        "eval_loss_cycle0": statistics.fmean(cycle0["eval_losses"].values()) if cycle0.get("eval_losses") else None,
        "stability_eval_loss_var": statistics.pvariance(losses) if len(cycles) > 1 and losses else 0.0,
        "cumulative_loss_regret": cum_loss_regret,
        "cumulative_oracle_regret": cum_regret if has_oracle else None,
        "oracle_gain_share": share(chosen_sum),
        "random_reference_share": share(mean_sum),
        "full_information_share": share(informed_sum) if informed_cycles == len(cycles) else None,
        "oracle_match_rate": matches / len(cycles) if has_oracle else None,
        "choices": dict(Counter(c.run.chosen for c in cycles)),
        "trials": sum(len(t.progress) for t in trials),
        "trial_seconds_per_cycle": statistics.fmean(t.seconds for t in trials),
        "seconds_per_cycle": statistics.fmean(c.run.seconds or 0.0 for c in cycles),
    }
    return per_cycle, summary


def analyze(paths: Paths, *, experiment: str | None = None, policy: str | None = None) -> dict:
    """Given the home (and optionally one experiment or policy), return the whole analysis as JSON-able
    tables: integrity, per run type, per experiment, per cycle, oracle reward by state, choices."""
    data = load(paths, experiment=experiment, policy=policy)
    experiments: dict[str, list[Cycle]] = defaultdict(list)
    for c in data["rows"]:
        experiments[c.experiment].append(c)
    per_cycle, per_experiment = [], []
    by_state: dict[tuple[str, str], list[float]] = defaultdict(list)  # oracle rewards by source and arm state
    for name, cycles in sorted(experiments.items()):
        rows, summary = _experiment(paths, name, sorted(cycles, key=lambda c: c.run.cycle or 0), by_state)
        per_cycle += rows
        per_experiment.append(summary)
    by_type: dict[str, list[dict]] = defaultdict(list)
    for e in per_experiment:
        if e["complete"]:  # an experiment that never ended (killed, still running) would skew its policy's means
            by_type[e["run_type"]].append(e)
    metrics = (
        "final_recall",
        "perplexity_drift",
        "capability_drift",
        "final_eval_loss",
        "cumulative_oracle_regret",
        "oracle_gain_share",
        "random_reference_share",
        "full_information_share",
        "stability_eval_loss_var",
        "trial_seconds_per_cycle",
        "seconds_per_cycle",
    )
    summary = [
        {"run_type": t, "experiments": len(es), **{m: mean_ci([e[m] for e in es]) for m in metrics}}
        for t, es in sorted(by_type.items())
    ]
    distribution: dict[str, dict] = defaultdict(lambda: defaultdict(Counter))
    for row in per_cycle:
        distribution[row["run_type"]][row["cycle"]][row["chosen"]] += 1
    counts = dict(data["counts"])
    counts["displayed"] = len(per_cycle)
    return {
        "integrity": {
            "counts": counts,
            "logs": data["logs"],
            "broken_lines": data["broken"],
            "missing_cycle_ids": data["missing"],
            "nightly_without_choice": data["nightly_without_choice"],
            "incomplete_experiments": [
                {"experiment": e["experiment"], "cycles_logged": e["cycles"], "planned": e["planned_cycles"]}
                for e in per_experiment
                if not e["complete"]
            ],
        },
        "per_run_type": summary,
        "experiments": per_experiment,
        "cycles": per_cycle,
        "oracle_reward_by_state": [
            {"source": source, "state": state, **mean_ci(values)}
            for (source, state), values in sorted(by_state.items())
        ],
        "choice_distribution": {t: {str(c): dict(v) for c, v in sorted(d.items())} for t, d in distribution.items()},
    }


def write_csv(result: dict, folder: Path) -> list[Path]:
    """Write the tables of an analysis as CSV files; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    flat_summary = [
        {
            "run_type": s["run_type"],
            "experiments": s["experiments"],
            **{f"{m}_{k}": v for m, stats in s.items() if isinstance(stats, dict) for k, v in stats.items()},
        }
        for s in result["per_run_type"]
    ]
    tables = {
        "cycles.csv": result["cycles"],
        "experiments.csv": result["experiments"],
        "per_run_type.csv": flat_summary,
        "broken_lines.csv": result["integrity"]["broken_lines"],
    }
    return [write_csv_file(folder / name, rows) for name, rows in tables.items()]
