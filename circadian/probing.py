"""Probes: the first few training steps of the night a source would get, measured, then undone.

A policy that wants to know what a source would teach without spending a night on it (the bandit,
for sources it has too little evidence about) names them in `probes_wanted`; `cycles run` and the
nightly sleep run them here before the choice. A probe trains the first PROBE_STEPS steps of that
source's night: the rows the night would train (`night_rows(source)`), with the night's settings
(batch size, learning-rate schedule, seed), so it shares the night's sampling luck rather than adding
its own. In `cycles run` on the torch backend it is exactly the night stopped after PROBE_STEPS steps
(tested); the nightly sleep probes each source's whole train split with the night's settings, close
to the night it would run (which adds anchors to some sources). It then measures the mean
*selection* loss over all sources (the same learning progress a night is rewarded with, so no eval
row is ever seen), and restores the adapter it started from.

A probe as long as the night (`cycles run --probe-steps`, at least the budget's steps) *is* that
night: `keep` then saves its adapter, so the chosen source's night (and with `--oracle`, every
source's) is taken from its probe instead of being trained again.

An earlier probe trained 2 steps on 8 rows of its own; bench/cycles/PROBE_QUALITY.md compares the two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from circadian.policies import Policy

PROBE_STEPS = 2


@dataclass
class Probes:
    progress: dict[str, float]
    seconds: float

    def as_dict(self) -> dict:
        return {"progress": self.progress, "seconds": round(self.seconds, 1)}


def probe(model, rows: list, settings, select_rows: dict[str, list], before: float, restore: Callable[[], None],
          steps: int = PROBE_STEPS, keep: Callable[[], None] | None = None) -> float:
    """Train the first `steps` steps of a night on `rows` with `settings`; return the decrease of the mean
    selection loss (from `before`), with the adapter restored (after `keep()`, which may save it)."""
    from circadian.evaluate import mean_loss

    try:
        model.train(rows, [], settings.model_copy(update={"max_steps": steps, "max_epochs": 10**6, "eval_every": 10**6,
                                                          "min_steps": 0}), lambda _e: None)
        after = sum(mean_loss(model, split) for split in select_rows.values()) / len(select_rows)
        if keep:
            keep()
    finally:
        restore()
    return before - after


def run_probes(model, policy: Policy, losses: dict[str, float], cycle: int, *, night_rows: Callable[[str], list],
               select_rows: dict[str, list], settings, restore: Callable[[], None],
               say: Callable[[str], None] = lambda _m: None, steps: int = PROBE_STEPS,
               keep: Callable[[str], None] | None = None) -> Probes:
    """Probe the sources the policy asks for; tell it each one's progress. `night_rows(source)` gives the
    encoded rows that source's night would train (asked only for the sources probed), `settings` the
    night's training settings, `select_rows` every source's encoded selection split. Pass `keep` only for
    whole-night probes: `keep(source)` is called with each probe's adapter in place, and the policy is
    told the probes are the nights themselves."""
    tic = time.time()
    before = sum(losses.values()) / len(losses)
    progress: dict[str, float] = {}
    wanted = {name: rows for name in policy.probes_wanted(losses, cycle, whole=keep is not None)
              if (rows := night_rows(name))}
    if wanted:
        say(f"probing {', '.join(wanted)}: the first {steps} training steps of each one's night, measured, then undone")
    for name, rows in wanted.items():
        progress[name] = probe(model, rows, settings, {k: select_rows[k] for k in losses}, before, restore, steps,
                               (lambda name=name: keep(name)) if keep else None)
        policy.observe_probe(name, progress[name], whole=keep is not None)
    if progress:
        say("probe progress: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in progress.items()) + f" in {time.time() - tic:.0f} s")
    return Probes(progress, time.time() - tic)
