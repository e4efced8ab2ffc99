"""The night's training: one dataset after another, steered by `circadian ctl`.

Queued inbox datasets come first (priority, then normal), today's memories last. Each dataset trains
with its own validation split and early stopping, continuing from the previous dataset's result (the
adapter is saved to the cycle folder between datasets and reloaded, which is how both backends
continue an adapter). At every step boundary the callback asks the control files:
- pause: the adapter so far is saved to `<cycle>/paused/`, the status says "paused", and the
  step waits until `ctl resume` (or stop / skip);
- skip: this dataset ends, its training is undone (the adapter from before the dataset is reloaded) and
  the next dataset starts;
- stop: `Stopped` is raised; the sleep ends without committing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from circadian.backends import TrainResult
from circadian.night.control import Steering, Stopped
from circadian.store.records import DatasetOutcome


@dataclass
class TrainingOutcome:
    """The datasets' results together (`result` is None when nothing was trained)."""

    result: TrainResult | None
    outcomes: list[DatasetOutcome] = field(default_factory=list)

    def ids(self, state: str) -> list[str]:
        return [o.queue_id for o in self.outcomes if o.state == state and o.queue_id]


def combine(results: list[TrainResult]) -> TrainResult:
    """Given the datasets' results in order, return one result for the night (steps counted across datasets)."""
    offset, curve = 0, []
    for r in results:
        curve += [{**e, "iteration": e["iteration"] + offset} for e in r.curve]
        offset += r.steps
    last = results[-1]
    tokens = sum(r.trained_tokens for r in results)
    seconds = sum(r.train_seconds for r in results)
    return replace(
        last,
        steps=offset,
        best_step=offset - last.steps + last.best_step,
        initial_val_loss=results[0].initial_val_loss,
        stop_reason="; ".join(r.stop_reason for r in results),
        trained_tokens=tokens,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        train_seconds=seconds,
        peak_memory_mb=max(r.peak_memory_mb for r in results),
        curve=curve,
    )


def train_datasets(
    model,
    datasets: list,
    *,
    tokenize: Callable[[list, bool], list],
    cycle_dir: Path,
    control: Path,
    train_one: Callable,
    say: Callable[[str], None],
    publish: Callable[[dict], None],
    on_skip: Callable[[object], None] = lambda dataset: None,
    start: tuple = (None, None),
    poll_seconds: float = 0.5,
) -> TrainingOutcome:
    """Train `datasets` in order. `train_one(model, train_ex, valid_ex, callback)` runs one backend
    training with the sleep's progress bar and metrics log; `start` is the (path, version) of the
    adapter the night began with, restored if the first dataset is skipped."""
    position = start
    results, outcomes = [], []
    offset = 0
    for index, dataset in enumerate(datasets):
        if not dataset.train:
            outcomes.append(DatasetOutcome(name=dataset.name, queue_id=dataset.queue_id, state="empty"))
            continue
        say(f"training dataset {index + 1}/{len(datasets)}: {dataset.name} ({len(dataset.train)} rows)")
        train_ex, valid_ex = tokenize(dataset.train, True), tokenize(dataset.valid, False)
        state = {"decision": None, "started": time.time()}

        def checkpoint() -> None:
            model.save_adapter(cycle_dir / "paused")
            say(f"paused; the adapter so far is saved in {cycle_dir / 'paused'}")

        def on_pause(paused: bool) -> None:
            publish({"state": "paused" if paused else "running"})
            if not paused:
                say("resumed")

        steering = Steering(control, checkpoint=checkpoint, on_pause=on_pause, poll_seconds=poll_seconds)

        def callback(event, dataset=dataset, index=index, state=state, steering=steering, offset=offset) -> str | None:
            step, total = event["iteration"], event.get("total_steps") or 0
            event.update(dataset=dataset.name, global_step=offset + step)
            elapsed = time.time() - state["started"]
            publish(
                {
                    "state": "running",
                    "stage": "train",
                    "dataset": dataset.name,
                    "dataset_index": index + 1,
                    "datasets": len(datasets),
                    "step": step,
                    "total_steps": total,
                    "global_step": offset + step,
                    "eta_seconds": round(elapsed / step * (total - step), 1) if step and total else None,
                    **{
                        k: event.get(k)
                        for k in (
                            "train_loss",
                            "val_loss",
                            "best_val_loss",
                            "tokens_per_second",
                            "peak_memory_mb",
                            "learning_rate",
                            "evals_without_improvement",
                        )
                    },
                }
            )
            decision = steering.check()
            if decision:
                state["decision"] = decision
                return "stop"
            return None

        result = train_one(model, train_ex, valid_ex, callback)
        if state["decision"] == "stop":
            raise Stopped(f"stopped by request during {dataset.name}, step {result.steps}")
        if state["decision"] == "skip":
            model.set_adapter(*position)
            say(f"skipped {dataset.name} at step {result.steps}; its training is undone")
            outcomes.append(
                DatasetOutcome(
                    name=dataset.name,
                    queue_id=dataset.queue_id,
                    state="skipped",
                    steps=result.steps,
                    stop_reason="skipped by request",
                )
            )
            on_skip(dataset)
            continue
        results.append(result)
        offset += result.steps
        outcomes.append(
            DatasetOutcome(
                name=dataset.name,
                queue_id=dataset.queue_id,
                state="trained",
                steps=result.steps,
                best_step=result.best_step,
                stop_reason=result.stop_reason,
            )
        )
        if any(u.train for u in datasets[index + 1 :]):  # the next dataset continues from this one
            folder = cycle_dir / "phases" / f"{index + 1:02d}"
            model.save_adapter(folder)
            position = (folder, "candidate")
            model.set_adapter(*position)
    return TrainingOutcome(combine(results) if results else None, outcomes)


__all__ = ["TrainingOutcome", "Stopped", "DatasetOutcome", "combine", "train_datasets"]
