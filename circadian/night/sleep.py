"""`circadian sleep`: one nightly cycle, setup -> train -> cleanup, each step logged.

1. take control/sleep.lock; note cycles a crash left unfinished; snapshot memories by byte offset
2. select untrained turns + a replay sample; quarantine unreadable rows; redact; de-duplicate
3. build question/answer rows from the day's facts (+ replay, imported conversations, general
   self-distillation), split train / valid / probe wordings, write the dataset snapshot
4. tokenize with every assistant turn as a target; validate the masks
5. train from the current adapter, keeping the best validation checkpoint
6. measure current and candidate on the same sets; 7. gate; 8. commit the version (CURRENT
   replaced atomically when promoted), prune; 9. summary, report, one run_log line.

A crash at any point leaves CURRENT and the memories as they were: the candidate is staged in
adapters/.staging-<cycle>/ and only renamed into place whole, CURRENT is replaced last.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Callable

from circadian import __version__
from circadian.night import choice, control, dataset, distill, evaluate, evolution, gate, report
from circadian.store import adapters, inbox, memories
from circadian.backends import LoadRequest, select_backend
from circadian.core.config import Config
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from circadian.core.lock import sleep_lock
from circadian.backends.resolve import resolve_model
from circadian.core.paths import Paths
from circadian.night.training import Stopped, train_datasets
from circadian.backends.tokens import encode_chat, length_batches, padding_share, validate
from circadian.core.clock import now_iso
from circadian.night.lineage import generator_of, is_distill

RUN_TYPE = "nightly"
HOLD_ENV = "CIRCADIAN_HOLD_AT"


def hold(point: str) -> None:
    """Crash-test hook: with CIRCADIAN_HOLD_AT=<point> the process says so on stderr and waits
    there, so a test can SIGKILL it at exactly that moment. Points: every stage name, plus
    commit:staged (weights written) and commit:renamed (version in place, CURRENT not yet)."""
    if os.environ.get(HOLD_ENV) == point:
        print(f"holding at {point}", file=sys.stderr, flush=True)
        time.sleep(300)


class Cycle:
    """One cycle's folder, stage marker and step log."""

    def __init__(self, paths: Paths, cycle_id: str, say: Callable[[str], None]):
        self.paths = paths
        self.id = cycle_id
        self.dir = paths.runs / cycle_id
        self.say_out = say
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self._stage: tuple[str, float] | None = None
        self.status: dict = {"cycle_id": cycle_id, "state": "running", "started": time.time()}
        self.trigger, self.night = "manual", None  # "scheduled" + the night's date for the nightly job

    def create(self) -> "Cycle":
        self.dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        return self

    def say(self, message: str) -> None:
        self.say_out(message)
        append_jsonl(self.dir / "log.jsonl", [{"ts": now_iso(), "message": message}])

    def stage(self, name: str) -> None:
        now = time.time()
        if self._stage:
            self.timings[self._stage[0]] = round(now - self._stage[1], 2)
        self._stage = (name, now)
        atomic_write_json(self.dir / "state.json", {"cycle_id": self.id, "stage": name, "ts": now_iso()})
        self.publish({"stage": name, **({"state": name} if name in ("done", "failed", "stopped") else {})})
        hold(name)

    def publish(self, fields: dict) -> None:
        """Update control/status.json (what `ctl status`, `status` and the dashboard show)."""
        self.status.update(fields)
        control.publish(self.paths.control, self.status)

    def write(self, name: str, rows: list[dict]) -> None:
        atomic_write_text(self.dir / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def new_cycle_id(paths: Paths, now: datetime) -> str:
    base = now.strftime("%Y%m%d-%H%M%S")
    cycle_id, n = base, 1
    while (paths.runs / cycle_id).exists():
        n += 1
        cycle_id = f"{base}-{n}"
    return cycle_id


def logged_cycles(paths: Paths) -> set[str]:
    return {row["cycle_id"] for _n, row, _raw in read_jsonl(paths.run_log) if row and "cycle_id" in row}


def recover_interrupted(paths: Paths, say: Callable[[str], None]) -> list[str]:
    """Log cycles a crash left unfinished (one run_log line each) and remove staged candidates."""
    recovered = []
    done = logged_cycles(paths)
    for state_file in sorted(paths.runs.glob("*/state.json")):
        cycle_id = state_file.parent.name
        if cycle_id in done:
            continue
        state = json.loads(state_file.read_text())
        append_jsonl(paths.run_log, [{"cycle_id": cycle_id, "run_type": RUN_TYPE, "outcome": "interrupted",
                                      "stage": state.get("stage"), "logged_at": now_iso(),
                                      "note": "the process ended before the cycle finished; nothing was promoted"}])
        recovered.append(cycle_id)
        say(f"cycle {cycle_id} was interrupted during '{state.get('stage')}'; logged, nothing promoted")
    for name in adapters.clean_staging(paths):
        say(f"removed unfinished candidate {name}")
    released = inbox.release_training(paths, "the cycle training it ended without a decision")
    if released:
        say(f"inbox datasets back in the queue: {', '.join(released)}")
    return recovered


def quarantine_bad_lines(paths: Paths, bad_lines: list[int], end: int) -> int:
    """Copy unreadable memory lines to data/quarantine/memories.jsonl once each, with the reason."""
    if not bad_lines:
        return 0
    target = paths.quarantine / "memories.jsonl"
    known = {row.get("line") for _n, row, _raw in read_jsonl(target) if row}
    raw_by_line = {n: raw for n, _row, raw in read_jsonl(paths.memories, end=end)}
    rows = [{"line": n, "reason": "not a valid memory record (JSON object with id, ts and messages)",
             "raw": raw_by_line.get(n, ""), "quarantined_at": now_iso()}
            for n in bad_lines if n not in known]
    if rows:
        append_jsonl(target, rows)
    return len(rows)


def _tokenize(tokenizer, rows: list[dict], max_length: int, *, anchors: bool = False):
    """Tokenize rows; with `anchors`, self-distillation replay rows become KL-to-base anchors."""
    examples = []
    for row in rows:
        example = encode_chat(tokenizer, row["messages"], max_length)
        example.anchor = anchors and is_distill(row)
        examples.append(example)
    return examples


def prepare(paths: Paths, config: Config, say: Callable[[str], None], *, general=()):
    """Steps 1-3 without side effects beyond the cycle folder: return (scan, selection, plan)."""
    end = paths.memories.stat().st_size if paths.memories.exists() else 0
    scan = memories.scan(paths, end=end)
    say(f"snapshot: {len(scan.records)} turns up to byte {end}"
        + (f", {len(scan.bad_lines)} unreadable line(s)" if scan.bad_lines else ""))
    selection = dataset.select(scan.records, trained=adapters.trained_ids(paths),
                               forgotten=memories.forgotten_ids(paths))
    plan = dataset.build(selection, config.sleep, general=list(general), seed=config.train.seed)
    skipped = ", ".join(f"{v} {k}" for k, v in sorted(selection.skipped.items())) or "none"
    say(f"selected {len(selection.new)} new turn(s), {len(selection.replay_pool)} already learned; skipped: {skipped}")
    redacted = ", ".join(f"{v} {k}" for k, v in sorted(plan.redactions.items())) or "nothing"
    say(f"redacted: {redacted}; facts: {len(plan.facts)} new, {len(plan.replayed_facts)} replayed")
    return scan, selection, plan


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console, transient=False)


