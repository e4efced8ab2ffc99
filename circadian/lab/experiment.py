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

import contextlib
import hashlib
import json
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from circadian import __version__
from circadian.backends import LoadRequest, select_backend
from circadian.backends.resolve import resolve_base
from circadian.backends.tokens import encode_chat
from circadian.core.clock import now_iso
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.figures import figure
from circadian.core.fsutil import append_jsonl, atomic_write_json
from circadian.core.paths import Paths
from circadian.night import dataset, distill, evaluate, policies, sources, trials
from circadian.store import adapters, inbox, memories
from circadian.store.records import ChoiceLine, RunLogLine, Trials


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


def load_sources(
    paths: Paths,
    config: Config,
    *,
    only: list[str] | None = None,
    end: int | None = None,
    say: Callable[[str], None] = print,
) -> Setup:
    """Load the model at the home's current adapter; split the memories (up to byte `end`), the inbox
    and the distilled general rows into sources, each split encoded."""
    end = end if end is not None else paths.memories.stat().st_size if paths.memories.exists() else 0
    scan = memories.scan(paths, end=end)
    selection = dataset.select(
        scan.records, trained=adapters.trained_ids(paths), forgotten=memories.forgotten_ids(paths)
    )
    backend = select_backend(config.model.backend)
    resolved = resolve_base(config.model, paths, adapters.current_base(paths), say=say)
    active = adapters.active_adapter(paths)
    start = (active.path, active.version) if active and active.manifest.backend == backend.name else (None, None)
    model = backend.load(
        LoadRequest(
            resolved.name, resolved.path, config.model.device, config.model.dtype, config.model.quantize, *start
        )
    )
    if getattr(model, "router", None) is not None:
        model.router = None  # an experiment measures the adapters it trains, every question through them
    general = distill.distilled_rows(
        model,
        lambda: model.set_adapter(*start),
        paths.models / "distill_cache",
        resolved.path,
        config.sleep.distill_prompts,
        asking=evaluate.Asking.of(config.chat),
    )
    for entry in inbox.ingest(paths, settle_seconds=config.sleep.inbox_settle_seconds):
        say(f"inbox: {entry['name']} queued as {entry['id']} ({entry['rows']} rows)")
    queued = inbox.queued(paths)
    ctx = sources.Context(
        selection, [m for e in queued for m in inbox.load_rows(paths, e)], general, config.sleep.redact_region
    )
    pools = sources.build_all(ctx, only)
    if not pools:
        raise CircadianError("no source has enough data for an experiment (each needs rows in train, select and eval)")
    encoded = {
        name: {
            split: [
                encode_chat(model.tokenizer, r["messages"], config.train.max_length, config.chat.system_prompt)
                for r in src.split(split)
            ]
            for split in sources.SPLITS
        }
        for name, src in pools.items()
    }
    return Setup(model, backend.name, resolved, start, pools, encoded, end)


def budget_settings(config: Config, plan: Budget):
    """The training settings of one cycle's night: exactly `plan.steps` steps, no validation."""
    return config.train.model_copy(
        update={
            "max_steps": plan.steps,
            "max_epochs": 10**6,
            "batch_size": plan.batch_size,
            "eval_every": 10**6,
            "min_steps": 0,
            "warmup_steps": 1,
        }
    )


def night_sample(rows: list, plan: Budget, sample_key: str) -> list:
    """The rows one cycle's night trains: `plan.rows` rows sampled (seeded by `sample_key`) from `rows`."""
    return random.Random(sample_key).sample(rows, min(plan.rows, len(rows)))


def train_night(model, rows: list, settings, plan: Budget, sample_key: str, seed: int):
    """Train one cycle's night on `night_sample(rows, plan, sample_key)` with the training seed `seed`."""
    return model.train(
        night_sample(rows, plan, sample_key), [], settings.model_copy(update={"seed": seed}), lambda e: None
    )


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


@dataclass
class Position:
    """Where the experiment stands between cycles: the adapter it goes on from, and its losses there."""

    adapter: tuple
    select: dict[str, float]
    eval: dict[str, float]


