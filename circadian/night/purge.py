"""`circadian forget --purge`: a real delete of one turn, the one deliberate exception to append-only.

`purge_turn`, holding the sleep lock, first writes a tombstone (the turn is never trained from
then on), then removes what was made from the turn: from every night's folder in `data/runs/`
(dataset snapshots, evolution snapshots, summaries; the reports are rendered again), from the
questions a stored router keeps (its manifest's hash follows), from the base model's cached
answers in `models/eval_cache/`, from the quarantine, the memory index and the chat's typed-line
history, and from every backup snapshot that holds it (each is written out, purged the same way, and
stored again; no snapshot is taken first, since it would keep what the user asked to delete); it
records the purge in `data/purges.jsonl` (ids and versions only, never the text) and rewrites
`data/memories.jsonl` without the turn last, so a purge that fails midway can be run again. An
adapter already trained on it keeps what it learned: `still_trained` lists such purges while one
of those versions is in the current adapter's lineage, and every night's report says so and offers
the rollback.

What is dropped is found by lineage, never by text alone: items naming the turn's id, the keys of
the facts taken from it (`source_id`), the evolution examples asking them and the rows whose
lineage names either. Then any text that still contains what the user said in the turn, or a
sentence or statement of those facts, has it replaced by "[purged]", so another turn's row that
quoted it stays, without the words.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from circadian.core.clock import now_iso
from circadian.core.config import BackupSettings
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, atomic_write_jsonl, atomic_write_text, read_jsonl
from circadian.core.lock import HeldLock
from circadian.core.paths import Paths
from circadian.night import report
from circadian.store import adapters, backups, memories, memory_index, typed_history

PURGED = "[purged]"
MIN_TEXT = 8  # shorter texts ("ok", "thanks") are not searched for in other files


@dataclass
class Purged:
    """What a purge removed, for the command's output (no text of the turn)."""

    id: str
    history_lines: int = 0
    files: dict[str, int] = field(default_factory=dict)  # file (relative to the home) -> items removed or blanked
    trained_in: list[str] = field(default_factory=list)
    rollback: str | None = None  # what `circadian rollback` target removes it from the current adapter
    snapshots: list[str] = field(default_factory=list)  # backup snapshots it was purged from


@dataclass
class _Needles:
    keys: set[str]  # ids and fact keys: an item holding a string equal to one is dropped
    texts: set[str]  # words of the turn: replaced by PURGED wherever they appear

    def marks(self, value) -> bool:
        if isinstance(value, str):
            return value in self.keys
        if isinstance(value, dict):
            return any(self.marks(v) for v in value.values())
        if isinstance(value, list):
            return any(self.marks(v) for v in value)
        return False

    def blank(self, text: str) -> str:
        for needle in sorted(self.texts, key=len, reverse=True):
            text = text.replace(needle, PURGED)
        return text

    def scrub(self, value):
        """Return (value without the items that name the turn and with its words blanked, how many
        items went or were blanked)."""
        if isinstance(value, list):
            kept = [v for v in value if not (isinstance(v, (dict, str)) and self.marks(v))]
            count = len(value) - len(kept)
            out = []
            for v in kept:
                v, n = self.scrub(v)
                out.append(v)
                count += n
            return out, count
        if isinstance(value, dict):
            out, count = {}, 0
            for k, v in value.items():
                out[k], n = self.scrub(v)
                count += n
            return out, count
        if isinstance(value, str):
            blanked = self.blank(value)
            return blanked, int(blanked != value)
        return value, 0


def purge_turn(paths: Paths, record_id: str, backup: BackupSettings | None = None) -> Purged:
    """Purge the turn `record_id` everywhere in the home, and in every snapshot of the backups that
    holds it (`backup`: where they are); return what went.

    Raise CircadianError if a sleep is running (its snapshot must not change under it) or no turn has
    that id.
    """
    lock = HeldLock(
        paths.control / "sleep.lock",
        {"cycle_id": f"purge of {record_id}"},  # what a sleep starting meanwhile is told
        lambda held: f"a sleep is running (cycle {held.get('cycle_id', '?')}); purge after it ends",
    )
    with lock:
        result = _purge_home(paths, record_id)
        result.trained_in = _learners(paths, record_id)
        append_jsonl(
            paths.data / "purges.jsonl", [{"ts": now_iso(), "forgets": record_id, "trained_in": result.trained_in}]
        )
        memories.purge(paths, record_id)  # last in the home: a purge that failed before this can be run again
        for store in backups.stores(paths, backup or BackupSettings()):
            result.snapshots += backups.rewrite(
                store,
                lambda at, snapshot: backups.holds(at, snapshot, "data/memories.jsonl", record_id.encode()),
                lambda home: _purge_copy(home, record_id),
            )
    still = [s for s in still_trained(paths) if s["forgets"] == record_id]
    result.rollback = still[0]["rollback"] if still else None
    return result


