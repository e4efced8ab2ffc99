"""The adapter store: versioned adapters with manifests, the CURRENT pointer, pins, retention,
rollback, and the history of every change of CURRENT.

`adapters/<version>/` holds backend-native weights, `trained_ids.json` (the memory ids this version
learned), `graduation.json` (which facts its night's evaluation asked, and whether it answered them
without retrieval: store/ledger.py) and `manifest.json`, written last; its `weights` maps each
weight file to its sha256, checked on every load. A version is staged in
`adapters/.staging-<cycle>/` and renamed into place whole. `adapters/CURRENT` names the active
version (absent or `base`: the base model; `base <name>`: a consolidated base, store/bases.py, with no
adapter on it) and is replaced atomically; `adapters/history.jsonl` records each change;
`adapters/pins.json` lists versions retention never deletes. Each version's manifest names the
consolidated base it was trained on (`base`, None for the configured model), and the lineage runs
on through a consolidation to the adapter that was fused, so a rollback can go back across it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from circadian.core.clock import now_iso
from circadian.core.errors import CircadianError
from circadian.core.fsutil import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    publish_folder,
    read_jsonl,
    read_state_json,
    sha256_file,
)
from circadian.core.paths import Paths
from circadian.store import bases
from circadian.store.records import SCHEMA_VERSION, AdapterManifest, read_json

MANIFEST = "manifest.json"
TRAINED_IDS = "trained_ids.json"
GRADUATION = "graduation.json"
PRUNED = "pruned.jsonl"
_VERSION_RE = re.compile(r"^v(\d{4,})-\d{8}-\d{6}$")


@dataclass(frozen=True)
class ActiveAdapter:
    """The current adapter: its version name, folder and manifest."""

    version: str
    path: Path
    manifest: AdapterManifest


def version_name(number: int, when: datetime) -> str:
    """Given a sequence number and a time, return a version name like v0003-20261122-031500."""
    return f"v{number:04d}-{when.strftime('%Y%m%d-%H%M%S')}"


def version_number(name: str) -> int | None:
    m = _VERSION_RE.match(name)
    return int(m.group(1)) if m else None


def next_version(paths: Paths, when: datetime) -> str:
    """Return the next version name (one more than the highest stored)."""
    numbers = (
        [n for p in paths.adapters.iterdir() if (n := version_number(p.name)) is not None]
        if paths.adapters.exists()
        else []
    )
    return version_name(max(numbers, default=0) + 1, when)


def _current_text(paths: Paths) -> str:
    try:
        return paths.current.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def current_version(paths: Paths) -> str | None:
    """Given the home's paths, return the name in adapters/CURRENT, or None for a base model."""
    name = _current_text(paths)
    return name if name and name != "base" and not name.startswith("base ") else None


def current_base(paths: Paths) -> str | None:
    """The consolidated base the current state sits on (store/bases.py), None for the configured
    model: the current version's own base, or the one `base <name>` in CURRENT names."""
    name = _current_text(paths)
    if name.startswith("base "):
        return name.removeprefix("base ").strip() or None
    version = current_version(paths)
    if version is None:
        return None
    if (paths.adapters / version / MANIFEST).exists():
        return read_manifest(paths.adapters / version).base
    return pruned(paths).get(version, {}).get("base")


def head(paths: Paths) -> str | None:
    """The newest version of the current lineage: the current version, or on a consolidated base
    with no adapter yet, the version fused into it (its facts are in the weights now)."""
    version = current_version(paths)
    if version is None and (base := current_base(paths)):
        with contextlib.suppress(CircadianError):
            return bases.read(paths, base).adapter_version
    return version


def read_manifest(folder: Path) -> AdapterManifest:
    """Given an adapter folder, return its manifest. Raise CircadianError if missing or malformed."""
    return read_json(
        folder / MANIFEST,
        AdapterManifest,
        what=f"adapter {folder.name}",
        missing=f"no {MANIFEST} (incomplete or not an adapter)",
    )


