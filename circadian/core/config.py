"""User configuration: `circadian.toml` in the home, validated by pydantic, with environment overrides.

Precedence: environment (`CIRCADIAN_<SECTION>__<KEY>`, e.g. `CIRCADIAN_MODEL__NAME`) > the file >
defaults. Unknown keys, in the file or in the environment, are an error that names the key.
`load_config` returns the validated `Config` and, for `circadian config show`, where each value
came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from circadian.core.errors import CircadianError

ENV_PREFIX = "CIRCADIAN_"
ENV_DELIMITER = "__"
# keys that were renamed: an old config file still loads, and `config show` says where the value came from
RENAMED = {
    "sleep.general_replay": "sleep.distill_prompts",
    "sleep.general_per_fact_row": "sleep.distill_per_fact_row",
    "sleep.probe_steps": "sleep.trial_steps",
    "night.teacher": "sleep.teacher",  # also accepted under the night section
}
HH_MM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_hh_mm(text: str) -> tuple[int, int]:
    """Given "HH:MM" (24-hour), return (hour, minute). Raise ValueError for anything else."""
    match = HH_MM.fullmatch(text.strip())
    if not match:
        raise ValueError(f"wants a time like 03:00 (24-hour HH:MM), not {text!r}")
    return int(match[1]), int(match[2])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    """Which model answers, and on what."""

    name: str = Field("embedded", description='"embedded" (SmolLM2-135M-Instruct), a HF repo id, or a local path')
    revision: str | None = Field(None, description="HF revision (branch, tag or commit) for a repo id")
    backend: str = Field("auto", description='"auto" (mlx on Apple Silicon, torch elsewhere) or a backend name')
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="torch backend device")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="torch weights dtype (auto: float32 on CPU, bfloat16 on CUDA)"
    )
    quantize: Literal["none", "4bit"] = Field(
        "none", description="torch on CUDA: 4-bit NF4 (bitsandbytes) for QLoRA on a 24 GB card"
    )


# "Reply in the language of the user" made the embedded model answer "What is the capital of Germany?" in German
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and clearly."


class ChatSettings(_Section):
    """How replies are generated in `chat`, `ask` and evaluation."""

    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT,
        description="system message of every conversation: chat, ask, evaluation and training rows "
        "(empty: the model's own)",
    )
    max_tokens: int = Field(512, ge=1, le=32768, description="longest reply, in tokens")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (deterministic)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling when temperature > 0")
    context_turns: int = Field(20, ge=0, description="earlier exchanges of the session kept in the prompt")
    repetition_penalty: float = Field(
        1.1,
        ge=1.0,
        le=2.0,
        description="divide the odds of tokens seen in the last repetition_context tokens (1 = off)",
    )
    repetition_context: int = Field(64, ge=1, le=4096, description="how many recent tokens the repetition penalty sees")
    retrieval: bool = Field(
        True, description="put what the user said that the adapter has not learned yet into the prompt (memory index)"
    )
    retrieval_entries: int = Field(3, ge=1, le=20, description="most entries of the memory index put in a prompt")
    retrieval_tokens: int = Field(160, ge=16, le=4096, description="token budget of those entries")
    day_facts: bool = Field(
        True,
        description="after each reply, write the turn's facts to the memory index in the background (parse "
        "generator, beside the turn's own words; `chat` only)",
    )


class TrainSettings(_Section):
    """How one night trains an adapter (LoRA on all linear layers; early stop keeps the best step)."""

    rank: int = Field(16, ge=1, le=512, description="LoRA rank")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate (warm-up, then cosine to 10%)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw",
        description="adamw, or muon: Muon (orthogonalized momentum) for the LoRA matrices, its step matched to "
        "AdamW's size, with AdamW for the rest (bench/optimizers.md)",
    )
    warmup_steps: int = Field(5, ge=0, description="linear warm-up steps")
    batch_size: int = Field(8, ge=1, description="rows per step (length-bucketed)")
    grad_accumulation: int = Field(
        1, ge=1, description="micro-batches per step (torch): less memory, the same rows per optimizer step"
    )
    memory_limit_mb: int = Field(
        0,
        ge=0,
        description="most memory training may take (0: detected: the GPU's, Metal's working set, or the RAM "
        "available); a night whose estimate is above it shrinks its micro-batches, or stops saying why",
    )
    max_epochs: float = Field(
        5.0, gt=0, description="upper bound on passes over the data (3 until session 15: bench/recall/RESULTS.md)"
    )
    max_steps: int = Field(400, ge=1, description="upper bound on optimizer steps")
    eval_every: int = Field(8, ge=1, description="steps between validation losses")
    patience: int = Field(3, ge=1, description="evaluations without improvement before early stop")
    min_steps: int = Field(
        24, ge=0, description="at least this many steps (a small night takes more passes), and no early stop before"
    )
    min_delta: float = Field(0.005, ge=0, description="smallest validation improvement that counts")
    anchor_weight: float = Field(1.0, ge=0, description="weight of the KL-to-base term on distilled general rows")
    grad_checkpoint: bool = Field(False, description="gradient checkpointing (less memory, slower)")
    mixed_precision: Literal["auto", "bfloat16", "off"] = Field(
        "auto",
        description="torch, float32 weights: the training steps in bfloat16 autocast (the adapter and the "
        "optimizer stay float32); auto: where the processor computes bfloat16 natively (AVX512-BF16 or AMX, "
        "Arm BF16, a CUDA GPU that supports it), about 2.5x faster on such a CPU (bench/THROUGHPUT.md)",
    )
    max_length: int = Field(512, ge=16, description="longest training row, in tokens")
    seed: int = Field(0, description="seed for batching and initialisation")


class SleepSettings(_Section):
    """What a night is made of."""

    min_new_facts: int = Field(
        1, ge=0, description="fewer new facts (and no new conversations) = nothing to learn tonight"
    )
    replay_facts: int = Field(
        100,
        ge=0,
        description="older facts replayed each night against forgetting (those not yet learned first; 40 until "
        "session 16)",
    )
    replay_rows: int = Field(
        6,
        ge=1,
        description="rows trained for each replayed older fact: its questions first, then its reverse and "
        "topic rows (3 until session 16: bench/recall/RESULTS.md)",
    )
    graduate_within: int = Field(
        3,
        ge=1,
        description="nights a fact is asked without being learned before the report flags it as one the model "
        "does not learn (retrieval keeps answering it)",
    )
    distill_prompts: int = Field(
        50,
        ge=0,
        description="general prompts answered by the base model (self-distillation), mixed into every night, at least",
    )
    distill_per_fact_row: float = Field(
        1.0, ge=0, description="more general prompts when the night has many facts: this many per fact question row"
    )
    probe_wordings: int = Field(1, ge=1, description="question wordings per fact held out for the recall check")
    valid_wordings: int = Field(1, ge=1, description="question wordings per fact held out for validation")
    probe_max_tokens: int = Field(40, ge=4, description="reply length when checking recall")
    capability_max_tokens: int = Field(
        96, ge=4, description="longest capability answer, in tokens (an answer is read whole, to its end)"
    )
    capability_questions: int = Field(
        0, ge=0, description="capability questions asked, spread over the harness's categories (0: all 227)"
    )
    router: bool = Field(
        True,
        description="fit a router each night that sends questions about the user to the memory adapter and "
        "everything else to the base model (torch backend)",
    )
    style_prompts: int = Field(30, ge=0, description="chat prompts of the style check (30: all; 0: no style check)")
    style_max_tokens: int = Field(160, ge=8, description="longest reply read by the style check, in tokens")
    policy: str = Field(
        "all",
        pattern=r"^(all|self|random|bandit|fixed:[\w-]+)$",
        description="what a night trains: all (every source) or one source "
        "a policy picks: self | random | bandit | fixed:SOURCE",
    )
    trial_steps: int = Field(
        2,
        ge=1,
        description="bandit policy: training steps of each trial, the first steps of each "
        "source's night (longer trials predict the night better and cost more)",
    )
    track: bool = Field(
        True, description="learning evolution: snapshot what the model answers for tracked examples during training"
    )
    track_sample: int = Field(12, ge=0, description="training rows tracked besides every recall probe")
    track_max_tokens: int = Field(12, ge=1, description="reply length of a tracked example's answer")
    track_budget: float = Field(0.15, gt=0, le=1, description="largest share of the training time snapshots may take")
    inbox_settle_seconds: float = Field(
        5.0,
        ge=0,
        description="an inbox file changed more recently than this waits "
        "for the next sleep (it may still be being written)",
    )
    redact_region: str = Field("US", description="default region for phone numbers without a country code")
    generator: str = Field(
        "auto",
        pattern=r"^[\w.-]+$",
        description="who writes the night's facts: auto (the teacher "
        "if it passes a short test, else parse), model (the teacher), parse (teacher-free, spaCy), "
        "rules (the old patterns), or a plug-in generator's name",
    )
    teacher: str = Field(
        "",
        description="model that writes the facts when the generator is model or auto (a repo id "
        "or a folder; empty: the configured model)",
    )


class GateSettings(_Section):
    """When a candidate adapter is promoted."""

    min_recall_gain: float = Field(0.0, ge=0, description="recall must rise by more than this, or validation loss fall")
    min_val_improvement: float = Field(
        0.0, ge=0, description="validation loss must fall by more than this, or recall rise"
    )
    max_capability_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="largest allowed drop of the capability score vs the current adapter (0.01: 2 of 227 questions)",
    )
    max_total_capability_drop: float = Field(
        0.02, ge=0, le=1, description="largest allowed drop of the capability score vs the base model"
    )
    max_style_drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="largest allowed drop of the style check's pass share vs the base model's (a version from "
        "before session 15, which did not keep the base's: vs the current adapter)",
    )
    max_ppl_drift: float = Field(
        0.02, ge=0, description="largest allowed general-perplexity rise vs the current adapter"
    )
    max_total_ppl_drift: float = Field(
        0.05, ge=0, description="largest allowed general-perplexity rise vs the base model"
    )
    fallback_scales: list[float] = Field(
        [0.75, 0.5],
        description="when a candidate learned but broke a bound, try it "
        "blended back toward the current adapter, keeping this "
        "share of the change (weight interpolation, WiSE-FT) and promote the first that passes; [] turns it off",
    )

    @field_validator("fallback_scales")
    @classmethod
    def _scales_between_0_and_1(cls, value: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in value):
            raise ValueError("each fallback scale must be between 0 and 1 (exclusive)")
        return sorted(value, reverse=True)


class StoreSettings(_Section):
    """The adapter store."""

    keep: int = Field(5, ge=1, description="versions kept besides the current one, its parent and pinned ones")
    consolidate_after: int = Field(
        30,
        ge=0,
        description="the nightly job fuses the adapter into a new base (`circadian consolidate`) after a promoted "
        "night once the lineage is longer than this many nights; 0: never",
    )


class BackupSettings(_Section):
    """Snapshots of what cannot be made again (`circadian backup`): memories, imports, the inbox, the
    config, the nights' records and every adapter version, deduplicated by content."""

    dir: str = Field("", description="where snapshots are kept (empty: the home's backups/ folder)")
    mirror: str = Field(
        "", description="a second destination (another disk, a synced folder): each snapshot is copied there too"
    )
    keep_daily: int = Field(7, ge=0, description="days whose last snapshot is kept")
    keep_weekly: int = Field(4, ge=0, description="weeks whose last snapshot is kept")
    keep_monthly: int = Field(12, ge=0, description="months whose last snapshot is kept")
    nightly: bool = Field(True, description="the night takes a snapshot before it changes anything")
    before_prune: bool = Field(True, description="a snapshot before retention deletes an adapter version")
    before_consolidate: bool = Field(True, description="a snapshot before `circadian consolidate` fuses an adapter")


