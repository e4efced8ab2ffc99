"""User configuration: `circadian.toml` in the home, validated by pydantic, with environment overrides.

Precedence: environment (`CIRCADIAN_<SECTION>__<KEY>`, e.g. `CIRCADIAN_MODEL__NAME`) > the file >
defaults. Unknown keys, in the file or in the environment, are an error that names the key.
`load_config` returns the validated `Config` and, for `circadian config show`, where each value
came from.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from circadian.errors import CircadianError

ENV_PREFIX = "CIRCADIAN_"
ENV_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Which model answers, and on what."""

    name: str = Field("embedded", description='"embedded" (SmolLM2-135M-Instruct), a HF repo id, or a local path')
    revision: str | None = Field(None, description="HF revision (branch, tag or commit) for a repo id")
    backend: str = Field("auto", description='"auto" (mlx on Apple Silicon, torch elsewhere) or a backend name')
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="torch backend device")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="torch weights dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    quantize: Literal["none", "4bit"] = Field(
        "none", description="torch on CUDA: 4-bit NF4 (bitsandbytes) for QLoRA on a 24 GB card")


class ChatSettings(_Section):
    """How replies are generated in `chat`, `ask` and evaluation."""

    system_prompt: str = Field("", description="system message at the start of every session (empty: the model's own)")
    max_tokens: int = Field(512, ge=1, le=32768, description="longest reply, in tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling when temperature > 0")
    context_turns: int = Field(20, ge=0, description="earlier exchanges of the session kept in the prompt")


class LoggingSettings(_Section):
    """What is kept of the day."""

    enabled: bool = Field(True, description="log every turn to data/memories.jsonl (per call: ask --no-log)")


class Config(_Section):
    """The whole user configuration (`circadian.toml`)."""

    model: ModelSettings = ModelSettings()
    chat: ChatSettings = ChatSettings()
    logging: LoggingSettings = LoggingSettings()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _known_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _known_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _env_overrides(environ: dict[str, str]) -> dict[str, str]:
    """Given the environment, return {dotted.key: value} for every CIRCADIAN_<SECTION>__<KEY>."""
    known = _known_keys()
    out: dict[str, str] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or ENV_DELIMITER not in var:
            continue
        dotted = var[len(ENV_PREFIX):].lower().replace(ENV_DELIMITER, ".")
        if dotted not in known:
            raise CircadianError(f"environment variable {var}: unknown config key '{dotted}'")
        out[dotted] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _describe(error: ValidationError, origin: dict[str, str]) -> str:
    first = error.errors()[0]
    dotted = ".".join(str(p) for p in first["loc"])
    where = origin.get(dotted) or next(
        (src for key, src in origin.items() if key.startswith(dotted + ".")), "config")
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown config key '{dotted}'"
    return f"{where}: {dotted}: {first['msg']}"


def load_config(path: Path, environ: dict[str, str] | None = None) -> tuple[Config, dict[str, str]]:
    """Given the config file path, return (Config, {dotted key: source}) for every key.

    Sources are "default", the file path, or the environment variable's name.
    Raise CircadianError naming the key when the file or the environment holds an unknown key or
    a bad value, or when the file is not valid TOML.
    """
    environ = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path.exists():
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise CircadianError(f"{path}: not valid TOML ({exc})") from None
        for dotted in _flatten(tree):
            origin[dotted] = str(path)
    for dotted, value in _env_overrides(environ).items():
        _set_dotted(tree, dotted, value)
        origin[dotted] = ENV_PREFIX + dotted.upper().replace(".", ENV_DELIMITER)
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        raise CircadianError(_describe(exc, origin)) from None
    sources = {key: origin.get(key, "default") for key in sorted(_known_keys())}
    return config, sources


def config_rows(config: Config, sources: dict[str, str]) -> list[dict[str, Any]]:
    """Given a Config and its sources, return rows {key, value, source} for display."""
    values = _flatten(config.model_dump())
    return [{"key": k, "value": values[k], "source": sources.get(k, "default")} for k in sorted(values)]
