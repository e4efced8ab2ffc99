"""Commands of the night shift: `schedule install|uninstall|status`, `daemon`, `ctl`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from circadian.cli_common import HomeOpt, JsonOpt, _print_json, _say, _setup
from circadian.errors import CircadianError

schedule_app = typer.Typer(no_args_is_help=True, help="The nightly job: launchd (macOS) or systemd --user (Linux).")


class Platform(str, Enum):
    macos = "macos"
    linux = "linux"


PlatformOpt = Annotated[Optional[Platform], typer.Option("--platform", help="default: this machine's")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print what would be written and run; touch nothing")]


def _print_plan(plan, verb: str) -> None:
    for target, content in plan.files.items():
        print(f"{verb} {target}")
        if content:
            text = content.decode() if isinstance(content, bytes) else content
            print("  " + text.rstrip().replace("\n", "\n  "))
    for command in plan.commands:
        print("run  " + " ".join(command))


@schedule_app.command("install")
def schedule_install(home: HomeOpt = None, platform: PlatformOpt = None,
                     at: Annotated[Optional[str], typer.Option("--at", help="HH:MM, local time (default: "
                                                               "schedule.at in the config, 03:00)")] = None,
                     dry_run: DryRunOpt = False, json_out: JsonOpt = False):
    """Run `circadian sleep --scheduled` every night at --at for this home."""
    from circadian import schedule

    paths, config = _setup(home)
    hour, minute = schedule.parse_at(at or config.schedule.at)
    name = (platform.value if platform else schedule.default_platform())
    plan = schedule.install_plan(paths, name, hour, minute) if dry_run else schedule.install(paths, name, hour, minute)
    when = schedule.next_run(hour, minute).isoformat(timespec="minutes")
    if json_out:
        _print_json({**plan.as_dict(), "dry_run": dry_run, "at": f"{hour:02d}:{minute:02d}", "next_run": when})
    elif dry_run:
        _print_plan(plan, "write")
    else:
        print(f"installed for {name}: every night at {hour:02d}:{minute:02d}, next {when} ({next(iter(plan.files))})")


@schedule_app.command("uninstall")
def schedule_uninstall(platform: PlatformOpt = None, dry_run: DryRunOpt = False):
    """Unload the nightly job and remove its files."""
    from circadian import schedule

    name = platform.value if platform else schedule.default_platform()
    if dry_run:
        _print_plan(schedule.uninstall_plan(name), "remove")
        return
    plan = schedule.uninstall(name)
    print(f"uninstalled: {', '.join(str(p) for p in plan.files)}")


@schedule_app.command("status")
def schedule_status(home: HomeOpt = None, json_out: JsonOpt = False):
    """Whether the nightly job is installed, when it runs next, how the last run ended."""
    from circadian import schedule
    from circadian.status import last_line

    paths, _config = _setup(home)
    info = schedule.describe(paths)
    last = last_line(paths.run_log)
    info["last"] = {k: last.get(k) for k in ("cycle_id", "trigger", "outcome", "version", "ended")} if last else None
    if json_out:
        _print_json(info)
        return
    if info["by"] is None:
        print("not scheduled (circadian schedule install, or circadian daemon)")
    else:
        print(f"scheduled by {info['by']} at {info['at']}; next run {info['next_run']}")
    print(f"last run: {info['last']['cycle_id']} {info['last']['outcome']}" if last else "last run: none yet")


def daemon(home: HomeOpt = None,
           at: Annotated[Optional[str], typer.Option("--at", help="HH:MM (default: schedule.at in the config)")] = None):
    """Run the nightly job on schedule from this process (APScheduler), for machines without
    launchd or systemd; a night missed while it was not running is caught up once at start."""
    from circadian.nightly import run_daemon
    from circadian.schedule import parse_at

    paths, config = _setup(home)
    if at:
        parse_at(at)
        config.schedule.at = at
    run_daemon(paths, config, _say)


class Action(str, Enum):
    pause = "pause"
    resume = "resume"
    stop = "stop"
    skip = "skip"
    status = "status"


def ctl(action: Annotated[Action, typer.Argument(help="pause | resume | stop | skip | status")],
        home: HomeOpt = None, json_out: JsonOpt = False):
    """Control a running sleep: pause (checkpoint and wait), resume, stop (nothing is promoted),
    skip (drop the dataset in training, go on with the next), status (step, loss, ETA)."""
    from circadian import control

    paths, _config = _setup(home)
    status = control.read_status(paths.control)
    if action is Action.status:
        if json_out:
            _print_json(status)
        elif not status["running"]:
            print(f"no sleep is running (last: cycle {status.get('cycle_id', 'none')}, {status.get('state', 'never ran')})")
        else:
            print(_status_line(status))
        return
    if not status["running"] and action is not Action.resume:
        raise CircadianError("no sleep is running")
    done = control.request(paths.control, action.value)
    if json_out:
        _print_json({"action": action.value, "done": done, "cycle_id": status.get("cycle_id")})
    else:
        print(f"{done} (cycle {status.get('cycle_id')}; applied at the next training step)")


def _status_line(status: dict) -> str:
    parts = [f"cycle {status.get('cycle_id')}", status.get("state", "?"), f"stage {status.get('stage', '?')}"]
    if status.get("stage") == "train" and status.get("step") is not None:
        parts.append(f"{status.get('unit')} ({status.get('unit_index')}/{status.get('units')})")
        parts.append(f"step {status['step']}/{status.get('total_steps')}")
        if status.get("train_loss") is not None:
            parts.append(f"loss {status['train_loss']:.3f}")
        if status.get("best_val_loss") is not None:
            parts.append(f"best val {status['best_val_loss']:.3f}")
        if status.get("eta_seconds") is not None:
            parts.append(f"ETA {status['eta_seconds']:.0f} s")
    if status.get("flags"):
        parts.append("requested: " + ", ".join(status["flags"]))
    return " · ".join(parts)


def dashboard(home: HomeOpt = None,
              port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8765,
              host: Annotated[str, typer.Option("--host", help="default 127.0.0.1; anything else exposes your "
                                                "conversations to that network")] = "127.0.0.1"):
    """The local web dashboard: overview, live training, learning evolution, cycles, adapters."""
    from circadian.dashboard import serve

    paths, config = _setup(home)
    if host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"warning: serving on {host}, not only this machine; anyone who can reach it reads your conversations")
    serve(paths, config, host=host, port=port, say=_say)
