"""Trials: the first few training steps of the night a source would get, measured, then undone.

A policy that wants to know what a source would teach without spending a night on it (the bandit,
for sources it has too little evidence about) names them in `trials_wanted`; `cycles run` and the
nightly sleep run them here before the choice. A trial trains the first `steps` steps of that
source's night: the rows the night would train, with the night's settings (batch size, schedule,
seed), then measures the mean *selection* loss over all sources (the reward a night gets, so no eval
row is ever seen) and restores the adapter it started from.

A trial as long as the night is that night: `keep` then saves its adapter, so the chosen source's
night (and with `--oracle`, every source's) is taken from its trial instead of being trained again.
How trial designs compare: bench/cycles/PROBE_QUALITY.md (written when trials were called probes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from circadian.night.evaluate import mean_loss
from circadian.night.policies import Policy

TRIAL_STEPS = 2


@dataclass
class Trials:
    """What tonight's trials measured: learning progress per source, and the seconds they took."""

    progress: dict[str, float]
    seconds: float

    def as_dict(self) -> dict:
        return {"progress": self.progress, "seconds": round(self.seconds, 1)}


def trial(
    model,
    rows: list,
    settings,
    select_rows: dict[str, list],
    before: float,
    restore: Callable[[], None],
    steps: int = TRIAL_STEPS,
    keep: Callable[[], None] | None = None,
) -> float:
    """Train the first `steps` steps of a night on `rows` with `settings`; return the decrease of the mean
    selection loss (from `before`), with the adapter restored (after `keep()`, which may save it)."""
    try:
        model.train(
            rows,
            [],
            settings.model_copy(update={"max_steps": steps, "max_epochs": 10**6, "eval_every": 10**6, "min_steps": 0}),
            lambda _e: None,
        )
        after = sum(mean_loss(model, split) for split in select_rows.values()) / len(select_rows)
        if keep:
            keep()
    finally:
        restore()
    return before - after


def run_trials(
    model,
    policy: Policy,
    losses: dict[str, float],
    cycle: int,
    *,
    night_rows: Callable[[str], list],
    select_rows: dict[str, list],
    settings,
    restore: Callable[[], None],
    say: Callable[[str], None] = lambda _m: None,
    steps: int = TRIAL_STEPS,
    keep: Callable[[str], None] | None = None,
) -> Trials:
    """Trial the sources the policy asks for; tell it each one's progress.

    `night_rows(source)` gives the encoded rows that source's night would train (asked only for the
    sources trialled), `settings` the night's training settings, `select_rows` every source's encoded
    selection split. Pass `keep` only for whole-night trials: `keep(source)` is called with each trial's
    adapter in place, and the policy is told the trials are the nights themselves.
    """
    tic = time.time()
    before = sum(losses.values()) / len(losses)
    progress: dict[str, float] = {}
    wanted = {
        name: rows for name in policy.trials_wanted(losses, cycle, whole=keep is not None) if (rows := night_rows(name))
    }
    if wanted:
        what = "the whole night" if keep else f"the first {steps} training steps"
        say(f"trials of {', '.join(wanted)}: {what} of each one's night, measured, then undone")
    for name, rows in wanted.items():
        progress[name] = trial(
            model,
            rows,
            settings,
            {k: select_rows[k] for k in losses},
            before,
            restore,
            steps,
            (lambda name=name: keep(name)) if keep else None,
        )
        policy.observe_trial(name, progress[name], whole=keep is not None)
    if progress:
        say(
            "trial progress: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in progress.items())
            + f" in {time.time() - tic:.0f} s"
        )
    return Trials(progress, time.time() - tic)
