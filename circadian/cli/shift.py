"""Commands of the night shift: `schedule install|uninstall|status`, `daemon`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Optional

import typer

from circadian.cli._common import HomeOpt, JsonOpt, print_json, say, setup

schedule_app = typer.Typer(no_args_is_help=True, help="The nightly job: launchd (macOS) or systemd --user (Linux).")


class Platform(StrEnum):
    macos = "macos"
    linux = "linux"


PlatformOpt = Annotated[Optional[Platform], typer.Option("--platform", help="default: this machine's")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print what would be written and run; touch nothing")]
AtOpt = Annotated[
    Optional[str],
    typer.Option("--at", metavar="HH:MM", help="local time, 24-hour (default: schedule.at in the config, 03:00)"),
]


def render_plan(plan, verb: str) -> str:
    """Given a schedule Plan, return the files it writes (or removes) and the commands it runs, as text."""
    lines = []
    for target, content in plan.files.items():
        lines.append(f"{verb} {target}")
        if content:
            text = content.decode() if isinstance(content, bytes) else content
            lines.append("  " + text.rstrip().replace("\n", "\n  "))
    lines += ["run  " + " ".join(command) for command in plan.commands]
    return "\n".join(lines)


@schedule_app.command("install")
def schedule_install(
    home: HomeOpt = None,
    platform: PlatformOpt = None,
    at: AtOpt = None,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
):
    """Run `circadian sleep --scheduled` for this home every night."""
    from circadian.shift import schedule

    paths, config = setup(home, {"schedule.at": (at, "--at")})
    hour, minute = schedule.parse_at(config.schedule.at)
    name = platform.value if platform else schedule.default_platform()
    plan = schedule.install_plan(paths, name, hour, minute) if dry_run else schedule.install(paths, name, hour, minute)
    when = schedule.next_run(hour, minute).isoformat(timespec="minutes")
    if json_out:
        print_json({**plan.as_dict(), "dry_run": dry_run, "at": config.schedule.at, "next_run": when})
    elif dry_run:
        print(render_plan(plan, "write"))
    else:
        print(f"installed for {name}: every night at {config.schedule.at}, next {when} ({next(iter(plan.files))})")


@schedule_app.command("uninstall")
def schedule_uninstall(platform: PlatformOpt = None, dry_run: DryRunOpt = False, json_out: JsonOpt = False):
    """Unload the nightly job and remove its files."""
    from circadian.shift import schedule

    name = platform.value if platform else schedule.default_platform()
    plan = schedule.uninstall_plan(name) if dry_run else schedule.uninstall(name)
    if json_out:
        print_json({**plan.as_dict(), "dry_run": dry_run})
    elif dry_run:
        print(render_plan(plan, "remove"))
    else:
        print(f"uninstalled: {', '.join(str(p) for p in plan.files)}")


@schedule_app.command("status")
def schedule_status(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show whether the job is installed, its next run, the last one."""
    from circadian.shift.status import describe
    from circadian.web.views import last_line

    paths, _config = setup(home)
    info = describe(paths)
    last = last_line(paths.run_log)
    info["last"] = {k: last.get(k) for k in ("cycle_id", "trigger", "outcome", "version", "ended")} if last else None
    if json_out:
        print_json(info)
        return
    if info["by"] is None:
        print("not scheduled (circadian schedule install, or circadian daemon)")
    else:
        print(f"scheduled by {info['by']} at {info['at']}; next run {info['next_run']}")
    print(f"last run: {info['last']['cycle_id']} {info['last']['outcome']}" if last else "last run: none yet")


def daemon(home: HomeOpt = None, at: AtOpt = None):
    """Run the nightly job from this process.

    For machines without launchd or systemd: APScheduler fires `circadian sleep --scheduled` at the
    time; a night missed while the daemon was not running is caught up once when it starts. Ctrl-C or
    SIGTERM ends it.
    """
    from circadian.shift.daemon import run_daemon

    paths, config = setup(home, {"schedule.at": (at, "--at")})
    run_daemon(paths, config, say)
