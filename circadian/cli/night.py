"""Commands of the night: `sleep`, `report`, `consolidate`, `ctl`, `eval recall`."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from circadian.cli._common import HomeOpt, JsonOpt, home_paths, print_json, say, setup, status_line
from circadian.core.errors import CircadianError

eval_app = typer.Typer(no_args_is_help=True, help="Measure an adapter.")


def sleep(
    home: HomeOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what tonight would train; write nothing")] = False,
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="predict tonight's training peak memory against the limit; write nothing"),
    ] = False,
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled", help="as the nightly job: at most once a night, after open chats end, with a notification"
        ),
    ] = False,
    json_out: JsonOpt = False,
):
    """Run one night now: learn the day into a new adapter.

    Builds the night's datasets from what is not learned yet, trains from the current adapter,
    measures current and candidate on the same sets, and promotes the candidate only if it learned
    something and broke nothing.
    """
    from rich.console import Console

    from circadian.night.sleep import dry_run as plan_only
    from circadian.night.sleep import run_sleep

    paths, config = setup(home)
    console = Console(stderr=json_out)  # with --json, progress goes to stderr and stdout is pure JSON
    if scheduled and not dry_run:
        from circadian.shift.job import run_scheduled

        outcome = run_scheduled(paths, config, console=console)
        print(outcome["line"], file=sys.stderr if json_out else sys.stdout)
        if json_out:
            print_json(
                {
                    "ran": outcome["ran"],
                    "line": outcome["line"],
                    "outcome": outcome["summary"].outcome if outcome.get("summary") else None,
                }
            )
        return
    if estimate:
        found = plan_only(paths, config, console)["memory"]
        if json_out:
            print_json(found)
            return
        limit = f"{found['limit_mb']:,} MB" if found["limit_mb"] else "unknown"
        verdict = "fits" if found["fits"] else "is above it: the night trains in smaller micro-batches, or stops"
        print(f"training would take about {found['line']}")
        print(f"limit {limit} (train.memory_limit_mb, or 90% of this machine's): the estimate {verdict}")
        return
    if dry_run:
        result = plan_only(paths, config, console)
        if json_out:
            print_json(result)
        else:
            print(render_plan(result))
        return
    summary = run_sleep(paths, config, console=console)
    if json_out:
        brief = {
            side: getattr(summary, side).brief().row() if getattr(summary, side) else None
            for side in ("before", "after")
        }
        router = {"router": summary.after.router} if summary.after and summary.after.router else {}
        print_json({k: v for k, v in summary.row().items() if k not in ("before", "after")} | brief | router)


def consolidate(home: HomeOpt = None, json_out: JsonOpt = False):
    """Fuse the current adapter into a new base model, and start a fresh adapter lineage on it.

    Takes a backup first, checks the disk, measures the fused model against the adapter on recall,
    capability and perplexity, and switches only if they agree and no general answer the router keeps
    today is lost. `circadian rollback` goes back to the old base and the adapter. Exit 1 if refused.
    """
    from circadian.night.consolidate import consolidate as run

    paths, config = setup(home)
    result = run(paths, config, say=say)
    if json_out:
        print_json(result)
    else:
        c = result["check"]
        for side in ("routed", "adapter", "fused"):
            f = c[side]
            print(
                f"{side:<8} recall {_share(f['recall'])}  capability {_share(f['capability'])}  "
                f"perplexity {f['perplexity']:.3f}"
            )
        if result["outcome"] == "consolidated":
            print(f"consolidated {result['adapter_version']} into {result['name']}: the new base is current")
        else:
            print("not consolidated: " + "; ".join(c["reasons"]))
    if result["outcome"] != "consolidated":
        raise typer.Exit(1)


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def render_plan(result: dict) -> str:
    """Given `sleep --dry-run`'s result, return it as text: the counts, then every message that told
    something about the user with the facts tonight would learn from it (or "not understood")."""
    counts, found = result["counts"], result.get("knowledge") or {}
    lines = [
        f"would train: {'yes' if result['would_train'] else 'no (nothing to learn tonight)'}",
        f"turns: {counts['turns_new']} new, {counts['turns_replay_pool']} already learned; "
        + ", ".join(f"{k[8:]} {v}" for k, v in counts.items() if k.startswith("skipped_")),
        f"facts: {counts.get('facts_new', 0)} new, {counts.get('facts_updated', 0)} updated, "
        f"{counts.get('facts_rejected', 0)} rejected, {counts.get('facts_replayed', 0)} replayed"
        + (f"; written by {', '.join(found['generators'])}" if found.get("generators") else ""),
        f"rows: {counts['rows_train']} train, {counts['rows_valid']} valid; recall probes: {counts['probes']}",
        "redacted: " + (", ".join(f"{v} {k}" for k, v in sorted(result["redactions"].items())) or "nothing"),
    ]
    if result["masks"]:
        masks = result["masks"]
        lines.append(f"masks: {masks['targets']} of {masks['tokens']} tokens trained ({masks['target_ratio']:.0%})")
    coverage = found.get("coverage") or []
    if coverage:
        understood = sum(1 for c in coverage if c["facts"])
        lines.append(f"what you told me: {understood} of {len(coverage)} messages understood")
        for item in coverage:
            lines.append(f"  {item['message'][:90]!r}")
            lines += [f"    learned: {fact}" for fact in item["facts"]] or ["    not understood"]
    for update in found.get("updates") or []:
        lines.append(f"  updated: {update['old']} -> {update['new']}")
    return "\n".join(lines)


class ReportFormat(StrEnum):
    md = "md"
    html = "html"
    json = "json"


def report(
    cycle: Annotated[Optional[str], typer.Argument(help="cycle id (default: the latest)")] = None,
    home: HomeOpt = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option(
            "--format", help="md: rendered here; html: the page with plots, printed; json: the cycle's summary"
        ),
    ] = ReportFormat.md,
    json_out: JsonOpt = False,
):
    """Show the morning report of a night."""
    from circadian.night import report as reports

    paths = home_paths(home)
    folder = paths.runs / cycle if cycle else reports.latest_cycle(paths.runs)
    if folder is None or not (folder / "summary.json").exists():
        raise CircadianError(f"no report for {'cycle ' + cycle if cycle else 'any cycle yet'}; run `circadian sleep`")
    summary, events = reports.load(folder)
    if json_out or fmt is ReportFormat.json:
        print_json(summary.row())
    elif fmt is ReportFormat.html:
        print(reports.render_html(summary, events))
    else:
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(reports.render_markdown(summary)))
        print(f"\n(html with plots: {folder / 'report.html'})")


class Action(StrEnum):
    pause = "pause"
    resume = "resume"
    stop = "stop"
    skip = "skip"
    status = "status"


def ctl(
    action: Annotated[
        Action,
        typer.Argument(
            metavar="ACTION",
            help="pause: save the adapter so far and "
            "wait; resume; stop: end the night, nothing promoted; skip: drop "
            "the dataset in training and go on; status: step, loss, ETA",
        ),
    ],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Steer a running sleep: pause, resume, stop, skip, status."""
    from circadian.night import control

    paths, _config = setup(home)
    status = control.read_status(paths.control)
    if action is Action.status:
        if json_out:
            print_json(status.row())
        elif not status.running:
            print(f"no sleep is running (last: cycle {status.cycle_id or 'none'}, {status.state or 'never ran'})")
        else:
            print(status_line(status))
        return
    if not status.running and action is not Action.resume:
        raise CircadianError("no sleep is running")
    done = control.request(paths.control, action.value)
    if json_out:
        print_json({"action": action.value, "done": done, "cycle_id": status.cycle_id})
    else:
        print(f"{done} (cycle {status.cycle_id}; applied at the next training step)")


