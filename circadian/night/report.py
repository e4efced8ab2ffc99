"""The morning report: a thin rendering of what a cycle logged (summary.json + metrics.jsonl).

`write_reports` writes `report.md` and a self-contained `report.html` (inline SVG plots: loss
curve, before/after metrics, per-fact recall) into the cycle folder; `render_markdown` is pure.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from circadian.night.evaluate import score_of
from circadian.core.fsutil import atomic_write_text, read_jsonl


def load(cycle_dir: Path) -> tuple[dict, list[dict]]:
    """Given a cycle folder, return (summary, training events)."""
    summary = json.loads((cycle_dir / "summary.json").read_text(encoding="utf-8"))
    events = [row for _n, row, _raw in read_jsonl(cycle_dir / "metrics.jsonl") if row]
    return summary, events


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value, fmt=".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def fact_rows(summary: dict) -> list[dict]:
    """Return one row per recall probe: question, expected, before/after answers and hits."""
    before = {i["question"]: i for i in (summary.get("before", {}).get("recall") or {}).get("items", [])}
    after = {i["question"]: i for i in (summary.get("after", {}).get("recall") or {}).get("items", [])}
    rows = []
    for question, item in after.items():
        b = before.get(question, {})
        rows.append({"question": question, "expected": ", ".join(item["answers"]), "fact": item.get("fact", ""),
                     "before": b.get("answer", ""), "before_hit": b.get("hit"),
                     "after": item["answer"], "after_hit": item["hit"]})
    return rows


def capability_changes(summary: dict) -> list[dict]:
    """Return the capability questions whose verdict changed between current and candidate."""
    items = lambda side: {i.get("prompt"): i for i in (summary.get(side, {}).get("capability") or {}).get("items", [])}  # noqa: E731
    before, after = items("before"), items("after")
    return [{"question": q, "before": before[q]["answer"], "after": a["answer"], "after_hit": a["hit"]}
            for q, a in after.items() if q in before and before[q]["hit"] != a["hit"]]


def metric_rows(summary: dict) -> list[tuple[str, str, str]]:
    b, a = summary.get("before", {}), summary.get("after", {})
    p0, p1 = b.get("perplexity"), a.get("perplexity")
    drift = f" ({p1 / p0 - 1:+.1%})" if p0 and p1 else ""
    return [("recall of today's facts (held-out wordings)", _pct(score_of(b, "recall")), _pct(score_of(a, "recall"))),
            ("retention of older facts", _pct(score_of(b, "retention")), _pct(score_of(a, "retention"))),
            ("capability harness", _pct(score_of(b, "capability")), _pct(score_of(a, "capability"))),
            ("general perplexity", _num(p0, ".2f"), _num(p1, ".2f") + drift),
            ("validation loss", _num(b.get("val_loss")), _num(a.get("val_loss")))]


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "…" if len(text) > limit else text).replace("|", "\\|")


def render_markdown(summary: dict) -> str:
    """Given a cycle summary, return the report as Markdown (pure)."""
    outcome = summary.get("outcome", "?")
    lines = [f"# Night of {summary.get('started', '')[:10]} — cycle {summary['cycle_id']}", ""]
    head = {"promoted": f"**Promoted {summary.get('version')}** (parent: {summary.get('parent') or 'base model'}); "
                        "the chat uses it from its next turn.",
            "rejected": f"**Rejected {summary.get('version')}**: {summary.get('parent') or 'the base model'} stays current.",
            "nothing to learn": "**Nothing to learn tonight**: no new facts or conversations since the last night."}
    lines += [head.get(outcome, f"**{outcome}**"), ""]
    if "gate" in summary:
        lines += ["## Gate", "", f"Decision: **{summary['gate']['decision']}**", ""]
        lines += [f"- {reason}" for reason in summary["gate"]["reasons"]] + [""]
        blend = summary.get("blend")
        if blend:
            lines += ["Blends tried (the trained change kept at this share; weight interpolation):", "",
                      "| blend | recall | capability | perplexity | gate |", "|---|---|---|---|---|"]
            for row in [{"factor": 1.0, "metrics": blend["full"], "gate": blend["full_gate"]}, *blend["tried"]]:
                m = row["metrics"]
                lines.append(f"| x{row['factor']:g} | {_pct(m['recall'])} | {_pct(m['capability'])} | "
                             f"{_num(m['perplexity'], '.2f')} | {row['gate']['decision']} |")
            lines.append("")
    if "after" in summary:
        lines += ["## Before and after", "", "| | current | candidate |", "|---|---|---|"]
        lines += [f"| {name} | {b} | {a} |" for name, b, a in metric_rows(summary)] + [""]
        rows = fact_rows(summary)
        if rows:
            lines += ["## What it learned", "", "Each fact asked in a wording never trained on.", "",
                      "| question | expected | before | after |", "|---|---|---|---|"]
            for r in rows:
                mark = lambda hit: "✅" if hit else "❌"  # noqa: E731
                lines.append(f"| {_cell(r['question'])} | {_cell(r['expected'])} | {mark(r['before_hit'])} "
                             f"{_cell(r['before'], 60)} | {mark(r['after_hit'])} {_cell(r['after'], 60)} |")
            lines.append("")
        changes = capability_changes(summary)
        if changes:
            lines += ["## Capability questions that changed", "", "| question | current | candidate |", "|---|---|---|"]
            lines += [f"| {_cell(c['question'])} | {'❌' if c['after_hit'] else '✅'} {_cell(c['before'], 60)} | "
                      f"{'✅' if c['after_hit'] else '❌'} {_cell(c['after'], 60)} |" for c in changes] + [""]
        train = summary["train"]
        lines += ["## Training", "",
                  f"- {train['steps']} steps, best at step {train['best_step']} ({train['stop_reason']})",
                  f"- validation loss {_num(train['initial_val_loss'])} → {_num(train['best_val_loss'])}",
                  f"- {train['trained_tokens']} tokens at {train['tokens_per_second']:.0f} tokens/s "
                  f"in {train['train_seconds']:.0f} s; peak memory {train['peak_memory_mb']:.0f} MB",
                  f"- {summary['masks']['targets']} of {summary['masks']['tokens']} tokens trained "
                  f"({summary['masks']['target_ratio']:.0%}, assistant turns only); "
                  f"padding {summary['padding_share']:.1%}", ""]
    counts = summary.get("counts", {})
    if counts:
        lines += ["## Data", "", "| | count |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in counts.items()]
        red = summary.get("redactions") or {}
        lines += ["", "Redacted before training: " + (", ".join(f"{v} {k}" for k, v in sorted(red.items())) or "nothing"), ""]
    if summary.get("timings"):
        lines += ["## Timings", "", ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings"].items()),
                  f"(total {summary.get('seconds', 0):.0f} s)", ""]
    return "\n".join(lines)


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _plots(summary: dict, events: list[dict]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    step = lambda e: e.get("global_step", e["iteration"])  # noqa: E731  (datasets continue the count)
    train = [(step(e), e["train_loss"]) for e in events if "train_loss" in e]
    val = [(step(e), e["val_loss"]) for e in events if e.get("val_loss") is not None]
    if train or val:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        if train:
            ax.plot(*zip(*train), label="train loss", alpha=0.6)
        if val:
            ax.plot(*zip(*val), marker="o", label="validation loss")
        best = summary.get("train", {}).get("best_step")
        if best is not None:
            ax.axvline(best, color="green", linestyle="--", label=f"kept: step {best}")
        ax.set_xlabel("step")
        ax.legend()
        plots.append(("Loss curve", _svg(fig)))
        plt.close(fig)
    if "after" in summary:
        names = ["recall", "retention", "capability"]
        b = [(score_of(summary["before"], n) or 0) for n in names]
        a = [(score_of(summary["after"], n) or 0) for n in names]
        fig, ax = plt.subplots(figsize=(7, 3))
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], b, width=0.4, label="current")
        ax.bar([i + 0.2 for i in x], a, width=0.4, label="candidate")
        ax.set_xticks(list(x), names)
        ax.set_ylim(0, 1.05)
        ax.legend()
        plots.append(("Before and after", _svg(fig)))
        plt.close(fig)
    return plots


def render_html(summary: dict, events: list[dict]) -> str:
    """Given a cycle summary and its training events, return a self-contained HTML page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(render_markdown(summary))
    figures = "".join(f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>"
                      for title, svg in _plots(summary, events))
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "vertical-align:top;font-size:14px}figure{margin:1em 0}figcaption{font-weight:600}"
             "svg{max-width:100%;height:auto}")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>circadian · "
            f"{html.escape(summary['cycle_id'])}</title><style>{style}</style></head><body>{body}"
            f"{figures}</body></html>")


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
