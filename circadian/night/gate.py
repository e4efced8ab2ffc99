"""Step 7 of a night: promote the candidate only if it learned something and broke nothing (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from circadian.core.config import GateSettings
from circadian.night.evaluate import score_of


@dataclass
class Decision:
    learned: bool  # recall or validation loss improved
    safe: bool  # every capability / perplexity bound held
    reasons: list[str] = field(default_factory=list)

    @property
    def promote(self) -> bool:
        return self.learned and self.safe

    def as_dict(self) -> dict:
        return {"decision": "promoted" if self.promote else "rejected", "reasons": self.reasons}


def decide(
    before: dict,
    after: dict,
    settings: GateSettings,
    base_perplexity: float | None = None,
    base_capability: float | None = None,
    base_style: float | None = None,
) -> Decision:
    """Given the current and candidate metrics (evaluate.measure) and the gate settings, decide.

    Promote when recall or validation loss improved, the capability score did not drop by more
    than allowed (per night and against the base), the style check's pass share did not drop by
    more than allowed below the base model's (`base_style`; unknown: below the current adapter's),
    and general perplexity stayed within bounds (per night and against the base).

    The style check is held to the base model, not to the current adapter: its 30 prompts go to the
    base model through the router, so a prompt the current adapter's router happened to send to the
    adapter, and that passed there, would otherwise fail every later night that sends it back.
    """
    reasons: list[str] = []
    learned = False
    r0, r1 = score_of(before, "recall"), score_of(after, "recall")
    if r0 is not None and r1 is not None:
        if r1 - r0 > settings.min_recall_gain:
            learned = True
            reasons.append(f"recall rose {r0:.2f} -> {r1:.2f}")
        else:
            reasons.append(f"recall did not rise ({r0:.2f} -> {r1:.2f})")
    v0, v1 = before.get("val_loss"), after.get("val_loss")
    if v0 is not None and v1 is not None:
        if v0 - v1 > settings.min_val_improvement:
            learned = True
            reasons.append(f"validation loss fell {v0:.3f} -> {v1:.3f}")
        else:
            reasons.append(f"validation loss did not fall ({v0:.3f} -> {v1:.3f})")
    safe = True
    c1 = score_of(after, "capability")
    style_name, style_was = (
        ("style check", score_of(before, "style"))
        if base_style is None
        else ("style check vs the base model", base_style)
    )
    for name, was, now, allowed in (
        ("capability", score_of(before, "capability"), c1, settings.max_capability_drop),
        (style_name, style_was, score_of(after, "style"), settings.max_style_drop),
    ):
        if was is None or now is None:
            continue
        if was - now > allowed + 1e-9:
            safe = False
            reasons.append(f"{name} dropped {was:.2f} -> {now:.2f} (allowed {allowed:.2f})")
        else:
            reasons.append(f"{name} held ({was:.2f} -> {now:.2f})")
    if (
        base_capability is not None
        and c1 is not None
        and base_capability - c1 > settings.max_total_capability_drop + 1e-9
    ):
        safe = False
        reasons.append(
            f"capability vs the base model {base_capability:.2f} -> {c1:.2f} "
            f"(allowed {settings.max_total_capability_drop:.2f})"
        )
    p0, p1 = before.get("perplexity"), after.get("perplexity")
    if p0 and p1:
        drift = p1 / p0 - 1
        if drift > settings.max_ppl_drift:
            safe = False
            reasons.append(f"general perplexity rose {drift:+.1%} (allowed {settings.max_ppl_drift:.0%})")
        else:
            reasons.append(f"general perplexity drift {drift:+.1%}")
        if base_perplexity:
            total = p1 / base_perplexity - 1
            if total > settings.max_total_ppl_drift:
                safe = False
                reasons.append(
                    f"perplexity vs the base model {total:+.1%} (allowed {settings.max_total_ppl_drift:.0%})"
                )
    if not learned:
        reasons.insert(0, "nothing measurably learned")
    return Decision(learned, safe, reasons)
