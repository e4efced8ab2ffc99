"""`circadian cycles run`: repeated train + eval cycles where a policy picks each cycle's source.

An experiment runs in its own folder, `data/runs/experiments/<experiment>/` (its adapters chain
there; the home's CURRENT is never touched), from the home's current adapter and a snapshot of
its data split into sources (sources.py). Each cycle:

1. scores every source's *selection* split under the current model (candidate losses);
2. the policy chooses a source (one line in `data/runs/choice_log.jsonl`), after probing the
   sources it asks to (trials.py; the bandit does, for sources it knows too little about);
3. trains on a budget-sized sample of the chosen source's *train* split, continuing the adapter;
   with `--oracle`, every source is trained from the same checkpoint, same budget and seed, so the
   true per-cycle best is known (the policy still only sees its own choice); each of those nights is
   measured on the eval splits (the oracle's reward) and on the selection splits (what a policy that
   trained every source could have chosen by, leak-free);
4. measures the *eval* split of every source, general perplexity, and the policy's reward (the
   decrease of the mean selection loss), and logs one line in `data/runs/run_log.jsonl`.

Recall (held-out wordings of the facts in the eval splits) and the capability harness are asked at
cycle 0 and after the last cycle.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from circadian import __version__
from circadian.night import dataset, distill, evaluate, policies, sources, trials
from circadian.store import adapters, inbox, memories
from circadian.backends import LoadRequest, select_backend
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, atomic_write_json
from circadian.backends.resolve import resolve_model
from circadian.core.paths import Paths
from circadian.backends.tokens import encode_chat
from circadian.core.clock import now_iso


@dataclass(frozen=True)
class Budget:
    steps: int
    batch_size: int
    rows: int


BUDGETS = {"tiny": Budget(2, 2, 4), "small": Budget(6, 4, 24), "medium": Budget(16, 8, 96)}


def experiment_dir(paths: Paths) -> Path:
    return paths.runs / "experiments"


def _rows_sha(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([r["messages"] for r in rows], sort_keys=True).encode()).hexdigest()


@dataclass
class Setup:
    """A model loaded at the home's current adapter and the home's data split into sources, encoded."""

    model: object
    backend: str
    resolved: object
    start: tuple
    pools: dict
    encoded: dict[str, dict[str, list]]
    end: int


def load_sources(paths: Paths, config: Config, *, only: list[str] | None = None, end: int | None = None,
                 say: Callable[[str], None] = print) -> Setup:
    """Load the model at the home's current adapter; split the memories (up to byte `end`), the inbox
    and the distilled general rows into sources, each split encoded."""
    end = end if end is not None else paths.memories.stat().st_size if paths.memories.exists() else 0
    scan = memories.scan(paths, end=end)
    selection = dataset.select(scan.records, trained=adapters.trained_ids(paths), forgotten=memories.forgotten_ids(paths))
    backend = select_backend(config.model.backend)
    resolved = resolve_model(config.model, paths.models, say=say)
    active = adapters.active_adapter(paths)
    start = (active.path, active.version) if active and active.manifest.backend == backend.name else (None, None)
    model = backend.load(LoadRequest(resolved.name, resolved.path, config.model.device, config.model.dtype,
                                     config.model.quantize, *start))
    general = distill.distilled_rows(model, lambda: model.set_adapter(*start), paths.models / "distill_cache", resolved.path,
                                  config.sleep.distill_prompts)
    for entry in inbox.ingest(paths, settle_seconds=config.sleep.inbox_settle_seconds):
        say(f"inbox: {entry['name']} queued as {entry['id']} ({entry['rows']} rows)")
    queued = inbox.queued(paths)
    ctx = sources.Context(selection, [m for e in queued for m in inbox.load_rows(paths, e)], general,
                          config.sleep.redact_region)
    pools = sources.build_all(ctx, only)
    if not pools:
        raise CircadianError("no source has enough data for an experiment (each needs rows in train, select and eval)")
    encoded = {name: {split: [encode_chat(model.tokenizer, r["messages"], config.train.max_length)
                              for r in src.split(split)] for split in sources.SPLITS} for name, src in pools.items()}
    return Setup(model, backend.name, resolved, start, pools, encoded, end)


def budget_settings(config: Config, plan: Budget):
    """The training settings of one cycle's night: exactly `plan.steps` steps, no validation."""
    return config.train.model_copy(update={"max_steps": plan.steps, "max_epochs": 10**6, "batch_size": plan.batch_size,
                                           "eval_every": 10**6, "min_steps": 0, "warmup_steps": 1})


def night_sample(rows: list, plan: Budget, sample_key: str) -> list:
    """The rows one cycle's night trains: `plan.rows` rows sampled (seeded by `sample_key`) from `rows`."""
    return random.Random(sample_key).sample(rows, min(plan.rows, len(rows)))