class ScheduleSettings(_Section):
    """When and how the nightly job runs (`schedule install`, `daemon`, `sleep --scheduled`)."""

    at: str = Field("03:00", description="local time of the nightly sleep (HH:MM)")
    chat_wait_minutes: float = Field(
        30, ge=0, description="how long the nightly job waits for open chats to end before it sleeps anyway"
    )
    chat_poll_seconds: float = Field(30, gt=0, description="how often it looks again while waiting")
    misfire_grace_hours: float = Field(
        6, gt=0, description="daemon: a run missed by less than this (machine asleep) still runs"
    )
    notify: bool = Field(
        True, description="a desktop notification with the outcome (osascript / notify-send), else the log"
    )

    @field_validator("at")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        hour, minute = parse_hh_mm(value)
        return f"{hour:02d}:{minute:02d}"


class LoggingSettings(_Section):
    """What is kept of the day."""

    enabled: bool = Field(True, description="log every turn to data/memories.jsonl (per call: ask --no-log)")


class Config(_Section):
    """The whole user configuration (`circadian.toml`)."""

    model: ModelSettings = ModelSettings()
    chat: ChatSettings = ChatSettings()
    logging: LoggingSettings = LoggingSettings()
    train: TrainSettings = TrainSettings()
    sleep: SleepSettings = SleepSettings()
    gate: GateSettings = GateSettings()
    store: StoreSettings = StoreSettings()
    backup: BackupSettings = BackupSettings()
    schedule: ScheduleSettings = ScheduleSettings()


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
        if not var.startswith(ENV_PREFIX):
            continue
        if ENV_DELIMITER not in var:
            name = var[len(ENV_PREFIX) :].lower()
            meant = next((k for k in known if name in (k.split(".")[0], k.replace(".", "_"))), None)
            if meant:
                wanted = ENV_PREFIX + meant.upper().replace(".", ENV_DELIMITER)
                raise CircadianError(f"environment variable {var}: a setting is named like {wanted} (two underscores)")
            continue
        dotted = var[len(ENV_PREFIX) :].lower().replace(ENV_DELIMITER, ".")
        dotted = RENAMED.get(dotted, dotted)
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
    where = origin.get(dotted) or next((src for key, src in origin.items() if key.startswith(dotted + ".")), "config")
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown config key '{dotted}'"
    return f"{where}: {dotted}: {first['msg']}"


