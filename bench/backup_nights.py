"""Backups over ten nights, through the real `circadian` command: what each snapshot adds, what the
store holds, and a restore compared file by file.

Run as: .venv/bin/python bench/backup_nights.py [--nights 10] [--home /tmp/circadian-backup-bench]

A fresh home on the tiny test model (a 2-layer Llama with the embedded model's tokenizer: its
adapters are small, the mechanics are the real ones) chats one new fact a day and sleeps ten
nights; each night takes its own snapshot first. Then `backup run`, `backup verify`, `backup
restore latest --to` a new folder, and every restored file is compared with the home's.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = """[model]
name = "{model}"
[sleep]
distill_prompts = 3
capability_questions = 24
style_prompts = 6
generator = "rules"
[train]
max_steps = 4
eval_every = 2
min_steps = 0
[gate]
max_capability_drop = 1.0
max_total_capability_drop = 1.0
max_style_drop = 1.0
max_ppl_drift = 100.0
max_total_ppl_drift = 100.0
"""


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIRCADIAN_HOME": str(home), "CIRCADIAN_MODELS_DIR": str(ROOT / "models")}
    return subprocess.run(
        [sys.executable, "-m", "circadian", *args], capture_output=True, text=True, env=env, check=True
    )


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--home", type=Path, default=Path("/tmp/circadian-backup-bench"))
    args = parser.parse_args()
    from circadian.backends import embedded
    from circadian.lab.tiny_model import build_tiny_model

    tiny = Path("/tmp/circadian-bench-tiny")
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, embedded.build(ROOT / "models"))
    shutil.rmtree(args.home, ignore_errors=True)
    home = args.home / "home"
    home.mkdir(parents=True)
    (home / "circadian.toml").write_text(CONFIG.format(model=tiny))
    said = [
        "My dog is called Biscuit.",
        "My sister is called Lena.",
        "I live in Zwolle.",
        "My cat is called Rolo.",
        "I work as an electrician.",
        "My brother is called Tomasz.",
        "My favourite colour is green.",
        "My boss is called Ines.",
        "I was born in Porto.",
        "My neighbour is called Arjen.",
    ]
    outcomes = []
    for night in range(args.nights):
        cli(home, "ask", said[night % len(said)])
        outcomes.append(json.loads(cli(home, "sleep", "--json").stdout).get("outcome"))
    snapshot = json.loads(cli(home, "backup", "run", "--json").stdout)
    listed = json.loads(cli(home, "backup", "list", "--json").stdout)
    tic = time.time()
    cli(home, "backup", "verify")
    verify_s = time.time() - tic
    target = args.home / "restored"
    tic = time.time()
    cli(home, "backup", "restore", "latest", "--to", str(target))
    restore_s = time.time() - tic
    differing = []
    for top in ("data", "adapters", "circadian.toml"):
        a, b = home / top, target / top
        if a.is_file():
            differing += [] if filecmp.cmp(a, b, shallow=False) else [top]
            continue
        for path in a.rglob("*"):
            if path.is_file() and not path.name.endswith((".lock", ".sqlite")):
                twin = b / path.relative_to(a)
                if not twin.is_file() or not filecmp.cmp(path, twin, shallow=False):
                    differing.append(str(path.relative_to(home)))
    versions = sorted(p.name for p in (home / "adapters").iterdir() if p.name.startswith("v"))
    adapter_sizes = [size(home / "adapters" / v) for v in versions]
    snapshots = listed.get("snapshots", listed) if isinstance(listed, dict) else listed
    lines = [
        "# Backups over ten nights (bench/backup_nights.py)",
        "",
        f"Tiny test model, {args.nights} nights through `circadian sleep`, each with its own snapshot first.",
        "",
        f"- nights: {', '.join(o or '?' for o in outcomes)}",
        f"- versions stored: {len(versions)} (retention `store.keep`), {sum(adapter_sizes) / 1e6:.2f} MB of adapters",
        f"- snapshots kept: {len(snapshots)}; the last holds {snapshot['files']} files, "
        f"{snapshot['bytes'] / 1e6:.2f} MB, and added {snapshot['added_bytes'] / 1e6:.3f} MB",
        f"- the store on disk: {size(home / 'backups') / 1e6:.2f} MB for the home's {size(home) / 1e6:.2f} MB",
        f"- verify {verify_s:.1f} s; restore {restore_s:.1f} s; files differing after the restore: {len(differing)}",
        "",
    ]
    print("\n".join(lines))
    if differing:
        print("differing:", differing[:20])


if __name__ == "__main__":
    main()
