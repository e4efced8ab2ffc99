"""The `circadian` command: a thin typer app; each command is a small function in the module of its
layer (day, night, store, shift, lab, web), registered here in the order of a day.

Run as: circadian --help
Every command takes --home. User errors print one line on stderr and exit non-zero. Heavy
modules (torch, mlx, transformers) are imported only by the commands that load a model.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
import typer.core

from circadian import __version__
from circadian.cli import day, lab, night, shift, store, web
from circadian.core.errors import CircadianError

# the order of a day: talk, look, sleep, read the morning, go back; then the night shift, the lab, the rest
ORDER = (
    "chat",
    "ask",
    "import",
    "forget",
    "status",
    "sleep",
    "report",
    "adapters",
    "rollback",
    "consolidate",
    "schedule",
    "daemon",
    "ctl",
    "dashboard",
    "eval",
    "cycles",
    "demo",
    "paths",
    "config",
    "models",
    "backends",
)


class _DayOrder(typer.core.TyperGroup):
    """Lists commands and command groups together, in ORDER (typer puts every group after the commands)."""

    def list_commands(self, ctx):
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


app = typer.Typer(
    cls=_DayOrder,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="A local LLM that learns from you: chat by day, distill into a LoRA adapter by night.",
)


def _version(value: bool) -> None:
    if value:
        print(f"circadian {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = None,
):
    """A local LLM that learns from you: chat by day, distill into a LoRA adapter by night."""


app.command()(day.chat)
app.command()(day.ask)
app.command("import")(day.import_)
app.command()(day.forget)
app.command()(store.status)
app.command()(night.sleep)
app.command()(night.report)
app.add_typer(store.adapters_app, name="adapters")
app.command()(store.rollback)
app.command()(night.consolidate)
app.add_typer(store.memory_app, name="memory")
app.add_typer(store.backup_app, name="backup")
app.add_typer(shift.schedule_app, name="schedule")
app.command()(shift.daemon)
app.command()(night.ctl)
app.command()(web.dashboard)
app.add_typer(night.eval_app, name="eval")
app.add_typer(lab.cycles_app, name="cycles")
app.command()(lab.demo)
app.command()(store.paths)
app.add_typer(store.config_app, name="config")
app.add_typer(store.models_app, name="models")
app.add_typer(store.backends_app, name="backends")


def _click_exceptions():
    """Click's exception classes: typer 0.29 and later vendor click as `typer._click`, older typer uses click."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer before 0.29
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning user errors (bad flags included) into one line
    on stderr and a non-zero exit."""
    clicks = _click_exceptions()
    try:
        code = app(args=argv, standalone_mode=False)
    except clicks.NoArgsIsHelpError as exc:  # `circadian` or `circadian adapters` alone: the help
        print(exc.ctx.get_help())
        raise SystemExit(0) from None
    except clicks.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} -h`)" if exc.ctx else ""
        print(f"circadian: {exc.format_message().replace('Value error, ', '')}{hint}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except CircadianError as exc:
        print(f"circadian: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except OSError as exc:  # a full disk, a read-only home, a permission: one line, not a traceback
        if exc.errno is None:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"circadian: {exc.strerror or exc}{where}", file=sys.stderr)
        raise SystemExit(1) from None
    except (KeyboardInterrupt, getattr(clicks, "Abort", KeyboardInterrupt)):  # typer 0.29's click has no Abort
        print("circadian: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
