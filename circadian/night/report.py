"""The morning report: a thin rendering of what a cycle logged (summary.json + metrics.jsonl).

`write_reports` writes `report.md` and a self-contained `report.html` (inline SVG charts: the loss
curve, before and after) into the cycle folder; `render_markdown` is pure. Hits are written as
words, not as emoji a font may lack.
"""

from __future__ import annotations

import html
from pathlib import Path

from circadian.core.figures import figure
from circadian.core.fsutil import atomic_write_text
from circadian.night import charts
from circadian.store.records import Asked, CycleSummary, Measurement, TrainEventLine, read_all, read_json

HIT, MISS = "right", "wrong"


def load(cycle_dir: Path) -> tuple[CycleSummary, list[TrainEventLine]]:
    """Given a cycle folder, return (summary, training events). Raise CircadianError if it has no summary."""
    return read_json(cycle_dir / "summary.json", CycleSummary), read_all(cycle_dir / "metrics.jsonl", TrainEventLine)


def _pct(value) -> str:
    return figure(value, ".0%")


def _num(value, fmt=".3f") -> str:
    return figure(value, fmt)


def _mark(hit) -> str:
    return HIT if hit else MISS


def fact_rows(summary: CycleSummary) -> list[dict]:
    """Return one row per recall probe: question, expected, before/after answers and hits."""
    before = (summary.before or Measurement()).recall.by("question")
    rows = []
    for item in (summary.after or Measurement()).recall.items:
        b = before.get(item["question"], {})
        rows.append(
            {
                "question": item["question"],
                "expected": ", ".join(item["answers"]),
                "fact": item.get("fact", ""),
                "before": b.get("answer", ""),
                "before_hit": b.get("hit"),
                "after": item["answer"],
                "after_hit": item["hit"],
            }
        )
    return rows


def capability_changes(summary: CycleSummary) -> list[dict]:
    """Return the capability questions and style prompts whose verdict changed between current and
    candidate: {"set", "question", "before", "after", "after_hit"} (after_hit: the night fixed it)."""
    before, after = summary.before or Measurement(), summary.after or Measurement()
    out = []
    for name, old, new in (
        ("capability", before.capability, after.capability),
        ("style", before.style or Asked(), after.style or Asked()),
    ):
        was = old.by("prompt")
        out += [
            {"set": name, "question": q, "before": was[q]["answer"], "after": a["answer"], "after_hit": a["hit"]}
            for q, a in new.by("prompt").items()
            if q in was and was[q]["hit"] != a["hit"]
        ]
    return out


def metric_rows(summary: CycleSummary) -> list[tuple[str, str, str]]:
    b, a = (summary.before or Measurement()).brief(), (summary.after or Measurement()).brief()
    drift = f" ({a.perplexity / b.perplexity - 1:+.1%})" if b.perplexity and a.perplexity else ""
    return [
        ("recall of today's facts (held-out wordings)", _pct(b.recall), _pct(a.recall)),
        ("retention of older facts", _pct(b.retention), _pct(a.retention)),
        ("capability harness", _pct(b.capability), _pct(a.capability)),
        ("style check (chat prompts)", _pct(b.style), _pct(a.style)),
        ("general perplexity", _num(b.perplexity, ".2f"), _num(a.perplexity, ".2f") + drift),
        (
            "general perplexity of the adapter alone",
            _num(b.perplexity_adapter, ".2f"),
            _num(a.perplexity_adapter, ".2f"),
        ),
        ("validation loss", _num(b.val_loss), _num(a.val_loss)),
    ]


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "…" if len(text) > limit else text).replace("|", "\\|")


def _gate_lines(summary: CycleSummary) -> list[str]:
    gate, blend = summary.gate, summary.blend
    lines = ["## Gate", "", f"Decision: **{gate['decision']}**", ""]
    lines += [f"- {reason}" for reason in gate["reasons"]] + [""]
    if blend:
        lines += [
            "Blends tried (the trained change kept at this share; weight interpolation):",
            "",
            "| blend | recall | capability | perplexity | gate |",
            "|---|---|---|---|---|",
        ]
        for row in [{"factor": 1.0, "metrics": blend["full"], "gate": blend["full_gate"]}, *blend["tried"]]:
            m = row["metrics"]
            lines.append(
                f"| x{row['factor']:g} | {_pct(m['recall'])} | {_pct(m['capability'])} | "
                f"{_num(m['perplexity'], '.2f')} | {row['gate']['decision']} |"
            )
        lines.append("")
    return lines


