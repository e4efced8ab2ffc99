"""What every command module shares: the --home and --json options, the home and its config,
progress lines on stderr, JSON on stdout, and the one-line form of a running sleep."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from circadian.store.records import LiveStatus

HomeOpt = Annotated[
    Optional[Path],
    typer.Option("--home", help="state directory (default: $CIRCADIAN_HOME, else the user data directory)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]


def home_paths(home: Path | None):
    """Given the --home option (or None), return the home's Paths, its folders created."""
    from circadian.core.paths import Paths, old_checkout_home

    paths = Paths.resolve(home)
    if paths.home_source == "user data directory" and (old := old_checkout_home()) and old != paths.home:
        say(
            f"note: {old}/data holds conversations from when the checkout was the default home; "
            f"this home is {paths.home}. Move them there, or pass --home {old}"
        )
    return paths.ensure()


def setup(home: Path | None, overrides: dict[str, tuple[Any, str]] | None = None):
    """Return (paths, config) for a command; `overrides` are {dotted key: (value, option)} from its flags."""
    from circadian.core.config import load_config

    paths = home_paths(home)
    config, _sources = load_config(paths.config, overrides=overrides)
    return paths, config


def say(message: str) -> None:
    """Print one progress line on stderr (stdout stays for the result)."""
    print(f"· {message}", file=sys.stderr, flush=True)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def status_line(status: LiveStatus) -> str:
    """Given a running sleep's status (night.control.read_status), return it as one line."""
    parts = [f"cycle {status.cycle_id}", status.state or "?", f"stage {status.stage or '?'}"]
    if status.stage == "train" and status.step is not None:
        parts.append(f"{status.dataset} ({status.dataset_index}/{status.datasets})")
        parts.append(f"step {status.step}/{status.total_steps}")
        if status.train_loss is not None:
            parts.append(f"loss {status.train_loss:.3f}")
        if status.best_val_loss is not None:
            parts.append(f"best val {status.best_val_loss:.3f}")
        if status.eta_seconds is not None:
            parts.append(f"ETA {status.eta_seconds:.0f} s")
    if status.flags:
        parts.append("requested: " + ", ".join(status.flags))
    return " · ".join(parts)
