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

import csv
import json
import math
import statistics
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from circadian.core.paths import Paths
from circadian.night.policies import arm_state

# two-sided 95% Student t quantiles for small samples (df 1..30); normal beyond
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


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


def _read(path: Path, label: str, broken: list[dict]) -> tuple[list[dict], dict]:
    info = {"path": str(path.resolve()), "exists": path.exists(), "lines": 0, "mtime": None}
    rows = []
    if not path.exists():
        return rows, info
    info["mtime"] = datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            info["lines"] += 1
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                broken.append({"file": label, "line": number, "why": "empty line"})
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                broken.append({"file": label, "line": number, "why": f"not JSON ({exc.msg})", "raw": text[:120]})
                continue
            if not isinstance(row, dict):
                broken.append({"file": label, "line": number, "why": "not a JSON object"})
                continue
            rows.append({**row, "_line": number})
    return rows, info


def load(paths: Paths, *, experiment: str | None = None, policy: str | None = None) -> dict:
    """Read both logs; return the cycle rows joined by cycle_id, with the integrity account."""
    broken: list[dict] = []
    runs, run_info = _read(paths.run_log, "run_log", broken)
    choices, choice_info = _read(paths.choice_log, "choice_log", broken)
    counts = {"raw": {"run_log": run_info["lines"], "choice_log": choice_info["lines"]},
              "parsed": {"run_log": len(runs), "choice_log": len(choices)}}
    uncleaned = []

    def clean(rows, label):
        kept = []
        for row in rows:
            missing = [k for k in ("cycle_id", "run_type") if not row.get(k)]
            if missing:
                uncleaned.append({"file": label, "line": row["_line"], "why": f"missing {', '.join(missing)}"})
            else:
                kept.append(row)
        return kept

    runs, choices = clean(runs, "run_log"), clean(choices, "choice_log")
    counts["cleaned"] = {"run_log": len(runs), "choice_log": len(choices)}
    # nightly cycles without a choice are expected (no policy configured); experiments must have both
    run_ids = {r["cycle_id"] for r in runs if r.get("experiment") or r.get("chosen")}
    choice_ids = {c["cycle_id"] for c in choices}
    by_choice = {c["cycle_id"]: c for c in choices}
    joined = [{**r, "choice": by_choice[r["cycle_id"]]} for r in runs if r["cycle_id"] in by_choice]
    counts["joined"] = len(joined)
    filtered = [r for r in joined if (experiment is None or r.get("experiment") == experiment)
                and (policy is None or r["run_type"] == policy)]
    counts["filtered"] = len(filtered)
    return {"rows": filtered, "counts": counts, "broken": broken + uncleaned,
            "logs": {"run_log": run_info, "choice_log": choice_info},
            "missing": {"in_choice_log_not_run_log": sorted(choice_ids - run_ids),
                        "in_run_log_not_choice_log": sorted(run_ids - choice_ids)},
            "nightly_without_choice": sum(1 for r in runs if not (r.get("experiment") or r.get("chosen")))}


def _trials(choice: dict) -> dict:
    """A choice line's trials (logged as "probes" before trials had their name)."""
    return choice.get("trials") or choice.get("probes") or {}


def _experiment_meta(paths: Paths, name: str) -> dict:
    folder = paths.runs / "experiments" / name
    meta = {}
    for file in ("experiment.json", "cycle0.json"):
        try:
            meta[file.split(".")[0]] = json.loads((folder / file).read_text())
        except (OSError, ValueError):
            meta[file.split(".")[0]] = None
    return meta


