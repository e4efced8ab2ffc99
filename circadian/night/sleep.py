"""`circadian sleep`: one night, a recipe of named steps that `Sleep.run` takes in this order.

1. prepare: take control/sleep.lock (in `run_sleep`), note cycles a crash left unfinished, snapshot the
   memories by byte offset, select what the current adapter has not learned, quarantine unreadable
   lines, ingest the inbox; a night with nothing new ends here ("nothing to learn");
2. load: the model with the current adapter; the distill prompts not answered yet are answered by the
   base model (cached per base model);
3. build_dataset: the night's datasets (the day's facts in several wordings, replayed facts, imported
   conversations, queued inbox datasets, distilled general rows), or the one source a policy picks;
   the snapshot in the cycle folder; tokenized with every assistant turn a target, masks validated;
4. measure_current: validation loss, recall, retention, capability, style and perplexity of the
   current adapter, asked as `chat` asks (system prompt, repetition penalty, router);
5. train: each dataset in turn from the current adapter, steered by `circadian ctl`, the best
   validation step kept, learning evolution tracked;
6. measure_candidate: the candidate's router fitted (tonight's fact questions and earlier nights'
   against general prompts; night/routing.py), then the same measurements, through the router;
7. gate: promote it only if it learned something and broke nothing; a candidate that learned but
   broke a bound is tried blended back toward the current adapter;
8. commit: the version staged in adapters/.staging-<cycle>/ and renamed whole, the manifest written
   last, CURRENT replaced (last) only when promoted; retention;
9. report: summary.json, report.md and report.html, one run_log line.

A crash at any point leaves CURRENT and the memories as they were.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from circadian import __version__
from circadian.backends import LoadRequest, TrainResult, select_backend
from circadian.backends import router as router_file
from circadian.backends.resolve import resolve_base, resolve_model
from circadian.backends.tokens import encode_chat, length_batches, padding_share, validate
from circadian.core.clock import now_iso
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.figures import figure
from circadian.core.fsutil import append_jsonl, atomic_write_json, read_jsonl, sha256_file
from circadian.core.lock import sleep_lock
from circadian.core.paths import Paths
from circadian.night import choice, control, dataset, distill, evaluate, evolution, gate, report, routing
from circadian.night.base_answers import eval_cache
from circadian.night.base_features import feature_cache
from circadian.night.cycle import RUN_TYPE, Cycle, hold, new_cycle_id, quarantine_bad_lines, recover_interrupted
from circadian.night.lineage import generator_of, is_distill
from circadian.night.purge import still_trained
from circadian.night.training import Stopped, train_datasets
from circadian.store import adapters, backups, inbox, ledger, memories, memory_index
from circadian.store.records import SCHEMA_VERSION as RECORDS_VERSION
from circadian.store.records import CycleSummary, RunLogLine, TrainBrief, TrainCallback, TrainEvent


def _tokenize(tokenizer, rows: list[dict], max_length: int, *, anchors: bool = False, system_prompt: str = ""):
    """Tokenize rows, each under the chat's system prompt (so a fact is learned in the context it is
    asked in) unless it has its own; with `anchors`, distilled general rows become KL-to-base anchors."""
    examples = []
    for row in rows:
        example = encode_chat(tokenizer, row["messages"], max_length, system_prompt)
        example.anchor = anchors and is_distill(row)
        examples.append(example)
    return examples


def prepare(paths: Paths, config: Config, say: Callable[[str], None], *, general=()):
    """Snapshot the memories and build the night's plan, writing nothing: return (scan, selection, plan)."""
    end = paths.memories.stat().st_size if paths.memories.exists() else 0
    scan = memories.scan(paths, end=end)
    say(
        f"snapshot: {len(scan.records)} turns up to byte {end}"
        + (f", {len(scan.bad_lines)} unreadable line(s)" if scan.bad_lines else "")
    )
    selection = dataset.select(
        scan.records, trained=adapters.trained_ids(paths), forgotten=memories.forgotten_ids(paths)
    )
    plan = dataset.build(selection, config.sleep, general=list(general), seed=config.train.seed)
    skipped = ", ".join(f"{v} {k}" for k, v in sorted(selection.skipped.items())) or "none"
    say(f"selected {len(selection.new)} new turn(s), {len(selection.replay_pool)} already learned; skipped: {skipped}")
    redacted = ", ".join(f"{v} {k}" for k, v in sorted(plan.redactions.items())) or "nothing"
    say(f"redacted: {redacted}; facts: {len(plan.facts)} new, {len(plan.replayed_facts)} replayed")
    return scan, selection, plan


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _say_on(console) -> Callable[[str], None]:
    return lambda message: console.print(f"· {message}", highlight=False, markup=False, soft_wrap=True)


class _Done(Exception):
    """A step ended the night early (nothing to learn, every dataset skipped): its summary is the result."""

    def __init__(self, summary: CycleSummary):
        self.summary = summary


