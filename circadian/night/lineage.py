"""Where a training row came from. Every row carries `lineage`: {"generator", "version", ...}; the
generator names live here, and `generator_of` is the one way to read them."""

from __future__ import annotations

DISTILL = "self-distillation"  # a general prompt answered by the base model itself (distill.py)
MEMORY = "memory"  # a conversation trained as it was said (imports)
INBOX = "inbox"  # a row of a queued inbox dataset


def generator_of(row: dict) -> str | None:
    """Given a training row, return the name of the generator that made it (None if it has no lineage)."""
    return (row.get("lineage") or {}).get("generator")


def is_fact(row: dict) -> bool:
    """Whether a row asks for one of the user's facts (knowledge/rows.py)."""
    return bool((row.get("lineage") or {}).get("fact"))


def is_distill(row: dict) -> bool:
    """Whether a row is a self-distilled general answer (trained as a KL anchor toward the base model)."""
    return generator_of(row) == DISTILL
