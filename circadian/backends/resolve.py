"""Resolve the configured model name to a local folder: the embedded default, a local path, or a
Hugging Face repo id that must already be in the local cache (or be downloadable right now).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circadian.core.config import ModelSettings
from circadian.core.errors import CircadianError, first_line


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its display name and its local folder."""

    name: str
    path: Path
    revision: str | None = None


# what a model needs: weights, config, tokenizer, chat template. Not `original/*.pth` (16 GB more for
# Llama-3.1-8B), nor other formats of the same weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
IGNORE_PATTERNS = ["original/*", "*.pth", "*.pt", "*.bin", "*.gguf", "*.onnx", "*.msgpack", "*.h5"]


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def download(**options) -> Path:
        patterns = {"revision": revision, "allow_patterns": ALLOW_PATTERNS, "ignore_patterns": IGNORE_PATTERNS}
        folder = Path(snapshot_download(repo_id, **patterns, **options))
        if not any(folder.glob("*.safetensors")):  # a repo that ships only PyTorch .bin weights
            older = {"allow_patterns": [*ALLOW_PATTERNS, "*.bin"], "ignore_patterns": IGNORE_PATTERNS[:2]}
            folder = Path(snapshot_download(repo_id, revision=revision, **older, **options))
        return folder

    try:
        return download(local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    login = "request access on its page at huggingface.co, then `hf auth login`"
    try:
        return download()
    except GatedRepoError:
        raise CircadianError(f"model '{repo_id}' is gated: {login}") from None
    except RepositoryNotFoundError:
        raise CircadianError(
            f"model '{repo_id}' is not on the hub, or is private (a token from `hf auth login` is needed)"
        ) from None
    except RevisionNotFoundError:
        raise CircadianError(f"model '{repo_id}' has no revision '{revision}' (model.revision)") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise CircadianError(f"model '{repo_id}': the hub refused access ({status}); {login}") from None
        raise _unreachable(repo_id, exc) from None
    except Exception as exc:  # offline, DNS, a proxy, the hub down
        raise _unreachable(repo_id, exc) from None


def _unreachable(repo_id: str, exc: Exception) -> CircadianError:
    return CircadianError(
        f"model '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
        f'({first_line(exc, 160)}); set model.name to a local path or to "embedded"'
    )


def resolve_model(
    settings: ModelSettings, models_dir: Path, *, say: Callable[[str], None] = lambda _msg: None
) -> ResolvedModel:
    """Given the model settings and the model cache folder, return the model's local folder.

    Builds the embedded model on first use. Raise CircadianError when the model cannot be had.
    """
    name = settings.name.strip()
    if name in ("embedded", "default", ""):
        from circadian.backends import embedded

        folder = embedded.embedded_dir(models_dir)
        if not folder.exists():
            say("building the embedded model (first run only, about a minute)")
        return ResolvedModel("embedded:" + embedded.EMBEDDED_NAME, embedded.build(models_dir, say=say))
    local = Path(name).expanduser()
    if local.exists() or name.startswith((".", "/", "~")):
        if not (local / "config.json").is_file():
            raise CircadianError(f"model path {local} has no config.json: not a model folder")
        return ResolvedModel(str(local.absolute()), local.absolute())
    if name.count("/") != 1:
        raise CircadianError(f"model '{name}': not \"embedded\", an existing folder, or a repo id like org/name")
    return ResolvedModel(name, _from_hub(name, settings.revision), settings.revision)


def resolve_base(
    settings: ModelSettings, paths, base: str | None, *, say: Callable[[str], None] = lambda _msg: None
) -> ResolvedModel:
    """Given the model settings, the home's paths and the consolidated base a state sits on (None:
    the configured model), return the model to load. A consolidated base is checked first: its weight
    files present at their recorded sizes, and made from the configured model."""
    from circadian.store import bases

    configured = resolve_model(settings, paths.models, say=say)
    if base is None:
        return configured
    manifest = bases.verify(paths, base)
    if manifest.root_model and manifest.root_model != configured.name:
        raise CircadianError(
            f"the current base {base} was consolidated from {manifest.root_model}, but model.name is now "
            f"{configured.name}; set model.name back, or `circadian adapters use VERSION` of a version on it"
        )
    return ResolvedModel(base, bases.folder(paths, base))