def verify_weights(folder: Path, manifest: AdapterManifest) -> None:
    """Given an adapter folder and its manifest, check each weight file's sha256.

    Raise CircadianError naming the first file that is missing or does not match.
    """
    if not manifest.weights:
        raise CircadianError(f"adapter {manifest.version}: manifest lists no weight files")
    for name, expected in sorted(manifest.weights.items()):
        path = folder / name
        if not path.is_file():
            raise CircadianError(f"adapter {manifest.version}: weight file {name} is missing")
        if sha256_file(path) != expected:
            raise CircadianError(
                f"adapter {manifest.version}: {name} does not match the sha256 in its manifest; refusing to load"
            )


def get(paths: Paths, version: str) -> ActiveAdapter:
    """Given a version name, return it (manifest read, weights not yet verified).

    Raise CircadianError if no such version is stored, or the name is not a version's (a path such
    as `/tmp/x` or `v1/../..` never leaves the store).
    """
    folder = paths.adapters / version
    if version_number(version) is not None and folder.is_dir():
        return ActiveAdapter(version, folder, read_manifest(folder))
    known = ", ".join(m.version for m in list_versions(paths)) or "none"
    raise CircadianError(f"no adapter version '{version}' (stored: {known})")


def active_adapter(paths: Paths) -> ActiveAdapter | None:
    """Given the home's paths, return the verified current adapter, or None for the base model.

    Raise CircadianError if CURRENT names a version that is missing or fails verification.
    """
    version = current_version(paths)
    if version is None:
        return None
    folder = paths.adapters / version
    if not folder.is_dir():
        raise CircadianError(f"adapters/CURRENT names {version}, which does not exist; run `circadian rollback base`")
    manifest = read_manifest(folder)
    verify_weights(folder, manifest)
    return ActiveAdapter(version, folder, manifest)


def list_versions(paths: Paths) -> list[AdapterManifest]:
    """Return the manifests of every complete stored version, oldest first (incomplete ones skipped)."""
    found = []
    if not paths.adapters.exists():
        return found
    for folder in sorted(paths.adapters.iterdir()):
        if version_number(folder.name) is None or not (folder / MANIFEST).exists():
            continue
        try:
            found.append(read_manifest(folder))
        except CircadianError:
            continue
    return sorted(found, key=lambda m: version_number(m.version) or 0)


def pruned(paths: Paths) -> dict[str, dict]:
    """The versions retention deleted, by name: {version, parent, trained_ids, asked, pruned_at} each
    (`adapters/pruned.jsonl`), so that lineage and trained ids outlive the weights."""
    return {
        line.value["version"]: line.value
        for line in read_jsonl(paths.adapters / PRUNED)
        if line.value and isinstance(line.value.get("version"), str)
    }


def lineage(paths: Paths, version: str | None) -> list[str]:
    """Given a version, return it and its ancestors by parent pointers (newest first), through
    versions retention deleted (`pruned`) and through consolidations (the first version on a
    consolidated base continues the lineage of the adapter fused into that base)."""
    chain: list[str] = []
    gone: dict[str, dict] | None = None
    while version and version not in chain:
        if (paths.adapters / version / MANIFEST).exists():
            manifest = read_manifest(paths.adapters / version)
            parent, base = manifest.parent, manifest.base
        else:
            gone = pruned(paths) if gone is None else gone
            if version not in gone:
                break
            parent, base = gone[version].get("parent"), gone[version].get("base")
        if parent is None and base:  # the first version on a consolidated base: on to the adapter fused into it
            with contextlib.suppress(CircadianError):
                parent = bases.read(paths, base).adapter_version
        chain.append(version)
        version = parent
    return chain


def _names(value) -> bool:
    """The shape of trained_ids.json and pins.json: a list of strings."""
    return isinstance(value, list) and all(isinstance(i, str) for i in value)


def trained_ids(paths: Paths, version: str | None = None) -> set[str]:
    """Return the memory ids learned by a version and its ancestors (default: CURRENT's lineage).

    After a rollback the rolled-back versions' memories count as not yet trained again.
    """
    ids: set[str] = set()
    for name in lineage(paths, version if version is not None else head(paths)):
        ids |= own_trained_ids(paths, name)
    return ids


