"""Policies that choose tonight's data source.

- `self`: the source whose selection-split loss under the current model is highest ("has most to
  teach"), the loss-level rule;
- `fixed:SOURCE`: always the same source;
- `random`: a seeded, reproducible uniform choice;
- `bandit`: a discounted bandit on learning progress (the decrease of the mean selection loss over
  all sources after training on the chosen one, rescaled by the largest recent reward, after Graves
  et al. 2017), so it follows which source *helps*, not which one is hard; the discount forgets old
  nights because the best source changes as the model learns. It explores by trials (trials.py:
  the first steps of the night a source would get, measured the same way, then undone) rather than
  by whole nights on sources that may teach nothing, and it judges a source by its state (never
  trained, trained the night before, or rested), because a source just trained has little left to
  teach.

A policy's state is a JSON-able dict, so the nightly sleep can keep it between nights.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from circadian.core.errors import CircadianError

NAMES = ("self", "random", "bandit", "fixed:SOURCE")


def arm_state(source: str, last: str | None, trained: set[str]) -> str:
    """A source's state before a night: fresh (never trained), tired (trained the night before) or rested."""
    return "fresh" if source not in trained else "tired" if source == last else "rested"


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

    def trials_wanted(self, losses: dict[str, float], cycle: int, whole: bool = False) -> list[str]:
        """Sources to trial before `choose` of the same cycle (trials.py; `whole`: each trial would be the
        whole night); only the bandit wants any."""
        return []

    def observe_trial(self, source: str, progress: float, whole: bool = False) -> None:
        """A trial's learning progress on `source` (called by trials.run_trials); `whole`: the trial was
        the whole night the source would get."""


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


@dataclass(frozen=True)
class Evidence:
    """One reward the bandit has seen: a whole night on a source, or a trial (its first steps, trials.py).

    `age` is how many nights were logged after it, `state` the source's state when it was earned.
    """

    source: str
    reward: float
    kind: str  # "night" | "trial"
    cycle: int | None
    age: int = 0
    state: str = "fresh"


def _history(state: dict) -> list[tuple[str, float, str, int | None]]:
    """The bandit's saved history as (source, reward, kind, cycle): [source, reward] rows of the first
    version are nights, and rows saved as kind "probe" (before trials had their name) are trials."""
    rows = []
    for h in state.get("history", []):
        kind = h[2] if len(h) > 2 else "night"
        rows.append((h[0], h[1], "trial" if kind == "probe" else kind, h[3] if len(h) > 3 else None))
    return rows