def analyze(paths: Paths, *, experiment: str | None = None, policy: str | None = None) -> dict:
    data = load(paths, experiment=experiment, policy=policy)
    experiments: dict[str, list[dict]] = defaultdict(list)
    for row in data["rows"]:
        experiments[row.get("experiment") or row["cycle_id"]].append(row)
    per_cycle, per_experiment = [], []
    by_state: dict[tuple[str, str], list[float]] = defaultdict(list)  # oracle rewards by source and arm state
    for name, rows in sorted(experiments.items()):
        rows.sort(key=lambda r: r.get("cycle", 0))
        meta = _experiment_meta(paths, name)
        cum_regret = cum_loss_regret = 0.0
        chosen_sum = best_sum = mean_sum = 0.0
        informed_sum, informed_cycles = 0.0, 0
        matches = 0
        last, trained = None, set()
        for row in rows:
            choice = row["choice"]
            loss_regret = choice.get("loss_regret")
            cum_loss_regret += loss_regret or 0.0
            oracle = row.get("oracle_rewards") or None
            regret = None
            if oracle:
                best = max(oracle.values())
                chosen = oracle.get(row["chosen"], row.get("reward"))
                regret = best - chosen
                cum_regret += regret
                chosen_sum += chosen
                best_sum += best
                mean_sum += statistics.fmean(oracle.values())
                matches += regret <= 1e-9
                progress = row.get("oracle_progress") or {}
                if progress.keys() == oracle.keys():  # older logs lack the selection-split measure
                    informed_sum += oracle[max(sorted(progress), key=progress.get)]
                    informed_cycles += 1
                for source, value in oracle.items():
                    by_state[(source, arm_state(source, last, trained))].append(value)
            last = row["chosen"]
            trained.add(last)
            per_cycle.append({"experiment": name, "run_type": row["run_type"], "seed": row.get("seed"),
                              "cycle": row.get("cycle"), "cycle_id": row["cycle_id"], "chosen": row["chosen"],
                              "reward": row.get("reward"), "loss_regret": loss_regret,
                              "cumulative_loss_regret": cum_loss_regret, "oracle_regret": regret,
                              "cumulative_oracle_regret": cum_regret if oracle else None,
                              "eval_loss": row.get("eval_loss"), "perplexity_drift": row.get("perplexity_drift")})
        cycle0 = meta.get("cycle0") or {}
        last = rows[-1]
        planned = (meta.get("experiment") or {}).get("n")
        complete = not rows[0].get("experiment") or bool((meta.get("experiment") or {}).get("ended"))
        has_oracle = any(r.get("oracle_rewards") for r in rows)
        per_experiment.append({
            "experiment": name, "run_type": rows[0]["run_type"], "seed": rows[0].get("seed"), "cycles": len(rows),
            "planned_cycles": planned, "complete": complete,
            "final_recall": last.get("recall"), "recall_cycle0": cycle0.get("recall"),
            "final_capability": last.get("capability"), "capability_cycle0": cycle0.get("capability"),
            "capability_drift": (last["capability"] - cycle0["capability"])
            if last.get("capability") is not None and cycle0.get("capability") is not None else None,
            "perplexity_drift": last.get("perplexity_drift"), "final_eval_loss": last.get("eval_loss"),
            "eval_loss_cycle0": statistics.fmean(cycle0["eval_losses"].values()) if cycle0.get("eval_losses") else None,
            "stability_eval_loss_var": statistics.pvariance([r["eval_loss"] for r in rows if r.get("eval_loss") is not None])
            if len(rows) > 1 else 0.0,
            "cumulative_loss_regret": cum_loss_regret,
            "cumulative_oracle_regret": cum_regret if has_oracle else None,
            "oracle_gain_share": chosen_sum / best_sum if has_oracle and best_sum > 0 else None,
            "random_reference_share": mean_sum / best_sum if has_oracle and best_sum > 0 else None,
            "full_information_share": informed_sum / best_sum
            if has_oracle and best_sum > 0 and informed_cycles == len(rows) else None,
            "oracle_match_rate": matches / len(rows) if has_oracle else None,
            "choices": dict(Counter(r["chosen"] for r in rows)),
            "trials": sum(len(_trials(r["choice"]).get("progress", {})) for r in rows),
            "trial_seconds_per_cycle": statistics.fmean(_trials(r["choice"]).get("seconds", 0.0) for r in rows),
            "seconds_per_cycle": statistics.fmean(r.get("seconds") or 0.0 for r in rows),
        })
    by_type: dict[str, list[dict]] = defaultdict(list)
    for e in per_experiment:
        if e["complete"]:  # an experiment that never ended (killed, still running) would skew its policy's means
            by_type[e["run_type"]].append(e)
    metrics = ("final_recall", "perplexity_drift", "capability_drift", "final_eval_loss", "cumulative_oracle_regret",
               "oracle_gain_share", "random_reference_share", "full_information_share", "stability_eval_loss_var",
               "trial_seconds_per_cycle", "seconds_per_cycle")
    summary = [{"run_type": t, "experiments": len(es), **{m: mean_ci([e[m] for e in es]) for m in metrics}}
               for t, es in sorted(by_type.items())]
    distribution: dict[str, dict] = defaultdict(lambda: defaultdict(Counter))
    for row in per_cycle:
        distribution[row["run_type"]][row["cycle"]][row["chosen"]] += 1
    counts = dict(data["counts"])
    counts["displayed"] = len(per_cycle)
    return {"integrity": {"counts": counts, "logs": data["logs"], "broken_lines": data["broken"],
                          "missing_cycle_ids": data["missing"], "nightly_without_choice": data["nightly_without_choice"],
                          "incomplete_experiments": [{"experiment": e["experiment"], "cycles_logged": e["cycles"],
                                                      "planned": e["planned_cycles"]}
                                                     for e in per_experiment if not e["complete"]]},
            "per_run_type": summary, "experiments": per_experiment, "cycles": per_cycle,
            "oracle_reward_by_state": [{"source": source, "state": state, **mean_ci(values)}
                                       for (source, state), values in sorted(by_state.items())],
            "choice_distribution": {t: {str(c): dict(v) for c, v in sorted(d.items())} for t, d in distribution.items()}}


def write_csv(result: dict, folder: Path) -> list[Path]:
    """Write the tables of an analysis as CSV files; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    flat_summary = [{"run_type": s["run_type"], "experiments": s["experiments"],
                     **{f"{m}_{k}": v for m, stats in s.items() if isinstance(stats, dict) for k, v in stats.items()}}
                    for s in result["per_run_type"]]
    tables = {"cycles.csv": result["cycles"], "experiments.csv": [{**e, "choices": json.dumps(e["choices"])}
                                                                  for e in result["experiments"]],
              "per_run_type.csv": flat_summary, "broken_lines.csv": result["integrity"]["broken_lines"]}
    for name, rows in tables.items():
        path = folder / name
        fields = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        written.append(path)
    return written