def _measured_lines(summary: CycleSummary) -> list[str]:
    lines = ["## Before and after", "", "| | current | candidate |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {a} |" for name, b, a in metric_rows(summary)] + [""]
    rows = fact_rows(summary)
    if rows:
        lines += [
            "## What it learned",
            "",
            "Each fact asked in a wording never trained on.",
            "",
            "| question | expected | before | after |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(r['question'])} | {_cell(r['expected'])} | {_mark(r['before_hit'])}: "
            f"{_cell(r['before'], 60)} | {_mark(r['after_hit'])}: {_cell(r['after'], 60)} |"
            for r in rows
        ]
        lines.append("")
    changes = capability_changes(summary)
    for title, fixed in (("General answers the night broke", False), ("General answers the night fixed", True)):
        part = [c for c in changes if c["after_hit"] == fixed]
        if part:
            lines += [f"## {title}", "", "| set | question | current | candidate |", "|---|---|---|---|"]
            lines += [
                f"| {c['set']} | {_cell(c['question'])} | {_mark(not fixed)}: {_cell(c['before'], 60)} | "
                f"{_mark(fixed)}: {_cell(c['after'], 60)} |"
                for c in part
            ] + [""]
    train, masks = summary.train, summary.masks or {}
    if train:
        lines += [
            "## Training",
            "",
            f"- {train.steps} steps, best at step {train.best_step} ({train.stop_reason})",
            f"- validation loss {_num(train.initial_val_loss)} → {_num(train.best_val_loss)}",
            f"- {train.trained_tokens} tokens at {train.tokens_per_second:.0f} tokens/s "
            f"in {train.train_seconds:.0f} s ({train.precision}); peak memory {train.peak_memory_mb:.0f} MB",
        ]
        if masks:
            lines.append(
                f"- {masks['targets']} of {masks['tokens']} tokens trained ({masks['target_ratio']:.0%}, "
                f"assistant turns only); padding {summary.padding_share or 0:.1%}"
            )
        if memory := summary.memory:
            e = memory["estimate"]
            error = f" ({memory['error']:+.0%})" if memory.get("error") is not None else ""
            limit = f"; limit {memory['limit_mb']:,} MB" if memory.get("limit_mb") else ""
            lines.append(
                f"- memory: estimated {e['total_mb']:,.0f} MB before training (weights {e['weights_mb']:,.0f}, "
                f"adapter and optimizer {e['adapter_mb']:,.0f}, activations {e['activations_mb']:,.0f}, logits "
                f"{e['logits_mb']:,.0f}, runtime {e['runtime_mb']:,.0f}), measured peak {memory['measured_mb']:,.0f} MB"
                f"{error}{limit}"
            )
        lines.append("")
    return lines


def _knowledge_lines(summary: CycleSummary) -> list[str]:
    """What the user told: every personal message with the facts learned from it, updates, rejections."""
    found = summary.knowledge or {}
    coverage = found.get("coverage") or []
    if not coverage and not found.get("rejected"):
        return []
    understood = sum(1 for c in coverage if c["facts"])
    lines = [
        "## What you told me",
        "",
        f"{understood} of {len(coverage)} messages with something about you were understood"
        + (f" ({understood / len(coverage):.0%} coverage)" if coverage else "")
        + f"; facts written by {', '.join(found.get('generators') or ['?'])}.",
        "",
    ]
    for item in coverage:
        lines.append(f"- {_cell(item['message'], 120)}")
        lines += [f"  - learned: {_cell(fact, 120)}" for fact in item["facts"]] or ["  - not understood"]
    lines.append("")
    if found.get("updates"):
        lines += ["Updated (the old answer is trained away):", ""]
        lines += [f"- {_cell(u['old'])} → {_cell(u['new'])}" for u in found["updates"]] + [""]
    if found.get("rejected"):
        lines += ["Not trained (a check refused them):", ""]
        lines += [f"- {_cell(r['statement'])} ({r['reason']})" for r in found["rejected"][:20]] + [""]
    return lines


def _ledger_lines(summary: CycleSummary) -> list[str]:
    """The graduation ledger: facts learned tonight (retrieval stops giving them), and facts the model
    has not learned in `sleep.graduate_within` nights (retrieval keeps giving them)."""
    found = summary.ledger or {}
    if not found or not (found.get("graduated") or found.get("not_learned") or found.get("waiting")):
        return []
    done, waiting = len(found.get("graduated") or []), found.get("waiting", 0)
    lines = [
        "## Graduation",
        "",
        f"{done} fact{'s' * (done != 1)} graduated tonight: the adapter answers {'them' if done != 1 else 'it'} "
        f"without being reminded, so the chat no longer puts {'them' if done != 1 else 'it'} in its prompt. "
        f"{waiting} fact{'s are' if waiting != 1 else ' is'} still recalled into the prompt when "
        f"{'they bear' if waiting != 1 else 'it bears'} on a message.",
        "",
    ]
    lines += [
        f"- graduated: {_cell(g['statement'], 120)} (in {g['nights']} night{'s' * (g['nights'] != 1)})"
        for g in found.get("graduated") or []
    ]
    if found.get("not_learned"):
        within = found.get("within") or 0
        lines += ["", f"Not learned in {within} night{'s' * (within != 1)} (retrieval keeps answering them):", ""]
        lines += [
            f"- {_cell(n['statement'], 120)} (asked in {n['asked']} night{'s' * (n['asked'] != 1)})"
            for n in found["not_learned"]
        ]
    return lines + [""]


