"""The adapter store as the day side sees it: which version is current, and loading it safely.

`adapters/CURRENT` holds the name of the active version (absent or empty: the base model).
Each `adapters/<version>/` holds backend-native weights and `manifest.json`, whose `weights`
maps every weight file to its sha256; a mismatch refuses to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from circadian.errors import CircadianError
from circadian.fsutil import sha256_file
from circadian.paths import Paths

MANIFEST = "manifest.json"


class AdapterManifest(BaseModel):
    """The part of manifest.json the day side needs; unknown keys (newer writers) are ignored."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = 1
    version: str
    parent: str | None = None
    backend: str
    base_model: str = ""
    weights: dict[str, str] = {}


@dataclass(frozen=True)
class ActiveAdapter:
    """The current adapter: its version name, folder and manifest."""

    version: str
    path: Path
    manifest: AdapterManifest


def current_version(paths: Paths) -> str | None:
    """Given the home's paths, return the name in adapters/CURRENT, or None for the base model."""
    try:
        name = paths.current.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name if name and name != "base" else None


def read_manifest(folder: Path) -> AdapterManifest:
    """Given an adapter folder, return its manifest. Raise CircadianError if missing or malformed."""
    path = folder / MANIFEST
    try:
        return AdapterManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CircadianError(f"adapter {folder.name}: no {MANIFEST} (incomplete or not an adapter)") from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise CircadianError(f"adapter {folder.name}: unreadable {MANIFEST} ({str(exc).splitlines()[0]})") from None


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
            raise CircadianError(f"adapter {manifest.version}: {name} does not match the sha256 in its manifest; refusing to load")


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
