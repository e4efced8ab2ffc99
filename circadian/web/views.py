"""What the home holds, as plain rows read from it: the views the CLI prints and the dashboard shows.

No web code and no terminal code here: `circadian status` and the overview page both call `status`,
`circadian adapters list` and the adapters page both call `adapter_rows`, and every table the pages
show can also be exported as CSV or JSON from the same function. Nothing here loads a model.
"""

from __future__ import annotations

import json
import re

from circadian.backends import auto_backend_name
from circadian.core.config import Config
from circadian.core.paths import Paths
from circadian.lab.analyze import analyze
from circadian.night import control, evolution
from circadian.shift.status import describe as describe_schedule
from circadian.store import adapters, inbox, ledger, memories, memory_index
from circadian.store.records import ChoiceLine, RunLogLine, TrainEventLine, read_all

CATEGORIES = ("learned", "struggling", "not learned")


def last_line(path) -> dict | None:
    """Return the last run_log line of a log as a dict, or None."""
    lines = read_all(path, RunLogLine)
    return lines[-1].row() if lines else None


def status(paths: Paths, config: Config) -> dict:
    """Given the home and config, return what `circadian status` shows, as a JSON-able dict."""
    backend = config.model.backend
    sleep_now = control.read_status(paths.control)
    when = describe_schedule(paths)
    return {
        "home": str(paths.home),
        "home_source": paths.home_source,
        "model": config.model.name,
        "backend": auto_backend_name() if backend == "auto" else backend,
        "adapter": adapters.current_version(paths),
        "base": adapters.current_base(paths),
        "memories": memories.counts(paths),
        "last_cycle": last_line(paths.run_log),
        "schedule": when,
        "next_run": when["next_run"],
        "sleep": sleep_now.row() if sleep_now.running else None,
        "queue": inbox.summary(paths),
    }


def _is_name(cycle: str) -> bool:
    """Whether a cycle id from a request is one folder name under data/runs/, not a path."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cycle)) and ".." not in cycle


def knowledge(paths: Paths, cycle: str | None = None) -> dict:
    """What a night (default: the latest with a summary) made of what the user said: every message that
    told something, with the facts learned from it, the updates and the rejected facts."""
    from circadian.night.report import capability_changes, latest_cycle
    from circadian.store.records import CycleSummary, Measurement, read_json

    folder = paths.runs / cycle if cycle and _is_name(cycle) else None if cycle else latest_cycle(paths.runs)
    if folder is None or not (folder / "summary.json").exists():
        return {"cycle": None, "coverage": [], "updates": [], "rejected": [], "generators": [], "coverage_share": None}
    summary = read_json(folder / "summary.json", CycleSummary)
    found = summary.knowledge or {}
    before, after = (summary.before or Measurement()).brief(), (summary.after or Measurement()).brief()
    return {
        "cycle": folder.name,
        "general": {
            "capability": [before.capability, after.capability],
            "style": [before.style, after.style],
            "router": (summary.after.router if summary.after else None),
            "broke": [c for c in capability_changes(summary) if not c["after_hit"]],
            "fixed": [c for c in capability_changes(summary) if c["after_hit"]],
        },
        "coverage": found.get("coverage", []),
        "updates": found.get("updates", []),
        "rejected": found.get("rejected", []),
        "generators": found.get("generators", []),
        "coverage_share": found.get("coverage_share"),
    }


def coverage_rows(found: dict) -> list[dict]:
    """One row per message: the message, whether it was understood, the facts learned from it."""
    return [
        {"message": c["message"], "understood": bool(c["facts"]), "facts": " / ".join(c["facts"])}
        for c in found["coverage"]
    ]


def cycles_with_evolution(paths: Paths) -> list[str]:
    """The nights that tracked their learning evolution, newest first."""
    return sorted((p.parent.parent.name for p in paths.runs.glob("*/evolution/analysis.json")), reverse=True)


def _analysis(paths: Paths, cycle: str) -> dict | None:
    path = paths.runs / cycle / "evolution" / "analysis.json"
    if cycle not in cycles_with_evolution(paths) or not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def evolution_examples(
    paths: Paths, cycle: str | None, *, category: str = "", search: str = "", sort: str = "learned_at"
) -> tuple[str | None, list[dict]]:
    """Return (cycle, rows) of a night's tracked examples, filtered, searched and sorted."""
    cycles = cycles_with_evolution(paths)
    cycle = cycle or (cycles[0] if cycles else None)
    analysis = _analysis(paths, cycle) if cycle else None
    if analysis is None:
        return cycle, []
    rows = [
        {
            k: r.get(k)
            for k in (
                "id",
                "kind",
                "question",
                "expected",
                "category",
                "learned_at",
                "regressions",
                "first_loss",
                "final_loss",
                "final_answer",
                "fact",
            )
        }
        for r in analysis["examples"]
    ]
    if category:
        rows = [r for r in rows if r["category"] == category]
    if search:
        needle = search.lower()
        rows = [r for r in rows if needle in (r["question"] + " " + r["expected"] + " " + r["final_answer"]).lower()]
    if sort == "final_loss":
        rows.sort(key=lambda r: r["final_loss"] if r["final_loss"] is not None else 1e9)
    else:  # learning speed: learned soonest first, never-learned last
        rows.sort(
            key=lambda r: (
                r["learned_at"] is None,
                r["learned_at"] if isinstance(r["learned_at"], int) else 0,
                r["final_loss"] or 0,
            )
        )
    return cycle, rows