class Sleep:
    """One night's recipe: the state the steps share, and the steps in the order of the module docstring."""

    def __init__(self, cycle: Cycle, paths: Paths, config: Config, console, on_event: TrainCallback | None = None):
        self.cycle, self.paths, self.config, self.console, self.on_event = cycle, paths, config, console, on_event
        self.say = cycle.say
        self.memory_estimates: list[dict] = []  # one per dataset trained: the estimate, then the measured peak
        self.memory: dict | None = None  # the one with the highest measured peak, and the estimate's error

    def run(self) -> CycleSummary:
        try:
            self.prepare()
            self.load()
            self.build_dataset()
            self.before = self.measure_current()
            self.train()
            self.after = self.measure_candidate()
            self.gate()
            self.commit()
        except _Done as done:
            return done.summary
        return self.report()

    # ------------------------------------------------------------------------------------------ steps

    def prepare(self) -> None:
        cycle, config = self.cycle, self.config
        cycle.stage("snapshot")
        self.say(f"cycle {cycle.id} starts")
        self.scan, self.selection, self.plan = prepare(self.paths, config, self.say)
        quarantined = quarantine_bad_lines(self.paths, self.scan.bad_lines, self.scan.end_offset)
        if quarantined:
            self.say(f"quarantined {quarantined} unreadable line(s) in data/quarantine/memories.jsonl")
        for entry in inbox.ingest(self.paths, settle_seconds=config.sleep.inbox_settle_seconds):
            self.say(
                f"inbox: {entry['priority']}/{entry['name']} -> {entry['id']}: {entry['rows']} rows, "
                f"{entry['quarantined']} quarantined, {entry['state']}"
            )
        self.queued = inbox.queued(self.paths)
        if self.queued:
            self.say(f"queue: {len(self.queued)} dataset(s) to train, {', '.join(e['id'] for e in self.queued)}")
        if self.plan.new_material < max(1, config.sleep.min_new_facts) and not self.queued:
            self.say("nothing to learn tonight")
            raise _Done(
                finish(
                    cycle,
                    self.paths,
                    CycleSummary(
                        cycle_id=cycle.id,
                        outcome="nothing to learn",
                        counts=self.plan.counts,
                        redactions=dict(self.plan.redactions),
                        knowledge=dataset.knowledge_brief(self.plan),
                    ),
                )
            )
        if config.backup.nightly:
            self.backup("before the night " + cycle.id)

    def backup(self, reason: str) -> None:
        """Take a snapshot (store/backups.py). A failure is said, and the night goes on: it changes
        nothing it cannot undo."""
        try:
            taken = backups.run(self.paths, self.config.backup, reason=reason)
        except (CircadianError, OSError) as exc:
            self.say(f"backup failed ({exc}); the night goes on")
            return
        dropped = f", retention dropped {len(taken['dropped'])}" if taken["dropped"] else ""
        self.say(
            f"backup: snapshot {taken['id']} in {taken['store']}: {taken['files']} files, "
            f"{taken['added_bytes']:,} new bytes{dropped}"
        )

    def load(self) -> None:
        config, paths = self.config, self.paths
        self.cycle.stage("load")
        self.asking = evaluate.Asking.of(config.chat)
        self.backend = select_backend(config.model.backend)
        self.base_name = adapters.current_base(paths)  # a consolidated base (store/bases.py), or None
        self.resolved = resolve_base(config.model, paths, self.base_name, say=self.say)
        self.active = active = adapters.active_adapter(paths)
        if active and active.manifest.backend != self.backend.name:
            raise CircadianError(
                f"the current adapter {active.version} was trained with {active.manifest.backend}; "
                f"this sleep runs {self.backend.name} (set model.backend, or `circadian rollback base`)"
            )
        self.say(
            f"loading {self.resolved.name} on {self.backend.name} with adapter "
            f"{active.version if active else 'none (base)'}"
        )
        self.start = (active.path, active.version) if active else (None, None)
        self.model = self.backend.load(
            LoadRequest(
                self.resolved.name,
                self.resolved.path,
                config.model.device,
                config.model.dtype,
                config.model.quantize,
                *self.start,
            )
        )
        cache = paths.models / "distill_cache"
        wanted = dataset.distill_wanted(self.plan, config.sleep, len(distill.prompts()))
        restore = (lambda: self.model.set_adapter(*self.start)) if active else (lambda: None)
        with _progress(self.console) as progress:
            task = progress.add_task(
                "distill: general prompts",
                total=distill.missing(cache, self.resolved.path, wanted, self.asking),
                info="",
            )
            self.general = distill.distilled_rows(
                self.model,
                restore,
                cache,
                self.resolved.path,
                wanted,
                on_item=lambda: progress.advance(task),
                asking=self.asking,
            )
        self.say(f"distill: {len(self.general)} general prompts answered by the base model")
        self.generators, self.generator_reason = self.choose_generators()
        self.say(f"facts by {' + '.join(g.name for g in self.generators)}: {self.generator_reason}")

    def choose_generators(self):
        """Who writes tonight's facts (`sleep.generator`): a teacher that passes the test, else `parse`."""
        from circadian.night.knowledge.choose import generators_for

        config = self.config
        teacher, identity = self.model, distill.model_identity(self.resolved.path)
        if config.sleep.generator in ("auto", "model") and config.sleep.teacher:
            named = config.model.model_copy(update={"name": config.sleep.teacher})
            found = resolve_model(named, self.paths.models, say=self.say)
            self.say(f"loading the teacher {found.name}")
            teacher = self.backend.load(
                LoadRequest(found.name, found.path, config.model.device, config.model.dtype, config.model.quantize)
            )
            identity = distill.model_identity(found.path)
        return generators_for(
            config.sleep.generator, teacher, cache=self.paths.models / "calibration", identity=identity
        )

    def build_dataset(self) -> None:
        config, paths, cycle = self.config, self.paths, self.cycle
        plan = dataset.build(
            self.selection,
            config.sleep,
            general=self.general,
            seed=config.train.seed,
            generators=self.generators,
            graduated=ledger.graduated(paths, adapters.head(paths)),
        )
        plan.knowledge.generators = [f"{g.name} {g.version}" for g in self.generators] + [self.generator_reason]
        if plan.new_material < max(1, config.sleep.min_new_facts):
            plan.datasets[-1].train = []  # today has too little of its own; its general rows alone teach nothing
        inbox_rows = {e["id"]: inbox.load_rows(paths, e) for e in self.queued}
        self.plan = plan = dataset.add_inbox(
            plan, [(e, inbox_rows[e["id"]]) for e in self.queued], config.sleep, generators=self.generators
        )
        self.datasets, self.choice = plan.datasets, None
        if config.sleep.policy != "all":
            self.choice, self.datasets = choice.choose(
                paths,
                config.sleep.policy,
                self.model,
                config.train,
                cycle_id=cycle.id,
                selection=self.selection,
                inbox_rows=[m for rows in inbox_rows.values() for m in rows],
                general=self.general,
                region=config.sleep.redact_region,
                plan=plan,
                distill_per_row=config.sleep.distill_per_fact_row,
                restore=lambda: self.model.set_adapter(*self.start),  # a trial trained: undo it, on the base too
                say=self.say,
                trial_steps=config.sleep.trial_steps,
            )
            self.say(
                f"policy {config.sleep.policy}: chose {self.choice.choice.source} ({self.choice.choice.reason}); "
                "selection losses " + ", ".join(f"{k} {v:.3f}" for k, v in self.choice.losses.items())
            )
        self.quarantine_untrainable()
        inbox.set_state(paths, [d.queue_id for d in self.datasets if d.queue_id], "training", cycle_id=cycle.id)

        cycle.stage("dataset")
        (cycle.dir / "dataset").mkdir()
        for name, rows in (
            ("train.jsonl", plan.train),
            ("valid.jsonl", plan.valid),
            ("probes.jsonl", plan.probes),
            ("retention_probes.jsonl", plan.retention_probes),
            ("facts.jsonl", plan.facts),
            ("replayed_facts.jsonl", plan.replayed_facts),
        ):
            cycle.write(f"dataset/{name}", [{k: v for k, v in r.items() if k != "lineage"} for r in rows])
        cycle.write(
            "dataset/lineage.jsonl",
            [
                {"split": split, "row": i, **row.get("lineage", {})}
                for split, rows in (("train", plan.train), ("valid", plan.valid))
                for i, row in enumerate(rows)
            ],
        )
        indexed = memory_index.add_facts(
            paths, plan.facts, source=f"night {cycle.id}", turns={f["source_id"] for f in plan.facts}
        )
        self.say(f"memory index: {indexed} fact(s) of tonight, for the chat until the adapter learns them")
        self.say(
            f"dataset: {len(plan.train)} train rows, {len(plan.valid)} valid rows, {len(plan.probes)} recall "
            f"probes (sha256 {plan.sha256()[:12]})"
        )

        tokenizer, length = self.model.tokenizer, config.train.max_length
        system = config.chat.system_prompt
        train_ex = _tokenize(
            tokenizer, plan.train, length, anchors=config.train.anchor_weight > 0, system_prompt=system
        )
        valid_ex = _tokenize(tokenizer, plan.valid, length, system_prompt=system)
        self.masks = validate(train_ex)
        validate(valid_ex)
        lengths = [len(e) for e in train_ex]
        self.padding = padding_share(lengths, length_batches(lengths, config.train.batch_size, seed=0))
        self.say(
            f"masks: {self.masks.targets} of {self.masks.tokens} tokens trained ({self.masks.target_ratio:.0%}); "
            f"padding with length batches {self.padding:.1%}"
        )
        self.capability = evaluate.load_capability(config.sleep.capability_questions)
        self.style_items = evaluate.load_style(config.sleep.style_prompts) if config.sleep.style_prompts else []
        base = (self.active.manifest.metrics.get("base") if self.active else None) or {}
        self.measure_sets = dict(
            valid=valid_ex,
            probes=plan.probes,
            retention=plan.retention_probes,
            capability=self.capability,
            general=evaluate.general_examples(tokenizer),
            probe_tokens=config.sleep.probe_max_tokens,
            capability_tokens=config.sleep.capability_max_tokens,
            style_items=self.style_items,
            style_tokens=config.sleep.style_max_tokens,
            style_range=tuple(base["style_range"]) if base.get("style_range") else None,
            asking=self.asking,
            cache=eval_cache(
                self.paths.models,
                distill.model_identity(self.resolved.path),
                self.backend.name,
                self.config.model,
                self.asking,
            ),
        )

    def quarantine_untrainable(self) -> None:
        """Take out every row of which no token would be trained (no reply, or a reply that starts after
        `train.max_length`), into data/quarantine/rows.jsonl with the reason, and train the rest.

        An inbox dataset left with no row fails with that reason; a night left with nothing of the
        user's to train ends as "nothing to learn". One bad row never fails every night.
        """
        config, plan, paths = self.config, self.plan, self.paths
        tokenizer, length, system = self.model.tokenizer, config.train.max_length, config.chat.system_prompt
        reasons: dict[str, str] = {}
        checked: set[str] = set()
        for holder in (plan, *self.datasets):
            for row in holder.train + holder.valid:
                key = dataset.row_key(row)
                if key in checked:
                    continue
                checked.add(key)
                if not any(m.get("role") == "assistant" for m in row["messages"]):
                    reasons[key] = "no assistant turn to learn"
                elif encode_chat(tokenizer, row["messages"], length, system).targets == 0:
                    reasons[key] = (
                        f"its first reply starts after train.max_length ({length} tokens), so nothing in it "
                        "would be trained; raise train.max_length to learn it"
                    )
        if not reasons:
            return
        dropped = dataset.drop_rows(plan, self.datasets, reasons)
        kept = {
            r.get("lineage", {}).get("source_id")
            for holder in (plan, *self.datasets)
            for r in holder.train + holder.valid
        }
        untrained = {r["lineage"].get("source_id") for r in dropped} - kept  # turns with nothing left to learn
        plan.trained_ids = [i for i in plan.trained_ids if i not in untrained]  # stay new: learnable later
        target = paths.quarantine / "rows.jsonl"
        known = {line.value.get("key") for line in read_jsonl(target) if line.value}
        fresh = [
            {**row, "cycle_id": self.cycle.id, "quarantined_at": now_iso()}
            for row in dropped
            if row["key"] not in known
        ]
        if fresh:
            append_jsonl(target, fresh)
        self.say(
            f"quarantined {len(dropped)} untrainable row(s) in {target.relative_to(paths.home)}: {dropped[0]['reason']}"
        )
        emptied = [d for d in self.datasets if not any(not is_distill(r) for r in d.train)]
        failed = [d.queue_id for d in emptied if d.queue_id]
        inbox.set_state(paths, failed, "failed", cycle_id=self.cycle.id, reason="every row quarantined (untrainable)")
        self.datasets = [d for d in self.datasets if d not in emptied]
        if not self.datasets:
            self.say("nothing to learn tonight: every row of the user's was quarantined")
            raise _Done(
                finish(
                    self.cycle,
                    paths,
                    CycleSummary(
                        cycle_id=self.cycle.id,
                        outcome="nothing to learn",
                        counts={**plan.counts, "quarantined_rows": len(dropped)},
                        redactions=dict(plan.redactions),
                        knowledge=dataset.knowledge_brief(plan),
                    ),
                )
            )

    def measure(self, label: str) -> dict:
        """Measure the model as it is now on the night's sets, with a progress bar; say the figures."""
        plan = self.plan
        questions = len(plan.probes) + len(plan.retention_probes) + len(self.capability) + len(self.style_items)
        with _progress(self.console) as progress:
            task = progress.add_task(f"measuring {label}", total=questions, info="")
            metrics = evaluate.measure(self.model, **self.measure_sets, on_item=lambda: progress.advance(task))
        self.say(_figures(label, metrics))
        return metrics

    def measure_current(self) -> dict:
        self.cycle.stage("eval_before")
        metrics = self.measure("current")
        if metrics.get("style") and not self.measure_sets["style_range"]:
            self.measure_sets["style_range"] = tuple(metrics["style"]["range"])
        return metrics

    def train(self) -> None:
        config, paths, cycle, plan = self.config, self.paths, self.cycle, self.plan
        cycle.stage("train")
        self.current_router = getattr(self.model, "router", None)
        if self.current_router is not None:
            self.model.router = None  # the adapter answers while it learns; tonight's router is fitted after
        self.tracker = tracker = None
        if config.sleep.track:
            examples = evolution.tracked_sample(
                evolution.probe_expected(plan.train, plan.probes + plan.retention_probes),
                [r for d in self.datasets for r in d.train],
                config.sleep.track_sample,
                seed=config.train.seed,
            )
            self.tracker = tracker = evolution.Tracker(
                self.model,
                examples,
                cycle.dir / "evolution",
                max_tokens=config.sleep.track_max_tokens,
                budget=config.sleep.track_budget,
                max_length=config.train.max_length,
                min_steps=config.train.min_steps,
                asking=self.asking,
            )
            tracker.start()
        tokenizer, length = self.model.tokenizer, config.train.max_length
        self.night = night = train_datasets(
            self.model,
            self.datasets,
            cycle_dir=cycle.dir,
            control=paths.control,
            say=self.say,
            publish=cycle.publish,
            tokenize=lambda rows, is_train: _tokenize(
                tokenizer,
                rows,
                length,
                anchors=is_train and config.train.anchor_weight > 0,
                system_prompt=config.chat.system_prompt,
            ),
            train_one=lambda m, t, v, cb: self._train_one(
                m, t, v, chain(cb, tracker.on_event if tracker else None, self.on_event)
            ),
            on_skip=lambda skipped: inbox.set_state(
                paths,
                [skipped.queue_id] if skipped.queue_id else [],
                "skipped",
                cycle_id=cycle.id,
                reason="skipped by request",
            ),
            start=self.start,
        )
        if night.result is None:
            self.say("every dataset was skipped; nothing to evaluate or commit")
            inbox.release_training(paths, "nothing was trained")
            raise _Done(
                finish(
                    cycle,
                    paths,
                    CycleSummary(
                        cycle_id=cycle.id,
                        outcome="skipped",
                        counts=plan.counts,
                        datasets=night.outcomes,
                        redactions=dict(plan.redactions),
                    ),
                )
            )
        result = self.result = night.result
        self.evolution = tracker.finish(result.steps) if tracker else None
        if self.evolution:
            counts, overhead = self.evolution["counts"], self.evolution["overhead"]
            self.say(
                f"learning evolution: {counts['learned']} learned, {counts['struggling']} struggling, "
                f"{counts['not learned']} not learned; {overhead['snapshots']} snapshots cost "
                f"{overhead['share']:.0%} of the training time"
            )
        if self.choice:
            chosen = self.choice
            reward = sum(chosen.losses.values()) / len(chosen.losses) - chosen.mean_loss(self.model)
            chosen.policy.update(chosen.choice.source, reward)
            choice.save_policy(paths, chosen.policy)
            self.say(f"learning progress on the selection splits: {reward:+.4f} (the policy's reward)")
        self.say(
            f"trained {result.steps} steps ({result.stop_reason}); best step {result.best_step}, "
            f"{result.tokens_per_second:.0f} tokens/s ({result.precision}), peak memory {result.peak_memory_mb:.0f} MB"
        )

    def _train_one(self, model, train_ex, valid_ex, on_event: TrainCallback) -> TrainResult:
        """One backend training run, with a progress bar and every event appended to metrics.jsonl."""
        metrics_path = self.cycle.dir / "metrics.jsonl"
        settings = self.fit_memory(model, train_ex)  # before anything trains: it may stop the night here
        with _progress(self.console) as progress:
            task = progress.add_task("training", total=None, info="")

            def callback(event: TrainEvent) -> str | None:
                decision = on_event(event)  # may tag the event with its dataset, or pause
                append_jsonl(
                    metrics_path, [{**event, "ts": time.time(), "schema_version": RECORDS_VERSION}], lock=False
                )
                info = [
                    f"loss {event['train_loss']:.3f}" if "train_loss" in event else "",
                    f"val {event['val_loss']:.3f}" if event.get("val_loss") is not None else "",
                    f"{event['tokens_per_second']:.0f} tok/s" if "tokens_per_second" in event else "",
                    f"{event['peak_memory_mb']:.0f} MB" if "peak_memory_mb" in event else "",
                ]
                progress.update(
                    task,
                    total=event.get("total_steps"),
                    completed=event["iteration"],
                    info=" · ".join(i for i in info if i),
                )
                return decision

            result = model.train(train_ex, valid_ex, settings, callback)
        measured = result.peak_memory_mb
        estimated = self.memory_estimates[-1]
        self.memory_estimates[-1] = {**estimated, "measured_mb": round(measured, 1)}
        worst = max(self.memory_estimates, key=lambda m: m["measured_mb"])
        error = worst["estimate"]["total_mb"] / worst["measured_mb"] - 1 if worst["measured_mb"] else None
        self.memory = {**worst, "error": round(error, 3) if error is not None else None}
        return result

    def fit_memory(self, model, train_ex: list):
        """The train settings that fit the memory limit (backends/memory.py), said; raise before training
        when none does."""
        from circadian.backends import memory

        config = self.config
        limit = config.train.memory_limit_mb * memory.MB if config.train.memory_limit_mb else None
        if limit is None and (available := memory.available_bytes(model.backend, getattr(model, "device", ""))):
            limit = int(available * 0.9)
        settings, found, note = memory.fit_to_limit(
            model, config.train, train_ex, quantize=config.model.quantize, limit=limit
        )
        if note:
            self.say(note)
        self.say(f"memory: training estimated at {found.line()}")
        self.memory_estimates.append(
            {
                "estimate": found.row(),
                "limit_mb": round(limit / memory.MB) if limit else None,
                "grad_accumulation": settings.grad_accumulation,
            }
        )
        return settings

    def route(self) -> None:
        """Fit the candidate's router (sleep.router, backends that read features) and say its misroutes."""
        model, plan = self.model, self.plan
        self.router, self.routing = None, None
        if not self.config.sleep.router or not hasattr(model, "features"):
            return
        self.cycle.stage("route")
        cache = feature_cache(
            self.paths.models,
            distill.model_identity(self.resolved.path),
            self.backend.name,
            self.config.model,
            model.router_layers(),
        )
        self.router = routing.fit_router(model, plan.train, self.current_router, cache)
        model.router = self.router
        if self.router is None:
            self.say("router: no fact questions tonight; every turn uses the adapter")
            return
        self.routing = routing.misroutes(
            model,
            self.router,
            facts=[p["question"] for p in plan.probes + plan.retention_probes],
            general=[c["prompt"] for c in self.capability] + [s["prompt"] for s in self.style_items],
            cache=cache,
        )
        r = self.routing
        self.say(
            f"router: fitted on {r['fitted_on']['facts']} fact questions and {r['fitted_on']['general']} general "
            f"prompts; held out, {r['facts_to_base']} of {r['facts']} fact probes went to the base model and "
            f"{r['general_to_adapter']} of {r['general']} general prompts to the adapter; "
            f"{r['seconds_per_turn'] * 1000:.0f} ms per turn"
        )

    def measure_candidate(self) -> dict:
        self.route()
        self.cycle.stage("eval_after")
        metrics = self.measure("candidate")
        metrics["router"] = self.routing
        return metrics

    def gate(self) -> None:
        config, active = self.config, self.active
        self.cycle.stage("gate")
        self.base_ppl = (active.manifest.metrics.get("base_perplexity") if active else None) or (
            self.before["perplexity"] if not active else None
        )
        known = (active.manifest.metrics.get("base") if active else None) or {}
        self.base = {
            "capability": known.get("capability", None if active else evaluate.score_of(self.before, "capability")),
            "style": known.get("style", None if active else evaluate.score_of(self.before, "style")),
            "style_n": known.get("style_n", None if active else (self.before.get("style") or {}).get("n")),
            "style_range": self.measure_sets["style_range"],
        }
        # the base model's style score counts only when it was measured on as many prompts as tonight's
        # (otherwise the gate compares with the current adapter's)
        self.base_style = self.base["style"] if self.base["style_n"] == len(self.style_items) else None
        decision = gate.decide(
            self.before, self.after, config.gate, self.base_ppl, self.base["capability"], self.base_style
        )
        self.say(f"gate: {'PROMOTE' if decision.promote else 'REJECT'} ({'; '.join(decision.reasons)})")
        self.decision, self.blend = decision, None
        if (
            decision.learned
            and not decision.safe
            and config.gate.fallback_scales
            and hasattr(self.model, "blend_adapter")
        ):
            self.after, self.decision, self.blend = self.blended_fallback(decision)

    def blended_fallback(self, full_decision: gate.Decision):
        """The candidate learned but broke a capability or perplexity bound: try it blended back toward
        the adapter it started from (each of `gate.fallback_scales`, largest first) and keep the first
        blend that passes the gate; if none does, restore the full candidate (kept as rejected).
        Return (metrics, decision, record for the manifest)."""
        self.cycle.stage("eval_blend")
        start_path, full, scales = self.start[0], self.after, self.config.gate.fallback_scales
        tried = []
        for factor in scales:
            self.model.blend_adapter(start_path, factor)
            metrics = self.measure(f"candidate blended x{factor:g}")
            decision = gate.decide(
                self.before, metrics, self.config.gate, self.base_ppl, self.base["capability"], self.base_style
            )
            tried.append({"factor": factor, "metrics": evaluate.brief_metrics(metrics), "gate": decision.as_dict()})
            self.say(
                f"gate, blend x{factor:g}: {'PROMOTE' if decision.promote else 'REJECT'} "
                f"({'; '.join(decision.reasons)})"
            )
            if decision.promote:
                failed = [r for r in full_decision.reasons if "allowed" in r]
                decision.reasons.insert(
                    0,
                    f"the full candidate broke a bound ({'; '.join(failed)}); promoted blended "
                    f"x{factor:g} toward {'the current adapter' if start_path else 'the base model'}",
                )
                return (
                    metrics,
                    decision,
                    {
                        "factor": factor,
                        "tried": tried,
                        "full": evaluate.brief_metrics(full),
                        "full_gate": full_decision.as_dict(),
                    },
                )
        self.model.blend_adapter(start_path, 1.0)
        full_decision.reasons.append(f"blends x{', x'.join(f'{f:g}' for f in scales)} failed the gate too")
        return (
            full,
            full_decision,
            {"factor": 1.0, "tried": tried, "full": evaluate.brief_metrics(full), "full_gate": full_decision.as_dict()},
        )

    def commit(self) -> None:
        paths, cycle, config, plan, result = self.paths, self.cycle, self.config, self.plan, self.result
        active, decision = self.active, self.decision
        cycle.stage("commit")
        self.version = version = adapters.next_version(paths, datetime.now().astimezone())
        staging = adapters.staging_dir(paths, cycle.id)
        if staging.exists():
            shutil.rmtree(staging)
        weights = self.model.save_adapter(staging)
        if self.router is not None:
            weights[router_file.FILE] = sha256_file(self.router.save(staging))
        hold("commit:staged")
        manifest = {
            "version": version,
            "parent": active.version if active else None,
            "base": self.base_name,
            "created_at": now_iso(),
            "cycle_id": cycle.id,
            "backend": self.backend.name,
            "base_model": {
                "name": self.resolved.name,
                "path": str(self.resolved.path),
                "revision": self.resolved.revision,
                "identity": distill.model_identity(self.resolved.path),
            },
            "lora": {
                k: v
                for k, v in config.train.model_dump().items()
                if k in ("rank", "alpha", "dropout", "dora", "learning_rate", "batch_size", "max_length")
            },
            "data": {
                **plan.counts,
                "sha256": plan.sha256(),
                "redactions": dict(plan.redactions),
                "sources": sorted({generator_of(row) or "?" for row in plan.train}),
                "snapshot": str(cycle.dir / "dataset"),
                "memories_end_offset": self.scan.end_offset,
            },
            "metrics": {
                "before": evaluate.brief_metrics(self.before),
                "after": evaluate.brief_metrics(self.after),
                "base_perplexity": self.base_ppl,
                "base": self.base,
            },
            "gate": decision.as_dict(),
            **({"blend": self.blend} if self.blend else {}),
            "timings": cycle.timings,
            "train": TrainBrief.model_validate(asdict(result)).row(),
            "tokens_per_second": round(result.tokens_per_second, 1),
            "peak_memory_mb": round(result.peak_memory_mb, 1),
            "memory": self.memory,
            "circadian_version": __version__,
            "weights": weights,
        }
        today_trained = any(o.name == "today" and o.state == "trained" for o in self.night.outcomes)
        trained = plan.trained_ids if decision.promote and today_trained else []
        adapters.commit(paths, staging, manifest, trained, ledger.asked_of(self.after))
        hold("commit:renamed")
        if decision.promote:
            inbox.set_state(paths, self.night.ids("trained"), "done", cycle_id=cycle.id, reason=f"learned in {version}")
            adapters.set_current(paths, version, reason=f"promoted by cycle {cycle.id}")
            self.say(f"promoted {version}; it answers from the next chat turn")
        else:
            inbox.set_state(
                paths,
                self.night.ids("trained"),
                "queued",
                cycle_id=cycle.id,
                retry=True,
                reason=f"the candidate {version} was rejected",
            )
            self.say(f"kept {version} as rejected; {active.version if active else 'the base model'} stays current")
        try:  # the night is committed: a retention problem is reported, never a failed night
            for gone in backups.prune_versions(paths, config, say=self.say):
                self.say(f"retention: deleted {gone}")
        except (CircadianError, OSError) as exc:
            self.say(f"retention skipped: {exc}")

    def report(self) -> CycleSummary:
        plan = self.plan
        return finish(
            self.cycle,
            self.paths,
            CycleSummary(
                cycle_id=self.cycle.id,
                outcome="promoted" if self.decision.promote else "rejected",
                version=self.version,
                parent=self.active.version if self.active else None,
                backend=self.backend.name,
                model=self.resolved.name,
                counts=plan.counts,
                redactions=dict(plan.redactions),
                dataset_sha256=plan.sha256(),
                masks=asdict(self.masks) | {"target_ratio": self.masks.target_ratio},
                padding_share=self.padding,
                train=TrainBrief.model_validate(asdict(self.result)),
                memory=self.memory,
                before=self.before,
                after=self.after,
                gate=self.decision.as_dict(),
                blend=self.blend,
                facts=plan.facts,
                knowledge=dataset.knowledge_brief(plan),
                base_perplexity=self.base_ppl,
                base=self.base,
                datasets=self.night.outcomes,
                chosen=self.choice.choice.source if self.choice else None,
                policy=self.config.sleep.policy if self.choice else None,
                evolution=self.evolution,
                ledger=self.ledger_brief(),
            ),
        )

    def ledger_brief(self) -> dict:
        """The graduation ledger after the night, for the report: what graduated tonight, what the
        model has not learned in `sleep.graduate_within` nights, and how many facts retrieval still gives."""
        current = adapters.current_version(self.paths)
        found = ledger.states(self.paths, current)
        said = {e.fact: e.text for e in memory_index.facts(self.paths)}
        within = self.config.sleep.graduate_within
        return {
            "version": current,
            "within": within,
            "graduated": [
                {"statement": said.get(k, k), "nights": s.nights_to_graduate}
                for k, s in found.items()
                if s.graduated and s.graduated_in == self.version and self.decision.promote
            ],
            "not_learned": [
                {"statement": said.get(k, k), "asked": found[k].asked}
                for k in sorted(ledger.not_learned(found, within))
                if k in said
            ],
            "waiting": sum(1 for k in said if not (k in found and found[k].graduated)),
        }


