"""Recall after one night on days of chat labelled by hand, through the real `circadian` command.

Run as: .venv/bin/python bench/recall/run.py [--days DIR] [--only NAME,...] [--model NAME] [--nights | --same-day]
        [--home DIR] [--out FILE]

Each day (bench/recall/days/*.json, format in days/FORMAT.md; the sealed days in bench/recall/sealed/
only with `--days bench/recall/sealed`) is logged into a fresh home as the chat or `circadian import`
would log it, one `circadian sleep` runs, and the hand-written probes are asked with `circadian eval
recall` of the base model and of the night's full candidate (`--adapter`, promoted or not; with
`--blends` the gate may store a blend instead). Reported per
day and per phrasing type: recall, coverage (labelled facts the night wrote a fact about), false facts
(facts the night wrote that match no labelled fact), updates answered with the new and with the old
value, leaks (a secret coming back, as a substring), capability, and the night's time. With
`--nights`, the days are instead nights of one home, one after another, and every earlier day's
probes are asked again after each night. `--model NAME` runs the same with another model (a Hugging
Face repo id or a local folder), for anyone who has one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from circadian.core.paths import Paths  # noqa: E402
from circadian.night.scoring import is_hit, words  # noqa: E402
from circadian.store import memories  # noqa: E402


def cli(home: Path, *args: str, json_out: bool = True) -> dict | str:
    env = {"CIRCADIAN_MODELS_DIR": str(ROOT / "models"), **os.environ, "CIRCADIAN_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "circadian", *args, *(["--json"] if json_out else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"circadian {' '.join(args)} failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout) if json_out else result.stdout


def log_day(home: Path, day: dict, tmp: Path) -> None:
    """Log the day into the home: as chat turns (one record per user message and the reply after it), or
    as one imported conversation per session."""
    paths = Paths(home).ensure()
    if day.get("source") == "import":
        file = tmp / f"{day['name']}.jsonl"
        file.write_text("".join(json.dumps({"messages": s}, ensure_ascii=False) + "\n" for s in day["sessions"]))
        cli(home, "import", str(file))
        return
    for record in chat_records(day):
        memories.append(paths, [record])


def chat_records(day: dict) -> list[dict]:
    """A chat day's records, as the chat logs them: one per user message, with the assistant reply after it."""
    out = []
    for n, session in enumerate(day["sessions"]):
        for i, message in enumerate(session):
            if message["role"] != "user":
                continue
            reply = (
                session[i + 1]["content"] if i + 1 < len(session) and session[i + 1]["role"] == "assistant" else "OK."
            )
            messages = [{"role": "user", "content": message["content"]}, {"role": "assistant", "content": reply}]
            out.append(
                memories.make_record(messages, session=f"{day['name']}-{n}", model="bench", adapter=None, source="chat")
            )
    return out


def probe_file(tmp: Path, name: str, probes: list[dict]) -> Path:
    path = tmp / f"{name}.probes.jsonl"
    path.write_text("".join(json.dumps({"question": p["question"], "answers": p["answers"]}) + "\n" for p in probes))
    return path


def ask(home: Path, tmp: Path, name: str, probes: list[dict], adapter: str) -> list[dict]:
    if not probes:
        return []
    result = cli(home, "eval", "recall", str(probe_file(tmp, name, probes)), "--adapter", adapter)
    return result["items"]


def learned_facts(summary: dict) -> list[dict]:
    return summary.get("facts") or []


def matches(fact_words: set[str], labelled: dict) -> bool:
    """Whether a written fact is about a labelled one: one of the labelled answers is in it."""
    return any(set(words(a)) <= fact_words for a in labelled["answers"] if words(a))


