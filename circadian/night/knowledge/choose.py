"""Which generators write tonight's facts (`sleep.generator`), and why.

- `auto` (the default): the teacher (the configured model, or `sleep.teacher`) takes the calibration
  test; a capable teacher writes the facts (`model`), else the teacher-free `parse` generator does;
- `model`: the teacher writes them, without a test;
- a generator's name (`parse`, `rules`, or one registered by a plug-in): that one.
`rules` runs beside whichever is chosen. Where `parse` runs, the teacher finds the names in lowercase
chat for it (casing.py).
"""

from __future__ import annotations

from pathlib import Path

from circadian.night.knowledge import pipeline
from circadian.night.knowledge.calibration import calibrate
from circadian.night.knowledge.casing import Capitals
from circadian.night.knowledge.fact import Generator
from circadian.night.knowledge.model import ModelGenerator


def generators_for(
    setting: str, teacher, *, cache: Path | None = None, identity: str = ""
) -> tuple[list[Generator], str]:
    """Given `sleep.generator` and the loaded teacher model, return (the generators, why them)."""
    found = pipeline.generators()
    found["parse"].capitals = Capitals(teacher)
    rules = [found["rules"]]
    if setting == "model":
        return [ModelGenerator(teacher), *rules], "sleep.generator is model: the teacher writes the facts"
    if setting != "auto":
        return pipeline.choose(setting, found), f"sleep.generator is {setting}"
    verdict = calibrate(teacher, cache, identity)
    if verdict.capable:
        return [ModelGenerator(teacher), *rules], f"auto: the teacher can write facts ({verdict.reason})"
    fallback = "parse" if found["parse"].unavailable_reason() is None else "rules"
    return pipeline.choose(
        fallback, found
    ), f"auto: the teacher cannot write facts ({verdict.reason}); {fallback} instead"
