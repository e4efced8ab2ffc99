"""`circadian forget --purge`: a real delete of one turn, the one deliberate exception to append-only.

`purge_turn` removes the turn from `data/memories.jsonl` (atomically, after a tombstone), from the
chat's typed-line history, from every night's folder in `data/runs/` (dataset snapshots, evolution
snapshots, summaries; the reports are rendered again), from the questions a stored router keeps (its
manifest's hash follows) and from the quarantine, and records the purge
in `data/purges.jsonl` (ids and versions only, never the text). An adapter already trained on it
keeps what it learned: `still_trained` lists such purges while one of those versions is in the
current adapter's lineage, and every night's report says so and offers the rollback.

What counts as the turn in a night's files: its id, the keys of the facts taken from it (and the ids
of the evolution examples that ask them), what the user said in it, and the facts' sentences,
statements and questions. A row or list
item that mentions one of them is dropped; any other text that contains one becomes "[purged]".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from circadian.core.clock import now_iso
from circadian.core.errors import CircadianError
from circadian.core.fsutil import append_jsonl, atomic_write_text, read_jsonl
from circadian.core.lock import holder
from circadian.core.paths import Paths
from circadian.night import report
from circadian.store import adapters, memories, typed_history

PURGED = "[purged]"
MIN_TEXT = 8  # shorter message texts ("ok", "thanks") are not searched for in other files


@dataclass
class Purged:
    """What a purge removed, for the command's output (no text of the turn)."""

    id: str
    history_lines: int = 0
    files: dict[str, int] = field(default_factory=dict)  # file (relative to the home) -> items removed or blanked
    trained_in: list[str] = field(default_factory=list)
    rollback: str | None = None  # what `circadian rollback` target removes it from the current adapter


@dataclass
class _Needles:
    keys: set[str]  # ids and fact keys: a string equal to one marks its item
    texts: set[str]  # message texts and sentences: a string containing one marks its item

    def marks(self, value) -> bool:
        if isinstance(value, str):
            return value in self.keys or any(t in value for t in self.texts)
        if isinstance(value, dict):
            return any(self.marks(v) for v in value.values())
        if isinstance(value, list):
            return any(self.marks(v) for v in value)
        return False

    def scrub(self, value):
        """Return (value without the items that mention the turn, how many went or were blanked)."""
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
        if isinstance(value, str) and self.marks(value):
            return PURGED, 1
        return value, 0


def purge_turn(paths: Paths, record_id: str) -> Purged:
    """Purge the turn `record_id` everywhere in the home; return what went.

    Raise CircadianError if a sleep is running (its snapshot must not change under it) or no turn has
    that id.
    """
    if owner := holder(paths.control / "sleep.lock"):
        raise CircadianError(f"a sleep is running (cycle {owner.get('cycle_id', '?')}); purge after it ends")
    record = memories.purge(paths, record_id)
    if record is None:
        raise CircadianError(f"no turn {record_id} in {paths.memories.name} (`circadian forget --last` names the last)")
    messages = [m for m in record.get("messages") or [] if isinstance(m, dict)]
    said = {str(m.get("content", "")) for m in messages if m.get("role") == "user"}
    result = Purged(record_id, history_lines=typed_history.drop(paths.chat_history, said))
    needles = _Needles({record_id}, {t.strip() for t in said if len(t.strip()) >= MIN_TEXT})
    asked_about: set[str] = set()
    for run in sorted(p for p in paths.runs.iterdir() if p.is_dir()) if paths.runs.exists() else []:
        _purge_run(paths, run, needles, result, asked_about)
    routed = _Needles(needles.keys | asked_about, needles.texts)
    for manifest in adapters.list_versions(paths):
        router = paths.adapters / manifest.version / "router.json"
        if router.exists():
            value, count = routed.scrub(json.loads(router.read_text(encoding="utf-8")))
            if count:
                adapters.rewrite_file(paths, manifest.version, router.name, json.dumps(value, indent=2))
                result.files[str(router.relative_to(paths.home))] = count
    if paths.quarantine.exists():
        for file in sorted(paths.quarantine.glob("*.jsonl")):
            _scrub_jsonl(paths, file, needles, result)
    result.trained_in = [m.version for m in adapters.list_versions(paths) if record_id in _own_ids(paths, m.version)]
    append_jsonl(
        paths.data / "purges.jsonl", [{"ts": now_iso(), "forgets": record_id, "trained_in": result.trained_in}]
    )
    still = [s for s in still_trained(paths) if s["forgets"] == record_id]
    result.rollback = still[0]["rollback"] if still else None
    return result