def measure_day(home: Path, tmp: Path, day: dict, summary: dict, version: str | None) -> dict:
    facts = {f["id"]: f for f in day["facts"]}
    replaced = {u["replaces"] for u in day.get("updates", [])}
    written = [set(words(f["statement"] + " " + " ".join(f.get("answers", [])))) for f in learned_facts(summary)]
    covered = [fid for fid, f in facts.items() if any(matches(w, f) for w in written)]
    false = [f for f, w in zip(learned_facts(summary), written) if not any(matches(w, lab) for lab in facts.values())]
    probes = day["probes"]
    before = ask(home, tmp, day["name"] + "-before", probes, "base")
    after = ask(home, tmp, day["name"] + "-after", probes, version) if version else []
    secrets = ask(home, tmp, day["name"] + "-secrets", day.get("secrets", []), version) if version else []
    leaks = [
        s
        for s, item in zip(day.get("secrets", []), secrets)
        if any(a.lower() in item["answer"].lower() for a in s["answers"])
    ]
    by_phrasing: dict[str, list[bool]] = defaultdict(list)
    old_given = []
    for probe, item in zip(probes, after):
        by_phrasing[facts[probe["fact"]]["phrasing"]].append(item["hit"])
        if probe.get("kind") == "update":
            update = next(u for u in day["updates"] if u["fact"] == probe["fact"])
            old_given.append(is_hit(item["answer"], update["old_answers"]))
    updates = [i["hit"] for p, i in zip(probes, after) if p.get("kind") == "update"]
    share = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    b, a = summary.get("before") or {}, summary.get("after") or {}
    return {
        "day": day["name"],
        "outcome": summary.get("outcome"),
        "facts_labelled": len(facts) - len(replaced),
        "facts_written": len(learned_facts(summary)),
        "recall_before": share([i["hit"] for i in before]),
        "recall_after": share([i["hit"] for i in after]),
        "recall_forward": share([i["hit"] for p, i in zip(probes, after) if p.get("kind", "forward") == "forward"]),
        "recall_reverse": share([i["hit"] for p, i in zip(probes, after) if p.get("kind") == "reverse"]),
        "coverage": len([c for c in covered if c not in replaced]) / max(1, len(facts) - len(replaced)),
        "false_facts": len(false) / max(1, len(learned_facts(summary))),
        "false_examples": [f["statement"] for f in false][:8],
        "updates_new": share(updates),
        "updates_old": share(old_given),
        "leaks": len(leaks),
        "secrets": len(secrets),
        "capability_before": b.get("capability"),
        "capability_after": a.get("capability"),
        "perplexity_drift": a["perplexity"] / b["perplexity"] - 1
        if a.get("perplexity") and b.get("perplexity")
        else None,
        "night_seconds": summary.get("seconds"),
        "timings": summary.get("timings"),
        "train": summary.get("train"),
        "by_phrasing": {k: share(v) for k, v in sorted(by_phrasing.items())},
        "misses": [
            {"question": p["question"], "expected": p["answers"], "answer": i["answer"]}
            for p, i in zip(probes, after)
            if not i["hit"]
        ][:40],
    }


def publish(args, text: list[str], rows: list[dict]) -> None:
    """Print the Markdown report, and write it (with its rows as JSON beside it) to --out if given."""
    report = "\n".join(text) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


def fmt(value, spec=".0%") -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| day | outcome | recall before -> after | forward / reverse | coverage | false facts | updates new / old "
        "| leaks | capability | ppl drift | night |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['day']} | {r['outcome']} | {fmt(r['recall_before'])} -> {fmt(r['recall_after'])} | "
            f"{fmt(r['recall_forward'])} / {fmt(r['recall_reverse'])} | {fmt(r['coverage'])} | "
            f"{fmt(r['false_facts'])} | {fmt(r['updates_new'])} / {fmt(r['updates_old'])} | "
            f"{r['leaks']} of {r['secrets']} | {fmt(r['capability_before'])} -> {fmt(r['capability_after'])} | "
            f"{fmt(r['perplexity_drift'], '+.1%')} | {fmt(r['night_seconds'], '.0f')} s |"
        )
    return lines


def general_figures(summary: dict) -> dict:
    """A night's general-behaviour figures from `sleep --json`: capability against the base model,
    the style check, perplexity drift against the base (through the router and of the adapter alone)."""
    b, a, base = summary.get("before") or {}, summary.get("after") or {}, summary.get("base") or {}
    base_ppl = summary.get("base_perplexity")
    drift = lambda v: v / base_ppl - 1 if v and base_ppl else None  # noqa: E731
    return {
        "facts_new": (summary.get("counts") or {}).get("facts_new"),
        "capability_base": base.get("capability"),
        "capability": a.get("capability"),
        "style_before": b.get("style"),
        "style": a.get("style"),
        "ppl_drift": drift(a.get("perplexity")),
        "ppl_drift_alone": drift(a.get("perplexity_adapter")),
        "router": summary.get("router"),
    }