@eval_app.command("recall")
def eval_recall(
    file: Annotated[Path, typer.Argument(help='JSONL: {"question", "answers": [...]} per line')],
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", min=1, help="longest reply (default: sleep.probe_max_tokens)")
    ] = None,
    adapter: Annotated[
        str, typer.Option("--adapter", help="'current', 'base', or a version (a rejected candidate too)")
    ] = "current",
    routed: Annotated[
        bool,
        typer.Option(
            "--router/--no-router",
            help="let the adapter's router send general questions to the base model, as chat does",
        ),
    ] = True,
    retrieval: Annotated[
        bool,
        typer.Option(
            "--retrieval/--no-retrieval",
            help="give each question what the memory index recalls for it, as chat does (same-day recall)",
        ),
    ] = False,
):
    """Ask each question of FILE, as `chat` asks (system prompt, decoding, the adapter's router), and score the replies.

    A hit is a reply that contains one of the question's answers as whole words.
    """
    from dataclasses import replace

    from circadian.day.assistant import Assistant, ChatSession
    from circadian.night.evaluate import Asking, ask_all, read_probes

    paths, config = setup(home, {"sleep.probe_max_tokens": (max_tokens, "--max-tokens")})
    items = read_probes(file)
    assistant = Assistant(paths, config, say=say, adapter=None if adapter == "base" else adapter)
    model = assistant.model
    if not routed and hasattr(model, "router"):
        model.router = None
    asking = Asking.of(config.chat)
    who = (
        model.answered_by([asking.conversation(i["question"]) for i in items])
        if hasattr(model, "answered_by")
        else None
    )
    session = ChatSession(assistant, log=False)
    recalled = [session.recall(i["question"]) if retrieval else [] for i in items]
    by_prompt: dict[str, list[int]] = {}
    for n, found in enumerate(recalled):
        by_prompt.setdefault(session.system_for(found) if found else asking.system_prompt, []).append(n)
    answered: dict[int, dict] = {}
    for system, indices in by_prompt.items():  # one batch per system prompt
        part = ask_all(
            assistant.model,
            [items[n] for n in indices],
            key="question",
            max_tokens=config.sleep.probe_max_tokens,
            asking=replace(asking, system_prompt=system),
        )
        answered.update(zip(indices, part["items"]))
    results = [answered[n] for n in range(len(items))]
    out = {
        "recall": sum(r["hit"] for r in results) / len(results) if results else None,
        "n": len(results),
        "adapter": assistant.adapter_version,
        "retrieval": retrieval,
        "items": [
            {
                "question": i["question"],
                "answer": i["answer"],
                "hit": i["hit"],
                "answered_by": who[n] if who else None,
                "recalled": [e.text for e in recalled[n]],
            }
            for n, i in enumerate(results)
        ],
    }
    if json_out:
        print_json(out)
        return
    for item in out["items"]:
        print(f"{'HIT ' if item['hit'] else 'miss'} {item['question']} -> {item['answer'][:80]!r}")
    print(f"recall {out['recall']:.0%} of {out['n']} (adapter {out['adapter'] or 'base'})")