def run_sleep(
    paths: Paths,
    config: Config,
    *,
    console=None,
    now: datetime | None = None,
    on_event: TrainCallback | None = None,
    trigger: str = "manual",
    night: str | None = None,
) -> CycleSummary:
    """Run one night; return its summary (also written to data/runs/<cycle>/summary.json).

    Raise CircadianError for user errors (locked, model missing, bad data).
    """
    from rich.console import Console

    console = console or Console()
    paths.ensure()
    say = _say_on(console)
    cycle_id = new_cycle_id(paths, now or datetime.now().astimezone())
    with sleep_lock(paths.control / "sleep.lock", cycle_id):
        recover_interrupted(paths, say)
        stale = control.active(paths.control)
        if stale:
            control.clear(paths.control)
            say(f"cleared control flags left from before this sleep: {', '.join(sorted(stale))}")
        cycle = Cycle(paths, cycle_id, say, trigger=trigger, night=night).create()
        try:
            return Sleep(cycle, paths, config, console, on_event).run()
        except Stopped as exc:
            control.clear(paths.control)
            inbox.release_training(paths, "the sleep was stopped")
            cycle.say(
                f"{exc}; nothing was promoted, {adapters.current_version(paths) or 'the base model'} stays current"
            )
            return finish(
                cycle, paths, CycleSummary(cycle_id=cycle.id, outcome="stopped", reason=str(exc)), final_stage="stopped"
            )
        except Exception as exc:  # Ctrl-C / SIGKILL: the next sleep logs the cycle as interrupted
            append_jsonl(
                paths.run_log,
                [
                    RunLogLine(
                        cycle_id=cycle.id,
                        run_type=RUN_TYPE,
                        trigger=trigger,
                        night=night,
                        outcome="failed",
                        error=str(exc)[:500],
                        logged_at=now_iso(),
                    ).row()
                ],
            )
            inbox.release_training(paths, f"the sleep failed: {str(exc)[:200]}")
            cycle.stage("failed")
            raise


