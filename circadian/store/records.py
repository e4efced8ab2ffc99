"""The typed records circadian writes to disk, in one place: what each file's rows hold.

- `RunLogLine`: `data/runs/run_log.jsonl`, one per cycle (a night, or one cycle of an experiment);
- `ChoiceLine`: `data/runs/choice_log.jsonl`, one per source choice;
- `CycleSummary`: `data/runs/<cycle>/summary.json`, everything the report renders;
- `LiveStatus`: `control/status.json`, what a running sleep is doing;
- `TrainEvent`: the training callback's events, also the lines of `data/runs/<cycle>/metrics.jsonl`;
- `AdapterManifest`: `adapters/<version>/manifest.json`;
- `BaseManifest`: `models/<base>-c<N>/circadian-model.json`, a consolidated base (store/bases.py).

Each carries a `schema_version`. Reading ignores keys it does not know (a newer writer's) and fills
keys an older writer did not have, so old records read forward; renamed keys are read under their
old name too. `read_jsonl` (core.fsutil) is the one JSONL reader; `read_lines` here adds the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from circadian.core.errors import CircadianError
from circadian.core.fsutil import Line, read_jsonl

SCHEMA_VERSION = 1


class Record(BaseModel):
    """Base of every on-disk record: unknown keys are ignored, and the model dumps back to a plain dict."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    schema_version: int = SCHEMA_VERSION

    def row(self) -> dict:
        """The record as the JSON object it is written as (unset optional figures left out)."""
        return self.model_dump(mode="json", exclude_none=True)


class BriefMetrics(Record):
    """A model state's headline figures (evaluate.brief_metrics)."""

    val_loss: float | None = None
    recall: float | None = None
    retention: float | None = None
    capability: float | None = None
    style: float | None = None
    perplexity: float | None = None  # as the user gets it: through the router
    perplexity_adapter: float | None = None  # the adapter alone, on every passage


class Asked(Record):
    """A set of questions asked (evaluate.ask_all): the share answered right, how many, and each one
    with its reply and whether it was a hit."""

    score: float | None = None
    n: int = 0
    items: list[dict] = []

    def by(self, key: str) -> dict[str, dict]:
        """The items by their question (`key`: "question" for recall, "prompt" for capability)."""
        return {item.get(key): item for item in self.items}


class StyleChecked(Asked):
    """The style check (night/style.py): its items carry "checks", and the accepted length range."""

    range: list[int] = []


class Measurement(Record):
    """One model state measured on the night's sets (evaluate.measure)."""

    val_loss: float | None = None
    recall: Asked = Asked()
    retention: Asked = Asked()
    capability: Asked = Asked()
    style: StyleChecked | None = None
    router: dict | None = None  # night/routing.py: misroutes both ways, when a router answered
    perplexity: float | None = None
    perplexity_adapter: float | None = None

    def brief(self) -> BriefMetrics:
        return BriefMetrics(
            val_loss=self.val_loss,
            recall=self.recall.score,
            retention=self.retention.score,
            capability=self.capability.score,
            style=self.style.score if self.style else None,
            perplexity=self.perplexity,
            perplexity_adapter=self.perplexity_adapter,
        )


class DatasetOutcome(Record):
    """What happened to one of the night's datasets (an inbox dataset, or today's memories)."""

    name: str
    queue_id: str | None = None
    state: str  # trained | skipped | empty
    steps: int = 0
    best_step: int = 0
    stop_reason: str = ""


class TrainBrief(Record):
    steps: int = 0
    best_step: int = 0
    stop_reason: str = ""
    initial_val_loss: float | None = None
    best_val_loss: float | None = None
    trained_tokens: int = 0
    tokens_per_second: float = 0.0
    train_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    precision: str = "float32"


