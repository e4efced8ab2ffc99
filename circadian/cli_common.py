"""Options and helpers shared by the command modules (`cli.py`, `cli_night.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="state directory (default: $CIRCADIAN_HOME, "
                                                 "the source checkout, or the user data directory)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _paths(home: Path | None):
    from circadian.paths import Paths

    return Paths.resolve(home).ensure()


def _setup(home: Path | None):
    from circadian.config import load_config

    paths = _paths(home)
    config, _sources = load_config(paths.config)
    return paths, config


def _say(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))
