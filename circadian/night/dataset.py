"""Step 2-3 of a night: choose what to learn and build the training set (pure functions).

`select` splits the memory snapshot into new turns, already-trained turns (the replay pool) and
turns that must never be trained (no-train, forgotten, interrupted). `build` redacts secrets and
personal identifiers, extracts facts from what the user said, turns each fact into question/answer
rows in several wordings (train / valid / probe wordings never shared), replays a sample of older
facts, adds imported conversations (split by conversation) and self-distilled general answers, and
de-duplicates. Every row carries its lineage.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from circadian.core.config import SleepSettings
from circadian.core.errors import CircadianError
from circadian.night.knowledge import pipeline as knowledge
from circadian.night.knowledge import rows as fact_rows
from circadian.night.knowledge.conversation import conversations_of, inbox_conversations
from circadian.night.knowledge.pipeline import Knowledge
from circadian.night.lineage import INBOX, MEMORY, is_distill, is_fact
from circadian.night.redact import redact_messages
from circadian.store.memories import NO_TRAIN_TAG, MemoryRecord

SKIP_TAGS = {NO_TRAIN_TAG: "no-train", "interrupted": "interrupted"}


@dataclass
class Selection:
    """The snapshot split by what may be learned tonight."""

    new: list[MemoryRecord] = field(default_factory=list)
    replay_pool: list[MemoryRecord] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def select(records: list[MemoryRecord], *, trained: set[str], forgotten: set[str]) -> Selection:
    """Given snapshot records, the ids already learned and the tombstoned ids, split them (pure)."""
    out = Selection()
    for record in records:
        if record.id in forgotten:
            out.skipped["forgotten"] += 1
        elif reason := next((SKIP_TAGS[t] for t in record.tags if t in SKIP_TAGS), None):
            out.skipped[reason] += 1
        elif record.id in trained:
            out.replay_pool.append(record)
        else:
            out.new.append(record)
    return out


@dataclass
class Dataset:
    """One dataset of the night, trained as its own phase (an inbox dataset, or today's memories)."""

    name: str
    train: list[dict]
    valid: list[dict]
    queue_id: str | None = None


@dataclass
class Plan:
    """Everything a night trains and checks, before tokenization."""

    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)  # today's facts, held-out wordings
    retention_probes: list[dict] = field(default_factory=list)  # older facts, held-out wordings
    facts: list[dict] = field(default_factory=list)
    replayed_facts: list[dict] = field(default_factory=list)
    trained_ids: list[str] = field(default_factory=list)
    redactions: Counter = field(default_factory=Counter)
    counts: dict = field(default_factory=dict)
    datasets: list[Dataset] = field(default_factory=list)  # trained one after another; "today" last
    knowledge: Knowledge = field(default_factory=Knowledge)  # what the generators made of today
    updates: list[dict] = field(default_factory=list)  # {"old", "new", "old_answers", "answers"}

    @property
    def new_material(self) -> int:
        """How many new things there are to learn: new facts, new conversations, inbox rows."""
        return len(self.facts) + self.counts.get("conversations_new", 0) + self.counts.get("inbox_rows", 0)

    def sha256(self) -> str:
        """A hash of the exact training and validation rows."""
        h = hashlib.sha256()
        for split in (self.train, self.valid):
            for row in split:
                h.update(json.dumps(row["messages"], sort_keys=True).encode())
            h.update(b"|")
        return h.hexdigest()


def row_key(row: dict) -> str:
    """A training row's identity: the sha256 of its messages."""
    return hashlib.sha256(json.dumps(row["messages"], sort_keys=True).encode()).hexdigest()


def drop_rows(plan: Plan, datasets: list[Dataset], reasons: dict[str, str]) -> list[dict]:
    """Take the rows whose `row_key` is in `reasons` out of the plan and every dataset (in place).

    Return them once each, as quarantine entries {split, reason, lineage, messages}.
    """
    dropped: dict[str, dict] = {}
    for holder in (plan, *plan.datasets, *datasets):
        for split in ("train", "valid"):
            kept = []
            for row in getattr(holder, split):
                key = row_key(row)
                if key not in reasons:
                    kept.append(row)
                    continue
                dropped.setdefault(
                    key,
                    {"key": key, "split": split, "reason": reasons[key], "lineage": row.get("lineage", {}), **row},
                )
            setattr(holder, split, kept)
    return list(dropped.values())


def default_generators():
    """The generators a night runs when none is chosen: `parse` with `rules` beside it, or `rules` alone
    where spaCy is not installed."""
    from circadian.night.knowledge import pipeline

    try:
        return pipeline.choose("parse")
    except CircadianError:
        return pipeline.choose("rules")


