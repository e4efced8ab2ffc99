"""`circadian demo`: the main job on the embedded default model.

A scripted day (a person telling the assistant about their life over several chats, shipped as
`demo_day.json`) is played through the real model and logged to a demo home, so the user's own
memories are never touched; then one night (`circadian sleep`) and the morning report with
recall before and after. Run as: circadian demo
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from circadian.core.config import load_config
from circadian.core.errors import CircadianError
from circadian.core.paths import Paths
from circadian.day.assistant import Assistant, ChatSession
from circadian.night.report import render_markdown
from circadian.night.sleep import run_sleep

MARKER = ".circadian-demo"
DEMO_MAX_TOKENS = 80


def load_script() -> dict:
    """Return the scripted day shipped with the package."""
    return json.loads(resources.files("circadian.lab").joinpath("data/demo_day.json").read_text(encoding="utf-8"))


def demo_paths(home: Path | None) -> Paths:
    """Given the --home option (or None), return a fresh demo home sharing the main model cache.

    Raise CircadianError rather than wipe a folder that holds something other than a demo.
    """
    main = Paths.resolve(None)
    target = Path(home).expanduser().absolute() if home else main.data / "demo"
    if target.exists() and any(target.iterdir()):
        if not (target / MARKER).exists():
            raise CircadianError(f"{target} is not empty and is not a demo home; choose another --home")
        shutil.rmtree(target)
    paths = Paths(target, "demo", main.models).ensure()
    (target / MARKER).write_text("made by `circadian demo`; deleted and remade at each demo run\n")
    if not (target / "models").exists():  # so `circadian ... --home <demo>` shares the model cache
        (target / "models").symlink_to(main.models, target_is_directory=True)
    return paths


def run_demo(home: Path | None, console: Console | None = None) -> Paths:
    """Play the scripted day through the embedded model into a demo home; return its paths."""
    console = console or Console()
    paths = demo_paths(home)
    config, _ = load_config(paths.config)
    config.chat.max_tokens = DEMO_MAX_TOKENS
    script = load_script()
    started = time.time()
    console.print(f"demo home: {paths.home} (your own home is not touched)", highlight=False)
    console.rule(f"[bold]circadian demo[/bold] · a day with {script['person']}")
    assistant = Assistant(paths, config, say=lambda m: console.print(f"[dim]· {m}[/dim]", highlight=False))
    session = ChatSession(assistant, source="demo")
    turns = 0
    for number, messages in enumerate(script["sessions"], start=1):
        session.new()
        console.print(f"\n[bold]chat {number}[/bold]")
        for text in messages:
            console.print(f"[cyan]you>[/cyan] {text}", highlight=False)
            console.print("[green]assistant>[/green] ", end="")
            result = session.respond(text, lambda t: console.print(t, end="", highlight=False, markup=False))
            console.print(
                f"\n[dim]{result.tokens} tokens · {result.tokens_per_second or 0:.1f} tok/s · "
                f"first token {result.ttft_s or 0:.2f} s{' · ' + ','.join(result.tags) if result.tags else ''}[/dim]",
                highlight=False,
            )
            turns += 1
    console.rule("end of the day")
    console.print(
        f"{turns} turns logged to {paths.memories} in {time.time() - started:.0f} s "
        f"(the #no-train one is tagged and will never be trained on).",
        highlight=False,
    )
    del assistant, session
    console.rule("night: circadian sleep")
    summary = run_sleep(paths, config, console=console)
    console.rule("morning: circadian report")
    console.print(Markdown(render_markdown(summary)))
    console.print(f"\nThe whole demo took {time.time() - started:.0f} s. Its home is {paths.home}:", highlight=False)
    console.print(
        f"  circadian chat --home {paths.home}      (ask it about Maya's dog)\n"
        f"  circadian report --home {paths.home} --format html > report.html\n"
        f"  circadian rollback --home {paths.home}",
        highlight=False,
    )
    return paths
