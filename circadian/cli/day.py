"""Commands of the day: `chat`, `ask`, `import`, `forget`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from circadian.cli._common import HomeOpt, JsonOpt, home_paths, print_json, say, setup
from circadian.core.errors import CircadianError

NoLogOpt = Annotated[bool, typer.Option("--no-log", "-n", help="do not log these turns (they are never trained)")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", "-s", help="system prompt for this session")]


def chat(home: HomeOpt = None, no_log: NoLogOpt = False, system: SystemOpt = None):
    """Talk in the terminal; every turn is logged.

    Replies stream as they are written; /help lists the slash commands, Ctrl-C stops a reply,
    Ctrl-D or /quit leaves.
    """
    from circadian.core.lock import SessionMark
    from circadian.day.assistant import Assistant, ChatSession
    from circadian.day.chat import run_chat

    paths, config = setup(home)
    with SessionMark(paths.control):  # the nightly job waits while a chat is open
        session = ChatSession(
            Assistant(paths, config, say=say),
            log=not no_log,
            system_prompt=system,
            after_logged=_facts_of_turn(paths, config),
        )
        try:
            run_chat(session, history_path=paths.chat_history)
        finally:
            session.settle()


def _facts_of_turn(paths, config):
    """What the chat does with each turn it indexed, in the background: write its facts to the memory
    index (night/knowledge/same_day.py), unless chat.retrieval or chat.day_facts is off."""
    if not (config.chat.retrieval and config.chat.day_facts):
        return None
    from circadian.night.knowledge.same_day import index_turn

    return lambda records, turn_id: index_turn(paths, records, turn_id, region=config.sleep.redact_region)


def ask(
    text: Annotated[str, typer.Argument(help="the message to send")],
    home: HomeOpt = None,
    no_log: NoLogOpt = False,
    json_out: JsonOpt = False,
    system: SystemOpt = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="longest reply")] = None,
):
    """Send one message and print the reply.

    The turn is logged like a chat turn unless --no-log.
    """
    from circadian.day.assistant import Assistant, ChatSession

    if not text.strip():
        raise CircadianError("nothing to ask: the message is empty")
    paths, config = setup(home)
    session = ChatSession(Assistant(paths, config, say=say), log=not no_log, source="ask", system_prompt=system)
    if json_out:
        result = session.respond(text, max_tokens=max_tokens)
        print_json(
            {
                **result.as_dict(),
                "question": text,
                "model": session.assistant.model_name,
                "backend": session.assistant.backend.name,
            }
        )
        return
    result = session.respond(text, lambda t: print(t, end="", flush=True), max_tokens=max_tokens)
    print()
    if result.interrupted:
        raise SystemExit(130)


def import_(
    file: Annotated[Path, typer.Argument(help='JSONL file, one {"messages": [...]} per line')],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Add transcripts to the memories.

    A file with any bad line is rejected whole, naming the line; a file imported before is skipped.
    """
    from dataclasses import asdict

    from circadian.day.importer import import_file

    result = import_file(home_paths(home), file)
    if json_out:
        print_json(asdict(result))
    elif result.skipped_duplicate:
        print(f"{file}: already imported ({result.previous_ts}), skipped")
    else:
        extra = f", {result.no_train} tagged no-train" if result.no_train else ""
        print(f"{file}: imported {result.added} conversation(s){extra}")


def forget(
    turn: Annotated[Optional[str], typer.Argument(metavar="ID", help="the turn's id (see `ask --json`)")] = None,
    last: Annotated[bool, typer.Option("--last", help="the last turn logged")] = False,
    purge: Annotated[
        bool, typer.Option("--purge", help="delete it for real, from the log, the chat history and every night's files")
    ] = False,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Forget a turn: it is never trained and nothing shows it (a tombstone; the log is not rewritten).

    With --purge the turn is deleted for real: memories.jsonl is rewritten without it, and it goes
    from the chat's history, every night's dataset and evolution snapshots and the quarantine. An
    adapter already trained on it keeps what it learned until it is rolled back; the command and
    every night's report say which rollback removes it.
    """
    from dataclasses import asdict

    from circadian.store import memories

    paths = home_paths(home)
    if (turn is None) == (not last):
        raise CircadianError("name one turn: `circadian forget ID` or `circadian forget --last`")
    live = list(memories.live_records(paths))
    if last:
        if not live:
            raise CircadianError("nothing to forget: no turn is logged")
        turn = live[-1].id
    elif turn not in {r.id for r in memories.scan(paths).records}:
        raise CircadianError(f"no turn {turn} in {paths.memories}")
    if not purge:
        tombstone = memories.forget(paths, turn, reason="circadian forget")
        print_json(tombstone) if json_out else print(f"forgot {turn}: it is never trained and nothing shows it")
        return
    from circadian.night.purge import purge_turn

    result = purge_turn(paths, turn, setup(home)[1].backup)
    if json_out:
        print_json(asdict(result))
        return
    print(f"purged {turn}: removed from {paths.memories.name}, {result.history_lines} chat history line(s)")
    for file, count in result.files.items():
        print(f"  {file}: {count} item(s) removed")
    if result.snapshots:
        print(f"  backups: purged from {len(result.snapshots)} snapshot(s) ({', '.join(result.snapshots)})")
    if result.rollback:
        print(
            f"{', '.join(result.trained_in)} learned from it, and the current adapter still has it; "
            f"`circadian rollback {result.rollback}` removes it"
        )