def render_markdown(summary: CycleSummary) -> str:
    """Given a cycle summary, return the report as Markdown (pure)."""
    lines = [f"# Night of {summary.started[:10]} — cycle {summary.cycle_id}", ""]
    head = {
        "promoted": f"**Promoted {summary.version}** (parent: {summary.parent or 'base model'}); "
        "the chat uses it from its next turn.",
        "rejected": f"**Rejected {summary.version}**: {summary.parent or 'the base model'} stays current.",
        "nothing to learn": "**Nothing to learn tonight**: no new facts or conversations since the last night.",
    }
    lines += [head.get(summary.outcome, f"**{summary.outcome}**"), ""]
    if summary.purged:
        lines += ["## Purged, but still in the adapter", ""]
        lines += [
            f"- A turn purged {p['purged'][:10]} was learned by {p['version']}, and the current adapter builds on "
            f"it: `circadian rollback {p['rollback']}` removes it."
            for p in summary.purged
        ]
        lines += [""]
    if summary.gate:
        lines += _gate_lines(summary)
    if summary.after:
        lines += _measured_lines(summary)
    lines += _knowledge_lines(summary)
    lines += _ledger_lines(summary)
    if summary.counts:
        lines += ["## Data", "", "| | count |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in summary.counts.items()]
        red = summary.redactions
        lines += [
            "",
            "Redacted before training: " + (", ".join(f"{v} {k}" for k, v in sorted(red.items())) or "nothing"),
            "",
        ]
    if summary.timings:
        lines += [
            "## Timings",
            "",
            ", ".join(f"{k} {v:.0f} s" for k, v in summary.timings.items()),
            f"(total {summary.seconds:.0f} s)",
            "",
        ]
    return "\n".join(lines)


def figures(summary: CycleSummary, events: list[TrainEventLine]) -> list[tuple[str, str]]:
    """The report's charts: (title, SVG) for the loss curve and the before / after figures."""
    out = []
    train = [(e.step, e.train_loss) for e in events if e.train_loss is not None]
    val = [(e.step, e.val_loss) for e in events if e.val_loss is not None]
    if train or val:
        best = summary.train.best_step if summary.train else None
        out.append(
            (
                "Loss curve",
                charts.line_chart(
                    {"train loss": train, "validation loss": val},
                    ylabel="loss",
                    marks={f"kept: step {best}": best} if best is not None else None,
                ),
            )
        )
    if summary.after:
        b, a = (summary.before or Measurement()).brief(), summary.after.brief()
        names = ["recall", "retention", "capability"]
        out.append(
            (
                "Before and after",
                charts.bar_chart(
                    names,
                    {"current": [getattr(b, n) or 0 for n in names], "candidate": [getattr(a, n) or 0 for n in names]},
                ),
            )
        )
    return out


def render_html(summary: CycleSummary, events: list[TrainEventLine]) -> str:
    """Given a cycle summary and its training events, return a self-contained HTML page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(render_markdown(summary))
    charts_html = "".join(
        f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>"
        for title, svg in figures(summary, events)
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;font-size:14px}figure{margin:1em 0}figcaption{font-weight:600}"
        "svg{max-width:100%;height:auto}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>circadian · "
        f"{html.escape(summary.cycle_id)}</title><style>{style}</style></head><body>{body}"
        f"{charts_html}</body></html>"
    )


def write_reports(cycle_dir: Path) -> tuple[Path, Path]:
    """Render report.md and report.html into the cycle folder; return their paths."""
    summary, events = load(cycle_dir)
    md, page = cycle_dir / "report.md", cycle_dir / "report.html"
    atomic_write_text(md, render_markdown(summary))
    atomic_write_text(page, render_html(summary, events))
    return md, page


def latest_cycle(runs: Path) -> Path | None:
    """Return the newest cycle folder that has a summary, or None."""
    done = sorted(p.parent for p in runs.glob("*/summary.json"))
    return done[-1] if done else None