def still_trained(paths: Paths) -> list[dict]:
    """Purged turns that an adapter in the current lineage was trained on: {forgets, purged, version,
    rollback} each, `rollback` being the version (or "base") that `circadian rollback` goes back to."""
    chain = adapters.lineage(paths, adapters.current_version(paths))
    found = []
    for line in read_jsonl(paths.data / "purges.jsonl"):
        entry = line.value or {}
        inside = [v for v in chain if v in entry.get("trained_in", [])]
        if inside:
            oldest = inside[-1]
            parent = adapters.read_manifest(paths.adapters / oldest).parent
            found.append(
                {
                    "forgets": entry.get("forgets"),
                    "purged": entry.get("ts"),
                    "version": oldest,
                    "rollback": parent or "base",
                }
            )
    return found


def _own_ids(paths: Paths, version: str) -> set[str]:
    path = paths.adapters / version / adapters.TRAINED_IDS
    return set(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else set()


def _purge_run(paths: Paths, run: Path, needles: _Needles, result: Purged, asked_about: set[str]) -> None:
    dataset = run / "dataset"
    night = _Needles(set(needles.keys), set(needles.texts))
    for name in ("facts.jsonl", "replayed_facts.jsonl"):
        for line in read_jsonl(dataset / name):
            fact = line.value or {}
            if fact.get("source_id") in needles.keys or needles.marks(fact.get("sentence", "")):
                night.keys.add(str(fact.get("key")))
                said = [fact.get(k) for k in ("sentence", "statement", "answer")]
                said += list(fact.get("questions") or []) + list(fact.get("reverse") or [])
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
    for row in dropped:  # the questions asked of it, which a router keeps word for word
        asked = [m.get("content") for m in row.get("messages") or [] if m.get("role") == "user"] + [row.get("question")]
        asked_about.update(q for q in asked if isinstance(q, str))
    for file in sorted(run.rglob("*.json")):
        value, count = night.scrub(json.loads(file.read_text(encoding="utf-8")))
        if count:
            atomic_write_text(file, json.dumps(value, ensure_ascii=False, indent=1))
            result.files[str(file.relative_to(paths.home))] = count
    if (run / "summary.json").exists() and any(str(run.relative_to(paths.home)) in f for f in result.files):
        report.write_reports(run)


def _purge_rows(paths: Paths, dataset: Path, needles: _Needles, result: Purged) -> list[dict]:
    """Drop the training and validation rows made from the turn (found by their lineage or text) and
    number the lineage again."""
    lineage = [line.value for line in read_jsonl(dataset / "lineage.jsonl") if line.value]
    marked = {(row.get("split"), row.get("row")) for row in lineage if needles.marks(row)}
    kept_lineage, dropped = [], []
    for split in ("train", "valid"):
        file = dataset / f"{split}.jsonl"
        rows = [line.value for line in read_jsonl(file)]
        keep = [i for i, row in enumerate(rows) if (split, i) not in marked and not needles.marks(row)]
        by_row = {row.get("row"): row for row in lineage if row.get("split") == split}
        kept_lineage += [{**by_row[i], "row": n} for n, i in enumerate(keep) if i in by_row]
        dropped += [row for i, row in enumerate(rows) if i not in set(keep) and row]
        if len(keep) < len(rows):
            atomic_write_text(file, "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in keep))
            result.files[str(file.relative_to(paths.home))] = len(rows) - len(keep)
    if len(kept_lineage) < len(lineage):
        atomic_write_text(
            dataset / "lineage.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept_lineage)
        )
    return dropped


def _scrub_jsonl(paths: Paths, file: Path, needles: _Needles, result: Purged) -> list[dict]:
    """Drop the lines of a JSONL file that mention the turn; return the dropped objects."""
    lines = list(read_jsonl(file))
    out, count, dropped = [], 0, []
    for line in lines:
        if line.value is None:
            if needles.marks(line.raw):
                count += 1
                continue
            out.append(line.raw)
        elif needles.marks(line.value):
            count += 1
            dropped.append(line.value)
        else:
            out.append(json.dumps(line.value, ensure_ascii=False))
    if count:
        atomic_write_text(file, "".join(row + "\n" for row in out))
        result.files[str(file.relative_to(paths.home))] = count
    return dropped
