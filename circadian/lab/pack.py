"""`circadian cycles pack`: one archive with what it takes to rerun the experiments: the config as
written and as resolved, every experiment's manifest (policy, seed, budget, train settings, source
split hashes), both logs, package versions, and sha256 hashes of the data (memories, accepted inbox
datasets) — the hashes, not the conversations, which stay private.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import tarfile
import time
from importlib.metadata import distributions
from pathlib import Path

from circadian.core.config import Config
from circadian.core.fsutil import sha256_file
from circadian.core.paths import Paths

RERUN = """# Rerunning these experiments

1. Install the versions in `versions.json` (`pip install -r requirements.txt`), circadian at the
   version listed there.
2. Put the same data in a home: the files in `data_hashes.json` must match (`sha256sum`).
3. Use `config/circadian.toml` as the home's config.
4. For each experiment in `experiments/`, run
   `circadian cycles run --n N --policy POLICY --seed SEED --budget BUDGET [--oracle]`
   with the values from its `experiment.json` (`commands.txt` lists them).
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def write_pack(paths: Paths, config: Config, out: Path) -> dict:
    """Write the archive; return what it holds."""
    experiments = sorted((paths.runs / "experiments").glob("*/experiment.json"))
    versions = {d.metadata["Name"]: d.version for d in distributions() if d.metadata["Name"]}
    data_files = [paths.memories, *sorted((paths.inbox / "accepted").glob("*.jsonl"))]
    hashes = {str(p.relative_to(paths.home)): sha256_file(p) for p in data_files if p.exists()}
    commands = []
    for file in experiments:
        meta = json.loads(file.read_text())
        commands.append(
            f"circadian cycles run --n {meta['n']} --policy {meta['policy']} --seed {meta['seed']} "
            f"--budget {meta['budget']}" + (" --oracle" if meta.get("oracle") else "")
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        if paths.config.exists():
            _add(tar, "config/circadian.toml", paths.config.read_bytes())
        _add(tar, "config/resolved.json", json.dumps(config.model_dump(), indent=2).encode())
        for file in experiments:
            _add(tar, f"experiments/{file.parent.name}/experiment.json", file.read_bytes())
            cycle0 = file.parent / "cycle0.json"
            if cycle0.exists():
                _add(tar, f"experiments/{file.parent.name}/cycle0.json", cycle0.read_bytes())
        for log in (paths.run_log, paths.choice_log):
            if log.exists():
                _add(tar, f"logs/{log.name}", log.read_bytes())
        _add(
            tar,
            "versions.json",
            json.dumps(
                {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "executable": sys.executable,
                    "packages": versions,
                },
                indent=2,
            ).encode(),
        )
        _add(tar, "requirements.txt", "".join(f"{k}=={v}\n" for k, v in sorted(versions.items())).encode())
        _add(tar, "data_hashes.json", json.dumps(hashes, indent=2).encode())
        _add(tar, "commands.txt", "".join(c + "\n" for c in commands).encode())
        _add(tar, "README.md", RERUN.encode())
    return {
        "path": str(out),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "experiments": len(experiments),
        "data_files": len(hashes),
        "packages": len(versions),
    }
