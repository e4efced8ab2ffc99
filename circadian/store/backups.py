"""Backups: snapshots of everything in a home that cannot be made again, deduplicated by content.

A snapshot holds the config, the memories and tombstones, the imports, the inbox, the quarantine,
the nights' records (`data/runs/`), every adapter version with CURRENT, pins and the pruned ledger,
the consolidated bases (`models/<base>-c<N>/`, store/bases.py) and the chat's typed-line history.
It leaves out what is made again from those (the memory index, the model cache, locks, the control
folder, staging folders). The store is a folder:
`objects/<aa>/<sha256>` holds each distinct file content once (an adapter unchanged since the last
snapshot costs nothing twice), and `snapshots/<id>.json` lists a snapshot's files with their hash,
size and mode, written last and atomically, so a snapshot cut short by a kill is simply absent and
its objects are collected later. Everything is 0600 in 0700 folders.

Retention keeps the last snapshot of each of the `keep_daily` most recent days, `keep_weekly`
weeks and `keep_monthly` months that have one (borg's and restic's rule), then deletes the objects
no kept snapshot names. A `mirror` destination gets a copy of every snapshot (the 3-2-1 rule).
`verify` hashes every object again; `restore` writes a snapshot into a new, empty home.

Why not restic or borg: neither is installed by the set-up or on most machines, and what a home
needs (a few hundred files, dedup of whole files, one retention rule) is small enough for the
standard library; a user who has them can point either at the home as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from filelock import FileLock

from circadian.core.config import BackupSettings, Config
from circadian.core.errors import CircadianError
from circadian.core.fsutil import (
    PRIVATE_FILE_MODE,
    atomic_write_json,
    lock_for,
    private_dir,
    sha256_file,
)
from circadian.core.paths import Paths
from circadian.store import adapters, bases

SCHEMA = 1
INCLUDED = ("circadian.toml", "chat_history", "data", "adapters")
LEFT_OUT_NAMES = ("memory_index.sqlite",)  # derived: `circadian memory rebuild` makes it again
LEFT_OUT_PREFIXES = (".staging-",)
LEFT_OUT_SUFFIXES = (".lock", ".tmp")
LINKED_SUFFIXES = (".safetensors", ".npz", ".bin")


@dataclass
class Snapshot:
    """One snapshot: its id, when and why it was taken, and its files {path: {sha256, size, mode}}."""

    id: str
    created_at: str
    reason: str
    files: dict[str, dict] = field(default_factory=dict)
    kind: str = "routine"  # or "before": taken before a destructive step (retention thins it apart)
    added_bytes: int = 0  # new content this snapshot stored (the rest was already there)

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def row(self) -> dict:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "reason": self.reason,
            "kind": self.kind,
            "files": len(self.files),
            "bytes": self.size,
            "added_bytes": self.added_bytes,
        }


def destination(paths: Paths, configured: str = "") -> Path:
    """Where snapshots are kept: the configured folder, or the home's backups/."""
    return Path(configured).expanduser() if configured else paths.home / "backups"


def _wanted(relative: Path) -> bool:
    name = relative.name
    return not (
        name.startswith(LEFT_OUT_NAMES)  # the index, its journal and copies moved aside
        or any(part.startswith(LEFT_OUT_PREFIXES) for part in relative.parts)
        or name.endswith(LEFT_OUT_SUFFIXES)
    )


def home_files(paths: Paths) -> list[Path]:
    """The files of the home a snapshot holds, relative to the home, sorted."""
    found = []
    fused = [f"models/{m.name}" for m in bases.stored(paths)]  # consolidated bases: the user's data is in them
    for top in (*INCLUDED, *fused):
        start = paths.home / top
        if start.is_file():
            found.append(Path(top))
        elif start.is_dir():
            for path in start.rglob("*"):
                relative = path.relative_to(paths.home)
                if path.is_file() and not path.is_symlink() and _wanted(relative):
                    found.append(relative)
    return sorted(found)


def _object(store: Path, digest: str) -> Path:
    return store / "objects" / digest[:2] / digest


