"""A cycle: one night's run folder, `data/runs/<cycle_id>/`, with its stage marker, its step log and the
live status it publishes; and what the next sleep does about cycles a crash left unfinished.

`state.json` names the stage the cycle is in (written atomically at each stage); a cycle with a state
but no line in `run_log.jsonl` was interrupted, and the next sleep logs it as such.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime

from circadian.core.clock import now_iso
from circadian.core.fsutil import (
    append_jsonl,
    atomic_write_json,
    atomic_write_jsonl,
    read_jsonl,
    read_state_json,
)
from circadian.core.paths import Paths
from circadian.night import control
from circadian.store import adapters, inbox
from circadian.store.records import LiveStatus, RunLogLine, read_all

RUN_TYPE = "nightly"
HOLD_ENV = "CIRCADIAN_HOLD_AT"
STAGES = (
    "snapshot",
    "load",
    "dataset",
    "eval_before",
    "train",
    "route",
    "eval_after",
    "gate",
    "eval_blend",
    "commit",
    "report",
)  # in order; a cycle ends in one of ENDINGS
ENDINGS = ("done", "failed", "stopped")


def hold(point: str) -> None:
    """Crash-test hook: with CIRCADIAN_HOLD_AT=<point> the process says so on stderr and waits
    there (CIRCADIAN_HOLD_SECONDS, 300 by default, or until the file CIRCADIAN_HOLD_RELEASE names
    exists), so a test can SIGKILL it, or act beside it, at exactly that moment. Points: every stage
    name, plus commit:staged (weights written) and commit:renamed (version in place, CURRENT not yet)."""
    if os.environ.get(HOLD_ENV) == point:
        print(f"holding at {point}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + float(os.environ.get("CIRCADIAN_HOLD_SECONDS", "300"))
        release = os.environ.get("CIRCADIAN_HOLD_RELEASE")  # a file whose appearance ends the hold early
        while time.monotonic() < deadline and not (release and os.path.exists(release)):
            time.sleep(0.1)


class Cycle:
    """One cycle's folder, stage marker, step log and published status."""

    def __init__(
        self,
        paths: Paths,
        cycle_id: str,
        say: Callable[[str], None],
        *,
        trigger: str = "manual",
        night: str | None = None,
    ):
        self.paths = paths
        self.id = cycle_id
        self.dir = paths.runs / cycle_id
        self.say_out = say
        self.started = time.time()
        self.timings: dict[str, float] = {}
        self._stage: tuple[str, float] | None = None
        self.status = LiveStatus(cycle_id=cycle_id, state="running", started=self.started)
        self.trigger, self.night = trigger, night  # "scheduled" + the night's date for the nightly job

    def create(self) -> Cycle:
        self.dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        return self

    def say(self, message: str) -> None:
        """Show a step on the console and keep it in the cycle's log.jsonl."""
        self.say_out(message)
        append_jsonl(self.dir / "log.jsonl", [{"ts": now_iso(), "message": message}])

    def stage(self, name: str) -> None:
        """Enter a stage: time the one before, mark it in state.json, publish it, and hold there in crash tests."""
        now = time.time()
        if self._stage:
            self.timings[self._stage[0]] = round(now - self._stage[1], 2)
        self._stage = (name, now)
        atomic_write_json(self.dir / "state.json", {"cycle_id": self.id, "stage": name, "ts": now_iso()})
        self.publish({"stage": name, **({"state": name} if name in ENDINGS else {})})
        hold(name)

    def publish(self, fields: dict) -> None:
        """Update control/status.json (what `ctl status`, `status` and the dashboard show)."""
        self.status = self.status.model_copy(update=fields)
        control.publish(self.paths.control, self.status)

    def write(self, name: str, rows: list[dict]) -> None:
        """Write rows as a JSONL file in the cycle folder, atomically."""
        atomic_write_jsonl(self.dir / name, rows)

    @property
    def started_iso(self) -> str:
        return datetime.fromtimestamp(self.started).astimezone().isoformat(timespec="seconds")


def new_cycle_id(paths: Paths, now: datetime) -> str:
    """Given the home and the time, return a cycle id like 20261122-031500 that no folder has yet."""
    base = now.strftime("%Y%m%d-%H%M%S")
    cycle_id, n = base, 1
    while (paths.runs / cycle_id).exists():
        n += 1
        cycle_id = f"{base}-{n}"
    return cycle_id


def logged_cycles(paths: Paths) -> set[str]:
    """The cycle ids that have a line in run_log.jsonl."""
    return {line.cycle_id for line in read_all(paths.run_log, RunLogLine)}


def recover_interrupted(paths: Paths, say: Callable[[str], None]) -> list[str]:
    """Log cycles a crash left unfinished (one run_log line each) and remove staged candidates."""
    recovered = []
    done = logged_cycles(paths)
    for state_file in sorted(paths.runs.glob("*/state.json")):
        cycle_id = state_file.parent.name
        if cycle_id in done:
            continue
        stage = read_state_json(state_file, {}, valid=lambda v: isinstance(v, dict)).get("stage")
        stored = next((m.version for m in adapters.list_versions(paths) if m.cycle_id == cycle_id), None)
        if stored and adapters.current_version(paths) == stored:
            note = f"the process ended after {stored} was made current, before the report was written"
        elif stored:
            note = f"the process ended after {stored} was stored, before it was made current; nothing was promoted"
        else:
            note = "the process ended before the cycle finished; nothing was promoted"
        append_jsonl(
            paths.run_log,
            [
                RunLogLine(
                    cycle_id=cycle_id,
                    run_type=RUN_TYPE,
                    outcome="interrupted",
                    stage=stage,
                    version=stored,
                    logged_at=now_iso(),
                    note=note,
                ).row()
            ],
        )
        recovered.append(cycle_id)
        say(f"cycle {cycle_id} was interrupted during '{stage}'; logged: {note}")
    for name in adapters.clean_staging(paths):
        say(f"removed unfinished candidate {name}")
    released = inbox.release_training(paths, "the cycle training it ended without a decision")
    if released:
        say(f"inbox datasets back in the queue: {', '.join(released)}")
    return recovered


def quarantine_bad_lines(paths: Paths, bad_lines: list[int], end: int) -> int:
    """Copy unreadable memory lines to data/quarantine/memories.jsonl once each, with the reason."""
    if not bad_lines:
        return 0
    target = paths.quarantine / "memories.jsonl"
    known = {line.value.get("line") for line in read_jsonl(target) if line.value}
    raw_by_line = {line.number: line.raw for line in read_jsonl(paths.memories, end=end)}
    rows = [
        {
            "line": n,
            "reason": "not a valid memory record (JSON object with id, ts and messages)",
            "raw": raw_by_line.get(n, ""),
            "quarantined_at": now_iso(),
        }
        for n in bad_lines
        if n not in known
    ]
    if rows:
        append_jsonl(target, rows)
    return len(rows)