class RunLogLine(Record):
    """One cycle in `run_log.jsonl`: a night (run_type "nightly" or its policy), or an experiment's cycle."""

    cycle_id: str
    run_type: str
    outcome: str | None = (
        None  # promoted | rejected | nothing to learn | skipped | stopped | failed | interrupted | trained
    )
    trigger: str | None = None  # manual | scheduled
    night: str | None = None  # the night's date, for scheduled runs
    started: str | None = None
    ended: str | None = None
    logged_at: str | None = None
    seconds: float | None = None
    version: str | None = None
    parent: str | None = None
    backend: str | None = None
    model: str | None = None
    chosen: str | None = None
    stage: str | None = None  # where an interrupted cycle was
    error: str | None = None
    note: str | None = None
    before: BriefMetrics | None = None
    after: BriefMetrics | None = None
    train: TrainBrief | None = None
    counts: dict[str, int] = {}
    datasets: list[DatasetOutcome] = Field([], validation_alias=AliasChoices("datasets", "units"))
    # an experiment's cycle (lab.experiment)
    experiment: str | None = None
    cycle: int | None = None
    seed: int | None = None
    budget: str | None = None
    reward: float | None = None
    progress: float | None = None
    oracle_rewards: dict[str, float] | None = None
    oracle_progress: dict[str, float] | None = None
    select_losses: dict[str, float] | None = None
    eval_losses: dict[str, float] | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    perplexity_drift: float | None = None
    recall: float | None = None
    capability: float | None = None
    recall_by_source: dict[str, float | None] | None = None

    @property
    def when(self) -> str | None:
        return self.ended or self.logged_at

    @property
    def recall_after(self) -> float | None:
        """Recall after the cycle: the candidate's (a night) or the final one (an experiment)."""
        return self.after.recall if self.after else self.recall


class Trials(Record):
    """Tonight's trials: learning progress per source, and the seconds they took (night.trials)."""

    progress: dict[str, float] = {}
    seconds: float = 0.0


class ChoiceLine(Record):
    """One source choice in `choice_log.jsonl`."""

    cycle_id: str
    run_type: str
    chosen: str
    reason: str = ""
    candidate_losses: dict[str, float] = {}
    loss_regret: float | None = None
    trials: Trials | None = Field(None, validation_alias=AliasChoices("trials", "probes"))
    experiment: str | None = None
    cycle: int | None = None
    seed: int | None = None
    ts: str | None = None


class LiveStatus(Record):
    """`control/status.json`: what the sleep is doing now, as it last published it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    cycle_id: str | None = None
    state: str | None = None  # running | paused | done | failed | stopped | ended (died without saying)
    stage: str | None = None
    started: float | None = None
    updated: float | None = None
    pid: int | None = None
    dataset: str | None = Field(None, validation_alias=AliasChoices("dataset", "unit"))
    dataset_index: int | None = Field(None, validation_alias=AliasChoices("dataset_index", "unit_index"))
    datasets: int | None = Field(None, validation_alias=AliasChoices("datasets", "units"))
    step: int | None = None
    total_steps: int | None = None
    global_step: int | None = None
    eta_seconds: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    learning_rate: float | None = None
    # filled when read (night.control.read_status), not written
    running: bool = False
    flags: list[str] = []


class TrainEvent(TypedDict, total=False):
    """What a training callback receives at each step (and at each evaluation), with stable names:
    mlx-lm's, plus `peak_memory_mb` (an explicit unit), `total_steps`, `best_val_loss`; the night adds
    `dataset` and `global_step` (steps counted across its datasets). Also a line of metrics.jsonl."""

    iteration: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    learning_rate: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory_mb: float
    total_steps: int
    epoch: int
    note: str
    dataset: str
    global_step: int


# A training callback: given each event, return None to go on or "stop" to end training now (the
# best checkpoint is kept).
TrainCallback = Callable[[TrainEvent], "str | None"]


class TrainEventLine(Record):
    """A line of metrics.jsonl read back."""

    iteration: int = 0
    global_step: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    total_steps: int | None = None
    dataset: str | None = Field(None, validation_alias=AliasChoices("dataset", "unit"))
    ts: float | None = None

    @property
    def step(self) -> int:
        """The step counted across the night's datasets."""
        return self.iteration if self.global_step is None else self.global_step


