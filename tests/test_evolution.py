"""Learning evolution: snapshots during a real night on the tiny model, the per-example analysis,
and forgetting events across nights."""

from __future__ import annotations

import json

from conftest import run_cli, say

from circadian.core.fsutil import atomic_write_json
from circadian.night import evolution


def test_a_night_snapshots_tracked_examples_and_analyzes_them(night):
    say(night, "My dog is called Biscuit.", "My sister Lena lives in Trondheim.")
    result = run_cli("sleep", "--json", env={"CIRCADIAN_TRAIN__MAX_STEPS": "8"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    folder = night.runs / summary["cycle_id"] / "evolution"
    examples = json.loads((folder / "examples.json").read_text())
    probes = [e for e in examples if e["kind"] == "probe"]
    assert len(probes) == summary["counts"]["probes"] and any(e["kind"] == "train" for e in examples)
    # the fact's full reply ("Your dog's name is Biscuit."), not just the value
    assert all(e["expected"].endswith(".") and e["expected"] not in e["answers"] for e in probes)
    steps = sorted(p.name for p in folder.glob("step_*.json"))
    assert steps[0] == "step_0000.json" and (folder / "final.json").exists()
    first = json.loads((folder / "step_0000.json").read_text())
    assert {i["id"] for i in first["items"]} == {e["id"] for e in examples}
    assert all(isinstance(i["answer"], str) and i["loss"] > 0 for i in first["items"])
    analysis = json.loads((folder / "analysis.json").read_text())
    assert sum(analysis["counts"].values()) == len(examples)
    assert analysis["overhead"]["snapshots"] == len(steps) + 1 and analysis["overhead"]["share"] > 0
    row = analysis["examples"][0]
    assert [c["step"] for c in row["curve"]] == analysis["steps"] and analysis["steps"][-1] == "final"
    assert summary["evolution"]["counts"] == analysis["counts"]


def _night(runs, cycle, examples, before, after):
    folder = runs / cycle / "evolution"
    atomic_write_json(folder / "examples.json", examples)
    atomic_write_json(folder / "step_0000.json", {"step": 0, "items": before})
    atomic_write_json(folder / "final.json", {"step": "final", "items": after})
    return folder


def test_analysis_categories_and_forgetting_across_nights(tmp_path):
    examples = [
        {"id": "probe-0", "kind": "probe", "fact": "pet::dog", "question": "q0"},
        {"id": "probe-1", "kind": "probe", "fact": "origin::you", "question": "q1"},
        {"id": "probe-2", "kind": "probe", "fact": "job::you", "question": "q2"},
    ]
    item = lambda i, hit, loss: {"id": f"probe-{i}", "hit": hit, "loss": loss, "answer": "a"}  # noqa: E731
    folder = _night(
        tmp_path,
        "20261120-030000",
        examples,
        [item(0, False, 3.0), item(1, False, 3.0), item(2, False, 3.0)],
        [item(0, True, 0.1), item(1, False, 1.0), item(2, False, 2.9)],
    )
    atomic_write_json(
        folder / "step_0004.json", {"step": 4, "items": [item(0, True, 0.3), item(1, True, 0.4), item(2, False, 2.9)]}
    )
    analysis = evolution.analyze(folder, final_step=8)
    by_id = {r["id"]: r for r in analysis["examples"]}
    assert by_id["probe-0"]["category"] == "learned" and by_id["probe-0"]["learned_at"] == 4
    assert by_id["probe-1"]["category"] == "struggling" and by_id["probe-1"]["regressions"] == 1
    assert by_id["probe-2"]["category"] == "not learned" and by_id["probe-2"]["learned_at"] is None
    # the next night starts with the dog fact wrong again: one forgetting event
    _night(
        tmp_path,
        "20261121-030000",
        examples,
        [item(0, False, 1.5), item(1, False, 1.0), item(2, False, 2.9)],
        [item(0, True, 0.1), item(1, True, 0.2), item(2, False, 2.9)],
    )
    result = evolution.forgetting(tmp_path)
    assert result["events"] == [{"fact": "pet::dog", "cycle_id": "20261121-030000"}]
    assert result["facts"]["pet::dog"] == {"nights": 2, "forgetting_events": 1, "last_hit": True}
    assert result["nights"] == 2


def test_snapshot_budget_counts_only_training_the_night_is_sure_to_reach():
    from circadian.night.evolution import fits_budget

    common = dict(budget=0.15, total_steps=200, min_steps=24)
    # 5 s a step, 6 s a snapshot, 6 s spent at step 0: at step 4 the night surely reaches step 24 (120 s)
    assert fits_budget(spent=5, cost=6, train_seconds=20, step=4, **common)
    # an expensive snapshot (20 s) does not fit early, fits once enough training is sure to come
    assert not fits_budget(spent=20, cost=20, train_seconds=20, step=4, **common)
    assert fits_budget(spent=20, cost=20, train_seconds=320, step=64, **common)
    # total_steps caps the horizon: at step 190 of 200 the night is sure of 1000 s, not of 1900 s
    assert not fits_budget(spent=130, cost=12, train_seconds=950, step=190, **common)
    assert fits_budget(spent=130, cost=12, train_seconds=950, step=190, **{**common, "total_steps": 400})
