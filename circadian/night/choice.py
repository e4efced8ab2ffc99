"""The nightly sleep's source choice, when `sleep.policy` is not "all".

Tonight's data is seen as sources (sources.py: today, replay, inbox, distill); the configured
policy (policies.py) picks one from the sources' selection-split losses under the current model
(after short trials of the sources it asks for, trials.py),
the choice is one line in `data/runs/choice_log.jsonl`, and only the chosen source is trained.
After training, the decrease of the mean selection loss is the policy's reward; the policy's
state (the bandit's history) is kept in `control/policy.json` between nights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from circadian.backends.tokens import encode_chat
from circadian.core.clock import now_iso
from circadian.core.fsutil import append_jsonl, atomic_write_json, read_jsonl
from circadian.core.paths import Paths
from circadian.night import policies, sources, trials
from circadian.night.dataset import Dataset, Plan, Selection
from circadian.night.lineage import is_distill
from circadian.store.records import ChoiceLine, Trials


@dataclass
class SourceChoice:
    """What the choice decided, and how to reward it after training."""

    policy: policies.Policy
    choice: policies.Choice
    losses: dict[str, float]
    encoded: dict[str, list]

    def mean_loss(self, model) -> float:
        from circadian.night.evaluate import mean_loss

        values = [mean_loss(model, rows) for rows in self.encoded.values()]
        return sum(values) / len(values)


def _state_path(paths: Paths):
    return paths.control / "policy.json"


def load_policy(paths: Paths, spec: str, seed: int) -> policies.Policy:
    try:
        saved = json.loads(_state_path(paths).read_text())
    except (OSError, ValueError):
        saved = {}
    return policies.make(spec, seed, saved.get(spec, {}))


def save_policy(paths: Paths, policy: policies.Policy) -> None:
    try:
        saved = json.loads(_state_path(paths).read_text())
    except (OSError, ValueError):
        saved = {}
    saved[policy.name] = policy.state
    atomic_write_json(_state_path(paths), saved)


def choose(
    paths: Paths,
    spec: str,
    model,
    settings,
    *,
    cycle_id: str,
    selection: Selection,
    inbox_rows: list,
    general: list[dict],
    region: str,
    plan: Plan,
    distill_per_row: float,
    restore: Callable[[], None],
    say: Callable[[str], None],
    trial_steps: int = trials.TRIAL_STEPS,
) -> tuple[SourceChoice, list[Dataset]]:
    """Score the sources, trial those the policy asks for, let it choose, log the choice; return it and
    the datasets to train. `settings` are the night's training settings (their seed seeds the policy)."""
    from circadian.night.evaluate import mean_loss

    pools = sources.build_all(sources.Context(selection, inbox_rows, general, region))
    policy = load_policy(paths, spec, settings.seed)
    encode = lambda rows: [encode_chat(model.tokenizer, r["messages"], settings.max_length) for r in rows]  # noqa: E731
    encoded = {k: encode(src.select) for k, src in pools.items()}
    losses = {k: mean_loss(model, rows) for k, rows in encoded.items()}
    count = sum(1 for line in read_jsonl(paths.choice_log) if line.value)
    tried = (
        trials.run_trials(
            model,
            policy,
            losses,
            count + 1,
            night_rows=lambda k: encode(pools[k].train),
            select_rows=encoded,
            settings=settings,
            restore=restore,
            say=say,
            steps=trial_steps,
        )
        if losses
        else None
    )
    choice = policy.choose(losses, count + 1) if losses else policies.Choice("none", "no source has data")
    append_jsonl(
        paths.choice_log,
        [
            ChoiceLine(
                cycle_id=cycle_id,
                run_type=spec,
                candidate_losses=losses,
                chosen=choice.source,
                reason=choice.reason,
                loss_regret=losses[choice.source] - min(losses.values()) if losses else None,
                trials=Trials(**tried.as_dict()) if tried and tried.progress else None,
                ts=now_iso(),
            ).row()
        ],
    )
    anchors = [r for r in plan.train if is_distill(r)]
    share = lambda n: anchors[: min(len(anchors), math.ceil(distill_per_row * n))]  # noqa: E731
    if choice.source == "today":
        datasets = [u for u in plan.datasets if u.name == "today"]
    elif choice.source == "inbox":
        datasets = [u for u in plan.datasets if u.queue_id]
    elif choice.source in pools:  # replay, distill, or a plug-in source: its own train/eval splits
        src = pools[choice.source]
        plain = [{**r, "lineage": {**r.get("lineage", {}), "generator": f"source:{choice.source}"}} for r in src.train]
        datasets = [Dataset(choice.source, plain + (share(len(plain)) if choice.source != "distill" else []), src.eval)]
    else:
        datasets = []
    return SourceChoice(policy, choice, losses, encoded), datasets