def _put(store: Path, source: Path) -> tuple[str, int, int]:
    """Copy a file's content into the store once; return (sha256, size, bytes newly stored)."""
    appended = Path(str(source) + ".lock").exists()  # a file appended under its lock: whole lines only
    with lock_for(source) if appended else contextlib.nullcontext():
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    target = _object(store, digest)
    if target.exists():
        return digest, len(data), 0
    private_dir(target.parent)
    temporary = target.with_name(f".{digest}.{os.getpid()}.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, target)
    return digest, len(data), len(data)


def new_id(store: Path, when: datetime | None = None) -> str:
    """A sortable snapshot id: the local time, with a counter when two fall in one second."""
    base = (when or datetime.now().astimezone()).strftime("%Y%m%d-%H%M%S")
    name, n = base, 1
    while (store / "snapshots" / f"{name}.json").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def take(paths: Paths, store: Path, *, reason: str, kind: str = "routine", when: datetime | None = None) -> Snapshot:
    """Take a snapshot of the home into `store`; return it. Objects first, the snapshot's list last."""
    private_dir(store / "snapshots")
    private_dir(store / "objects")
    now = when or datetime.now().astimezone()
    snapshot = Snapshot(new_id(store, now), now.isoformat(timespec="microseconds"), reason, kind=kind)
    for relative in home_files(paths):
        source = paths.home / relative
        try:
            digest, size, added = _put(store, source)
        except FileNotFoundError:  # removed while the snapshot ran (a staging folder renamed): not in it
            continue
        snapshot.files[relative.as_posix()] = {"sha256": digest, "size": size, "mode": source.stat().st_mode & 0o777}
        snapshot.added_bytes += added
    _write_list(store, snapshot, str(paths.home))
    return snapshot


def snapshots(store: Path) -> list[Snapshot]:
    """The store's snapshots, oldest first (a list that cannot be read is named in one line)."""
    out = []
    for file in sorted((store / "snapshots").glob("*.json")):
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            out.append(
                Snapshot(
                    raw["id"],
                    raw["created_at"],
                    raw.get("reason", ""),
                    raw["files"],
                    kind=raw.get("kind", "routine"),
                    added_bytes=raw.get("added_bytes", 0),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CircadianError(f"{file}: not a snapshot list ({exc})") from None
    return sorted(out, key=lambda s: s.created_at)


def get(store: Path, snapshot_id: str) -> Snapshot:
    found = {s.id: s for s in snapshots(store)}
    if snapshot_id == "latest" and found:
        return list(found.values())[-1]
    if snapshot_id not in found:
        known = ", ".join(list(found)[-5:]) or "none yet"
        raise CircadianError(f"no snapshot {snapshot_id} in {store} (latest: {known})")
    return found[snapshot_id]


def kept_by_rule(taken: list[Snapshot], *, daily: int, weekly: int, monthly: int) -> set[str]:
    """The snapshots retention keeps: the newest of each of the most recent `daily` days, `weekly` ISO
    weeks and `monthly` months that have one, and always the newest snapshot of all; each kind apart,
    so a snapshot taken before retention deleted a version is not dropped for a routine one that
    no longer holds it."""
    kinds = {s.kind for s in taken}
    if len(kinds) > 1:
        rule = {"daily": daily, "weekly": weekly, "monthly": monthly}
        return set().union(*(kept_by_rule([s for s in taken if s.kind == k], **rule) for k in kinds))
    keep: set[str] = {taken[-1].id} if taken else set()
    for count, period in (
        (daily, lambda t: t.strftime("%Y-%m-%d")),
        (weekly, lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}"),
        (monthly, lambda t: t.strftime("%Y-%m")),
    ):
        seen: list[str] = []
        for snapshot in reversed(taken):  # newest first: the first seen of a period is its last
            key = period(datetime.fromisoformat(snapshot.created_at))
            if key in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(key)
            keep.add(snapshot.id)
    return keep


def apply_retention(store: Path, *, daily: int, weekly: int, monthly: int) -> tuple[list[str], int]:
    """Delete the snapshots the rule does not keep, then every object no kept snapshot names (and
    temporary files a kill left); return (deleted snapshot ids, bytes freed)."""
    taken = snapshots(store)
    keep = kept_by_rule(taken, daily=daily, weekly=weekly, monthly=monthly)
    dropped = [s.id for s in taken if s.id not in keep]
    for snapshot_id in dropped:
        (store / "snapshots" / f"{snapshot_id}.json").unlink()
    return dropped, collect(store)


def _write_list(store: Path, snapshot: Snapshot, home: str = "", **extra) -> None:
    atomic_write_json(
        store / "snapshots" / f"{snapshot.id}.json",
        {"schema_version": SCHEMA, "home": home, **snapshot.__dict__, **extra},
    )


def collect(store: Path) -> int:
    """Delete the objects no snapshot names (and temporary files a kill left); return bytes freed."""
    named = {f["sha256"] for s in snapshots(store) for f in s.files.values()}
    freed = 0
    for path in (store / "objects").glob("*/*") if (store / "objects").exists() else []:
        if path.name not in named:
            freed += path.stat().st_size
            path.unlink()
    return freed


def rewrite(store: Path, needs: Callable[[Path, Snapshot], bool], edit: Callable[[Paths], None]) -> list[str]:
    """Change snapshots in place (a purge): each snapshot for which `needs(store, snapshot)` holds is
    written out as a home in a work folder inside the store (weights hard-linked, the rest copied), `edit`
    runs on that home, and what it holds then replaces the snapshot's list (atomically, its id and time
    kept); the objects no snapshot names any more are deleted. Return the snapshots changed."""
    with locked(store):
        return _rewrite(store, needs, edit)


def _rewrite(store: Path, needs, edit) -> list[str]:
    changed = []
    for snapshot in snapshots(store):
        if not needs(store, snapshot):
            continue
        work = store / f".work-{snapshot.id}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            for name, entry in snapshot.files.items():
                private_dir((work / name).parent)
                source = _object(store, entry["sha256"])
                try:  # weights are never edited (nothing writes them in place): linked, not copied
                    if not name.endswith(LINKED_SUFFIXES):
                        raise OSError
                    os.link(source, work / name)
                except OSError:  # every other file is copied: an append must never reach a stored object
                    shutil.copyfile(source, work / name)
            edit(Paths(work))
            files = {}
            for relative in home_files(Paths(work)):
                digest = _put(store, work / relative)[0]
                before = snapshot.files.get(relative.as_posix(), {})
                files[relative.as_posix()] = {
                    "sha256": digest,
                    "size": (work / relative).stat().st_size,
                    "mode": before.get("mode", PRIVATE_FILE_MODE),
                }
            snapshot.files = files
            _write_list(store, snapshot, rewritten_at=datetime.now().astimezone().isoformat(timespec="seconds"))
            changed.append(snapshot.id)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if changed:
        collect(store)
    return changed


def holds(store: Path, snapshot: Snapshot, name: str, needle: bytes) -> bool:
    """Whether the snapshot's file `name` contains `needle`."""
    entry = snapshot.files.get(name)
    return bool(entry) and needle in _object(store, entry["sha256"]).read_bytes()


def stores(paths: Paths, settings: BackupSettings) -> list[Path]:
    """The snapshot stores that exist: the destination and the mirror."""
    found = [destination(paths, settings.dir)] + ([Path(settings.mirror).expanduser()] if settings.mirror else [])
    return [s for s in found if (s / "snapshots").is_dir()]


def mirror(store: Path, other: Path, snapshot: Snapshot) -> int:
    """Copy a snapshot, and the objects the other store lacks, to a second destination; return bytes copied."""
    private_dir(other / "snapshots")
    copied = 0
    for entry in snapshot.files.values():
        target = _object(other, entry["sha256"])
        if not target.exists():
            copied += _put(other, _object(store, entry["sha256"]))[2]
    shutil.copy2(store / "snapshots" / f"{snapshot.id}.json", other / "snapshots" / f".{snapshot.id}.tmp")
    os.replace(other / "snapshots" / f".{snapshot.id}.tmp", other / "snapshots" / f"{snapshot.id}.json")
    return copied


def verify(store: Path, snapshot_id: str | None = None) -> dict:
    """Hash every object the snapshots (or one) name again; return {"snapshots", "objects", "problems"}."""
    chosen = [get(store, snapshot_id)] if snapshot_id else snapshots(store)
    checked: dict[str, str | None] = {}
    problems = []
    for snapshot in chosen:
        for name, entry in snapshot.files.items():
            digest = entry["sha256"]
            if digest not in checked:
                path = _object(store, digest)
                checked[digest] = (
                    "missing" if not path.exists() else None if sha256_file(path) == digest else "content changed"
                )
            if checked[digest]:
                problems.append({"snapshot": snapshot.id, "file": name, "problem": checked[digest]})
    return {"snapshots": len(chosen), "objects": len(checked), "problems": problems}


def restore(store: Path, snapshot_id: str, target: Path) -> Snapshot:
    """Write a snapshot's files into `target`, a new home (missing or empty), each checked against its
    hash as it is written. Raise CircadianError if the target holds anything or an object is damaged."""
    snapshot = get(store, snapshot_id)
    if target.exists() and any(target.iterdir()):
        raise CircadianError(f"{target} is not empty: restore into a new home (`--to` a folder that does not exist)")
    for name, entry in sorted(snapshot.files.items()):
        source = _object(store, entry["sha256"])
        if not source.exists() or sha256_file(source) != entry["sha256"]:
            raise CircadianError(f"snapshot {snapshot.id}: {name} is damaged in the store (`circadian backup verify`)")
        path = target / name
        private_dir(path.parent)
        temporary = path.with_name(f".{path.name}.restore.tmp")
        shutil.copyfile(source, temporary)
        os.chmod(temporary, entry.get("mode", PRIVATE_FILE_MODE) & 0o777 or PRIVATE_FILE_MODE)
        os.replace(temporary, path)
    private_dir(target)
    return snapshot


def locked(store: Path) -> FileLock:
    """The store's lock: one snapshot, retention or rewrite at a time (a collection must never delete
    what a snapshot being taken has stored but not listed yet)."""
    private_dir(store)
    return FileLock(str(store / "store.lock"), timeout=600, mode=PRIVATE_FILE_MODE)


def run(paths: Paths, settings: BackupSettings, *, reason: str, kind: str = "routine") -> dict:
    """Take a snapshot, copy it to the mirror (if set), apply retention to both; return what was done."""
    store = destination(paths, settings.dir)
    rule = {"daily": settings.keep_daily, "weekly": settings.keep_weekly, "monthly": settings.keep_monthly}
    with locked(store):
        snapshot = take(paths, store, reason=reason, kind=kind)
        dropped, freed = apply_retention(store, **rule)
    out = {**snapshot.row(), "store": str(store), "dropped": dropped, "freed_bytes": freed}
    if settings.mirror:
        other = Path(settings.mirror).expanduser()
        with locked(other):
            out["mirror"] = {"store": str(other), "copied_bytes": mirror(store, other, snapshot)}
            out["mirror"]["dropped"], out["mirror"]["freed_bytes"] = apply_retention(other, **rule)
    return out


def prune_versions(paths: Paths, config: Config, *, say=lambda _m: None) -> list[str]:
    """Adapter retention with a snapshot first (backup.before_prune): the versions it deletes stay
    restorable. Return the deleted versions; raise (deleting nothing) if the snapshot fails."""
    going = adapters.prunable(paths, config.store.keep)
    if going and config.backup.before_prune:
        taken = run(paths, config.backup, reason=f"before retention deletes {', '.join(going)}", kind="before")
        say(f"backup: snapshot {taken['id']} holds {', '.join(going)} before retention deletes them")
    return adapters.prune(paths, config.store.keep)