class Bandit(Policy):
    """A recovering bandit on rescaled learning progress that explores by trials.

    Evidence about a source is its discounted rewards, nights and trials (scaled to nights by the ratio
    seen when a trialled source was then trained), filed under the source's state when earned (`fresh`,
    `tired`, `rested`: a recovering bandit, after Pike-Burke and Grunewalder 2019); a source is judged by
    the evidence of the state it is in now. A source with less than a night's worth of recent evidence in
    its present state is trialled before the choice (`trials_wanted`). When every source has a
    whole-night trial tonight, the bandit takes the best of them. Without trials, every source is tried
    once, highest selection loss first. Why these parameters: bench/cycles/RESULTS.md.
    """

    gamma = 0.5  # discount per night: what the model needs changes fast, and tonight's trial knows most
    bonus = 0.05  # exploration weight: the trials explore, this only breaks near-ties toward thin evidence
    trial_weight = 1.0  # a trial (the night's first steps, scaled to nights) weighs as much as a night
    stale = 1.0  # below a night's worth of recent evidence in its present state, a source is trialled

    def _walk(self) -> tuple[list[Evidence], dict[str, str]]:
        """Return the evidence (with ages and arm states) and every trained source's state now.

        A trial belongs to the cycle of the night that follows it, so it sees that night's arm state."""
        rows = _history(self.state)
        last, trained, states = None, set(), []
        for source, _reward, kind, _cycle in rows:
            states.append(arm_state(source, last, trained))
            if kind == "night":
                last = source
                trained.add(source)
        out, nights_after = [], 0
        for (source, reward, kind, cycle), state in zip(reversed(rows), reversed(states)):
            out.append(Evidence(source, reward, kind, cycle, nights_after, state))
            nights_after += kind == "night"
        return out[::-1], {s: "tired" if s == last else "rested" for s in trained}

    def _trial_scale(self, entries: list[Evidence]) -> float:
        """Nights per trial: least squares through the origin over (trial, night) pairs of one source and cycle."""
        trials = {(e.source, e.cycle): e.reward for e in entries if e.kind == "trial" and e.cycle is not None}
        pairs = [
            (trials[(e.source, e.cycle)], e.reward)
            for e in entries
            if e.kind == "night" and (e.source, e.cycle) in trials
        ]
        sxx = sum(p * p for p, _n in pairs)
        return min(20.0, max(0.25, sum(p * n for p, n in pairs) / sxx)) if sxx > 0 else 1.0

    def _evidence(self, sources) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
        """Per source: discounted weight and mean reward (night units, rescaled) of its present state's
        evidence, or of all its evidence when that state has none (marked "borrowed"); and its state."""
        entries, now = self._walk()
        factor = self._trial_scale(entries)
        values = [(e, e.reward * factor if e.kind == "trial" else e.reward) for e in entries]
        scale = max([abs(v) for _e, v in values[-20:]] + [1e-6])  # the largest recent: no ties at the top
        weights: dict[str, float] = {}
        means: dict[str, float] = {}
        states: dict[str, str] = {}
        for source in sources:
            state = now.get(source, "fresh")
            for label, keep in ((state, lambda st, state=state: st == state), ("borrowed", lambda st: True)):
                own = [
                    (self.gamma**e.age * (self.trial_weight if e.kind == "trial" else 1.0), v)
                    for e, v in values
                    if e.source == source and keep(e.state)
                ]
                if own:
                    weights[source] = sum(w for w, _v in own)
                    means[source] = sum(w * v for w, v in own) / weights[source] / scale
                    states[source] = state if label == state else f"{state}, borrowed"
                    break
        return weights, means, states

    def trials_wanted(self, losses: dict[str, float], cycle: int, whole: bool = False) -> list[str]:
        self.state["cycle"] = cycle
        if whole:  # tonight's nights themselves: worth having for every source
            return sorted(losses)
        weights, _means, states = self._evidence(losses)
        return [s for s in sorted(losses) if "borrowed" in states.get(s, "") or weights.get(s, 0.0) < self.stale]

    def observe_trial(self, source: str, progress: float, whole: bool = False) -> None:
        self.state.setdefault("history", []).append([source, progress, "trial", self.state.get("cycle")])
        self.state.setdefault("whole_night_trials", {}).update({source: progress} if whole else {})

    def update(self, source: str, reward: float) -> None:
        self.state.setdefault("history", []).append([source, reward, "night", self.state.get("cycle")])

    def choose(self, losses, cycle):
        tonight = self.state.pop("whole_night_trials", None) or {}
        self.state["cycle"] = cycle
        if set(tonight) == set(losses):  # every source's night measured already: nothing else knows tonight as well
            best = max(sorted(tonight), key=lambda k: tonight[k])
            return Choice(
                best, f"whole-night trials: the night on {best} lowered the selection loss most ({tonight[best]:+.3f})"
            )
        weights, means, labels = self._evidence(losses)
        untried = [s for s in sorted(losses, key=lambda k: -losses[k]) if s not in means]
        if untried:
            return Choice(untried[0], "not tried yet (highest selection loss among untried)")
        total = sum(weights.values())
        scores = {
            s: means[s] + self.bonus * math.sqrt(2 * math.log(max(total, 1.0001)) / max(weights[s], 0.1))
            for s in losses
        }
        best = max(sorted(scores), key=lambda k: scores[k])
        trials = sum(1 for _s, _r, kind, _c in _history(self.state) if kind == "trial")
        return Choice(
            best,
            f"score {scores[best]:.2f} ({labels[best]}: mean progress {means[best]:+.2f}, "
            f"weight {weights[best]:.1f} of {total:.1f}; {len(self.state.get('history', [])) - trials} "
            f"nights and {trials} trials in all)",
        )


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