def train_night(model, rows: list, settings, plan: Budget, sample_key: str, seed: int):
    """Train one cycle's night on `night_sample(rows, plan, sample_key)` with the training seed `seed`."""
    return model.train(night_sample(rows, plan, sample_key), [], settings.model_copy(update={"seed": seed}), lambda e: None)


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def run_experiment(paths: Paths, config: Config, *, n: int, policy_spec: str, seed: int = 0, budget: str = "small",
               oracle: bool = False, only: list[str] | None = None, say: Callable[[str], None] = print,
               generate: bool = True, trial_steps: int | None = None) -> dict:
    """Run `n` cycles with the policy; return the experiment's summary (also in experiment.json).
    `trial_steps` (default trials.TRIAL_STEPS, at most the budget's steps): how long the policy's trials
    are; trials as long as the night are kept and stand in for the nights they equal."""
    policy = policies.make(policy_spec, seed)
    plan = BUDGETS[budget]
    trial_steps = min(trial_steps or trials.TRIAL_STEPS, plan.steps)
    whole_night_trials = trial_steps == plan.steps
    known = sources.builders()
    for name in [*(only or []), *([policy_spec[6:]] if policy_spec.startswith("fixed:") else [])]:
        if name not in known:
            raise CircadianError(f"unknown source {name!r} (known: {', '.join(sorted(known))})")
    started = datetime.now().astimezone()
    experiment = f"{started.strftime('%Y%m%d-%H%M%S')}-{policy_spec.replace(':', '-')}-s{seed}"
    folder = experiment_dir(paths) / experiment

    setup = load_sources(paths, config, only=only, say=say)
    model, pools, encoded, start, end = setup.model, setup.pools, setup.encoded, setup.start, setup.end
    say(f"experiment {experiment}: policy {policy_spec}, seed {seed}, budget {budget} {plan}, "
        f"{'with oracle, ' if oracle else ''}from {start[1] or 'the base model'}")
    if policy_spec.startswith("fixed:") and policy_spec[6:] not in pools:
        raise CircadianError(f"source {policy_spec[6:]!r} has no data here (available: {', '.join(pools)})")
    folder.mkdir(parents=True, mode=0o700)
    tok = model.tokenizer
    probes = [p for src in pools.values() for p in src.probes()]
    capability = evaluate.load_capability()
    general_ex = evaluate.general_examples(tok)
    say("sources: " + ", ".join(f"{k} {len(v.train)}/{len(v.select)}/{len(v.eval)}" for k, v in pools.items())
        + " rows (train/select/eval)")

    settings = budget_settings(config, plan)
    manifest = {
        "experiment": experiment, "policy": policy_spec, "seed": seed, "budget": budget, "budget_detail": plan.__dict__,
        "oracle": oracle, "trial_steps": trial_steps, "n": n, "started": started.isoformat(timespec="seconds"),
        "start_adapter": start[1],
        "backend": setup.backend, "model": setup.resolved.name, "model_identity": distill.model_identity(setup.resolved.path),
        "train_settings": settings.model_dump(), "memories_end_offset": end,
        "sources": {k: {s: {"rows": len(v.split(s)), "sha256": _rows_sha(v.split(s))} for s in sources.SPLITS}
                    for k, v in pools.items()},
        "versions": {"circadian": __version__, "python": platform.python_version(), **_package_versions()},
    }
    atomic_write_json(folder / "experiment.json", manifest)

    def losses(split: str) -> dict[str, float]:
        return {k: evaluate.mean_loss(model, encoded[k][split]) for k in pools}

    def generated() -> dict:
        if not generate:
            return {}
        recall = evaluate.ask_all(model, probes, key="question", max_tokens=config.sleep.probe_max_tokens)
        cap = evaluate.ask_all(model, capability, key="prompt", max_tokens=config.sleep.capability_max_tokens)
        return {"recall": recall["score"], "capability": cap["score"],
                "recall_by_source": {k: _hit_share(recall["items"], {p["question"] for p in pools[k].probes()})
                                     for k in pools if pools[k].probes()}}

    def train_on(name: str, cycle: int):
        return train_night(model, encoded[name]["train"], settings, plan, f"{seed}:{cycle}:{name}", seed * 1000 + cycle)

    position = start
    select_now, eval_now = losses("select"), losses("eval")
    base_ppl = evaluate.perplexity(model, general_ex)
    cycle0 = {"select_losses": select_now, "eval_losses": eval_now, "perplexity": base_ppl, **generated()}
    atomic_write_json(folder / "cycle0.json", cycle0)
    say(f"cycle 0: eval loss {_mean(eval_now.values()):.3f}, perplexity {base_ppl:.2f}"
        + (f", recall {cycle0['recall']:.0%}, capability {cycle0['capability']:.0%}" if generate else ""))
    history = []
    branches = folder / "branches"  # whole-night trials, kept for the nights they equal (this cycle only)
    for cycle in range(1, n + 1):
        tic = time.time()
        cycle_id = f"{experiment}-c{cycle:02d}"
        kept: set[str] = set()

        def keep(name: str) -> None:
            model.save_adapter(branches / name)
            kept.add(name)

        def night_on(name: str) -> None:
            """Put in place the night on `name` from `position`: its whole-night trial, else trained now."""
            if name in kept:
                model.set_adapter(branches / name, f"{cycle_id}-{name}")
            else:
                model.set_adapter(*position)
                train_on(name, cycle)

        tried = trials.run_trials(model, policy, select_now, cycle,
                                    night_rows=lambda k: night_sample(encoded[k]["train"], plan, f"{seed}:{cycle}:{k}"),
                                    select_rows={k: v["select"] for k, v in encoded.items()},
                                    settings=settings.model_copy(update={"seed": seed * 1000 + cycle}),
                                    restore=lambda: model.set_adapter(*position), say=say, steps=trial_steps,
                                    keep=keep if whole_night_trials else None)
        choice = policy.choose(select_now, cycle)
        rewards = oracle_progress = None
        eval_after = select_after = None
        if oracle:  # the chosen source last: its branch is where the experiment goes on, already measured
            rewards, oracle_progress, after_eval, after_select = {}, {}, {}, {}
            for name in sorted(pools, key=lambda k: k == choice.source):
                night_on(name)
                after_eval[name], after_select[name] = losses("eval"), losses("select")
                rewards[name] = _mean(eval_now.values()) - _mean(after_eval[name].values())
                oracle_progress[name] = _mean(select_now.values()) - _mean(after_select[name].values())
            eval_after, select_after = after_eval[choice.source], after_select[choice.source]
        else:
            night_on(choice.source)
        model.save_adapter(folder / "adapters" / f"c{cycle:02d}")
        shutil.rmtree(branches, ignore_errors=True)
        position = (folder / "adapters" / f"c{cycle:02d}", f"{experiment}-c{cycle:02d}")
        model.set_adapter(*position)
        select_after = select_after or losses("select")
        eval_after = eval_after or losses("eval")
        progress = _mean(select_now.values()) - _mean(select_after.values())
        policy.update(choice.source, progress)
        chosen_reward = _mean(eval_now.values()) - _mean(eval_after.values())
        ppl = evaluate.perplexity(model, general_ex)
        append_jsonl(paths.choice_log, [{
            "cycle_id": cycle_id, "run_type": policy_spec, "experiment": experiment, "cycle": cycle, "seed": seed,
            "candidate_losses": select_now, "chosen": choice.source, "reason": choice.reason,
            "loss_regret": select_now[choice.source] - min(select_now.values()),
            **({"trials": tried.as_dict()} if tried.progress else {}), "ts": now_iso()}])
        line = {"cycle_id": cycle_id, "run_type": policy_spec, "experiment": experiment, "cycle": cycle, "seed": seed,
                "budget": budget, "chosen": choice.source, "reward": chosen_reward, "progress": progress,
                "oracle_rewards": rewards, "oracle_progress": oracle_progress, "select_losses": select_after,
                "eval_losses": eval_after,
                "eval_loss": _mean(eval_after.values()), "perplexity": ppl, "perplexity_drift": ppl / base_ppl - 1,
                "seconds": round(time.time() - tic, 1), "outcome": "trained", "logged_at": now_iso()}
        if cycle == n:
            line.update(generated())
        append_jsonl(paths.run_log, [line])
        history.append(line)
        best = f", oracle best {max(rewards, key=rewards.get)} {max(rewards.values()):+.4f}" if rewards else ""
        say(f"cycle {cycle}/{n}: chose {choice.source} ({choice.reason}); reward {chosen_reward:+.4f}{best}; "
            f"perplexity {ppl:.2f} ({ppl / base_ppl - 1:+.1%}), {line['seconds']:.0f} s")
        select_now, eval_now = select_after, eval_after
    summary = {**manifest, "ended": now_iso(), "cycle0": cycle0, "final": history[-1] if history else None,
               "policy_state": policy.state}
    atomic_write_json(folder / "experiment.json", summary)
    return summary


def _hit_share(items: list[dict], questions: set[str]) -> float | None:
    hits = [i["hit"] for i in items if i["question"] in questions]
    return sum(hits) / len(hits) if hits else None


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "mlx", "mlx-lm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