def _purge_copy(paths: Paths, record_id: str) -> None:
    """Purge the turn from a copy of a home (a snapshot written out as one), if it holds the turn."""
    if any(r.id == record_id for r in memories.scan(paths).records):
        _purge_home(paths, record_id)
        memories.purge(paths, record_id)


def _purge_home(paths: Paths, record_id: str) -> Purged:
    """Everything of the purge but its record and the rewrite of the memories: the tombstone first, then
    what was made from the turn, by lineage."""
    record = next((r for r in memories.scan(paths).records if r.id == record_id), None)
    if record is None:
        raise CircadianError(f"no turn {record_id} in {paths.memories.name} (`circadian forget --last` names the last)")
    memories.forget(paths, record_id, reason="purge")  # never trained from now on, whatever happens next
    said = {m.content for m in record.messages if m.role == "user"}
    result = Purged(record_id)
    needles = _Needles({record_id}, {t.strip() for t in said if len(t.strip()) >= MIN_TEXT})
    asked_about: set[str] = set()
    runs = sorted(p for p in paths.runs.iterdir() if p.is_dir()) if paths.runs.exists() else []
    for run in runs:
        _purge_run(paths, run, needles, result, asked_about)
    asked_about -= _questions_kept(runs)  # a question another fact shares stays
    asked = _Needles(needles.keys | asked_about, needles.texts)
    for manifest in adapters.list_versions(paths):
        router = paths.adapters / manifest.version / "router.json"
        if router.exists():
            value, count = asked.scrub(json.loads(router.read_text(encoding="utf-8")))
            if count:
                adapters.rewrite_file(paths, manifest.version, router.name, json.dumps(value, indent=2))
                result.files[str(router.relative_to(paths.home))] = count
    for file in sorted((paths.models / "eval_cache").glob("*.jsonl")):
        _scrub_jsonl(paths, file, _Needles(set(asked_about), set()), result, key="prompt")  # questions of it only
    if paths.quarantine.exists():
        for file in sorted(paths.quarantine.glob("*.jsonl")):
            _scrub_jsonl(paths, file, needles, result)
    result.history_lines = typed_history.drop(paths.chat_history, said)
    if removed := memory_index.remove_turn(paths, record_id):
        result.files[str(memory_index.index_path(paths).relative_to(paths.home))] = removed
    for aside in paths.data.glob(memory_index.index_path(paths).name + ".unreadable-*"):
        aside.unlink()  # derived copies of the index, moved aside when unreadable: they may hold the turn
        result.files[str(aside.relative_to(paths.home))] = 1
    return result


def still_trained(paths: Paths) -> list[dict]:
    """Purged turns that a version in the current lineage was trained on: {forgets, purged, version,
    rollback} each, `rollback` being the stored version (or "base") that `circadian rollback` goes
    back to: the nearest stored ancestor older than every version that learned it."""
    chain = adapters.lineage(paths, adapters.head(paths))
    found = []
    for line in read_jsonl(paths.data / "purges.jsonl"):
        entry = line.value or {}
        inside = [n for n, v in enumerate(chain) if v in entry.get("trained_in", [])]
        if inside:
            older = [v for v in chain[inside[-1] + 1 :] if (paths.adapters / v).is_dir()]
            found.append(
                {
                    "forgets": entry.get("forgets"),
                    "purged": entry.get("ts"),
                    "version": chain[inside[-1]],
                    "rollback": older[0] if older else "base",
                }
            )
    return found


def _learners(paths: Paths, record_id: str) -> list[str]:
    """Every version, stored or pruned, that trained on the turn."""
    names = [m.version for m in adapters.list_versions(paths)] + sorted(adapters.pruned(paths))
    return sorted({v for v in names if record_id in adapters.own_trained_ids(paths, v)})


def _questions_kept(runs: list[Path]) -> set[str]:
    """The user questions of every row and probe still in the nights' datasets."""
    kept = set()
    for run in runs:
        for name in ("train.jsonl", "valid.jsonl", "probes.jsonl", "retention_probes.jsonl"):
            for line in read_jsonl(run / "dataset" / name):
                row = line.value or {}
                kept.add(row.get("question"))
                kept.update(m.get("content") for m in row.get("messages") or [] if m.get("role") == "user")
    return {q for q in kept if isinstance(q, str)}