def _renamed(tree: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    """Move keys that have a new name (RENAMED) to it, noting the old name in their source."""
    flat = _flatten(tree)
    if not RENAMED.keys() & flat.keys():
        return tree
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        new = RENAMED.get(dotted, dotted)
        _set_dotted(out, new, value)
        if new != dotted:
            origin[new] = f"{origin.pop(dotted, 'config')} (as {dotted}, its old name)"
    return out


def load_config(
    path: Path, environ: dict[str, str] | None = None, overrides: dict[str, tuple[Any, str]] | None = None
) -> tuple[Config, dict[str, str]]:
    """Given the config file path, return (Config, {dotted key: source}) for every key.

    Sources are "default", the file path, the environment variable's name, or the command-line
    option of `overrides` ({dotted key: (value, option)}, which win over everything).
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
        except UnicodeDecodeError:
            raise CircadianError(f"{path}: not UTF-8 text (save it as UTF-8)") from None
        except OSError as exc:
            raise CircadianError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        for dotted in _flatten(tree):
            origin[dotted] = str(path)
        tree = _renamed(tree, origin)
    for dotted, value in _env_overrides(environ).items():
        _set_dotted(tree, dotted, value)
        origin[dotted] = ENV_PREFIX + dotted.upper().replace(".", ENV_DELIMITER)
    for dotted, (value, option) in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, dotted, value)
            origin[dotted] = option
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
