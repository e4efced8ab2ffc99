"""Policies that choose tonight's data source.

- `self`: the source whose selection-split loss under the current model is highest ("has most to
  teach"), the loss-level rule;
- `fixed:SOURCE`: always the same source;
- `random`: a seeded, reproducible uniform choice;
- `bandit`: a discounted bandit on learning progress (the decrease of the mean selection loss over
  all sources after training on the chosen one, rescaled by the largest recent reward, after Graves
  et al. 2017), so it follows which source *helps*, not which one is hard; the discount forgets old
  nights because the best source changes as the model learns. It explores by probes (probing.py:
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

from circadian.errors import CircadianError

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

    def probes_wanted(self, losses: dict[str, float], cycle: int, whole: bool = False) -> list[str]:
        """Sources to probe before `choose` of the same cycle (probing.py; `whole`: each probe would be the
        whole night); only the bandit wants any."""
        return []

    def observe_probe(self, source: str, progress: float, whole: bool = False) -> None:
        """A probe's learning progress on `source` (called by probing.run_probes); `whole`: the probe was
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


class Bandit(Policy):
    """A recovering bandit on rescaled learning progress that explores by probing the night's first steps.

    The evidence about a source is its discounted rewards: whole nights and probes (the first steps of
    the very night the source would get, probing.py; scaled to nights by the ratio seen when a probed
    source was then trained). What a source teaches depends on when it was last trained (a recovering
    bandit, after Pike-Burke and Grunewalder 2019): on the bench, a source trained the night before
    teaches about nothing the next night and recovers after a night or two off (bench/cycles/RESULTS.md).
    So every reward is filed under the source's state when it was earned, `fresh` (never trained),
    `tired` (trained the night before) or `rested`, and a source is judged by the evidence of the state
    it is in now.

    Late in a run every source teaches little and one night's luck (which rows, which seed) decides
    as much as the source does (bench/cycles/NOISE_CEILING.md). A probe shares that luck with the
    night it starts, so tonight's probes are the best evidence there is: the discount is steep and a
    source with less than a night's worth of recent evidence in its present state is probed before the
    choice (`probes_wanted`; most sources, most nights). Probes as long as the whole night
    (`cycles run --probe-steps`) are that night itself, measured on the selection splits: every source
    gets one, and the bandit takes the best, since its older evidence is about other nights
    (bench/cycles/FULL_INFORMATION.md). Without probes (a runner that
    cannot run them), every source is tried once, highest selection loss first, and a state with no
    evidence borrows the source's other evidence.
    """

    gamma = 0.5          # discount per night: what the model needs changes fast, and tonight's probe knows most
    bonus = 0.05         # exploration weight: the probes explore, this only breaks near-ties toward thin evidence
    probe_weight = 1.0   # a probe (the night's first steps, scaled to nights) weighs as much as a night
    stale = 1.0          # below a night's worth of recent evidence in its present state, a source is probed

    def _walk(self) -> tuple[list[tuple[str, float, str, int | None, int, str]], dict[str, str]]:
        """Return the entries (source, reward, kind, cycle, age, arm state) and every trained source's state now.

        age = nights logged after the entry; old entries [s, r] are nights. A probe belongs to the cycle
        of the night that follows it, so it sees the same arm state as that night."""
        rows = [(h[0], h[1], h[2] if len(h) > 2 else "night", h[3] if len(h) > 3 else None)
                for h in self.state.get("history", [])]
        last, trained, states = None, set(), []
        for source, _reward, kind, _cycle in rows:
            states.append(arm_state(source, last, trained))
            if kind == "night":
                last = source
                trained.add(source)
        out, nights_after = [], 0
        for (source, reward, kind, cycle), state in zip(reversed(rows), reversed(states)):
            out.append((source, reward, kind, cycle, nights_after, state))
            nights_after += kind == "night"
        return out[::-1], {s: "tired" if s == last else "rested" for s in trained}

    def _probe_scale(self, entries) -> float:
        """Nights per probe: least squares through the origin over (probe, night) pairs of one source and cycle."""
        probes = {(s, c): r for s, r, k, c, _a, _st in entries if k == "probe" and c is not None}
        pairs = [(probes[(s, c)], r) for s, r, k, c, _a, _st in entries if k == "night" and (s, c) in probes]
        sxx = sum(p * p for p, _n in pairs)
        return min(20.0, max(0.25, sum(p * n for p, n in pairs) / sxx)) if sxx > 0 else 1.0

    def _evidence(self, sources) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
        """Per source: discounted weight and mean reward (night units, rescaled) of its present state's
        evidence, or of all its evidence when that state has none (marked "borrowed"); and its state."""
        entries, now = self._walk()
        factor = self._probe_scale(entries)
        values = [(s, r * factor if k == "probe" else r, k, a, st) for s, r, k, _c, a, st in entries]
        scale = max([abs(v) for _s, v, _k, _a, _st in values[-20:]] + [1e-6])  # the largest recent: no ties at the top
        weights: dict[str, float] = {}
        means: dict[str, float] = {}
        states: dict[str, str] = {}
        for source in sources:
            state = now.get(source, "fresh")
            for label, keep in ((state, lambda st, state=state: st == state), ("borrowed", lambda st: True)):
                own = [(self.gamma ** a * (self.probe_weight if k == "probe" else 1.0), v)
                       for s, v, k, a, st in values if s == source and keep(st)]
                if own:
                    weights[source] = sum(w for w, _v in own)
                    means[source] = sum(w * v for w, v in own) / weights[source] / scale
                    states[source] = state if label == state else f"{state}, borrowed"
                    break
        return weights, means, states

    def probes_wanted(self, losses: dict[str, float], cycle: int, whole: bool = False) -> list[str]:
        self.state["cycle"] = cycle
        if whole:  # tonight's nights themselves: worth having for every source
            return sorted(losses)
        weights, _means, states = self._evidence(losses)
        return [s for s in sorted(losses) if "borrowed" in states.get(s, "") or weights.get(s, 0.0) < self.stale]

    def observe_probe(self, source: str, progress: float, whole: bool = False) -> None:
        self.state.setdefault("history", []).append([source, progress, "probe", self.state.get("cycle")])
        self.state.setdefault("whole_night_probes", {}).update({source: progress} if whole else {})

    def update(self, source: str, reward: float) -> None:
        self.state.setdefault("history", []).append([source, reward, "night", self.state.get("cycle")])

    def choose(self, losses, cycle):
        tonight = self.state.pop("whole_night_probes", None) or {}
        self.state["cycle"] = cycle
        if set(tonight) == set(losses):  # every source's night measured already: nothing else knows tonight as well
            best = max(sorted(tonight), key=lambda k: tonight[k])
            return Choice(best, f"whole-night probes: the night on {best} lowered the selection loss most "
                                f"({tonight[best]:+.3f})")
        weights, means, labels = self._evidence(losses)
        untried = [s for s in sorted(losses, key=lambda k: -losses[k]) if s not in means]
        if untried:
            return Choice(untried[0], "not tried yet (highest selection loss among untried)")
        total = sum(weights.values())
        scores = {s: means[s] + self.bonus * math.sqrt(2 * math.log(max(total, 1.0001)) / max(weights[s], 0.1))
                  for s in losses}
        best = max(sorted(scores), key=lambda k: scores[k])
        probes = sum(1 for h in self.state.get("history", []) if len(h) > 2 and h[2] == "probe")
        return Choice(best, f"score {scores[best]:.2f} ({labels[best]}: mean progress {means[best]:+.2f}, "
                            f"weight {weights[best]:.1f} of {total:.1f}; {len(self.state.get('history', [])) - probes} "
                            f"nights and {probes} probes in all)")


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