def own_trained_ids(paths: Paths, version: str) -> set[str]:
    """The memory ids one version learned itself (a pruned one's from the ledger)."""
    folder = paths.adapters / version
    if folder.is_dir():
        return set(read_state_json(folder / TRAINED_IDS, [], valid=_names))
    return set(pruned(paths).get(version, {}).get("trained_ids", []))


def _asked_rows(value) -> bool:
    """The shape of graduation.json: [{"fact": key, "turn": id, "hit": bool}, ...] (ids only, no words)."""
    return isinstance(value, list) and all(
        isinstance(r, dict) and isinstance(r.get("fact"), str) and isinstance(r.get("hit"), bool) for r in value
    )


def own_asked(paths: Paths, version: str) -> list[dict] | None:
    """What one version's night asked of its facts ({"fact", "turn", "hit"} each), a pruned one's from
    the ledger; None when it was not recorded (a version from before graduation was kept)."""
    folder = paths.adapters / version
    if folder.is_dir():
        if not (folder / GRADUATION).exists():
            return None
        return read_state_json(folder / GRADUATION, [], valid=_asked_rows)
    asked = pruned(paths).get(version, {}).get("asked")
    return asked if _asked_rows(asked) else None


def staging_dir(paths: Paths, cycle_id: str) -> Path:
    return paths.adapters / f".staging-{cycle_id}"


def clean_staging(paths: Paths) -> list[str]:
    """Remove staging folders left by interrupted cycles; return their names."""
    removed = []
    for folder in paths.adapters.glob(".staging-*"):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def rewrite_file(paths: Paths, version: str, name: str, text: str) -> None:
    """Rewrite one checked file of a stored version (a purge takes the user's words out of its
    router.json): the file atomically, then its sha256 in the manifest, also atomically."""
    folder = paths.adapters / version
    raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    atomic_write_text(folder / name, text)
    raw.setdefault("weights", {})[name] = sha256_file(folder / name)
    atomic_write_json(folder / MANIFEST, raw)


def commit(paths: Paths, staging: Path, manifest: dict, ids: list[str], asked: list[dict] = ()) -> Path:
    """Given a staged folder holding weights, write trained ids, what the night asked of its facts
    (`asked`) and the manifest (last), then rename it to its version name. Return the version's folder."""
    atomic_write_json(staging / TRAINED_IDS, sorted(ids))
    atomic_write_json(staging / GRADUATION, list(asked))
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    AdapterManifest.model_validate(manifest)
    # weights encode the conversations: private like them
    return publish_folder(staging, paths.adapters / manifest["version"], MANIFEST, manifest)


def state_name(version: str | None, base: str | None) -> str | None:
    """How a state is named in CURRENT and the history: a version, `base <name>` for a consolidated
    base with no adapter, None for the configured model."""
    return version or (f"base {base}" if base else None)


def set_current(paths: Paths, version: str | None, *, reason: str, base: str | None = None) -> str | None:
    """Make version current (None: the base model; with `base`, that consolidated base), atomically;
    record it; return the previous state's name (state_name)."""
    previous = state_name(current_version(paths), None if current_version(paths) else current_base(paths))
    new = state_name(version, base)
    if new is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.current)
    else:
        atomic_write_text(paths.current, new + "\n")
    append_jsonl(
        paths.adapters / "history.jsonl",
        [{"ts": now_iso(), "from": previous, "to": new, "reason": reason}],
    )
    return previous


