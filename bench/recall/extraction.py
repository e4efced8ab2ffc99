"""What the knowledge pipeline makes of a day, before any training: for each hand-written probe, the
facts that carry its answer and the questions the night would train for them.

Run as: .venv/bin/python bench/recall/extraction.py [--days DIR] [--only NAME,...] [--show] [--no-capitals]

Nothing trains, so it takes seconds. The embedded model loads once (torch) to find the names in
lowercase chat, as the night's model does (night/knowledge/casing.py); --no-capitals reads the chat
as written, without a model. Per day it prints:
- covered: probes whose answer is in at least one written fact (the most a night could recall);
- asked: probes whose answer is also the answer of a training question (forward or reverse);
- false facts: written facts that carry no labelled answer.
With --show, every probe with its facts and their training questions, and every false fact. Never
run it on the sealed days while tuning: they are for the end (SEALED.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from run import chat_records, matches  # noqa: E402

from circadian.night import dataset  # noqa: E402
from circadian.night.knowledge import rows as fact_rows  # noqa: E402
from circadian.night.knowledge.casing import Capitals  # noqa: E402
from circadian.night.scoring import is_hit, words  # noqa: E402
from circadian.store import memories  # noqa: E402


def embedded_model():
    """The embedded model on the torch backend (the checkout's models/ folder, as `make setup` builds it)."""
    from circadian.backends import LoadRequest, get_backend
    from circadian.backends.embedded import build

    folder = build(HERE.parent.parent / "models")
    return get_backend("torch").load(LoadRequest("smollm2-135m-instruct", folder))


def records_of(day: dict) -> list:
    """The day's memory records, as bench/recall/run.py logs them (chat turns, or imported conversations)."""
    if day.get("source") == "import":
        made = [
            memories.make_record(s, session=f"import-{n}", model="bench", adapter=None, source="import:bench")
            for n, s in enumerate(day["sessions"])
        ]
    else:
        made = chat_records(day)
    return [memories.MemoryRecord.model_validate(r) for r in made]


def carries(fact, answers: list[str]) -> bool:
    """Whether a written fact carries one of the answers (run.py's test of a fact against a labelled one)."""
    return matches(set(words(fact.statement + " " + " ".join(fact.answers))), {"answers": answers})


def diagnose(day: dict, show: bool, generators) -> dict:
    selection = dataset.select(records_of(day), trained=set(), forgotten=set())
    knowledge = dataset.mine(selection.new, "US", generators)
    rows = fact_rows.build(knowledge.facts, replaced=knowledge.replaced)
    trained = [(r["messages"][0]["content"], r["messages"][1]["content"], r["lineage"]) for r in rows.train]
    covered = asked = 0
    lines = []
    for probe in day["probes"]:
        facts = [f for f in knowledge.facts if carries(f, probe["answers"])]
        questions = [q for q, a, lin in trained if is_hit(a, probe["answers"]) and not lin.get("profile")]
        covered += bool(facts)
        asked += bool(questions)
        if show:
            mark = "ok" if questions else ("fact" if facts else "MISS")
            lines.append(f"[{mark}] {probe['question']}  -> {probe['answers']}")
            for f in facts[:3]:
                lines.append(f"      fact: {f.statement}")
            for q in questions[:6]:
                lines.append(f"      q: {q}")
    false = [f for f in knowledge.facts if not any(carries(f, lab["answers"]) for lab in day["facts"])]
    if show:
        lines += [f"  FALSE: {f.statement}   <- {f.sentence[:90]}" for f in false]
        print(f"## {day['name']}\n" + "\n".join(lines))
    n = len(day["probes"])
    return {
        "day": day["name"],
        "probes": n,
        "covered": covered / n,
        "asked": asked / n,
        "facts": len(knowledge.facts),
        "false": len(false) / max(1, len(knowledge.facts)),
        "rows": len(rows.train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=Path, default=HERE / "days")
    parser.add_argument("--only", help="comma-separated day names")
    parser.add_argument("--show", action="store_true", help="every probe with its facts and training questions")
    parser.add_argument("--no-capitals", action="store_true", help="no model: lowercase chat read as written")
    args = parser.parse_args()
    generators = dataset.default_generators()
    if not args.no_capitals:
        generators[0].capitals = Capitals(embedded_model())
    days = [json.loads(p.read_text()) for p in sorted(args.days.glob("*.json"))]
    if args.only:
        days = [d for d in days if d["name"] in set(args.only.split(","))]
    print("| day | probes | covered | asked | facts | false facts | training rows |\n|---|---|---|---|---|---|---|")
    for day in days:
        r = diagnose(day, args.show, generators)
        print(
            f"| {r['day']} | {r['probes']} | {r['covered']:.0%} | {r['asked']:.0%} | {r['facts']} | "
            f"{r['false']:.0%} | {r['rows']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