def _figures(label: str, metrics: dict) -> str:
    brief = evaluate.brief_metrics(metrics)
    return (
        f"{label}: recall {figure(brief['recall'], '.0%')}, retention {figure(brief['retention'], '.0%')}, "
        f"capability {figure(brief['capability'], '.1%')}, style {figure(brief['style'], '.0%')}, "
        f"perplexity {figure(brief['perplexity'], '.2f')} "
        f"(adapter alone {figure(brief['perplexity_adapter'], '.2f')}), val loss {figure(brief['val_loss'], '.3f')}"
    )


def chain(*callbacks: TrainCallback | None) -> TrainCallback:
    """Return a callback asking each callback in turn; the first decision ("stop") wins."""

    def callback(event: TrainEvent) -> str | None:
        decisions = [c(event) for c in callbacks if c is not None]
        return next((d for d in decisions if d), None)

    return callback


def finish(cycle: Cycle, paths: Paths, summary: CycleSummary, final_stage: str = "done") -> CycleSummary:
    """The last step of every night, however it ended: summary.json, the report, one run_log line."""
    cycle.stage("report")
    summary = summary.model_copy(
        update={
            "run_type": RUN_TYPE,
            "trigger": cycle.trigger,
            "started": cycle.started_iso,
            "ended": now_iso(),
            "seconds": round(time.time() - cycle.started, 1),
            "timings": cycle.timings,
            "circadian_version": __version__,
            "purged": still_trained(paths),
        }
    )
    atomic_write_json(cycle.dir / "summary.json", summary.row())
    try:
        report.write_reports(cycle.dir)
    except Exception as exc:  # the cycle's outcome stands; the report can be rendered again later
        cycle.say(f"the report could not be rendered ({exc}); `circadian report {cycle.id}` retries")
    train = summary.train
    line = RunLogLine(
        cycle_id=summary.cycle_id,
        run_type=summary.policy if summary.chosen else RUN_TYPE,
        trigger=summary.trigger,
        night=cycle.night,
        started=summary.started,
        ended=summary.ended,
        seconds=summary.seconds,
        outcome=summary.outcome,
        version=summary.version,
        parent=summary.parent,
        backend=summary.backend,
        model=summary.model,
        chosen=summary.chosen,
        counts=summary.counts,
        datasets=summary.datasets,
        before=summary.before.brief() if summary.before else None,
        after=summary.after.brief() if summary.after else None,
        train=TrainBrief(
            steps=train.steps,
            best_step=train.best_step,
            tokens_per_second=train.tokens_per_second,
            peak_memory_mb=train.peak_memory_mb,
        )
        if train
        else None,
    )
    append_jsonl(paths.run_log, [line.row()])
    cycle.stage(final_stage)
    cycle.say(f"cycle {cycle.id}: {summary.outcome} in {summary.seconds:.0f} s; report: {cycle.dir / 'report.md'}")
    return summary