def use(paths: Paths, target: str, *, reason: str | None = None) -> tuple[str | None, str | None]:
    """Make any stored version (its weights verified first), a consolidated base by name, or "base"
    (the base the current state sits on, with no adapter) current.

    Return (previous, new) as state names. Raise CircadianError if the target is unknown, fails
    verification or is already current.
    """
    current = state_name(current_version(paths), None if current_version(paths) else current_base(paths))
    if target == "base":
        version, base = None, current_base(paths)
    elif bases.number(target) is not None and version_number(target) is None:
        version, base = None, bases.verify(paths, target).name
    else:
        chosen = get(paths, target)
        verify_weights(chosen.path, chosen.manifest)
        version, base = chosen.version, chosen.manifest.base
    new = state_name(version, base)
    if new == current:
        raise CircadianError(f"{new or 'base'} is already current")
    set_current(paths, version, base=base, reason=reason or f"use {new or 'base'}")
    return current, new


def rollback(paths: Paths, target: str | None = None) -> tuple[str | None, str | None]:
    """Go back: make the current version's parent current, or `target` when it is an ancestor of the
    current version or "base".

    Return (previous, new). Raise CircadianError if there is nothing to roll back to, or the target
    is not behind the current version (`use` makes any version current).
    """
    current = current_version(paths)
    if current is None and target is None and (base := current_base(paths)):  # back across a consolidation
        fused = bases.read(paths, base).adapter_version
        if not (paths.adapters / fused).is_dir():
            raise CircadianError(f"{fused}, the adapter fused into {base}, is not stored; restore it from a backup")
        return use(paths, fused, reason=f"rollback across consolidation {base} to {fused}")
    if current is None and target not in (None, "base") and target in lineage(paths, head(paths)):
        return use(paths, target, reason=f"rollback to {target}")
    if current is None:
        raise CircadianError("nothing to roll back: the base model is already current")
    if target is None:
        parent = get(paths, current).manifest.parent if (paths.adapters / current).is_dir() else None
        if parent and not (paths.adapters / parent).is_dir():
            stored = ", ".join(m.version for m in list_versions(paths))
            raise CircadianError(
                f"the parent of {current}, {parent}, is no longer stored (retention deleted it); "
                f"`circadian rollback base`, or `circadian adapters use VERSION` ({stored})"
            )
        target = parent or "base"
    elif target != "base" and target not in lineage(paths, current)[1:]:
        raise CircadianError(
            f"{target} is not an ancestor of the current version {current}; "
            f"`circadian adapters use {target}` makes any stored version current"
        )
    return use(paths, target, reason=f"rollback to {target}")


def pins(paths: Paths) -> list[str]:
    return read_state_json(paths.adapters / "pins.json", [], valid=_names)


def set_pinned(paths: Paths, version: str, pinned: bool) -> list[str]:
    """Pin or unpin a stored version; return the pins."""
    get(paths, version)
    current = set(pins(paths))
    current = current | {version} if pinned else current - {version}
    atomic_write_json(paths.adapters / "pins.json", sorted(current))
    return sorted(current)


def prunable(paths: Paths, keep: int) -> list[str]:
    """The versions `prune` would delete: the oldest beyond `keep`, never the current one, its parent
    or pinned ones."""
    fused = {m.adapter_version for m in bases.stored(paths)}  # what rollback across a consolidation goes back to
    protected = set(pins(paths)) | set(lineage(paths, head(paths))[:2]) | fused
    candidates = [m.version for m in list_versions(paths) if m.version not in protected]
    return candidates[: max(0, len(candidates) - keep)]


def prune(paths: Paths, keep: int) -> list[str]:
    """Delete the oldest versions beyond `keep`, never the current one, its parent or pinned ones.

    Return the deleted versions' names.
    """
    deleted = []
    for version in prunable(paths, keep):
        entry = {
            "version": version,
            "parent": read_manifest(paths.adapters / version).parent,
            "base": read_manifest(paths.adapters / version).base,
            "trained_ids": sorted(own_trained_ids(paths, version)),
            "asked": own_asked(paths, version),
            "pruned_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        append_jsonl(paths.adapters / PRUNED, [entry])  # before the weights go: the lineage survives
        shutil.rmtree(paths.adapters / version)
        deleted.append(version)
    return deleted


def history(paths: Paths) -> list[dict]:
    return [line.value for line in read_jsonl(paths.adapters / "history.jsonl") if line.value]