def _purge_run(paths: Paths, run: Path, needles: _Needles, result: Purged, asked_about: set[str]) -> None:
    dataset = run / "dataset"
    night = _Needles(set(needles.keys), set(needles.texts))
    for name in ("facts.jsonl", "replayed_facts.jsonl"):
        for line in read_jsonl(dataset / name):
            fact = line.value or {}
            if fact.get("source_id") in needles.keys:
                night.keys.add(str(fact.get("key")))
                said = [fact.get(k) for k in ("sentence", "statement", "answer")]
                night.texts |= {t for t in said if isinstance(t, str) and len(t) >= MIN_TEXT}
    examples = run / "evolution" / "examples.json"
    if examples.exists():
        for example in json.loads(examples.read_text(encoding="utf-8")):
            if night.marks(example):
                night.keys.add(str(example.get("id")))
    dropped = _purge_rows(paths, dataset, night, result)
    for file in sorted(run.rglob("*.jsonl")):
        if file.parent != dataset or file.name not in ("train.jsonl", "valid.jsonl", "lineage.jsonl"):
            dropped += _scrub_jsonl(paths, file, night, result)
    for row in dropped:  # the questions asked of it, which a router and the answer cache keep word for word
        asked = [m.get("content") for m in row.get("messages") or [] if m.get("role") == "user"]
        asked_about.update(q for q in [*asked, row.get("question")] if isinstance(q, str))
    for file in sorted(run.rglob("*.json")):
        value, count = night.scrub(json.loads(file.read_text(encoding="utf-8")))
        if count:
            atomic_write_text(file, json.dumps(value, ensure_ascii=False, indent=1))
            result.files[str(file.relative_to(paths.home))] = count
    if (run / "summary.json").exists() and any(f.startswith(str(run.relative_to(paths.home))) for f in result.files):
        report.write_reports(run)


def _purge_rows(paths: Paths, dataset: Path, needles: _Needles, result: Purged) -> list[dict]:
    """Drop the training and validation rows whose lineage names the turn or its facts, blank its words
    in the others, and number the lineage again. Return the dropped rows."""
    lineage = [line.value for line in read_jsonl(dataset / "lineage.jsonl") if line.value]
    marked = {(row.get("split"), row.get("row")) for row in lineage if needles.marks(row)}
    kept_lineage, dropped = [], []
    for split in ("train", "valid"):
        file = dataset / f"{split}.jsonl"
        rows = [line.value for line in read_jsonl(file)]
        keep = [i for i, row in enumerate(rows) if (split, i) not in marked]
        by_row = {row.get("row"): row for row in lineage if row.get("split") == split}
        kept_lineage += [{**by_row[i], "row": n} for n, i in enumerate(keep) if i in by_row]
        dropped += [row for i, row in enumerate(rows) if i not in set(keep) and row]
        scrubbed, blanked = needles.scrub([rows[i] for i in keep])
        if len(keep) < len(rows) or blanked:
            atomic_write_jsonl(file, scrubbed)
            result.files[str(file.relative_to(paths.home))] = len(rows) - len(keep) + blanked
    if len(kept_lineage) < len(lineage):
        atomic_write_jsonl(dataset / "lineage.jsonl", kept_lineage)
    return dropped


def _scrub_jsonl(paths: Paths, file: Path, needles: _Needles, result: Purged, *, key: str | None = None) -> list[dict]:
    """Drop the lines of a JSONL file that name the turn (with `key`: whose `key` field is one of
    needles.keys), blank its words in the rest; return the dropped objects."""
    out, count, dropped = [], 0, []
    for line in read_jsonl(file):
        value = line.value
        named = value is not None and (value.get(key) in needles.keys if key else needles.marks(value))
        if named:
            count += 1
            dropped.append(value)
            continue
        if value is None:
            text = needles.blank(line.raw)
            count += text != line.raw
            out.append(text)
            continue
        value, blanked = needles.scrub(value)
        count += blanked
        out.append(json.dumps(value, ensure_ascii=False))
    if count:
        atomic_write_text(file, "".join(row + "\n" for row in out))
        where = file.relative_to(paths.home) if file.is_relative_to(paths.home) else file
        result.files[str(where)] = count
    return dropped