class Experiment:
    """`cycles run` as a recipe: `run` takes `prepare`, `measure_start`, then per cycle `trial`, `choose`,
    `train`, `measure` and `log`, and `finish`."""

    def __init__(
        self,
        paths: Paths,
        config: Config,
        *,
        n: int,
        policy_spec: str,
        seed: int = 0,
        budget: str = "small",
        oracle: bool = False,
        only: list[str] | None = None,
        say: Callable[[str], None] = print,
        generate: bool = True,
        trial_steps: int | None = None,
    ):
        self.paths, self.config, self.n, self.spec, self.seed = paths, config, n, policy_spec, seed
        self.budget, self.plan, self.oracle, self.only, self.say, self.generate = (
            budget,
            BUDGETS[budget],
            oracle,
            only,
            say,
            generate,
        )
        self.policy = policies.make(policy_spec, seed)
        self.trial_steps = min(trial_steps or trials.TRIAL_STEPS, self.plan.steps)
        self.whole_night_trials = self.trial_steps == self.plan.steps
        self.history: list[RunLogLine] = []

    def run(self) -> dict:
        self.prepare()
        position = self.measure_start()
        for cycle in range(1, self.n + 1):
            tic = time.time()
            kept = self.trial(cycle, position)
            choice = self.policy.choose(position.select, cycle)
            nights = self.train(cycle, choice.source, position, kept)
            before = position
            position, line = self.measure(cycle, choice, before, nights)
            self.log(cycle, choice, before, line, tic)
        return self.finish()

    # ------------------------------------------------------------------------------------------ steps

    def prepare(self) -> None:
        """Check the sources, load the model at the home's current adapter, split the data into sources,
        write the experiment's manifest."""
        spec, known = self.spec, sources.builders()
        for name in [*(self.only or []), *([spec[6:]] if spec.startswith("fixed:") else [])]:
            if name not in known:
                raise CircadianError(f"unknown source {name!r} (known: {', '.join(sorted(known))})")
        started = datetime.now().astimezone()
        self.name = f"{started.strftime('%Y%m%d-%H%M%S')}-{spec.replace(':', '-')}-s{self.seed}"
        self.folder = experiment_dir(self.paths) / self.name
        self.setup = setup = load_sources(self.paths, self.config, only=self.only, say=self.say)
        self.model, self.pools, self.encoded = setup.model, setup.pools, setup.encoded
        self.say(
            f"experiment {self.name}: policy {spec}, seed {self.seed}, budget {self.budget} {self.plan}, "
            f"{'with oracle, ' if self.oracle else ''}from {setup.start[1] or 'the base model'}"
        )
        if spec.startswith("fixed:") and spec[6:] not in self.pools:
            raise CircadianError(f"source {spec[6:]!r} has no data here (available: {', '.join(self.pools)})")
        self.folder.mkdir(parents=True, mode=0o700)
        self.probes = [p for src in self.pools.values() for p in src.probes()]
        self.capability = evaluate.load_capability(self.config.sleep.capability_questions)
        self.general = evaluate.general_examples(self.model.tokenizer)
        self.say(
            "sources: "
            + ", ".join(f"{k} {len(v.train)}/{len(v.select)}/{len(v.eval)}" for k, v in self.pools.items())
            + " rows (train/select/eval)"
        )
        self.settings = budget_settings(self.config, self.plan)
        self.manifest = {
            "experiment": self.name,
            "policy": spec,
            "seed": self.seed,
            "budget": self.budget,
            "budget_detail": self.plan.__dict__,
            "oracle": self.oracle,
            "trial_steps": self.trial_steps,
            "n": self.n,
            "started": started.isoformat(timespec="seconds"),
            "start_adapter": setup.start[1],
            "backend": setup.backend,
            "model": setup.resolved.name,
            "model_identity": distill.model_identity(setup.resolved.path),
            "train_settings": self.settings.model_dump(),
            "memories_end_offset": setup.end,
            "sources": {
                k: {s: {"rows": len(v.split(s)), "sha256": _rows_sha(v.split(s))} for s in sources.SPLITS}
                for k, v in self.pools.items()
            },
            "versions": {"circadian": __version__, "python": platform.python_version(), **_package_versions()},
        }
        atomic_write_json(self.folder / "experiment.json", self.manifest)

    def losses(self, split: str) -> dict[str, float]:
        return {k: evaluate.mean_loss(self.model, self.encoded[k][split]) for k in self.pools}

    def generated(self) -> dict:
        """Recall and capability by generation (at cycle 0 and after the last cycle), unless --no-generate."""
        if not self.generate:
            return {}
        sleep = self.config.sleep
        asking = evaluate.Asking.of(self.config.chat)
        recall = evaluate.ask_all(
            self.model, self.probes, key="question", max_tokens=sleep.probe_max_tokens, asking=asking
        )
        cap = evaluate.ask_all(
            self.model, self.capability, key="prompt", max_tokens=sleep.capability_max_tokens, asking=asking
        )
        return {
            "recall": recall["score"],
            "capability": cap["score"],
            "recall_by_source": {
                k: _hit_share(recall["items"], {p["question"] for p in src.probes()})
                for k, src in self.pools.items()
                if src.probes()
            },
        }

    def measure_start(self) -> Position:
        """Cycle 0: every source's losses, perplexity and (unless --no-generate) recall and capability."""
        position = Position(self.setup.start, self.losses("select"), self.losses("eval"))
        self.base_ppl = evaluate.perplexity(self.model, self.general)
        cycle0 = {
            "select_losses": position.select,
            "eval_losses": position.eval,
            "perplexity": self.base_ppl,
            **self.generated(),
        }
        atomic_write_json(self.folder / "cycle0.json", cycle0)
        self.cycle0 = cycle0
        self.say(
            f"cycle 0: eval loss {figure(_mean(position.eval.values()))}, perplexity {figure(self.base_ppl, '.2f')}"
            + (
                f", recall {figure(cycle0['recall'], '.0%')}, capability {figure(cycle0['capability'], '.0%')}"
                if self.generate
                else ""
            )
        )
        return position

    def _branches(self):
        return self.folder / "branches"  # whole-night trials, kept for the nights they equal (this cycle only)

    def trial(self, cycle: int, position: Position) -> set[str]:
        """Run the trials the policy asks for; return the sources whose trial was kept as their night."""
        kept: set[str] = set()

        def keep(name: str) -> None:
            self.model.save_adapter(self._branches() / name)
            kept.add(name)

        self.tried = trials.run_trials(
            self.model,
            self.policy,
            position.select,
            cycle,
            night_rows=lambda k: night_sample(self.encoded[k]["train"], self.plan, f"{self.seed}:{cycle}:{k}"),
            select_rows={k: v["select"] for k, v in self.encoded.items()},
            settings=self.settings.model_copy(update={"seed": self.seed * 1000 + cycle}),
            restore=lambda: self.model.set_adapter(*position.adapter),
            say=self.say,
            steps=self.trial_steps,
            keep=keep if self.whole_night_trials else None,
        )
        return kept

    def _night_on(self, name: str, cycle: int, position: Position, kept: set[str]) -> None:
        """Put in place the night on `name` from `position`: its whole-night trial, else trained now."""
        if name in kept:
            self.model.set_adapter(self._branches() / name, f"{self.name}-c{cycle:02d}-{name}")
        else:
            self.model.set_adapter(*position.adapter)
            train_night(
                self.model,
                self.encoded[name]["train"],
                self.settings,
                self.plan,
                f"{self.seed}:{cycle}:{name}",
                self.seed * 1000 + cycle,
            )

    def train(self, cycle: int, chosen: str, position: Position, kept: set[str]) -> dict | None:
        """Train the chosen source's night; with --oracle every source's, from the same position, the chosen
        one last (its branch is where the experiment goes on). Return the oracle's nights measured
        ({source: (eval losses, select losses)}), or None without the oracle."""
        if not self.oracle:
            self._night_on(chosen, cycle, position, kept)
            return None
        nights = {}
        for name in sorted(self.pools, key=lambda k: k == chosen):
            self._night_on(name, cycle, position, kept)
            nights[name] = (self.losses("eval"), self.losses("select"))
        return nights

    def measure(self, cycle: int, choice, position: Position, nights: dict | None) -> tuple[Position, RunLogLine]:
        """Keep the cycle's adapter, measure it, reward the policy; return the new position and the cycle's line."""
        adapter = (self.folder / "adapters" / f"c{cycle:02d}", f"{self.name}-c{cycle:02d}")
        self.model.save_adapter(adapter[0])
        shutil.rmtree(self._branches(), ignore_errors=True)
        self.model.set_adapter(*adapter)
        eval_after, select_after = nights[choice.source] if nights else (self.losses("eval"), self.losses("select"))
        progress = _mean(position.select.values()) - _mean(select_after.values())
        self.policy.update(choice.source, progress)
        ppl = evaluate.perplexity(self.model, self.general)
        before_eval, before_select = _mean(position.eval.values()), _mean(position.select.values())
        line = RunLogLine(
            cycle_id=f"{self.name}-c{cycle:02d}",
            run_type=self.spec,
            experiment=self.name,
            cycle=cycle,
            seed=self.seed,
            budget=self.budget,
            chosen=choice.source,
            reward=before_eval - _mean(eval_after.values()),
            progress=progress,
            select_losses=select_after,
            eval_losses=eval_after,
            oracle_rewards={k: before_eval - _mean(e.values()) for k, (e, _s) in nights.items()} if nights else None,
            oracle_progress={k: before_select - _mean(s.values()) for k, (_e, s) in nights.items()} if nights else None,
            eval_loss=_mean(eval_after.values()),
            perplexity=ppl,
            perplexity_drift=ppl / self.base_ppl - 1,
            outcome="trained",
            **(self.generated() if cycle == self.n else {}),
        )
        return Position(adapter, select_after, eval_after), line

    def log(self, cycle: int, choice, before: Position, line: RunLogLine, tic: float) -> None:
        """One line in choice_log.jsonl (what the policy saw at `before`) and one in run_log.jsonl for the cycle."""
        select_now = before.select
        append_jsonl(
            self.paths.choice_log,
            [
                ChoiceLine(
                    cycle_id=line.cycle_id,
                    run_type=self.spec,
                    experiment=self.name,
                    cycle=cycle,
                    seed=self.seed,
                    candidate_losses=select_now,
                    chosen=choice.source,
                    reason=choice.reason,
                    loss_regret=select_now[choice.source] - min(select_now.values()),
                    trials=Trials(**self.tried.as_dict()) if self.tried.progress else None,
                    ts=now_iso(),
                ).row()
            ],
        )
        line = line.model_copy(update={"seconds": round(time.time() - tic, 1), "logged_at": now_iso()})
        append_jsonl(self.paths.run_log, [line.row()])
        self.history.append(line)
        rewards = line.oracle_rewards
        best = f", oracle best {max(rewards, key=rewards.get)} {max(rewards.values()):+.4f}" if rewards else ""
        self.say(
            f"cycle {cycle}/{self.n}: chose {choice.source} ({choice.reason}); "
            f"reward {figure(line.reward, '+.4f')}{best}; perplexity {figure(line.perplexity, '.2f')} "
            f"({figure(line.perplexity_drift, '+.1%')}), {line.seconds:.0f} s"
        )

    def finish(self) -> dict:
        """The experiment's summary, also written over experiment.json."""
        summary = {
            **self.manifest,
            "ended": now_iso(),
            "cycle0": self.cycle0,
            "final": self.history[-1].row() if self.history else None,
            "policy_state": self.policy.state,
        }
        atomic_write_json(self.folder / "experiment.json", summary)
        return summary


def run_experiment(paths: Paths, config: Config, **options) -> dict:
    """Run an experiment (Experiment's options: n, policy_spec, seed, budget, oracle, only, say, generate,
    trial_steps); return its summary (also in experiment.json). Trials as long as the night are kept and
    stand in for the nights they equal."""
    return Experiment(paths, config, **options).run()


def _hit_share(items: list[dict], questions: set[str]) -> float | None:
    hits = [i["hit"] for i in items if i["question"] in questions]
    return sum(hits) / len(hits) if hits else None


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "mlx", "mlx-lm"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
