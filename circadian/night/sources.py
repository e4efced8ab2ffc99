"""Data sources a night can learn from, each a named pool of chat rows with three disjoint splits:
`train` (what training on the source uses), `select` (what a policy may look at to choose: its loss
under the current model, and the loss decrease after training) and `eval` (the final evaluation,
never seen by a policy).

Built-in sources: `today` (facts and conversations not yet learned), `replay` (facts already
learned, asked again), `inbox` (queued datasets), `distill` (general prompts answered by the base
model itself). More can be registered through the entry-point group `circadian.sources`: a callable
`build(context) -> list[dict]` returning rows ({"messages": [...], "lineage": {...}}).

Splits are by a hash of each row's first user message, so one wording is in exactly one split
(leak-free by construction; `check_disjoint` proves it on any data).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from circadian.core.errors import CircadianError
from circadian.night.dataset import Selection, default_generators, hash_share, mine
from circadian.night.knowledge import rows as fact_rows
from circadian.night.redact import redact_messages

GROUP = "circadian.sources"
SPLITS = ("train", "select", "eval")


@dataclass
class Context:
    """What a source builder may use: the night's selection, queued inbox rows, general rows."""

    selection: Selection
    inbox_rows: list[list[dict]] = field(default_factory=list)
    distill_rows: list[dict] = field(default_factory=list)
    region: str = "US"


@dataclass
class Source:
    """A source's rows split three ways."""

    name: str
    train: list[dict]
    select: list[dict]
    eval: list[dict]

    def split(self, name: str) -> list[dict]:
        return getattr(self, name)

    def probes(self) -> list[dict]:
        """Recall probes from the eval split's fact rows ({"question", "answers", "fact"})."""
        return [
            {"question": r["messages"][0]["content"], "answers": r["lineage"]["answers"], "fact": r["lineage"]["fact"]}
            for r in self.eval
            if r.get("lineage", {}).get("answers")
        ]


def key(row: dict) -> str:
    """The identity of a row for splitting: its first user message."""
    return next((m["content"] for m in row["messages"] if m["role"] == "user"), json.dumps(row["messages"]))


def split_rows(name: str, rows: list[dict], salt: str = "sources-v1", shares=(0.6, 0.2)) -> Source:
    """Given rows, return the source with ~60/20/20 train/select/eval splits by row key; rows with the
    same key stay together; with 3 or more keys every split gets at least one."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    ranked = sorted(groups, key=lambda k: hash_share(k, salt))
    n = len(ranked)
    if n >= 3:
        n_train = min(n - 2, max(1, round(n * shares[0])))
        n_select = min(n - n_train - 1, max(1, round(n * shares[1])))
    else:
        n_train, n_select = n, 0
    parts = (ranked[:n_train], ranked[n_train : n_train + n_select], ranked[n_train + n_select :])
    return Source(name, *([row for k in part for row in groups[k]] for part in parts))


def check_disjoint(source: Source) -> None:
    """Raise AssertionError if any row key is in two splits of the source."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for row in source.split(split):
            other = seen.setdefault(key(row), split)
            assert other == split, f"{source.name}: {key(row)!r} is in both {other} and {split}"


def _fact_rows(records, ctx: Context) -> list[dict]:
    """Every question row of the facts in `records` (nothing held out: the source splits do that)."""
    facts = mine(records, ctx.region, default_generators()).facts
    return fact_rows.build(facts, valid=False, probes=False).train


def build_today(ctx: Context) -> list[dict]:
    rows = _fact_rows(ctx.selection.new, ctx)
    for record in ctx.selection.new:
        if record.is_conversation:
            messages, _ = redact_messages([m.model_dump() for m in record.messages], ctx.region)
            rows.append(
                {"messages": messages, "lineage": {"generator": "memory", "version": "1", "source_id": record.id}}
            )
    return rows


def build_replay(ctx: Context) -> list[dict]:
    return _fact_rows(ctx.selection.replay_pool, ctx)


def build_inbox(ctx: Context) -> list[dict]:
    rows = []
    for messages in ctx.inbox_rows:
        clean, _ = redact_messages(messages, ctx.region)
        rows.append({"messages": clean, "lineage": {"generator": "inbox", "version": "1"}})
    return rows


def build_distill(ctx: Context) -> list[dict]:
    return list(ctx.distill_rows)


BUILTIN: dict[str, Callable[[Context], list[dict]]] = {
    "today": build_today,
    "replay": build_replay,
    "inbox": build_inbox,
    "distill": build_distill,
}


def builders() -> dict[str, Callable[[Context], list[dict]]]:
    """The built-in sources plus any registered through the `circadian.sources` entry points."""
    found = dict(BUILTIN)
    for entry in entry_points(group=GROUP):
        if entry.name not in found:
            found[entry.name] = entry.load()
    return found


def build_all(ctx: Context, names: list[str] | None = None, salt: str = "sources-v1") -> dict[str, Source]:
    """Return the named sources (all known ones by default) that have rows in every split."""
    known = builders()
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise CircadianError(f"unknown source {unknown[0]!r} (known: {', '.join(sorted(known))})")
    out = {}
    for name in names or list(known):
        source = split_rows(name, known[name](ctx), salt)
        check_disjoint(source)
        if source.train and source.select and source.eval:
            out[name] = source
    return out