def _dry_run_generators(setting: str):
    """The generators a dry run uses: the one `sleep.generator` names; for auto and model, which need the
    teacher loaded, the night's teacher-free fallback (said so). No model loads, so lowercase names are
    read as written (the night's model capitalizes them: knowledge/casing.py)."""
    from circadian.night.knowledge import pipeline

    if setting in ("auto", "model"):
        return dataset.default_generators(), (
            f"sleep.generator is {setting}: decided at night; this plan uses parse, "
            "without the model's capitals for names typed in lowercase"
        )
    return pipeline.choose(setting), f"sleep.generator is {setting}"


def memory_estimate(model_path: Path, config: Config, train_ex: list) -> dict:
    """The training peak predicted before loading (backends/memory.py), against the limit: configured
    (train.memory_limit_mb) or 90% of what this machine has."""
    from circadian.backends import memory

    backend = select_backend(config.model.backend).name
    found = memory.before_loading(model_path, backend, config.model, config.train, train_ex)
    limit = config.train.memory_limit_mb * memory.MB or int((memory.available_bytes(backend, found.device) or 0) * 0.9)
    return {
        **found.row(),
        "line": found.line(),
        "limit_mb": round(limit / memory.MB) if limit else None,
        "fits": not limit or found.total <= limit,
    }