class AdapterManifest(Record):
    """`manifest.json`, written last beside an adapter's weights."""

    version: str
    parent: str | None = None
    created_at: str = ""
    cycle_id: str = ""
    backend: str
    base_model: dict | str = ""
    lora: dict = {}
    data: dict = {}
    metrics: dict = {}
    gate: dict = {}
    blend: dict | None = None
    timings: dict = {}
    train: dict = {}
    tokens_per_second: float | None = None
    peak_memory_mb: float | None = None
    circadian_version: str = ""
    weights: dict[str, str] = {}
    base: str | None = None  # the consolidated base it was trained on (store/bases.py); None: the configured model
    memory: dict | None = None  # the training peak, estimated before and measured (backends/memory.py)

    def figures(self, side: str) -> BriefMetrics:
        """The brief figures of the current adapter ("before") or of this candidate ("after")."""
        return BriefMetrics.model_validate(self.metrics.get(side) or {})


class BaseManifest(Record):
    """`circadian-model.json` of a consolidated base: the adapter fused into the weights of its parent
    base, the hashes of what was written, and the check of the fused model against the adapter."""

    name: str
    number: int
    parent_base: str | None = None  # the consolidated base it was fused onto; None: the configured model
    root_model: str = ""  # the configured model the chain of bases started from
    adapter_version: str
    adapter_weights: dict[str, str] = {}
    backend: str
    created_at: str = ""
    weights: dict[str, str] = {}
    sizes: dict[str, int] = {}
    check: dict = {}
    seconds: float | None = None
    circadian_version: str = ""


class CycleSummary(Record):
    """`summary.json` of a night: everything the morning report shows. `before` and `after` keep the full
    measurements (evaluate.measure), per question."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    cycle_id: str
    run_type: str = "nightly"
    outcome: str = "?"
    trigger: str | None = None
    started: str = ""
    ended: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = {}
    circadian_version: str = ""
    reason: str | None = None
    version: str | None = None
    parent: str | None = None
    backend: str | None = None
    model: str | None = None
    counts: dict[str, int] = {}
    redactions: dict[str, int] = {}
    dataset_sha256: str | None = None
    masks: dict | None = None
    padding_share: float | None = None
    train: TrainBrief | None = None
    memory: dict | None = None  # the training peak: estimated before (backends/memory.py) and measured
    before: Measurement | None = None
    after: Measurement | None = None
    gate: dict | None = None
    blend: dict | None = None
    facts: list[dict] = []
    base_perplexity: float | None = None
    base: dict | None = None  # the base model's capability score and style length range (night 1 on)
    datasets: list[DatasetOutcome] = Field([], validation_alias=AliasChoices("datasets", "units"))
    chosen: str | None = None
    policy: str | None = None
    evolution: dict | None = None
    knowledge: dict | None = None  # dataset.knowledge_brief: generators, coverage, updates, rejected
    purged: list[dict] = []  # purged turns an adapter of the current lineage learned (night/purge.py)
    ledger: dict | None = None  # graduation after the night (store/ledger.py): graduated, not learned, waiting


T = TypeVar("T", bound=BaseModel)


def parse(model: type[T], value: Any) -> T | None:
    """Given a parsed JSON value, return it as the record, or None when it does not fit."""
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def read_lines(path: Path, model: type[T], *, end: int | None = None) -> Iterator[tuple[Line, T | None]]:
    """Given a JSONL path and a record type, yield (line, record or None) for every non-blank line;
    a line that is not JSON, or not that record, yields None so callers count it instead of crashing."""
    for line in read_jsonl(path, end=end):
        yield line, (parse(model, line.value) if line.value is not None else None)


def read_all(path: Path, model: type[T]) -> list[T]:
    """Given a JSONL path and a record type, return every line that is such a record, in order."""
    return [record for _line, record in read_lines(path, model) if record is not None]


def read_json(path: Path, model: type[T], *, what: str | None = None, missing: str = "") -> T:
    """Given a JSON file and a record type, return the record. Raise CircadianError naming the file (or
    `what` it is, with `missing` said when it is absent) if it is missing, unreadable or not such a record."""
    try:
        return model.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CircadianError(f"{what}: {missing}" if what else f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        where = f"{what}: unreadable {path.name}" if what else f"{path}: unreadable"
        raise CircadianError(f"{where} ({str(exc).splitlines()[0]})") from None
