"""Whether a model can write the facts itself: a short test at the start of a night.

The model is given a few shipped conversations whose facts are known (night/data/calibration.jsonl)
and writes their facts as the model generator would. It is capable when most of its replies are the
JSON asked for and it finds most of the known answers without making up answers nobody said. The
result is cached per model (its content identity) and prompt version, so a night pays for it once.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from circadian.core.fsutil import atomic_write_json
from circadian.night.knowledge import model as written
from circadian.night.knowledge.conversation import Conversation, Turn
from circadian.night.knowledge.pipeline import grounded
from circadian.night.scoring import is_hit

MIN_VALID = 2 / 3  # share of replies that must be the JSON asked for
MIN_RECALL = 0.6  # share of known answers found
MIN_PRECISION = 0.6  # share of written facts whose answer was said


@dataclass
class Calibration:
    """The test's outcome: capable or not, why, and the figures behind it."""

    capable: bool
    reason: str
    valid_json: float
    recall: float
    precision: float
    seconds: float
    prompt_version: str = written.PROMPT_VERSION

    def as_dict(self) -> dict:
        return asdict(self)


def cases() -> list[tuple[Conversation, list[list[str]]]]:
    """The shipped conversations with their known answers."""
    text = resources.files("circadian.night").joinpath("data", "calibration.jsonl").read_text(encoding="utf-8")
    out = []
    for n, line in enumerate(line for line in text.splitlines() if line.strip()):
        item = json.loads(line)
        turns = [Turn(m["role"], m["content"], f"calibration-{n}", i) for i, m in enumerate(item["messages"])]
        out.append((Conversation(f"calibration-{n}", "calibration", turns), item["answers"]))
    return out


def judge(replies: list[str]) -> Calibration:
    """Given the model's replies to `cases()` (in order), return the verdict (pure)."""
    valid = found = known = right = written_facts = 0
    for (conversation, answers), reply in zip(cases(), replies):
        mined = written.parse_reply(reply, conversation)
        valid += not any("JSON" in r.reason for r in mined.rejected)
        facts = [f for f in mined.facts if grounded(f, conversation) is None]
        written_facts += len(mined.facts)
        right += len(facts)
        text = " ".join(f"{f.statement} {' '.join(f.answers)}" for f in facts)
        known += len(answers)
        found += sum(is_hit(text, alternatives) for alternatives in answers)
    n = len(replies) or 1
    valid_share, recall = valid / n, found / max(1, known)
    precision = right / written_facts if written_facts else 0.0
    capable = valid_share >= MIN_VALID and recall >= MIN_RECALL and precision >= MIN_PRECISION
    if capable:
        reason = f"it wrote the facts of the test conversations (found {recall:.0%}, {precision:.0%} grounded)"
    elif valid_share < MIN_VALID:
        reason = f"{valid_share:.0%} of its replies were the JSON asked for (needs {MIN_VALID:.0%})"
    else:
        reason = (
            f"it found {recall:.0%} of the known facts, {precision:.0%} of what it wrote was said (needs "
            f"{MIN_RECALL:.0%} and {MIN_PRECISION:.0%})"
        )
    return Calibration(capable, reason, valid_share, recall, precision, 0.0)


def calibrate(model, cache: Path | None = None, identity: str = "") -> Calibration:
    """Run the test with a loaded model (or take it from `cache`/<identity>.json); return the verdict."""
    path = cache / f"{identity}-{written.PROMPT_VERSION}.json" if cache and identity else None
    if path is not None and path.exists():
        try:
            return Calibration(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            pass  # a broken cache entry is measured again
    tic = time.time()
    generator = written.ModelGenerator(model)
    result = judge([generator.ask(conversation) for conversation, _answers in cases()])
    result.seconds = round(time.time() - tic, 1)
    if path is not None:
        atomic_write_json(path, result.as_dict())
    return result