def run_sleep(paths: Paths, config: Config, *, console=None, now: datetime | None = None,
              on_event: Callable[[dict], str | None] | None = None, trigger: str = "manual",
              night: str | None = None) -> dict:
    """Run one cycle; return its summary (also written to data/runs/<cycle>/summary.json).

    Raise CircadianError for user errors (locked, model missing, bad data).
    """
    from rich.console import Console

    console = console or Console()
    paths.ensure()
    now = now or datetime.now().astimezone()
    say_console = lambda m: console.print(f"· {m}", highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    cycle_id = new_cycle_id(paths, now)
    with sleep_lock(paths.control / "sleep.lock", cycle_id):
        recover_interrupted(paths, say_console)
        stale = control.active(paths.control)
        if stale:
            control.clear(paths.control)
            say_console(f"cleared control flags left from before this sleep: {', '.join(sorted(stale))}")
        cycle = Cycle(paths, cycle_id, say_console).create()
        cycle.trigger, cycle.night = trigger, night
        try:
            return _run(cycle, paths, config, console, on_event)
        except Stopped as exc:
            control.clear(paths.control)
            inbox.release_training(paths, "the sleep was stopped")
            cycle.say(f"{exc}; nothing was promoted, {adapters.current_version(paths) or 'the base model'} stays current")
            summary = _finish(cycle, paths, {"outcome": "stopped", "reason": str(exc)}, final_stage="stopped")
            return summary
        except Exception as exc:  # Ctrl-C / SIGKILL: the next sleep logs the cycle as interrupted
            append_jsonl(paths.run_log, [{"cycle_id": cycle.id, "run_type": RUN_TYPE, "trigger": trigger,
                                          "night": night, "outcome": "failed", "error": str(exc)[:500], "logged_at": now_iso()}])
            inbox.release_training(paths, f"the sleep failed: {str(exc)[:200]}")
            cycle.stage("failed")
            raise


def _run(cycle: Cycle, paths: Paths, config: Config, console, on_event) -> dict:
    cycle.stage("snapshot")
    cycle.say(f"cycle {cycle.id} starts")
    scan, selection, plan = prepare(paths, config, cycle.say)
    quarantined = quarantine_bad_lines(paths, scan.bad_lines, scan.end_offset)
    if quarantined:
        cycle.say(f"quarantined {quarantined} unreadable line(s) in data/quarantine/memories.jsonl")
    for entry in inbox.ingest(paths, settle_seconds=config.sleep.inbox_settle_seconds):
        cycle.say(f"inbox: {entry['priority']}/{entry['name']} -> {entry['id']}: {entry['rows']} rows, "
                  f"{entry['quarantined']} quarantined, {entry['state']}")
    queued = inbox.queued(paths)
    if queued:
        cycle.say(f"queue: {len(queued)} dataset(s) to train, {', '.join(e['id'] for e in queued)}")
    if plan.new_material < max(1, config.sleep.min_new_facts) and not queued:
        cycle.say("nothing to learn tonight")
        return _finish(cycle, paths, {"outcome": "nothing to learn", "counts": plan.counts,
                                      "redactions": dict(plan.redactions)})

    cycle.stage("load")
    backend = select_backend(config.model.backend)
    resolved = resolve_model(config.model, paths.models, say=cycle.say)
    active = adapters.active_adapter(paths)
    if active and active.manifest.backend != backend.name:
        raise CircadianError(f"the current adapter {active.version} was trained with {active.manifest.backend}; "
                             f"this sleep runs {backend.name} (set model.backend, or `circadian rollback base`)")
    cycle.say(f"loading {resolved.name} on {backend.name} with adapter {active.version if active else 'none (base)'}")
    model = backend.load(LoadRequest(resolved.name, resolved.path, config.model.device, config.model.dtype,
                                     config.model.quantize, active.path if active else None,
                                     active.version if active else None))
    start = (active.path, active.version) if active else (None, None)
    restore = lambda: model.set_adapter(*start) if active else None  # noqa: E731  (nothing to undo on the base)
    cache = paths.models / "distill_cache"
    wanted = dataset.distill_wanted(plan, config.sleep, len(distill.prompts()))
    with _progress(console) as progress:
        task = progress.add_task("distill: general prompts", total=distill.missing(cache, resolved.path, wanted), info="")
        general = distill.distilled_rows(model, restore, cache, resolved.path, wanted,
                                      on_item=lambda: progress.advance(task))
    cycle.say(f"distill: {len(general)} general prompts answered by the base model")
    plan = dataset.build(selection, config.sleep, general=general, seed=config.train.seed)
    if plan.new_material < max(1, config.sleep.min_new_facts):
        plan.datasets[-1].train = []  # today has too little of its own; its general rows alone teach nothing
    inbox_rows = {e["id"]: inbox.load_rows(paths, e) for e in queued}
    plan = dataset.add_inbox(plan, [(e, inbox_rows[e["id"]]) for e in queued], config.sleep)
    datasets, night_choice = plan.datasets, None
    if config.sleep.policy != "all":
        night_choice, datasets = choice.choose(
            paths, config.sleep.policy, model, config.train, cycle_id=cycle.id, selection=selection,
            inbox_rows=[m for rows in inbox_rows.values() for m in rows], general=general,
            region=config.sleep.redact_region, plan=plan, distill_per_row=config.sleep.distill_per_fact_row,
            restore=lambda: model.set_adapter(*start),  # a trial trained: undo it, on the base too
            say=cycle.say, trial_steps=config.sleep.trial_steps)
        cycle.say(f"policy {config.sleep.policy}: chose {night_choice.choice.source} ({night_choice.choice.reason}); "
                  "selection losses " + ", ".join(f"{k} {v:.3f}" for k, v in night_choice.losses.items()))
    inbox.set_state(paths, [u.queue_id for u in datasets if u.queue_id], "training", cycle_id=cycle.id)

    cycle.stage("dataset")
    snapshot = cycle.dir / "dataset"
    snapshot.mkdir()
    for name, rows in (("train.jsonl", plan.train), ("valid.jsonl", plan.valid), ("probes.jsonl", plan.probes),
                       ("retention_probes.jsonl", plan.retention_probes), ("facts.jsonl", plan.facts),
                       ("replayed_facts.jsonl", plan.replayed_facts)):
        cycle.write(f"dataset/{name}", [{k: v for k, v in r.items() if k != "lineage"} for r in rows])
    cycle.write("dataset/lineage.jsonl", [{"split": split, "row": i, **row.get("lineage", {})}
                                          for split, rows in (("train", plan.train), ("valid", plan.valid))
                                          for i, row in enumerate(rows)])
    cycle.say(f"dataset: {len(plan.train)} train rows, {len(plan.valid)} valid rows, {len(plan.probes)} recall probes "
              f"(sha256 {plan.sha256()[:12]})")

    tokenizer = model.tokenizer
    train_ex = _tokenize(tokenizer, plan.train, config.train.max_length, anchors=config.train.anchor_weight > 0)
    valid_ex = _tokenize(tokenizer, plan.valid, config.train.max_length)
    masks = validate(train_ex)
    validate(valid_ex)
    lengths = [len(e) for e in train_ex]
    padding = padding_share(lengths, length_batches(lengths, config.train.batch_size, seed=0))
    cycle.say(f"masks: {masks.targets} of {masks.tokens} tokens trained ({masks.target_ratio:.0%}); "
              f"padding with length batches {padding:.1%}")

    capability = evaluate.load_capability()
    general_ex = evaluate.general_examples(tokenizer)
    measure_kwargs = dict(valid=valid_ex, probes=plan.probes, retention=plan.retention_probes, capability=capability,
                          general=general_ex, probe_tokens=config.sleep.probe_max_tokens,
                          capability_tokens=config.sleep.capability_max_tokens)
    n_questions = len(plan.probes) + len(plan.retention_probes) + len(capability)

    def measured(label: str) -> dict:
        with _progress(console) as progress:
            task = progress.add_task(f"measuring {label}", total=n_questions, info="")
            metrics = evaluate.measure(model, **measure_kwargs, on_item=lambda: progress.advance(task))
        cycle.say(_figures(label, metrics))
        return metrics

    cycle.stage("eval_before")
    before = measured("current")

    cycle.stage("train")
    tracker = None
    if config.sleep.track:
        examples = evolution.tracked_sample(
            evolution.probe_expected(plan.train, plan.probes + plan.retention_probes),
            [r for u in datasets for r in u.train], config.sleep.track_sample, seed=config.train.seed)
        tracker = evolution.Tracker(model, examples, cycle.dir / "evolution", max_tokens=config.sleep.track_max_tokens,
                                    budget=config.sleep.track_budget, max_length=config.train.max_length,
                                    min_steps=config.train.min_steps)
        tracker.start()
    night = train_datasets(
        model, datasets, cycle_dir=cycle.dir, control=paths.control, say=cycle.say, publish=cycle.publish,
        tokenize=lambda rows, is_train: _tokenize(tokenizer, rows, config.train.max_length,
                                                  anchors=is_train and config.train.anchor_weight > 0),
        train_one=lambda m, t, v, cb: _train(cycle, m, t, v, config, console,
                                             _chain(cb, tracker.on_event if tracker else None, on_event)),
        on_skip=lambda dataset: inbox.set_state(paths, [dataset.queue_id] if dataset.queue_id else [], "skipped",
                                             cycle_id=cycle.id, reason="skipped by request"),
        start=start)
    if night.result is None:
        cycle.say("every dataset was skipped; nothing to evaluate or commit")
        inbox.release_training(paths, "nothing was trained")
        return _finish(cycle, paths, {"outcome": "skipped", "counts": plan.counts,
                                      "datasets": [o.as_dict() for o in night.outcomes],
                                      "redactions": dict(plan.redactions)})
    result = night.result
    evolution_brief = tracker.finish(result.steps) if tracker else None
    if evolution_brief:
        counts, overhead = evolution_brief["counts"], evolution_brief["overhead"]
        cycle.say(f"learning evolution: {counts['learned']} learned, {counts['struggling']} struggling, "
                  f"{counts['not learned']} not learned; {overhead['snapshots']} snapshots cost "
                  f"{overhead['share']:.0%} of the training time")
    if night_choice:
        reward = sum(night_choice.losses.values()) / len(night_choice.losses) - night_choice.mean_loss(model)
        night_choice.policy.update(night_choice.choice.source, reward)
        choice.save_policy(paths, night_choice.policy)
        cycle.say(f"learning progress on the selection splits: {reward:+.4f} (the policy's reward)")
    cycle.say(f"trained {result.steps} steps ({result.stop_reason}); best step {result.best_step}, "
              f"{result.tokens_per_second:.0f} tokens/s, peak memory {result.peak_memory_mb:.0f} MB")

    cycle.stage("eval_after")
    after = measured("candidate")

    cycle.stage("gate")
    base_ppl = (active.manifest.metrics.get("base_perplexity") if active else None) or \
        (before["perplexity"] if not active else None)
    decision = gate.decide(before, after, config.gate, base_ppl)
    cycle.say(f"gate: {'PROMOTE' if decision.promote else 'REJECT'} ({'; '.join(decision.reasons)})")
    blend = None
    if decision.learned and not decision.safe and config.gate.fallback_scales and hasattr(model, "blend_adapter"):
        after, decision, blend = _blended_fallback(cycle, model, start[0], before, after, decision, measured,
                                                   config, base_ppl)

    cycle.stage("commit")
    version = adapters.next_version(paths, datetime.now().astimezone())
    staging = adapters.staging_dir(paths, cycle.id)
    if staging.exists():
        shutil.rmtree(staging)
    weights = model.save_adapter(staging)
    hold("commit:staged")
    manifest = {
        "version": version, "parent": active.version if active else None,
        "created_at": now_iso(), "cycle_id": cycle.id, "backend": backend.name,
        "base_model": {"name": resolved.name, "path": str(resolved.path), "revision": resolved.revision,
                       "identity": distill.model_identity(resolved.path)},
        "lora": {k: v for k, v in config.train.model_dump().items()
                 if k in ("rank", "alpha", "dropout", "dora", "learning_rate", "batch_size", "max_length")},
        "data": {**plan.counts, "sha256": plan.sha256(), "redactions": dict(plan.redactions),
                 "sources": sorted({generator_of(row) or "?" for row in plan.train}),
                 "snapshot": str(cycle.dir / "dataset"), "memories_end_offset": scan.end_offset},
        "metrics": {"before": evaluate.brief_metrics(before), "after": evaluate.brief_metrics(after), "base_perplexity": base_ppl},
        "gate": decision.as_dict(), **({"blend": blend} if blend else {}),
        "timings": cycle.timings, "train": _train_brief(result),
        "tokens_per_second": round(result.tokens_per_second, 1), "peak_memory_mb": round(result.peak_memory_mb, 1),
        "circadian_version": __version__, "weights": weights,
    }
    today_trained = any(o.name == "today" and o.state == "trained" for o in night.outcomes)
    adapters.commit(paths, staging, manifest, plan.trained_ids if decision.promote and today_trained else [])
    hold("commit:renamed")
    if decision.promote:
        inbox.set_state(paths, night.ids("trained"), "done", cycle_id=cycle.id, reason=f"learned in {version}")
        adapters.set_current(paths, version, reason=f"promoted by cycle {cycle.id}")
        cycle.say(f"promoted {version}; it answers from the next chat turn")
    else:
        inbox.set_state(paths, night.ids("trained"), "queued", cycle_id=cycle.id, retry=True,
                        reason=f"the candidate {version} was rejected")
        cycle.say(f"kept {version} as rejected; {active.version if active else 'the base model'} stays current")
    for gone in adapters.prune(paths, config.store.keep):
        cycle.say(f"retention: deleted {gone}")

    return _finish(cycle, paths, {
        "outcome": "promoted" if decision.promote else "rejected", "version": version,
        "parent": active.version if active else None, "backend": backend.name, "model": resolved.name,
        "counts": plan.counts, "redactions": dict(plan.redactions), "dataset_sha256": plan.sha256(),
        "masks": asdict(masks) | {"target_ratio": masks.target_ratio}, "padding_share": padding,
        "train": _train_brief(result), "before": before, "after": after, "gate": decision.as_dict(),
        **({"blend": blend} if blend else {}),
        "facts": plan.facts, "base_perplexity": base_ppl, "datasets": [o.as_dict() for o in night.outcomes],
        **({"chosen": night_choice.choice.source, "policy": config.sleep.policy} if night_choice else {}),
        **({"evolution": evolution_brief} if evolution_brief else {}),
    })


def _blended_fallback(cycle: Cycle, model, start_path, before: dict, full: dict, full_decision, measured,
                      config: Config, base_ppl):
    """The candidate learned but broke a capability or perplexity bound: try it blended back toward
    the adapter it started from (each of `gate.fallback_scales`, largest first) and keep the first
    blend that passes the gate; if none does, restore the full candidate (kept as rejected).
    Return (metrics, decision, record for the manifest)."""
    cycle.stage("eval_blend")
    tried = []
    for factor in config.gate.fallback_scales:
        model.blend_adapter(start_path, factor)
        metrics = measured(f"candidate blended x{factor:g}")
        decision = gate.decide(before, metrics, config.gate, base_ppl)
        tried.append({"factor": factor, "metrics": evaluate.brief_metrics(metrics), "gate": decision.as_dict()})
        cycle.say(f"gate, blend x{factor:g}: {'PROMOTE' if decision.promote else 'REJECT'} "
                  f"({'; '.join(decision.reasons)})")
        if decision.promote:
            failed = [r for r in full_decision.reasons if "allowed" in r]
            decision.reasons.insert(0, f"the full candidate broke a bound ({'; '.join(failed)}); promoted blended "
                                       f"x{factor:g} toward {'the current adapter' if start_path else 'the base model'}")
            return metrics, decision, {"factor": factor, "tried": tried, "full": evaluate.brief_metrics(full),
                                       "full_gate": full_decision.as_dict()}
    model.blend_adapter(start_path, 1.0)
    full_decision.reasons.append(f"blends x{', x'.join(f'{f:g}' for f in config.gate.fallback_scales)} "
                                 "failed the gate too")
    return full, full_decision, {"factor": 1.0, "tried": tried, "full": evaluate.brief_metrics(full),
                                 "full_gate": full_decision.as_dict()}


def _train(cycle: Cycle, model, train_ex, valid_ex, config: Config, console, on_event):
    metrics_path = cycle.dir / "metrics.jsonl"
    with _progress(console) as progress:
        task = progress.add_task("training", total=None, info="")

        def callback(event: dict) -> str | None:
            decision = on_event(event) if on_event else None  # may tag the event with its dataset, or pause
            append_jsonl(metrics_path, [{**event, "ts": time.time()}], lock=False)
            info = [f"loss {event['train_loss']:.3f}" if "train_loss" in event else "",
                    f"val {event['val_loss']:.3f}" if event.get("val_loss") is not None else "",
                    f"{event['tokens_per_second']:.0f} tok/s" if "tokens_per_second" in event else "",
                    f"{event['peak_memory_mb']:.0f} MB" if "peak_memory_mb" in event else ""]
            progress.update(task, total=event.get("total_steps"), completed=event["iteration"],
                            info=" · ".join(i for i in info if i))
            return decision

        return model.train(train_ex, valid_ex, config.train, callback)


def _train_brief(result) -> dict:
    return {"steps": result.steps, "best_step": result.best_step, "stop_reason": result.stop_reason,
            "initial_val_loss": result.initial_val_loss, "best_val_loss": result.best_val_loss,
            "trained_tokens": result.trained_tokens, "tokens_per_second": result.tokens_per_second,
            "train_seconds": result.train_seconds, "peak_memory_mb": result.peak_memory_mb}


def _figures(label: str, metrics: dict) -> str:
    brief = evaluate.brief_metrics(metrics)
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    return (f"{label}: recall {fmt(brief['recall'], '.0%')}, retention {fmt(brief['retention'], '.0%')}, "
            f"capability {fmt(brief['capability'], '.0%')}, perplexity {fmt(brief['perplexity'], '.2f')}, "
            f"val loss {fmt(brief['val_loss'], '.3f')}")


def _chain(*callbacks: Callable | None) -> Callable:
    """Return a callback asking each callback in turn; the first decision ("stop") wins."""
    def callback(event: dict) -> str | None:
        decisions = [c(event) for c in callbacks if c is not None]
        return next((d for d in decisions if d), None)
    return callback


def _finish(cycle: Cycle, paths: Paths, figures: dict, final_stage: str = "done") -> dict:
    cycle.stage("report")
    summary = {"cycle_id": cycle.id, "run_type": RUN_TYPE, "trigger": cycle.trigger, "started": datetime.fromtimestamp(cycle.started).astimezone()
               .isoformat(timespec="seconds"), "ended": now_iso(),
               "seconds": round(time.time() - cycle.started, 1), "timings": cycle.timings,
               "circadian_version": __version__, **figures}
    atomic_write_json(cycle.dir / "summary.json", summary)
    try:
        report.write_reports(cycle.dir)
    except Exception as exc:  # the cycle's outcome stands; the report can be rendered again later
        cycle.say(f"the report could not be rendered ({exc}); `circadian report {cycle.id}` retries")
    line = {k: summary.get(k) for k in ("cycle_id", "run_type", "trigger", "started", "ended", "seconds", "outcome", "version",
                                        "parent", "backend", "model")}
    if summary.get("chosen"):
        line.update(chosen=summary["chosen"], run_type=summary["policy"])
    if "before" in summary:
        line["before"] = evaluate.brief_metrics(summary["before"])
        line["after"] = evaluate.brief_metrics(summary["after"])
        line["train"] = {k: summary["train"][k] for k in ("steps", "best_step", "tokens_per_second", "peak_memory_mb")}
    line["counts"] = summary.get("counts", {})
    if summary.get("datasets"):
        line["datasets"] = summary["datasets"]
    if cycle.night:
        line["night"] = cycle.night
    append_jsonl(paths.run_log, [line])
    cycle.stage(final_stage)
    cycle.say(f"cycle {cycle.id}: {summary['outcome']} in {summary['seconds']:.0f} s; "
              f"report: {cycle.dir / 'report.md'}")
    return summary


def dry_run(paths: Paths, config: Config, console=None) -> dict:
    """Steps 1-4 with nothing written: what tonight would train."""
    from rich.console import Console

    console = console or Console()
    say = lambda m: console.print(f"· {m}", highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    resolved = resolve_model(config.model, paths.models, say=say)
    _scan, selection, plan = prepare(paths, config, say)
    wanted = dataset.distill_wanted(plan, config.sleep, len(distill.prompts()))
    general, not_cached = distill.cached_rows(paths.models / "distill_cache", resolved.path, wanted)
    plan = dataset.build(selection, config.sleep, general=general, seed=config.train.seed)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    train_ex = _tokenize(tokenizer, plan.train, config.train.max_length)
    masks = validate(train_ex) if train_ex else None
    result = {"dry_run": True, "would_train": plan.new_material >= max(1, config.sleep.min_new_facts),
              "counts": plan.counts, "redactions": dict(plan.redactions), "facts": plan.facts,
              "probes": plan.probes, "distill_rows_wanted": wanted, "distill_rows_not_cached": not_cached,
              "masks": (asdict(masks) | {"target_ratio": masks.target_ratio}) if masks else None,
              "sample_rows": [r["messages"] for r in plan.train[:5]]}
    if not_cached:
        say(f"{not_cached} of {wanted} general prompts would be answered by the base model first (not cached yet)")
    return result
