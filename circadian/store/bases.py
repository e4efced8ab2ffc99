"""Consolidated bases: the adapter of a long lineage fused into the weights of a new base model
(`circadian consolidate`, night/consolidate.py), kept in `<home>/models/<base>-c<N>/`.

Each holds the full model (weights, config, tokenizer) and `circadian-model.json`
(records.BaseManifest), written last: the parent base, the adapter that was fused, the sha256 of
every weight file and the check of the fused model against that adapter. A base is staged in
`models/.staging-<name>/` and renamed into place whole; a folder without its manifest is not a
base. Which base is current follows `adapters/CURRENT` (store/adapters.py): an adapter version's
manifest names the base it was trained on, and `base <name>` names a consolidated base with no
adapter on it. These folders live in the home even when CIRCADIAN_MODELS_DIR shares the model
cache, and are private (0700 / 0600): the weights encode the conversations.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from circadian.core.errors import CircadianError
from circadian.core.fsutil import private_dir, publish_folder, sha256_file
from circadian.core.paths import Paths
from circadian.store.records import SCHEMA_VERSION, BaseManifest, read_json

MANIFEST = "circadian-model.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+-c(\d+)$")
WEIGHT_SUFFIXES = (".safetensors",)


def number(name: str) -> int | None:
    """Given a folder name, return its consolidation number (`...-c3` -> 3), None if not a base's."""
    m = _NAME_RE.match(name)
    return int(m.group(1)) if m else None


def root_slug(model_name: str) -> str:
    """Given the configured model's display name, return the stem consolidated bases are named by
    ("embedded:smollm2-135m-instruct" -> "smollm2-135m-instruct", "org/Model-8B" -> "model-8b")."""
    stem = re.split(r"[:/\\]", model_name.rstrip("/\\"))[-1] or "model"
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


def folder(paths: Paths, name: str) -> Path:
    return paths.home / "models" / name


def read(paths: Paths, name: str) -> BaseManifest:
    """Given a consolidated base's name, return its manifest. Raise CircadianError if it is not a
    stored base (a name that is not a base's never leaves the home's models folder)."""
    if number(name) is None:
        raise CircadianError(f"'{name}' is not the name of a consolidated base (like smollm2-135m-instruct-c1)")
    return read_json(
        folder(paths, name) / MANIFEST,
        BaseManifest,
        what=f"consolidated base {name}",
        missing=f"not stored (models/{name}/{MANIFEST} is missing)",
    )


def stored(paths: Paths) -> list[BaseManifest]:
    """The manifests of every complete consolidated base, oldest first."""
    top = paths.home / "models"
    found = []
    for path in sorted(top.iterdir()) if top.is_dir() else []:
        if number(path.name) is not None and (path / MANIFEST).is_file():
            try:
                found.append(read(paths, path.name))
            except CircadianError:
                continue
    return sorted(found, key=lambda m: m.number)


def next_name(paths: Paths, root: str) -> str:
    """The next base's name: the root model's stem and one more than the highest number stored
    (staged and incomplete folders count, so a name is never reused)."""
    top = paths.home / "models"
    names = [p.name.removeprefix(".staging-") for p in top.iterdir()] if top.is_dir() else []
    highest = max((n for name in names if (n := number(name)) is not None), default=0)
    return f"{root_slug(root)}-c{highest + 1}"


def staging(paths: Paths, name: str) -> Path:
    return private_dir(paths.home / "models") / f".staging-{name}"


def clean_staging(paths: Paths) -> list[str]:
    """Remove staging folders an interrupted consolidation left; return their names."""
    top = paths.home / "models"
    removed = []
    for path in top.glob(".staging-*") if top.is_dir() else []:
        if number(path.name.removeprefix(".staging-")) is not None:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def weight_hashes(staged: Path) -> tuple[dict[str, str], dict[str, int]]:
    """The sha256 and size of each weight file of a model folder."""
    files = sorted(p for p in staged.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return {p.name: sha256_file(p) for p in files}, {p.name: p.stat().st_size for p in files}


def commit(staged: Path, manifest: dict) -> Path:
    """Given a staged folder holding a fused model, write its manifest (last) and rename it into
    place. Return the base's folder."""
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    BaseManifest.model_validate(manifest)
    return publish_folder(staged, staged.parent / manifest["name"], MANIFEST, manifest)


def verify(paths: Paths, name: str, *, full: bool = False) -> BaseManifest:
    """Check a consolidated base's weight files against its manifest: present and of the recorded
    size, and with `full` their sha256 too. Return the manifest; raise CircadianError naming the
    first file that does not match."""
    manifest = read(paths, name)
    where = folder(paths, name)
    if not manifest.weights:
        raise CircadianError(f"consolidated base {name}: its manifest lists no weight files")
    for file, expected in sorted(manifest.weights.items()):
        path = where / file
        if not path.is_file():
            raise CircadianError(f"consolidated base {name}: weight file {file} is missing")
        size = manifest.sizes.get(file)
        if (size is not None and path.stat().st_size != size) or (full and sha256_file(path) != expected):
            raise CircadianError(f"consolidated base {name}: {file} does not match its manifest; refusing to load")
    return manifest


def disk_bytes(path: Path) -> int:
    """The bytes a folder's files take."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