def dry_run(paths: Paths, config: Config, console=None) -> dict:
    """Steps 1-3 with nothing written: what tonight would train."""
    from rich.console import Console

    say = _say_on(console or Console())
    resolved = resolve_base(config.model, paths, adapters.current_base(paths), say=say)
    _scan, selection, plan = prepare(paths, config, say)
    wanted = dataset.distill_wanted(plan, config.sleep, len(distill.prompts()))
    general, not_cached = distill.cached_rows(
        paths.models / "distill_cache", resolved.path, wanted, evaluate.Asking.of(config.chat)
    )
    generators, why = _dry_run_generators(config.sleep.generator)
    plan = dataset.build(selection, config.sleep, general=general, seed=config.train.seed, generators=generators)
    plan.knowledge.generators = [f"{g.name} {g.version}" for g in generators] + [why]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    anchors = config.train.anchor_weight > 0
    train_ex = _tokenize(
        tokenizer, plan.train, config.train.max_length, anchors=anchors, system_prompt=config.chat.system_prompt
    )
    masks = validate(train_ex) if train_ex else None
    result = {
        "dry_run": True,
        "would_train": plan.new_material >= max(1, config.sleep.min_new_facts),
        "counts": plan.counts,
        "dataset_sha256": plan.sha256(),
        "redactions": dict(plan.redactions),
        "facts": plan.facts,
        "knowledge": dataset.knowledge_brief(plan),
        "probes": plan.probes,
        "distill_rows_wanted": wanted,
        "distill_rows_not_cached": not_cached,
        "capability_questions": len(evaluate.load_capability(config.sleep.capability_questions)),
        "masks": (asdict(masks) | {"target_ratio": masks.target_ratio}) if masks else None,
        "sample_rows": [r["messages"] for r in plan.train[:5]],
        "memory": memory_estimate(resolved.path, config, train_ex),
    }
    if not_cached:
        say(f"{not_cached} of {wanted} general prompts would be answered by the base model first (not cached yet)")
    return result