def learned_share(rows: list[dict]) -> dict:
    """Given tracked examples, return how many fell in each category and the share learned."""
    counts = {c: sum(1 for r in rows if r["category"] == c) for c in CATEGORIES}
    return {"counts": counts, "total": len(rows), "share": counts["learned"] / len(rows) if rows else None}


def evolution_example(paths: Paths, cycle: str, example_id: str) -> dict | None:
    """One tracked example of a night with its curve (loss, answer and hit at each snapshot), or None."""
    analysis = _analysis(paths, cycle)
    return next((r for r in analysis["examples"] if r["id"] == example_id), None) if analysis else None


def cycles_table(paths: Paths) -> list[dict]:
    """Every cycle in run_log.jsonl (nightly and experiment), with its choice when there is one."""
    choices = {c.cycle_id: c for c in read_all(paths.choice_log, ChoiceLine)}
    rows = []
    for line in read_all(paths.run_log, RunLogLine):
        choice = choices.get(line.cycle_id)
        rows.append(
            {
                "cycle_id": line.cycle_id,
                "run_type": line.run_type,
                "outcome": line.outcome,
                "chosen": line.chosen or (choice.chosen if choice else None),
                "reason": choice.reason if choice else None,
                "version": line.version,
                "experiment": line.experiment,
                "reward": line.reward,
                "eval_loss": line.eval_loss,
                "recall_after": line.recall_after,
                "ended": line.when,
            }
        )
    return rows


def cycles_analysis(paths: Paths) -> dict:
    return analyze(paths)


def regret_series(result: dict) -> dict[str, list[tuple[int, float]]]:
    """Per experiment, (cycle, cumulative regret): the oracle's when known, else the loss-level one."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in result["cycles"]:
        value = row["cumulative_oracle_regret"]
        series.setdefault(row["experiment"], []).append(
            (row["cycle"], value if value is not None else row["cumulative_loss_regret"])
        )
    return series


def choice_shares(result: dict) -> list[dict]:
    """Per run type, how often each source was chosen."""
    shares: dict[str, dict] = {}
    for run_type, cycles in result["choice_distribution"].items():
        for counts in cycles.values():
            for source, n in counts.items():
                shares.setdefault(run_type, {}).setdefault(source, 0)
                shares[run_type][source] += n
    return [{"run_type": t, **counts} for t, counts in shares.items()]


def adapter_rows(paths: Paths) -> list[dict]:
    """Every stored version, newest first: status, lineage, figures before and after, pins."""
    current = adapters.current_version(paths)
    pinned = set(adapters.pins(paths))
    rows = []
    for m in reversed(adapters.list_versions(paths)):
        before, after = m.figures("before"), m.figures("after")
        rows.append(
            {
                "version": m.version,
                "current": m.version == current,
                "pinned": m.version in pinned,
                "status": m.gate.get("decision"),
                "parent": m.parent,
                "base": m.base,
                "created_at": m.created_at,
                "cycle_id": m.cycle_id,
                "backend": m.backend,
                "recall_before": before.recall,
                "recall_after": after.recall,
                "capability_after": after.capability,
                "perplexity_after": after.perplexity,
                "val_loss_after": after.val_loss,
                "steps": m.train.get("steps"),
                "peak_memory_mb": m.peak_memory_mb,
            }
        )
    return rows


def compare(paths: Paths, a: str, b: str) -> list[dict]:
    """Metric by metric, two versions' candidate figures side by side."""
    fa, fb = adapters.get(paths, a).manifest.figures("after"), adapters.get(paths, b).manifest.figures("after")
    return [
        {"metric": k, a: getattr(fa, k), b: getattr(fb, k)}
        for k in ("recall", "retention", "capability", "perplexity", "val_loss")
    ]


def queue_table(paths: Paths) -> list[dict]:
    return [
        {
            k: e.get(k)
            for k in ("id", "name", "priority", "state", "rows", "quarantined", "attempts", "updated", "reason")
        }
        for e in inbox.read_queue(paths)
    ]


def live(paths: Paths) -> dict:
    """The running (or last) sleep: its status and its training curve so far."""
    status = control.read_status(paths.control)
    curve = []
    if status.cycle_id:
        curve = [
            {"step": e.step, "train_loss": e.train_loss, "val_loss": e.val_loss, "dataset": e.dataset}
            for e in read_all(paths.runs / status.cycle_id / "metrics.jsonl", TrainEventLine)
        ]
    return {"status": status.row(), "curve": curve}


def forgetting(paths: Paths) -> dict:
    return evolution.forgetting(paths.runs)


def ledger_rows(paths: Paths, config: Config) -> list[dict]:
    """The graduation ledger of the current adapter: each fact the nights wrote, whether it has
    graduated (the adapter answers it without retrieval), the nights it took, or why it still waits
    (`circadian memory ledger` and the dashboard's memory page)."""
    found = ledger.states(paths, adapters.head(paths))
    within = config.sleep.graduate_within
    rows = []
    for entry in memory_index.facts(paths):
        state = found.get(entry.fact)
        if state is None:
            status = "not asked yet"
        elif state.graduated:
            status = "graduated"
        elif state.asked >= within:
            status = "not learned"
        else:
            status = "learning"
        rows.append(
            {
                "fact": entry.text,
                "status": status,
                "graduated": bool(state and state.graduated),
                "nights_asked": state.asked if state else 0,
                "graduated_in": state.graduated_in if state and state.graduated else None,
                "nights_to_graduate": state.nights_to_graduate if state and state.graduated else None,
                "injected": not (state and state.graduated),
                "turn": entry.turn_id,
                "source": entry.source,
            }
        )
    return rows
