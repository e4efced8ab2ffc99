"""The graduation ledger: which facts retrieval still has to bring to the chat, and which the
adapter has learned.

A fact enters the ledger when a night writes it to the memory index. Each night's evaluation asks
the candidate each fact's held-out wording without retrieval (the recall and retention probes); a
promoted version keeps what was asked and whether it was answered (`graduation.json`, fact keys and
turn ids only). A fact has graduated when the latest night of the current lineage that asked it got
it right: the chat stops injecting it. One that the lineage has asked in `within` nights without
graduating is one the model does not learn (the report flags it; retrieval keeps answering it).
Everything is read along the lineage, so a rollback brings back the ledger entries of the versions
it undoes, and a version retention deleted still counts (adapters/pruned.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from circadian.core.paths import Paths
from circadian.store import adapters


@dataclass
class FactState:
    """One fact along a lineage: the nights that asked it (oldest first), whether the latest one got
    it right, and the version (and how many nights) it took to graduate first."""

    fact: str
    turn: str = ""
    asked: int = 0
    graduated: bool = False
    graduated_in: str | None = None
    nights_to_graduate: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def asked_by_night(paths: Paths, cycle_id: str) -> list[dict]:
    """What a night's candidate was asked of its facts, read from the night's summary (the versions
    stored before graduation.json existed)."""
    try:
        summary = json.loads((paths.runs / cycle_id / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return asked_of(summary.get("after") or {})


def asked_of(measured: dict) -> list[dict]:
    """Given a candidate's measurements (evaluate.measure), what it was asked of its facts and whether
    it answered: {"fact", "turn", "hit"} per recall and retention probe (ids only, no words)."""
    return [
        {"fact": item["fact"], "turn": item.get("source_id", ""), "hit": bool(item.get("hit"))}
        for part in ("recall", "retention")
        for item in ((measured.get(part) or {}).get("items") or [])
        if isinstance(item, dict) and isinstance(item.get("fact"), str)
    ]


def asked_in(paths: Paths, version: str) -> list[dict]:
    """What one version's night asked of its facts ({"fact", "turn", "hit"} each)."""
    asked = adapters.own_asked(paths, version)
    if asked is None and (paths.adapters / version).is_dir():
        asked = asked_by_night(paths, adapters.read_manifest(paths.adapters / version).cycle_id)
    return asked or []


def states(paths: Paths, version: str | None) -> dict[str, FactState]:
    """Given a version (None: the base model, which has learned nothing), return every fact its lineage
    asked, by key."""
    out: dict[str, FactState] = {}
    for name in reversed(adapters.lineage(paths, version) if version else []):
        night: dict[str, bool] = {}  # a statement asked twice (two of its answers) is learned when both are
        turns: dict[str, str] = {}
        for row in asked_in(paths, name):
            night[row["fact"]] = night.get(row["fact"], True) and row["hit"]
            turns.setdefault(row["fact"], row.get("turn", ""))
        for fact, hit in night.items():
            state = out.setdefault(fact, FactState(fact))
            state.turn = state.turn or turns[fact]
            state.asked += 1
            state.graduated = hit
            if hit and state.graduated_in is None:
                state.graduated_in, state.nights_to_graduate = name, state.asked
    return out


def graduated(paths: Paths, version: str | None) -> set[str]:
    """The facts the version answers without retrieval (never injected while it answers)."""
    return {key for key, state in states(paths, version).items() if state.graduated}


def not_learned(found: dict[str, FactState], within: int) -> set[str]:
    """The facts asked in at least `within` nights that have not graduated."""
    return {key for key, state in found.items() if state.asked >= within and not state.graduated}