def mine(records: list[MemoryRecord], region: str, chosen, redactions: Counter | None = None) -> Knowledge:
    """Given turns (oldest first), return what the generators learn from them, after redaction."""
    return knowledge.mine(conversations_of(records, region, redactions), chosen)


def hash_share(key: str, salt: str) -> float:
    """Given a key and a salt, return a stable number in [0, 1]: the one way rows are split by content."""
    return int(hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _dedupe(rows: list[dict], seen: set[str]) -> list[dict]:
    out = []
    for row in rows:
        key = json.dumps(row["messages"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def build(
    selection: Selection,
    settings: SleepSettings,
    *,
    general: list[dict] = (),
    seed: int = 0,
    salt: str = "v1",
    generators=None,
    graduated: set[str] = frozenset(),
) -> Plan:
    """Given the selection, the self-distilled general rows and the generators (default: parse + rules),
    return the night's Plan (pure: the generators only read). Older facts that have not `graduated`
    (store/ledger.py) are replayed first, so the night asks them again."""
    plan = Plan()
    region = settings.redact_region
    chosen = generators if generators is not None else default_generators()
    new = mine(selection.new, region, chosen, plan.redactions)
    old = mine(selection.replay_pool, region, chosen)
    crossed = [(f, n) for f in old.facts for n in new.facts if knowledge.replaces(n, f)]  # updates across nights
    gone = {f.key for f, _n in crossed}
    standing = [f for f in old.facts if f.key not in gone]
    random.Random(seed).shuffle(standing)
    standing.sort(key=lambda f: f.key in graduated)  # stable: the shuffled order within each group
    replayed = standing[: settings.replay_facts]

    rows = fact_rows.build(new.facts, replaced=new.replaced + crossed, salt=salt, seed=seed)
    plan.train += rows.train
    plan.valid += rows.valid
    plan.probes += rows.probes
    plan.facts = [f.to_dict() for f in new.facts]
    plan.knowledge = new
    plan.updates = [
        {
            "old": old_fact.statement,
            "new": new_fact.statement,
            "old_answers": list(old_fact.answers),
            "answers": list(new_fact.answers),
        }
        for old_fact, new_fact in new.replaced + crossed
    ]
    again = fact_rows.build(replayed, salt=salt, seed=seed, valid=False)
    # two builds may word a question alike ("Where am I from?" for two nights' facts): a replayed row never
    # trains tonight's held-out wordings, and an older fact's probe is not asked in a wording tonight trains
    held = _questions(plan.valid) | {p["question"] for p in plan.probes}
    per_fact: Counter = Counter()
    for r in again.train:  # `replay_rows` rows a replayed fact
        if (
            per_fact[r["lineage"]["fact"]] < settings.replay_rows
            and not r["lineage"].get("profile")
            and not _questions([r]) & held
        ):
            per_fact[r["lineage"]["fact"]] += 1
            plan.train.append(r)
    trained = _questions(plan.train)
    plan.retention_probes += [p for p in again.probes if p["question"] not in trained]
    plan.replayed_facts = [f.to_dict() for f in replayed]

    conversations = [r for r in selection.new if r.is_conversation]
    held_out: set[str] = set()
    if len(conversations) >= 4:  # ~15% validate, never none; keyed by what was said, not the random ids
        said = lambda r: json.dumps([m.model_dump() for m in r.messages], sort_keys=True)  # noqa: E731
        ranked = sorted(conversations, key=lambda r: hash_share(said(r), salt))
        held_out = {r.id for r in ranked if hash_share(said(r), salt) < 0.15} or {ranked[0].id}
    for record in conversations:
        messages, _counts = redact_messages([m.model_dump() for m in record.messages], region)
        row = {"messages": messages, "lineage": {"generator": MEMORY, "version": "1", "source_id": record.id}}
        (plan.valid if record.id in held_out else plan.train).append(row)

    plan.train += general  # anchors: their drift is measured on the general text, not in the validation loss

    seen: set[str] = set()
    plan.train = _dedupe(plan.train, seen)
    plan.valid = _dedupe(plan.valid, seen)  # a row in train never also validates
    plan.trained_ids = sorted({r.id for r in selection.new})
    plan.counts = {
        "turns_new": len(selection.new),
        "turns_replay_pool": len(selection.replay_pool),
        **{f"skipped_{k}": v for k, v in sorted(selection.skipped.items())},
        "facts_new": len(plan.facts),
        "facts_rejected": len(new.rejected),
        "facts_updated": len(plan.updates),
        "facts_replayed": len(replayed),
        "conversations_new": len(conversations),
        "distill_rows": len(general),
        "rows_train": len(plan.train),
        "rows_valid": len(plan.valid),
        "probes": len(plan.probes),
        "retention_probes": len(plan.retention_probes),
    }
    check_no_leak(plan)
    plan.datasets = [Dataset("today", list(plan.train), list(plan.valid))]
    return plan


def _split_by_row(rows: list[dict], salt: str) -> tuple[list[dict], list[dict]]:
    """~15% of rows validate (never none when there are 4 or more), chosen by content hash."""
    if len(rows) < 4:
        return rows, []
    key = lambda r: hash_share(json.dumps(r["messages"], sort_keys=True), salt)  # noqa: E731
    ranked = sorted(rows, key=key)
    valid = [r for r in ranked if key(r) < 0.15] or ranked[:1]
    chosen = {id(r) for r in valid}
    return [r for r in rows if id(r) not in chosen], valid


def add_inbox(
    plan: Plan,
    datasets: list[tuple[dict, list[list[dict]]]],
    settings: SleepSettings,
    salt: str = "v1",
    generators=None,
) -> Plan:
    """Given queue entries with their rows, put one dataset per dataset before today's (pure apart from
    `plan`). Rows are redacted and de-duplicated; chats are mined for facts like the day's (their fact
    rows train with the dataset, their probes join the night's); each dataset gets its share of general
    anchor rows."""
    anchors = [r for r in plan.train if is_distill(r)]
    queued = []
    chosen = generators if generators is not None else default_generators()
    for entry, rows in datasets:
        mined = knowledge.mine(inbox_conversations(entry["id"], rows, settings.redact_region), chosen)
        found = fact_rows.build(mined.facts, replaced=mined.replaced, salt=salt)
        plan.facts += [f.to_dict() for f in mined.facts]
        plan.probes += found.probes
        plan.knowledge.coverage += mined.coverage
        plan.knowledge.rejected += mined.rejected
        seen: set[str] = set()
        dataset_rows = []
        for messages in rows:
            clean, counts = redact_messages(messages, settings.redact_region)
            plan.redactions.update(counts)
            dataset_rows.append(
                {
                    "messages": clean,
                    "lineage": {"generator": INBOX, "version": "1", "source_id": entry["id"], "file": entry["name"]},
                }
            )
        dataset_rows = _dedupe(dataset_rows, seen)
        train, valid = _split_by_row(dataset_rows, salt)
        train += _dedupe(found.train, seen)
        valid += _dedupe(found.valid, seen)
        share = anchors[: min(len(anchors), math.ceil(settings.distill_per_fact_row * len(train)))]
        queued.append(Dataset(f"inbox {entry['priority']}: {entry['name']}", train + share, valid, entry["id"]))
        plan.train += train
        plan.valid += valid
    plan.datasets = queued + plan.datasets
    plan.counts["inbox_datasets"] = len(queued)
    plan.counts["inbox_rows"] = sum(len(d.train) + len(d.valid) for d in queued) - sum(
        1 for d in queued for r in d.train if is_distill(r)
    )
    plan.counts["facts_new"] = len(plan.facts)
    plan.counts["probes"] = len(plan.probes)
    plan.counts["rows_train"], plan.counts["rows_valid"] = len(plan.train), len(plan.valid)
    return plan


def knowledge_brief(plan: Plan) -> dict:
    """What the report and `sleep --dry-run` show of the night's knowledge: which generators ran, every
    personal message with the facts learned from it (none: not understood), updates and rejected facts."""
    found = plan.knowledge
    return {
        "generators": found.generators,
        "coverage": found.coverage,
        "coverage_share": found.coverage_share,
        "updates": plan.updates,
        "rejected": [r.to_dict() for r in found.rejected],
    }


def distill_wanted(plan: Plan, settings: SleepSettings, available: int) -> int:
    """Given a plan built without general rows, return how many general prompts the night should
    mix in: `distill_prompts`, or more when fact rows would outnumber them (up to what is available)."""
    facts = sum(1 for r in plan.train if is_fact(r))
    return min(available, max(settings.distill_prompts, math.ceil(settings.distill_per_fact_row * facts)))


def _questions(rows: list[dict]) -> set[str]:
    """The user messages of the fact rows among `rows`."""
    return {m["content"] for row in rows if is_fact(row) for m in row["messages"] if m["role"] == "user"}


def check_no_leak(plan: Plan) -> None:
    """Raise AssertionError if a fact question trained on is also a validation or probe wording."""
    train = _questions(plan.train)
    held_out = _questions(plan.valid) | {p["question"] for p in plan.probes + plan.retention_probes}
    leaked = train & held_out
    assert not leaked, f"held-out wording leaked into training: {sorted(leaked)[:3]}"
