"""Open a finished `cycles run --oracle` experiment again, to re-measure it at its saved states.

Used by noise_ceiling.py and probe_quality.py. The home's model and sources are loaded as the
experiment saw them (same memories offset; the start adapter and every split's size checked, one-line
exit otherwise), with its logged cycles read from the run log next to it (data/runs/, or a
superseded/<set>/ folder it was moved into), and the adapter each cycle started from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from circadian.core.config import load_config
from circadian.core.paths import Paths
from circadian.lab.experiment import BUDGETS, Budget, Setup, budget_settings, load_sources


@dataclass
class SavedExperiment:
    folder: Path
    meta: dict
    setup: Setup
    plan: Budget
    settings: object
    logged: dict[int, dict]

    def position(self, cycle: int) -> tuple:
        """The adapter (path, version) the experiment's `cycle` started from."""
        if cycle == 1:
            return self.setup.start
        return self.folder / "adapters" / f"c{cycle - 1:02d}", f"{self.meta['experiment']}-c{cycle - 1:02d}"


def open_experiment(home: Path, folder: Path) -> SavedExperiment:
    paths = Paths.resolve(home)
    config, _ = load_config(paths.config)
    meta = json.loads((folder / "experiment.json").read_text())
    setup = load_sources(paths, config, end=meta["memories_end_offset"], say=lambda m: None)
    if setup.start[1] != meta["start_adapter"]:
        raise SystemExit(
            f"the home's current adapter is {setup.start[1]}, the experiment started from {meta['start_adapter']}"
        )
    for name, pool in setup.pools.items():  # the same data as the experiment saw
        if any(len(pool.split(s)) != meta["sources"][name][s]["rows"] for s in meta["sources"][name]):
            raise SystemExit(f"source {name} differs from what {meta['experiment']} trained on")
    logged = {}
    for log in (folder.parent.parent / "run_log.jsonl", folder.parent / "run_log.jsonl"):
        if log.exists():
            for line in log.read_text().splitlines():
                row = json.loads(line)
                if row.get("experiment") == meta["experiment"]:
                    logged[row["cycle"]] = row
    plan = BUDGETS[meta["budget"]]
    return SavedExperiment(folder, meta, setup, plan, budget_settings(config, plan), logged)
