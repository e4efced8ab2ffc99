"""`circadian schedule install|uninstall|status`: the nightly job for launchd (macOS) or
systemd --user (Linux).

Rendering is pure (`render_plist`, `render_systemd`): the LaunchAgent comes from the template in
`launchd/` (parsed and filled with plistlib, never by string substitution), the systemd service +
timer from `OnCalendar=` with `Persistent=true` so a night missed while the machine was off runs at
the next boot. Installing writes the files atomically and loads them (`launchctl bootstrap
gui/<uid>`, `systemctl --user enable --now`); when that fails the written files are removed again,
so the job is either installed and loaded or not there at all.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

from circadian.core.config import parse_hh_mm
from circadian.core.errors import CircadianError
from circadian.core.fsutil import atomic_write_text
from circadian.core.paths import Paths

LABEL = "com.circadian.nightly"
UNIT = "circadian-nightly"
PLATFORMS = ("macos", "linux")


def parse_at(text: str) -> tuple[int, int]:
    """Given "HH:MM", return (hour, minute); raise CircadianError for anything else."""
    try:
        return parse_hh_mm(text)
    except ValueError as exc:
        raise CircadianError(f"--at {exc}") from None


def next_run(hour: int, minute: int, now: datetime | None = None) -> datetime:
    """Return the next local time the job fires (through APScheduler's cron trigger, as the daemon)."""
    from apscheduler.triggers.cron import CronTrigger

    now = now or datetime.now().astimezone()
    return CronTrigger(hour=hour, minute=minute, timezone=now.tzinfo).get_next_fire_time(None, now)


def previous_run(hour: int, minute: int, now: datetime | None = None) -> datetime:
    """Return the last time the job should have fired (today or yesterday at HH:MM)."""
    now = now or datetime.now().astimezone()
    due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return due if due <= now else due - timedelta(days=1)


def program_arguments() -> list[str]:
    """The absolute command that runs this install's circadian (the console script beside this
    Python when there is one, else `python -m circadian`)."""
    script = Path(sys.executable).parent / "circadian"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(Path(sys.executable).resolve()), "-m", "circadian"]


