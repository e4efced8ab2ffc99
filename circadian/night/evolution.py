"""Learning evolution: what the model guesses for a tracked sample of examples at each stage of a
night's training, and, across nights, which facts it forgets.

The tracked sample is every recall probe plus `sleep.track_sample` training rows (facts and
inbox rows first). A snapshot asks each one (greedy, `sleep.track_max_tokens` tokens) and scores
the loss of its expected answer; it is stored as `data/runs/<cycle>/evolution/step_NNNN.json`.
Snapshots are taken before training (step 0), at steps 1, 2, 4, 8, 16, ... (dense early, sparse
late) and after training (the kept checkpoint, "final"); a scheduled one is taken only when it and
the final one (each costing about what the last did) still fit in `sleep.track_budget` of the
training time the night is sure to reach: up to the next scheduled snapshot (2 x this step) or
`train.min_steps`, whichever is later (early stopping may end it any time after), so the
overhead stays near the budget (step 0 and final always run; the summary reports the real share).
Answers are generated in one batch (`evaluate.answers`).

`analyze` gives each example the step it was learned at (loss under the threshold and the answer
right, and still right at the next snapshot), its regressions (right, then wrong) and a category:
learned (right at the end), struggling (right at some point or its loss halved, but not right at
the end), not learned.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from circadian.backends.tokens import encode_chat
from circadian.core.fsutil import atomic_write_json
from circadian.night.evaluate import PLAIN, Asking, answers
from circadian.night.lineage import is_distill
from circadian.night.scoring import is_hit

LEARNED_LOSS = 0.5  # nats per answer token


def tracked_sample(probes: list[dict], train_rows: list[dict], size: int, seed: int = 0) -> list[dict]:
    """Return the examples to follow: every probe, plus `size` training rows (facts/inbox first)."""
    examples = [
        {
            "id": f"probe-{i}",
            "kind": "probe",
            "question": p["question"],
            "answers": p["answers"],
            "expected": p.get("expected") or p["answers"][0],
            "fact": p.get("fact"),
        }
        for i, p in enumerate(probes)
    ]
    candidates = [r for r in train_rows if not is_distill(r) and not r.get("lineage", {}).get("profile")]
    single = [r for r in candidates if len(r["messages"]) == 2 and r["messages"][0]["role"] == "user"]
    rng = random.Random(seed)
    for i, row in enumerate(rng.sample(single, min(size, len(single)))):
        reply = row["messages"][1]["content"]
        examples.append(
            {
                "id": f"train-{i}",
                "kind": "train",
                "question": row["messages"][0]["content"],
                "answers": row.get("lineage", {}).get("answers") or [reply],
                "expected": reply,
                "fact": row.get("lineage", {}).get("fact"),
            }
        )
    return examples


def probe_expected(plan_rows: list[dict], probes: list[dict]) -> list[dict]:
    """Give each probe the full expected reply of its fact (from a training row of the same fact)."""
    replies = {
        r["lineage"]["fact"]: r["messages"][-1]["content"] for r in plan_rows if r.get("lineage", {}).get("fact")
    }
    return [{**p, "expected": replies.get(p.get("fact"), p["answers"][0])} for p in probes]


def fits_budget(
    *,
    spent: float,
    cost: float,
    train_seconds: float,
    step: int,
    total_steps: int | None,
    min_steps: int,
    budget: float,
) -> bool:
    """Whether a snapshot now (and the final one, each costing `cost`) keeps the snapshots within
    `budget` of the training the night is sure to reach: until the next scheduled snapshot (2 x
    step) or min_steps, capped by total_steps (early stopping may end it any time after)."""
    horizon = min(total_steps or 2 * step, max(2 * step, min_steps))
    planned = train_seconds / max(step, 1) * max(horizon, step)
    return spent + 2 * cost <= budget * planned


class Tracker:
    """Takes the snapshots during one night; `on_event` is chained into the training callback."""

    def __init__(
        self,
        model,
        examples: list[dict],
        folder: Path,
        *,
        max_tokens: int = 12,
        budget: float = 0.15,
        max_length: int = 512,
        min_steps: int = 0,
        asking: Asking = PLAIN,
    ):
        self.model = model
        self.asking = asking
        self.examples = examples
        self.folder = folder
        self.max_tokens = max_tokens
        self.budget = budget
        self.min_steps = min_steps
        self.encoded = [
            encode_chat(
                model.tokenizer,
                [{"role": "user", "content": e["question"]}, {"role": "assistant", "content": e["expected"]}],
                max_length,
                asking.system_prompt,
            )
            for e in examples
        ]
        self.snapshot_seconds = 0.0
        self.last_cost = 0.0
        self.train_started: float | None = None
        self.next_step = 1
        self.skipped = 0
        self.steps: list[int] = []
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "examples.json", examples)

    def snapshot(self, step: int | str) -> dict:
        tic = time.perf_counter()
        scored = self.model.score(self.encoded)
        replies = answers(
            self.model,
            [e["question"] for e in self.examples],
            self.max_tokens,
            batch_size=min(48, max(1, len(self.examples))),
            asking=self.asking,
        )  # short answers: one batch is cheapest
        items = []
        for example, (total, count), reply in zip(self.examples, scored, replies):
            items.append(
                {
                    "id": example["id"],
                    "answer": reply,
                    "hit": is_hit(reply, example["answers"]),
                    "loss": total / max(count, 1),
                }
            )
        seconds = time.perf_counter() - tic
        self.snapshot_seconds += seconds
        self.last_cost = seconds
        name = "final" if step == "final" else f"step_{int(step):04d}"
        record = {"step": step, "seconds": round(seconds, 3), "ts": time.time(), "items": items}
        atomic_write_json(self.folder / f"{name}.json", record)
        if step != "final":
            self.steps.append(int(step))
        return record

    def start(self) -> None:
        self.snapshot(0)
        self.train_started = time.perf_counter()

    def on_event(self, event: dict) -> None:
        step = event.get("global_step", event.get("iteration", 0))
        if "train_loss" not in event or step < self.next_step:
            return None
        while self.next_step <= step:
            self.next_step *= 2
        train_seconds = time.perf_counter() - (self.train_started or time.perf_counter()) - self.snapshot_seconds
        if not fits_budget(
            spent=self.snapshot_seconds,
            cost=self.last_cost,
            train_seconds=train_seconds,
            step=step,
            total_steps=event.get("total_steps"),
            min_steps=self.min_steps,
            budget=self.budget,
        ):
            self.skipped += 1
            return None
        self.snapshot(step)
        return None

    def finish(self, final_step: int) -> dict:
        """Take the final snapshot (the kept checkpoint) and write the analysis; return its summary."""
        self.snapshot("final")
        total = time.perf_counter() - (self.train_started or time.perf_counter())
        analysis = analyze(self.folder, final_step=final_step)
        analysis["overhead"] = {
            "snapshot_seconds": round(self.snapshot_seconds, 2),
            "training_seconds": round(total - self.snapshot_seconds, 2),
            "share": self.snapshot_seconds / max(total - self.snapshot_seconds, 1e-9),
            "snapshots": len(self.steps) + 1,
            "skipped_for_budget": self.skipped,
        }
        atomic_write_json(self.folder / "analysis.json", analysis)
        return {k: analysis[k] for k in ("counts", "overhead")}


def load_snapshots(folder: Path) -> list[dict]:
    """Return the snapshots of a night in order (steps, then final)."""
    steps = sorted(folder.glob("step_*.json"))
    out = [json.loads(p.read_text()) for p in steps]
    if (folder / "final.json").exists():
        out.append(json.loads((folder / "final.json").read_text()))
    return out


def analyze(folder: Path, *, final_step: int | None = None) -> dict:
    """Per example: loss and answer per snapshot, learned step, regressions, category (pure on files)."""
    examples = json.loads((folder / "examples.json").read_text())
    snapshots = load_snapshots(folder)
    rows = []
    for example in examples:
        series = [(s["step"], next(i for i in s["items"] if i["id"] == example["id"])) for s in snapshots]
        hits = [item["hit"] for _step, item in series]
        losses = [item["loss"] for _step, item in series]
        learned_at = None
        for index, (step, item) in enumerate(series):
            if (
                item["hit"]
                and item["loss"] < LEARNED_LOSS
                and (index + 1 == len(series) or series[index + 1][1]["hit"])
            ):
                learned_at = final_step if step == "final" else step
                break
        regressions = sum(1 for a, b in zip(hits, hits[1:]) if a and not b)
        if hits and hits[-1]:
            category = "learned"
        elif any(hits) or (losses and losses[-1] < 0.5 * losses[0]):
            category = "struggling"
        else:
            category = "not learned"
        rows.append(
            {
                **example,
                "learned_at": learned_at,
                "regressions": regressions,
                "category": category,
                "first_loss": losses[0] if losses else None,
                "final_loss": losses[-1] if losses else None,
                "final_answer": series[-1][1]["answer"] if series else "",
                "curve": [
                    {"step": step, "loss": item["loss"], "hit": item["hit"], "answer": item["answer"]}
                    for step, item in series
                ],
            }
        )
    counts = {c: sum(1 for r in rows if r["category"] == c) for c in ("learned", "struggling", "not learned")}
    return {"examples": rows, "counts": counts, "steps": [s["step"] for s in snapshots]}


def _fact_hits(snapshot: dict, examples: dict) -> dict[str, bool]:
    """Per fact, whether any of its probe wordings was answered right in a snapshot."""
    out: dict[str, bool] = {}
    for item in snapshot["items"]:
        example = examples.get(item["id"], {})
        if example.get("fact") and example.get("kind") == "probe":
            out[example["fact"]] = out.get(example["fact"], False) or item["hit"]
    return out


def forgetting(runs: Path) -> dict:
    """Across nights, per fact: right after one night and wrong before the next = a forgetting event."""
    events, history = [], {}
    previous: dict[str, bool] = {}
    nights = sorted(runs.glob("*/evolution/final.json"))
    for final in nights:
        folder, cycle = final.parent, final.parent.parent.name
        examples = {e["id"]: e for e in json.loads((folder / "examples.json").read_text())}
        start = folder / "step_0000.json"
        before = _fact_hits(json.loads(start.read_text()), examples) if start.exists() else {}
        for fact, hit in before.items():
            if previous.get(fact) and not hit:
                events.append({"fact": fact, "cycle_id": cycle})
        after = _fact_hits(json.loads(final.read_text()), examples)
        for fact, hit in after.items():
            history.setdefault(fact, []).append({"cycle_id": cycle, "hit": hit})
        previous.update(after)
    per_fact = {
        fact: {
            "nights": len(h),
            "forgetting_events": sum(1 for e in events if e["fact"] == fact),
            "last_hit": h[-1]["hit"],
        }
        for fact, h in history.items()
    }
    return {"events": events, "facts": per_fact, "nights": len(nights)}
