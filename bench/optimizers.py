"""Muon against AdamW on the recall bench: the same day, the same night, only `train.optimizer` differs.

Run as: .venv/bin/python bench/optimizers.py [--only dev-maya] [--out bench/optimizers.md]

Each optimizer gets a fresh bench home and one night through the real `circadian sleep`
(bench/recall/run.py), then the day's hand-written probes. Reported: recall after the night, the
optimizer steps the night ran and the step of its best checkpoint, training tokens/s, peak memory,
capability and the night's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(optimizer: str, only: str, out: Path) -> list[dict]:
    config = f'[train]\noptimizer = "{optimizer}"\n'
    home = Path(f"/tmp/circadian-optimizer-{optimizer}")
    command = [sys.executable, str(HERE / "recall" / "run.py"), "--only", only, "--home", str(home)]
    subprocess.run([*command, "--config", config, "--out", str(out)], check=True)
    return json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="dev-maya", help="comma-separated day names of bench/recall/days")
    parser.add_argument("--out", type=Path, default=HERE / "optimizers.md")
    args = parser.parse_args()
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    lines = [
        "# Muon against AdamW (bench/optimizers.py)",
        "",
        f"Day(s): {args.only}; embedded model, torch backend, this machine's CPU. One night per optimizer.",
        "",
        "| optimizer | day | recall after | steps | best step | tokens/s | peak memory | capability | night |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for optimizer in ("adamw", "muon"):
        rows = run(optimizer, args.only, Path(f"/tmp/circadian-optimizer-{optimizer}.md"))
        for r in rows:
            t = r.get("train") or {}
            lines.append(
                f"| {optimizer} | {r['day']} | {pct(r['recall_after'])} | {t.get('steps', '-')} | "
                f"{t.get('best_step', '-')} | {t.get('tokens_per_second', 0):.0f} | "
                f"{t.get('peak_memory_mb', 0):.0f} MB | {pct(r['capability_before'])} -> "
                f"{pct(r['capability_after'])} | {r['night_seconds'] or 0:.0f} s |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