def job_environment(paths: Paths) -> dict[str, str]:
    env = {
        "CIRCADIAN_HOME": str(paths.home),
        "PATH": os.pathsep.join(
            dict.fromkeys([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
        ),
    }
    if os.environ.get("CIRCADIAN_MODELS_DIR"):
        env["CIRCADIAN_MODELS_DIR"] = os.environ["CIRCADIAN_MODELS_DIR"]
    return env


def render_plist(program: list[str], hour: int, minute: int, env: dict[str, str], stdout: Path, stderr: Path) -> bytes:
    """Given the job's pieces, return the LaunchAgent plist filled in from the template (pure)."""
    template = plistlib.loads(resources.files("circadian.shift").joinpath("templates/nightly.plist").read_bytes())
    template["Label"] = LABEL
    template["ProgramArguments"] = [*program, "sleep", "--scheduled"]
    template["StartCalendarInterval"] = {"Hour": hour, "Minute": minute}
    template["EnvironmentVariables"] = dict(env)
    template["StandardOutPath"] = str(stdout)
    template["StandardErrorPath"] = str(stderr)
    return plistlib.dumps(template, sort_keys=False)


def _quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' if re.search(r'[\s"\\]', arg) else arg


def render_systemd(program: list[str], hour: int, minute: int, env: dict[str, str], log: Path) -> dict[str, str]:
    """Return {file name: text} for the user service and its timer (pure)."""
    environment = "\n".join(f"Environment={_quote(f'{k}={v}')}" for k, v in env.items())
    service = (
        f"[Unit]\nDescription=circadian: distill the day's conversations into an adapter\n\n"
        f"[Service]\nType=oneshot\nExecStart={' '.join(_quote(a) for a in [*program, 'sleep', '--scheduled'])}\n"
        f"{environment}\nNice=5\nIOSchedulingClass=idle\n"
        f"StandardOutput=append:{log}\nStandardError=append:{log}\n"
    )
    timer = (
        f"[Unit]\nDescription=circadian nightly sleep at {hour:02d}:{minute:02d}\n\n"
        f"[Timer]\nOnCalendar=*-*-* {hour:02d}:{minute:02d}:00\nPersistent=true\nUnit={UNIT}.service\n\n"
        f"[Install]\nWantedBy=timers.target\n"
    )
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


@dataclass
class Plan:
    """What installing (or uninstalling) would write and run."""

    platform: str
    files: dict[Path, str | bytes] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "platform": self.platform,
            "files": {str(p): (c.decode() if isinstance(c, bytes) else c) for p, c in self.files.items()},
            "commands": [" ".join(c) for c in self.commands],
        }


def default_platform() -> str:
    return "macos" if sys.platform == "darwin" else "linux"


def plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def systemd_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def install_plan(paths: Paths, platform: str, hour: int, minute: int) -> Plan:
    program, env = program_arguments(), job_environment(paths)
    if platform == "macos":
        target = plist_path()
        domain = f"gui/{os.getuid()}"
        return Plan(
            platform,
            {
                target: render_plist(
                    program, hour, minute, env, paths.logs / "nightly.out.log", paths.logs / "nightly.err.log"
                )
            },
            [["launchctl", "bootout", domain, str(target)], ["launchctl", "bootstrap", domain, str(target)]],
        )
    units = render_systemd(program, hour, minute, env, paths.logs / "nightly.log")
    return Plan(
        platform,
        {systemd_dir() / name: text for name, text in units.items()},
        [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", f"{UNIT}.timer"]],
    )


def uninstall_plan(platform: str) -> Plan:
    if platform == "macos":
        return Plan(platform, {plist_path(): b""}, [["launchctl", "bootout", f"gui/{os.getuid()}", str(plist_path())]])
    return Plan(
        platform,
        {systemd_dir() / f"{UNIT}.timer": "", systemd_dir() / f"{UNIT}.service": ""},
        [["systemctl", "--user", "disable", "--now", f"{UNIT}.timer"], ["systemctl", "--user", "daemon-reload"]],
    )


def _run(command: list[str], *, check: bool) -> str | None:
    """Run a command; return None on success or its one-line complaint."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} not found"
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0 or not check:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"`{' '.join(command)}` failed: {lines[-1] if lines else f'exit {done.returncode}'}"


def install(paths: Paths, platform: str, hour: int, minute: int) -> Plan:
    """Write and load the job; on any failure remove what was written and raise CircadianError."""
    plan = install_plan(paths, platform, hour, minute)
    paths.logs.mkdir(parents=True, exist_ok=True)
    for target, content in plan.files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, content.decode() if isinstance(content, bytes) else content, mode=0o644)
    for i, command in enumerate(plan.commands):
        # `launchctl bootout` of a job that is not loaded fails harmlessly
        problem = _run(command, check=not (platform == "macos" and i == 0))
        if problem:
            for target in plan.files:
                target.unlink(missing_ok=True)
            hint = (
                "; no session bus here? `circadian daemon` runs the nightly job without systemd"
                if platform == "linux"
                else ""
            )
            raise CircadianError(f"{problem}; nothing installed{hint}")
    return plan


def uninstall(platform: str) -> Plan:
    plan = uninstall_plan(platform)
    if not any(p.exists() for p in plan.files):
        raise CircadianError(f"the nightly job is not installed for {platform}")
    for command in plan.commands:
        _run(command, check=False)
    for target in plan.files:
        target.unlink(missing_ok=True)
    return plan


def installed(platform: str) -> dict | None:
    """Return {file, hour, minute, home} of the installed job, read back from its own files, or None."""
    if platform == "macos":
        if not plist_path().exists():
            return None
        job = plistlib.loads(plist_path().read_bytes())
        interval = job.get("StartCalendarInterval", {})
        return {
            "file": str(plist_path()),
            "hour": int(interval.get("Hour", 0)),
            "minute": int(interval.get("Minute", 0)),
            "home": job.get("EnvironmentVariables", {}).get("CIRCADIAN_HOME"),
        }
    timer, service = systemd_dir() / f"{UNIT}.timer", systemd_dir() / f"{UNIT}.service"
    if not timer.exists():
        return None
    when = re.search(r"^OnCalendar=\*-\*-\* (\d\d):(\d\d)", timer.read_text(), re.M)
    home = re.search(r'^Environment="?CIRCADIAN_HOME=(.*?)"?$', service.read_text(), re.M) if service.exists() else None
    return {
        "file": str(timer),
        "hour": int(when[1]) if when else 0,
        "minute": int(when[2]) if when else 0,
        "home": home[1] if home else None,
    }
