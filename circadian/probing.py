"""Probes: a few training steps on one source from the current adapter, measured, then undone.

A policy that wants to know what a source would teach without spending a night on it (the bandit,
for sources it has too little evidence about) names them in `probes_wanted`; `cycles run` and the
nightly sleep run them here before the choice. A probe trains PROBE_STEPS steps of PROBE_BATCH rows
sampled from the source's *train* split, measures the mean *selection* loss over all sources (the
same learning progress a night is rewarded with, so no eval row is ever seen), and restores the
adapter it started from.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from circadian.policies import Policy

PROBE_STEPS = 2
PROBE_BATCH = 4


@dataclass
class Probes:
    progress: dict[str, float]
    seconds: float

    def as_dict(self) -> dict:
        return {"progress": self.progress, "seconds": round(self.seconds, 1)}


def run_probes(model, policy: Policy, losses: dict[str, float], cycle: int, *, train_rows: Callable[[str], list],
               select_rows: dict[str, list], settings, restore: Callable[[], None], seed: int,
               say: Callable[[str], None] = lambda _m: None) -> Probes:
    """Probe the sources the policy asks for; tell it each one's progress. `train_rows(source)` gives a
    source's encoded train rows (asked only for the sources probed); `select_rows` every source's."""
    from circadian.evaluate import mean_loss

    tic = time.time()
    before = sum(losses.values()) / len(losses)
    progress: dict[str, float] = {}
    wanted = {name: rows for name in policy.probes_wanted(losses, cycle) if (rows := train_rows(name))}
    if wanted:
        say(f"probing {', '.join(wanted)}: {PROBE_STEPS} training steps each, measured, then undone")
    for name, rows in wanted.items():
        sample = random.Random(f"probe:{seed}:{cycle}:{name}").sample(rows, min(PROBE_STEPS * PROBE_BATCH, len(rows)))
        try:
            model.train(sample, [], settings.model_copy(update={
                "max_steps": PROBE_STEPS, "batch_size": PROBE_BATCH, "max_epochs": 10**6, "eval_every": 10**6,
                "min_steps": 0, "warmup_steps": 1, "seed": seed * 1000 + cycle}), lambda _e: None)
            after = sum(mean_loss(model, select_rows[k]) for k in losses) / len(losses)
        finally:
            restore()
        progress[name] = before - after
        policy.observe_probe(name, progress[name])
    if progress:
        say("probe progress: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in progress.items()) + f" in {time.time() - tic:.0f} s")
    return Probes(progress, time.time() - tic)
