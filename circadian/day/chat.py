"""`circadian chat`: the interactive terminal chat.

prompt_toolkit reads input (history file in the home, Alt-Enter or Esc-Enter for a new line,
Ctrl-C cancels a generation or clears the line, Ctrl-D leaves); rich renders the streamed reply
as markdown with tokens/s and latency after each one. Slash commands steer the session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown

from circadian.day.assistant import ChatSession

HELP = """\
/help            this list
/new             start a new session (new id, empty context)
/system TEXT     set the system prompt for this session (/system alone clears it)
/adapter         which adapter is answering
/notrain         toggle: turns of this session never reach training
/forget          drop the last exchange from the context and the log (a tombstone, not a rewrite)
/memory          what the memory index put in the prompt of the last reply (chat.retrieval)
/quit            leave (also /exit or Ctrl-D)
Enter sends; Alt-Enter (or Esc then Enter) adds a new line; Ctrl-C stops a reply."""


@dataclass
class CommandResult:
    text: str
    quit: bool = False


def handle_command(line: str, session: ChatSession) -> CommandResult:
    """Given a slash-command line and the session, apply it and return what to show."""
    name, _, arg = line.strip().partition(" ")
    name = name.lower()
    if name in ("/quit", "/exit", "/q"):
        return CommandResult("bye", quit=True)
    if name in ("/help", "/?"):
        return CommandResult(HELP)
    if name == "/new":
        session.new()
        return CommandResult(f"new session {session.id[:8]}")
    if name == "/system":
        session.system_prompt = arg.strip()
        return CommandResult(f"system prompt set: {arg.strip()}" if arg.strip() else "system prompt cleared")
    if name == "/adapter":
        assistant = session.assistant
        assistant.follow_current()
        which = assistant.adapter_version or "none (base model)"
        return CommandResult(f"adapter: {which} · model: {assistant.model_name} · backend: {assistant.backend.name}")
    if name == "/notrain":
        session.no_train = not session.no_train
        return CommandResult(
            "no-train ON: this session's turns will not be trained on"
            if session.no_train
            else "no-train OFF: this session's turns may be trained on"
        )
    if name == "/forget":
        exchange = session.forget_last()
        if exchange is None:
            return CommandResult("nothing to forget in this session")
        return CommandResult(f"forgot: {exchange.user[:60]!r}")
    if name == "/memory":
        if not session.assistant.config.chat.retrieval:
            return CommandResult("retrieval is off (chat.retrieval = false)")
        if not session.recalled:
            return CommandResult("nothing was recalled for the last reply")
        return CommandResult(
            "recalled for the last reply:\n"
            + "\n".join(f"- {e.text} ({e.kind}, {e.ts[:16] or 'a night'}, {e.source})" for e in session.recalled)
        )
    return CommandResult(f"unknown command {name}; /help lists them")


def _key_bindings():
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    return bindings


def _plain_prompt() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def stats_line(result) -> str:
    """Given a TurnResult, return the dim line shown under a reply."""
    parts = [f"{result.tokens} tokens"]
    if result.tokens_per_second:
        parts.append(f"{result.tokens_per_second:.1f} tok/s")
    if result.ttft_s is not None:
        parts.append(f"first token {result.ttft_s:.2f} s")
    parts.append(f"adapter {result.adapter or 'base'}")
    if result.tags:
        parts.append("tags " + ",".join(result.tags))
    if result.interrupted:
        parts.append("stopped")
    return " · ".join(parts)


def private_history(path, session: ChatSession):
    """The typed-line history (prompt_toolkit's FileHistory) kept private: the file is 0600, a line
    marked `#no-train` or typed in a no-train session is never written, and `forget(text)` rewrites
    the file without a line the user forgot."""
    import datetime
    import os

    from prompt_toolkit.history import FileHistory

    from circadian.core.fsutil import PRIVATE_FILE_MODE
    from circadian.store import typed_history
    from circadian.store.memories import has_no_train_mark

    class PrivateHistory(FileHistory):
        def store_string(self, string: str) -> None:
            if session.no_train or has_no_train_mark([{"role": "user", "content": string}]):
                return
            fd = os.open(self.filename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
            os.chmod(self.filename, PRIVATE_FILE_MODE)  # a file an older version made 0644
            with os.fdopen(fd, "ab") as f:
                f.write(f"\n# {datetime.datetime.now()}\n".encode())
                f.write("".join(f"+{line}\n" for line in string.split("\n")).encode("utf-8", errors="replace"))

        def forget(self, text: str) -> None:
            self._loaded_strings = [s for s in self._loaded_strings if s != text]
            typed_history.drop(Path(self.filename), {text})

    return PrivateHistory(str(path))


def run_chat(
    session: ChatSession,
    *,
    console: Console | None = None,
    pt_input=None,
    pt_output=None,
    history_path=None,
    prompt: Callable[[], str] | None = None,
) -> int:
    """Run the chat loop until /quit or Ctrl-D; return the number of exchanges."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    console = console or Console()
    history = None
    if prompt is None and pt_input is None and not sys.stdin.isatty():
        prompt = _plain_prompt  # piped input: read lines, no terminal UI
    if prompt is None:
        history = private_history(history_path, session) if history_path else InMemoryHistory()
        pt = PromptSession(history=history, key_bindings=_key_bindings(), input=pt_input, output=pt_output)
        prompt = lambda: pt.prompt("you> ")  # noqa: E731
    assistant = session.assistant
    console.print(
        f"[bold]circadian[/bold] · {assistant.model_name} · {assistant.backend.name} · "
        f"adapter {assistant.adapter_version or 'base'} · /help for commands",
        highlight=False,
    )
    exchanges = 0
    while True:
        try:
            line = prompt()
        except KeyboardInterrupt:
            console.print("[dim](Ctrl-D or /quit to leave)[/dim]")
            continue
        except EOFError:
            break
        if not line.strip():
            continue
        if line.lstrip().startswith("/"):
            forgotten = session.history[-1].user if line.strip().lower() == "/forget" and session.history else None
            result = handle_command(line, session)
            if forgotten is not None and hasattr(history, "forget"):
                history.forget(forgotten)
            console.print(result.text, highlight=False, markup=False)
            if result.quit:
                break
            continue
        note = assistant.follow_current()
        if note:
            console.print(f"[dim]{note}[/dim]", highlight=False)
        reply = ""
        with Live(Markdown(""), console=console, refresh_per_second=12, transient=False) as live:

            def on_text(text: str) -> None:
                nonlocal reply
                reply += text
                live.update(Markdown(reply))

            result = session.respond(line, on_text)
        if not console.is_terminal:
            console.print()  # Live leaves the cursor after the reply when it cannot redraw
        console.print(f"[dim]{stats_line(result)}[/dim]", highlight=False)
        exchanges += 1
    return exchanges
