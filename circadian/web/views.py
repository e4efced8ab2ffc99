"""What the home holds, as plain rows read from it: the views the CLI prints and the dashboard shows.

No web code and no terminal code here: `circadian status` and the overview page both call `status`,
`circadian adapters list` and the adapters page both call `adapter_rows`, and every table the pages
show can also be exported as CSV or JSON from the same function. Nothing here loads a model.
"""

from __future__ import annotations

import csv
import io
import json
from circadian.night import control, evolution
from circadian.store import adapters, inbox
from circadian.lab.analyze import analyze
from circadian.core.config import Config
from circadian.core.fsutil import read_jsonl
from circadian.core.paths import Paths
from circadian.shift.status import describe as describe_schedule
from circadian.store import memories
from circadian.backends import auto_backend_name


def last_line(path) -> dict | None:
    """Return the last readable JSON object of a JSONL file, or None."""
    last = None
    for _n, row, _raw in read_jsonl(path):
        if row is not None:
            last = row
    return last


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
        "memories": memories.counts(paths),
        "last_cycle": last_line(paths.run_log),
        "schedule": when,
        "next_run": when["next_run"],
        "sleep": sleep_now if sleep_now.get("running") else None,
        "queue": inbox.summary(paths),
    }


def cycles_with_evolution(paths: Paths) -> list[str]:
    return sorted((p.parent.parent.name for p in paths.runs.glob("*/evolution/analysis.json")), reverse=True)


def evolution_examples(paths: Paths, cycle: str | None, *, category: str = "", search: str = "",
                       sort: str = "learned_at") -> tuple[str | None, list[dict]]:
    """Return (cycle, rows) of a night's tracked examples, filtered, searched and sorted."""
    cycles = cycles_with_evolution(paths)
    cycle = cycle or (cycles[0] if cycles else None)
    if cycle is None or cycle not in cycles:
        return cycle, []
    analysis = json.loads((paths.runs / cycle / "evolution" / "analysis.json").read_text())
    rows = [{k: r.get(k) for k in ("id", "kind", "question", "expected", "category", "learned_at", "regressions",
                                   "first_loss", "final_loss", "final_answer", "fact")} for r in analysis["examples"]]
    if category:
        rows = [r for r in rows if r["category"] == category]
    if search:
        needle = search.lower()
        rows = [r for r in rows if needle in (r["question"] + " " + r["expected"] + " " + r["final_answer"]).lower()]
    if sort == "final_loss":
        rows.sort(key=lambda r: r["final_loss"] if r["final_loss"] is not None else 1e9)
    else:  # learning speed: learned soonest first, never-learned last
        rows.sort(key=lambda r: (r["learned_at"] is None, r["learned_at"] if isinstance(r["learned_at"], int) else 0,
                                 r["final_loss"] or 0))
    return cycle, rows


def evolution_example(paths: Paths, cycle: str, example_id: str) -> dict | None:
    path = paths.runs / cycle / "evolution" / "analysis.json"
    if not path.exists():
        return None
    return next((r for r in json.loads(path.read_text())["examples"] if r["id"] == example_id), None)


def cycles_table(paths: Paths) -> list[dict]:
    """Every cycle in run_log.jsonl (nightly and experiment), with its choice when there is one."""
    choices = {row["cycle_id"]: row for _n, row, _raw in read_jsonl(paths.choice_log) if row and row.get("cycle_id")}
    rows = []
    for _n, row, _raw in read_jsonl(paths.run_log):
        if not row or not row.get("cycle_id"):
            continue
        choice = choices.get(row["cycle_id"], {})
        rows.append({"cycle_id": row["cycle_id"], "run_type": row.get("run_type"), "outcome": row.get("outcome"),
                     "chosen": row.get("chosen") or choice.get("chosen"), "reason": choice.get("reason"),
                     "version": row.get("version"), "experiment": row.get("experiment"),
                     "reward": row.get("reward"), "eval_loss": row.get("eval_loss"),
                     "recall_after": (row.get("after") or {}).get("recall") if isinstance(row.get("after"), dict) else row.get("recall"),
                     "ended": row.get("ended") or row.get("logged_at")})
    return rows


def cycles_analysis(paths: Paths) -> dict:
    return analyze(paths)


def adapter_rows(paths: Paths) -> list[dict]:
    """Every stored version, newest first: status, lineage, figures before and after, pins."""
    current = adapters.current_version(paths)
    pinned = set(adapters.pins(paths))
    rows = []
    for m in reversed(adapters.list_versions(paths)):
        before, after = m.metrics.get("before", {}), m.metrics.get("after", {})
        rows.append({"version": m.version, "current": m.version == current, "pinned": m.version in pinned,
                     "status": m.gate.get("decision"), "parent": m.parent, "created_at": m.created_at,
                     "cycle_id": m.cycle_id, "backend": m.backend,
                     "recall_before": before.get("recall"), "recall_after": after.get("recall"),
                     "capability_after": after.get("capability"), "perplexity_after": after.get("perplexity"),
                     "val_loss_after": after.get("val_loss"), "steps": m.train.get("steps"),
                     "peak_memory_mb": m.peak_memory_mb})
    return rows


def compare(paths: Paths, a: str, b: str) -> list[dict]:
    """Metric by metric, two versions' candidate figures side by side."""
    ma, mb = adapters.get(paths, a).manifest, adapters.get(paths, b).manifest
    keys = ("recall", "retention", "capability", "perplexity", "val_loss")
    return [{"metric": k, a: ma.metrics.get("after", {}).get(k), b: mb.metrics.get("after", {}).get(k)} for k in keys]


def queue_table(paths: Paths) -> list[dict]:
    return [{k: e.get(k) for k in ("id", "name", "priority", "state", "rows", "quarantined", "attempts", "updated",
                                   "reason")} for e in inbox.read_queue(paths)]


def live(paths: Paths) -> dict:
    """The running (or last) sleep: its status and its training curve so far."""
    status = control.read_status(paths.control)
    curve = []
    cycle = status.get("cycle_id")
    if cycle and (paths.runs / cycle / "metrics.jsonl").exists():
        for _n, row, _raw in read_jsonl(paths.runs / cycle / "metrics.jsonl"):
            if row:
                curve.append({k: row.get(k) for k in ("global_step", "iteration", "train_loss", "val_loss", "dataset")})
    return {"status": status, "curve": curve}


def forgetting(paths: Paths) -> dict:
    return evolution.forgetting(paths.runs)


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["empty"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return buffer.getvalue()
