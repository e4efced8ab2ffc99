"""Commands of the lab: the source-choice experiments (`cycles run|analyze|pack`) and `demo`."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from circadian.cli._common import HomeOpt, JsonOpt, print_json, say, setup

cycles_app = typer.Typer(no_args_is_help=True, help="Experiments: a policy picks each cycle's data source.")


class Budget(StrEnum):
    tiny = "tiny"
    small = "small"
    medium = "medium"


@cycles_app.command("run")
def cycles_run(
    cycles: Annotated[int, typer.Option("--cycles", "-n", min=1, help="how many consecutive cycles")] = 3,
    policy: Annotated[
        str, typer.Option("--policy", metavar="self|random|bandit|fixed:SOURCE", help="what picks each cycle's source")
    ] = "self",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    budget: Annotated[Budget, typer.Option("--budget", help="training per cycle")] = Budget.small,
    oracle: Annotated[
        bool,
        typer.Option("--oracle", help="also train every source from the same checkpoint each cycle, for true regret"),
    ] = False,
    sources: Annotated[
        Optional[str], typer.Option("--sources", help="comma-separated subset, e.g. today,replay,distill")
    ] = None,
    no_generate: Annotated[
        bool,
        typer.Option("--no-generate", help="skip recall and capability questions at cycle 0 and the end (losses only)"),
    ] = False,
    trial_steps: Annotated[
        Optional[int],
        typer.Option(
            "--trial-steps",
            min=1,
            help="training steps "
            "of each trial (default 2; the budget's steps or "
            "more: whole-night trials, kept as the nights)",
        ),
    ] = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Run an experiment: N cycles, a policy picks each one's source.

    The experiment trains in its own folder from the home's current adapter; the home's CURRENT is
    never touched.
    """
    from circadian.lab.experiment import run_experiment
    from circadian.night.policies import make

    make(policy)  # a bad policy is an error before anything loads
    paths, config = setup(home)
    summary = run_experiment(
        paths,
        config,
        n=cycles,
        policy_spec=policy,
        seed=seed,
        budget=budget.value,
        oracle=oracle,
        only=sources.split(",") if sources else None,
        say=say,
        generate=not no_generate,
        trial_steps=trial_steps,
    )
    if json_out:
        print_json(
            {k: summary[k] for k in ("experiment", "policy", "seed", "budget", "oracle", "n", "cycle0", "final")}
        )
    else:
        print(
            f"experiment {summary['experiment']} done; `circadian cycles analyze --experiment {summary['experiment']}`"
        )


@cycles_app.command("analyze")
def cycles_analyze(
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    csv_dir: Annotated[Optional[Path], typer.Option("--csv", help="also write the tables as CSV here")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment")] = None,
    policy: Annotated[Optional[str], typer.Option("--policy")] = None,
):
    """Compare the experiments: regret, choices, drift, integrity.

    Per policy: mean and 95% interval of final recall, drift, oracle regret and share of the
    oracle's gain; the choice distribution; and the integrity counts of the logs behind them.
    """
    from circadian.lab.analyze import analyze, write_csv

    paths, _config = setup(home)
    result = analyze(paths, experiment=experiment, policy=policy)
    if csv_dir:
        for path in write_csv(result, csv_dir):
            say(f"wrote {path}")
    if json_out:
        print_json(result)
        return
    print_analysis(result)


def _fmt(stats: dict, spec: str = ".3f") -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    text = format(stats["mean"], spec)
    return text + (f" ± {format(stats['ci95'], spec.lstrip('+'))}" if stats.get("ci95") is not None else "")


def print_analysis(result: dict) -> None:
    """Print `cycles analyze`'s tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="per policy (mean ± 95% CI over experiments)")
    for column in (
        "policy",
        "runs",
        "final recall",
        "ppl drift",
        "capability drift",
        "cum. oracle regret",
        "oracle gain share",
        "full-information share",
        "eval-loss variance",
        "s / cycle (probes)",
    ):
        table.add_column(column)
    for s in result["per_run_type"]:
        table.add_row(
            s["run_type"],
            str(s["experiments"]),
            _fmt(s["final_recall"], ".0%"),
            _fmt(s["perplexity_drift"], "+.2%"),
            _fmt(s["capability_drift"], "+.0%"),
            _fmt(s["cumulative_oracle_regret"], ".4f"),
            _fmt(s["oracle_gain_share"], ".0%"),
            _fmt(s["full_information_share"], ".0%"),
            _fmt(s["stability_eval_loss_var"], ".2e"),
            f"{_fmt(s['seconds_per_cycle'], '.0f')} ({_fmt(s['trial_seconds_per_cycle'], '.0f')})",
        )
    console.print(table)
    if result["oracle_reward_by_state"]:
        states = Table(title="oracle reward by source state (fresh: never trained; tired: trained the night before)")
        for column in ("source", "fresh", "tired", "rested"):
            states.add_column(column)
        cells = {(r["source"], r["state"]): f"{_fmt(r, '+.3f')} (n={r['n']})" for r in result["oracle_reward_by_state"]}
        for source in sorted({r["source"] for r in result["oracle_reward_by_state"]}):
            states.add_row(source, *(cells.get((source, st), "-") for st in ("fresh", "tired", "rested")))
        console.print(states)
    for run_type, cycles in result["choice_distribution"].items():
        line = "  ".join(f"{c}:" + ",".join(f"{k}={v}" for k, v in sorted(d.items())) for c, d in cycles.items())
        console.print(f"choices {run_type}: {line}", highlight=False, markup=False)
    integrity = result["integrity"]
    counts = integrity["counts"]
    console.print(
        f"integrity: raw {counts['raw']} -> parsed {counts['parsed']} -> cleaned {counts['cleaned']} -> "
        f"joined {counts['joined']} -> filtered {counts['filtered']} -> displayed {counts['displayed']}",
        highlight=False,
        markup=False,
    )
    for name, info in integrity["logs"].items():
        console.print(
            f"  {name}: {info['path']} ({info['lines']} lines, modified {info['mtime']})", highlight=False, markup=False
        )
    for row in integrity["broken_lines"]:
        console.print(f"  broken: {row['file']} line {row['line']}: {row['why']}", highlight=False, markup=False)
    for which, ids in integrity["missing_cycle_ids"].items():
        if ids:
            console.print(f"  {which.replace('_', ' ')}: {', '.join(ids)}", highlight=False, markup=False)
    for row in integrity["incomplete_experiments"]:
        console.print(
            f"  never ended (left out of the per-policy means): {row['experiment']}, "
            f"{row['cycles_logged']} of {row['planned']} cycles logged",
            highlight=False,
            markup=False,
        )


@cycles_app.command("pack")
def cycles_pack(
    home: HomeOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="archive path (default: data/runs/repro-<time>.tar.gz)")
    ] = None,
):
    """Pack what it takes to rerun the experiments into one archive.

    Config, seeds, package versions, data hashes (not the conversations) and both logs.
    """
    from circadian.lab.pack import write_pack

    paths, config = setup(home)
    result = write_pack(paths, config, out or paths.runs / f"repro-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    if json_out:
        print_json(result)
    else:
        print(f"wrote {result['path']} ({result['experiments']} experiments, {result['data_files']} data hashes)")


def demo(
    home: Annotated[
        Optional[Path],
        typer.Option("--home", help="home for the demo (default: a fresh one under data/demo of the main home)"),
    ] = None,
):
    """Play a scripted day, one night and the report.

    Runs on the embedded model in a demo home of its own, so your memories are never touched.
    """
    from circadian.lab.demo import run_demo

    run_demo(home)