def fresh_home(args, day: dict) -> tuple[Path, Path]:
    """A new bench home for a day (its config from --model and --config), the day logged into it;
    return (home, folder for its files)."""
    home, tmp = args.home / day["name"], args.home / f"{day['name']}-files"
    tmp.mkdir(parents=True)
    Paths(home).ensure()
    (home / "circadian.toml").write_text((f'[model]\nname = "{args.model}"\n' if args.model else "") + args.config)
    log_day(home, day, tmp)
    return home, tmp


def day_facts(paths: Paths) -> int:
    """Write each logged turn's facts to the memory index as `circadian chat` does after each reply
    (night/knowledge/same_day.py): a chat turn with its session so far, an imported conversation whole."""
    from circadian.night.knowledge.same_day import index_turn

    sessions: dict[str, list[dict]] = defaultdict(list)
    written = 0
    for record in memories.scan(paths).records:
        row = record.model_dump()
        so_far = [row] if record.is_conversation else sessions[record.session] + [row]
        if not record.is_conversation:
            sessions[record.session] = so_far
        written += index_turn(paths, so_far, record.id)
    return written


def same_day(args, days: list[dict]) -> None:
    """Recall before any night: each day logged into a fresh home (the memory index filled as chat and
    import fill it), its probes asked of the base model without and with retrieval; and how often a
    general question (the capability harness's 227 prompts) would get anything injected."""
    from circadian.night.evaluate import load_capability
    from circadian.store import memory_index

    general = [i["prompt"] for i in load_capability()]
    rows = []
    for day in days:
        home, tmp = fresh_home(args, day)
        paths = Paths(home)
        if day.get("source") != "import":
            memory_index.rebuild(paths)  # the bench logs its chat turns itself; chat indexes as it logs
        if args.day_facts:
            day_facts(paths)
        probes = day["probes"]
        tic = time.time()
        plain = ask(home, tmp, day["name"] + "-plain", probes, "base")
        recalled = cli(home, "eval", "recall", str(probe_file(tmp, day["name"] + "-recalled", probes)), "--retrieval")
        injected = sum(bool(memory_index.recall(paths, q, limit=3)) for q in general)  # as the chat recalls
        share = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        row = {
            "day": day["name"],
            "probes": len(probes),
            "recall_plain": share([i["hit"] for i in plain]),
            "recall_retrieval": share([i["hit"] for i in recalled["items"]]),
            "probes_given_something": share([bool(i["recalled"]) for i in recalled["items"]]),
            "answer_in_what_was_given": share(
                [
                    any(a.lower() in " ".join(i["recalled"]).lower() for a in p["answers"])
                    for p, i in zip(probes, recalled["items"])
                ]
            ),
            "general_with_injection": injected / len(general),
            "seconds": round(time.time() - tic),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    text = [
        "# Same-day recall (bench/recall/run.py --same-day)",
        "",
        f"Days: {args.days}; model: {args.model or 'embedded'}. Before any night: the base model, asked each probe",
        "without and with what the memory index recalls for it"
        + (" (each turn's facts written as the chat writes them)." if args.day_facts else " (raw turns only)."),
        "",
        "| day | probes | recall, no retrieval | recall, retrieval | probes given something | answer in what was given "
        "| general prompts given something |",
        "|---|---|---|---|---|---|---|",
    ]
    text += [
        f"| {r['day']} | {r['probes']} | {fmt(r['recall_plain'])} | {fmt(r['recall_retrieval'])} | "
        f"{fmt(r['probes_given_something'])} | {fmt(r['answer_in_what_was_given'])} | "
        f"{fmt(r['general_with_injection'])} |"
        for r in rows
    ]
    publish(args, text, rows)


def after_night(args, days: list[dict]) -> None:
    """Recall after one night: each day logged into a fresh home and slept on; its probes asked of the
    new adapter without and with retrieval (graduated facts are not given), and how often a general
    question (the capability harness) gets anything injected, with the capability answers of those
    compared with and without what was injected."""
    from circadian.night.evaluate import load_capability
    from circadian.store import adapters, ledger, memory_index

    capability = load_capability()
    rows = []
    for day in days:
        home, tmp = fresh_home(args, day)
        paths = Paths(home)
        tic = time.time()
        summary = cli(home, "sleep")
        night = time.time() - tic
        version = adapters.current_version(paths)
        probes = day["probes"]
        name = day["name"]
        plain = cli(home, "eval", "recall", str(probe_file(tmp, name + "-plain", probes)))
        recalled = cli(home, "eval", "recall", str(probe_file(tmp, name + "-recalled", probes)), "--retrieval")
        done = ledger.graduated(paths, version)
        given = [
            item
            for item in capability
            if memory_index.recall(paths, item["prompt"], limit=3, known=done)  # as the chat recalls
        ]
        general = [{"question": i["prompt"], "answers": i["answers"]} for i in given]
        cap_plain = cli(home, "eval", "recall", str(probe_file(tmp, name + "-cap", general))) if general else None
        cap_given = (
            cli(home, "eval", "recall", str(probe_file(tmp, name + "-cap-r", general)), "--retrieval")
            if general
            else None
        )
        share = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        row = {
            "day": name,
            "outcome": summary.get("outcome"),
            "probes": len(probes),
            "facts": len(memory_index.facts(paths)),
            "graduated": len(done),
            "recall_plain": share([i["hit"] for i in plain["items"]]),
            "recall_retrieval": share([i["hit"] for i in recalled["items"]]),
            "probes_given_something": share([bool(i["recalled"]) for i in recalled["items"]]),
            "general_with_injection": len(given) / len(capability),
            "capability_changed": sum(a["hit"] != b["hit"] for a, b in zip(cap_plain["items"], cap_given["items"]))
            if general
            else 0,
            "night_seconds": round(night),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    text = [
        "# Recall after one night, with and without retrieval (bench/recall/run.py --after-night)",
        "",
        f"Days: {args.days}; model: {args.model or 'embedded'}. One night on the day; the night's adapter asked",
        "each probe without and with what the memory index recalls for it (facts that graduated are not given).",
        "",
        "| day | outcome | probes | facts (graduated) | recall, no retrieval | recall, retrieval | probes given "
        "something | general prompts given something | capability answers changed by it | night |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    text += [
        f"| {r['day']} | {r['outcome']} | {r['probes']} | {r['facts']} ({r['graduated']}) | {fmt(r['recall_plain'])} | "
        f"{fmt(r['recall_retrieval'])} | {fmt(r['probes_given_something'])} | {fmt(r['general_with_injection'])} | "
        f"{r['capability_changed']} | {r['night_seconds']} s |"
        for r in rows
    ]
    publish(args, text, rows)


def consecutive_nights(args, days: list[dict]) -> None:
    """Each day is a night of one home; after each night, every day so far is asked with the current adapter."""
    home = args.home / "home"
    Paths(home).ensure()
    (home / "circadian.toml").write_text((f'[model]\nname = "{args.model}"\n' if args.model else "") + args.config)
    grid, outcomes, general, routed = [], [], [], []
    for n, day in enumerate(days, start=1):
        tmp = args.home / f"{day['name']}-files"
        tmp.mkdir(parents=True)
        log_day(home, day, tmp)
        summary = cli(home, "sleep")
        outcomes.append(f"{summary.get('outcome')} {summary.get('version') or ''} in {summary.get('seconds', 0):.0f} s")
        general.append(general_figures(summary))
        current = cli(home, "status")["adapter"] or "base"
        row, to_base = {}, {}
        for earlier in days[:n]:
            items = ask(home, tmp, f"{earlier['name']}-night{n}", earlier["probes"], current)
            row[earlier["name"]] = sum(i["hit"] for i in items) / len(items) if items else None
            to_base[earlier["name"]] = f"{sum(i.get('answered_by') == 'base' for i in items)} of {len(items)}"
        grid.append(row)
        routed.append(to_base)
        print(
            f"night {n} ({day['name']}): {outcomes[-1]}; " + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()),
            file=sys.stderr,
        )
    names = [d["name"] for d in days]
    lines = [
        "# Consecutive nights (bench/recall/run.py --nights)",
        "",
        "Recall of each day's probes with the adapter current after each night.",
        "",
        "| night | outcome | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    lines += [
        f"| {n} | {outcomes[n - 1]} | " + " | ".join(fmt(row.get(d)) if d in row else "" for d in names) + " |"
        for n, row in enumerate(grid, start=1)
    ]
    lines += [
        "",
        "Of each day's probes, how many the router sent to the base model after each night (those cannot be "
        "answered from the adapter).",
        "",
        "| night | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {n} | " + " | ".join(row.get(d, "") for d in names) + " |" for n, row in enumerate(routed, start=1)]
    lines += [
        "",
        "General behaviour of each night's candidate (capability: 227 questions; style: 30 chat prompts; "
        "perplexity as answered, through the router, and of the adapter alone, against the base model).",
        "",
        "| night | new facts | capability base -> candidate | style current -> candidate | ppl drift routed / alone "
        "| router: probes to base, general to adapter | ms per turn |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, g in enumerate(general, start=1):
        r = g["router"] or {}
        lines.append(
            f"| {n} | {g['facts_new']} | {fmt(g['capability_base'], '.1%')} -> {fmt(g['capability'], '.1%')} | "
            f"{fmt(g['style_before'])} -> {fmt(g['style'])} | {fmt(g['ppl_drift'], '+.1%')} / "
            f"{fmt(g['ppl_drift_alone'], '+.1%')} | {r.get('facts_to_base', 'n/a')} of {r.get('facts', 'n/a')}, "
            f"{r.get('general_to_adapter', 'n/a')} of {r.get('general', 'n/a')} | "
            f"{fmt((r.get('seconds_per_turn') or 0) * 1000, '.0f') if r else 'n/a'} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
        args.out.with_suffix(".json").write_text(
            json.dumps({"grid": grid, "to_base": routed, "outcomes": outcomes, "general": general}, indent=1) + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=Path, default=HERE / "days")
    parser.add_argument("--only", help="comma-separated day names")
    parser.add_argument("--model", help="model.name for the bench homes (default: the embedded model)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/circadian-recall-bench"))
    parser.add_argument("--out", type=Path, help="write the results here (Markdown; a .json beside it)")
    parser.add_argument(
        "--config", default="", help="extra TOML for every bench home's circadian.toml: the text, or a file holding it"
    )
    parser.add_argument(
        "--blends",
        action="store_true",
        help="let the gate promote a blend of a candidate that broke a bound (default: the night's version is the "
        "full candidate, promoted or rejected, as the targets ask)",
    )
    parser.add_argument(
        "--nights",
        action="store_true",
        help="the days as consecutive nights of one home; every "
        "earlier day's probes are asked again after each night (with the current adapter)",
    )
    parser.add_argument(
        "--same-day",
        action="store_true",
        help="no night: recall before any night, without and with retrieval from the memory index",
    )
    parser.add_argument(
        "--day-facts",
        action="store_true",
        help="with --same-day: each turn's facts written to the index as `circadian chat` writes them",
    )
    parser.add_argument(
        "--after-night",
        action="store_true",
        help="one night per day, then recall with the new adapter without and with retrieval",
    )
    args = parser.parse_args()
    days = [json.loads(p.read_text()) for p in sorted(args.days.glob("*.json"))]
    if args.only:
        wanted = set(args.only.split(","))
        days = [d for d in days if d["name"] in wanted]
    import shutil

    if args.config and Path(args.config).is_file():
        args.config = Path(args.config).read_text(encoding="utf-8")
    if not args.blends and "[gate]" not in args.config:
        args.config = "[gate]\nfallback_scales = []\n" + args.config

    shutil.rmtree(args.home, ignore_errors=True)
    if args.nights:
        return consecutive_nights(args, days)
    if args.same_day:
        return same_day(args, days)
    if args.after_night:
        return after_night(args, days)
    rows = []
    for day in days:
        home, tmp = fresh_home(args, day)
        tic = time.time()
        summary = cli(home, "sleep")
        print(f"{day['name']}: {summary.get('outcome')} in {time.time() - tic:.0f} s", file=sys.stderr)
        row = measure_day(home, tmp, day, summary, summary.get("version"))
        rows.append(row)
        print("\n".join(table([row])[2:]), file=sys.stderr)
    text = [
        "# Recall bench (bench/recall/run.py)",
        "",
        f"Days: {args.days}; model: {args.model or 'embedded'}.",
        "",
        *table(rows),
        "",
        "## By phrasing (recall after the night)",
        "",
    ]
    phrasings = sorted({k for r in rows for k in r["by_phrasing"]})
    text += ["| day | " + " | ".join(phrasings) + " |", "|---|" + "---|" * len(phrasings)]
    text += [f"| {r['day']} | " + " | ".join(fmt(r["by_phrasing"].get(k)) for k in phrasings) + " |" for r in rows]
    publish(args, text, rows)


if __name__ == "__main__":
    main()
