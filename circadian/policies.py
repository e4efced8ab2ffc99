"""Policies that choose tonight's data source.

- `self`: the source whose selection-split loss under the current model is highest ("has most to
  teach"), the loss-level rule;
- `fixed:SOURCE`: always the same source;
- `random`: a seeded, reproducible uniform choice;
- `bandit`: discounted UCB on learning progress (the decrease of the mean selection loss over all
  sources after training on the chosen one, rescaled by the recent reward spread as in Graves et
  al. 2017), so it follows which source *helps*, not which one is hard; the discount forgets old
  nights because the best source changes as the model learns.

A policy's state is a JSON-able dict, so the nightly sleep can keep it between nights.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from circadian.errors import CircadianError

NAMES = ("self", "random", "bandit", "fixed:SOURCE")


@dataclass
class Choice:
    source: str
    reason: str


@dataclass
class Policy:
    """Base: `choose(losses, cycle)` and `update(source, reward)`; `state` is saved between cycles."""

    name: str
    seed: int = 0
    state: dict = field(default_factory=dict)

    def choose(self, losses: dict[str, float], cycle: int) -> Choice:
        raise NotImplementedError

    def update(self, source: str, reward: float) -> None:
        self.state.setdefault("history", []).append([source, reward])


class SelfChoice(Policy):
    def choose(self, losses, cycle):
        source = max(sorted(losses), key=lambda k: losses[k])
        return Choice(source, f"highest selection loss ({losses[source]:.3f}): most to teach")


class Fixed(Policy):
    def __init__(self, source: str, seed: int = 0, state: dict | None = None):
        super().__init__(f"fixed:{source}", seed, state or {})
        self.source = source

    def choose(self, losses, cycle):
        if self.source not in losses:
            raise CircadianError(f"fixed source {self.source!r} has no data (available: {', '.join(sorted(losses))})")
        return Choice(self.source, "fixed")


class RandomChoice(Policy):
    def choose(self, losses, cycle):
        rng = random.Random(f"{self.seed}:{cycle}")
        return Choice(rng.choice(sorted(losses)), f"seeded random (seed {self.seed}, cycle {cycle})")


class Bandit(Policy):
    """Discounted UCB1 on rescaled learning progress."""

    gamma = 0.9   # discount per cycle: a night 7 cycles ago weighs 0.48
    bonus = 0.3   # exploration weight (nights are expensive: explore little)

    def _scale(self) -> float:
        rewards = sorted(abs(r) for _s, r in self.state.get("history", [])[-20:])
        return max(rewards[int(0.8 * (len(rewards) - 1))], 1e-6) if rewards else 1.0

    def choose(self, losses, cycle):
        history = self.state.get("history", [])
        tried = {s for s, _r in history}
        untried = [s for s in sorted(losses, key=lambda k: -losses[k]) if s not in tried]
        if untried:
            return Choice(untried[0], "not tried yet (highest selection loss among untried)")
        scale, n = self._scale(), len(history)
        counts: dict[str, float] = {}
        sums: dict[str, float] = {}
        for age, (source, reward) in enumerate(reversed(history)):
            weight = self.gamma ** age
            counts[source] = counts.get(source, 0.0) + weight
            sums[source] = sums.get(source, 0.0) + weight * max(-1.0, min(1.0, reward / scale))
        total = sum(counts.values())
        scores = {}
        for source in losses:
            c = counts.get(source, 1e-9)
            scores[source] = sums.get(source, 0.0) / max(c, 1e-9) + self.bonus * math.sqrt(2 * math.log(max(total, 1.0001)) / max(c, 1e-9))
        best = max(sorted(scores), key=lambda k: scores[k])
        return Choice(best, f"discounted UCB {scores[best]:.2f} (mean progress {sums.get(best, 0) / counts.get(best, 1):+.2f}, "
                            f"weight {counts.get(best, 0):.1f} of {total:.1f}, {n} rewards)")


def make(spec: str, seed: int = 0, state: dict | None = None) -> Policy:
    """Given "self", "random", "bandit" or "fixed:SOURCE", return the policy."""
    state = state or {}
    if spec == "self":
        return SelfChoice("self", seed, state)
    if spec == "random":
        return RandomChoice("random", seed, state)
    if spec == "bandit":
        return Bandit("bandit", seed, state)
    if spec.startswith("fixed:") and spec[6:]:
        return Fixed(spec[6:], seed, state)
    raise CircadianError(f"unknown policy {spec!r} (use one of: {', '.join(NAMES)})")
