"""Consolidation (`circadian consolidate`, night/consolidate.py; store/bases.py) on the tiny model:
the nightly job fuses a long lineage into a new base, the chat and the next night load it, a new
lineage grows on it, rollback goes back across it; a kill at any point leaves the previous adapter
current; the check refuses a fuse that loses what the router keeps."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

from conftest import assert_one_line_error, run_cli, say, start_held

from circadian.core.config import load_config
from circadian.night.consolidate import check
from circadian.shift.job import run_scheduled
from circadian.store import adapters, backups, bases


def _sleep(env=None) -> dict:
    result = run_cli("sleep", "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_kills_leave_the_adapter_then_the_nightly_job_consolidates_and_a_new_lineage_grows_on_the_base(
    night, monkeypatch
):
    monkeypatch.setenv("CIRCADIAN_SLEEP__GENERATOR", "rules")  # no English pipeline to load in each process
    assert_one_line_error(run_cli("consolidate"))  # nothing to consolidate yet: no adapter
    say(night, "My dog is called Biscuit.")
    v1 = _sleep()["version"]

    # a kill at any point of `circadian consolidate` leaves v1 current and verified
    history = night.adapters / "history.jsonl"
    staged = night.home / "models" / ".staging-tiny-llama-c1"
    for point in ("consolidate:started", "consolidate:fused", "consolidate:renamed"):
        proc = start_held("consolidate", point, 120)
        if point == "consolidate:started":
            assert_one_line_error(run_cli("sleep"))  # the consolidation holds the sleep lock
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert adapters.current_version(night) == v1 and adapters.active_adapter(night).version == v1, point
        assert len(history.read_text().splitlines()) == 1, point
        assert staged.is_dir() == (point == "consolidate:fused"), point  # the next attempt removes it
    assert [b.name for b in bases.stored(night)] == ["tiny-llama-c1"]  # renamed, never made current
    assert adapters.current_base(night) is None

    # the nightly job: a promoted night past store.consolidate_after consolidates (a name is never reused)
    say(night, "I grew up in Zwolle.")
    config, _ = load_config(night.config, overrides={"store.consolidate_after": (1, "test")})
    outcome = run_scheduled(night, config, now=lambda: datetime(2026, 12, 1, 23, 0).astimezone())
    v2 = outcome["summary"].version
    name = "tiny-llama-c2"
    assert outcome["consolidation"] == f"consolidated {v2} into {name}"
    assert "consolidated" in (night.logs / "nightly.log").read_text()
    assert not list((night.home / "models").glob(".staging-*"))

    # the new base: current with no adapter, its files checked and private, in the home's backups
    assert night.current.read_text().strip() == f"base {name}"
    assert adapters.current_version(night) is None and adapters.current_base(night) == name
    manifest = bases.verify(night, name, full=True)
    assert manifest.adapter_version == v2 and manifest.parent_base is None and manifest.root_model
    check_ = manifest.check
    assert check_["ok"] and abs(check_["perplexity_drift"]) < 1e-3 and check_["questions"]["capability"] == 24
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in bases.folder(night, name).iterdir())
    store = backups.destination(night, "")
    backups.run(night, config.backup, reason="test")
    assert f"models/{name}/model.safetensors" in backups.snapshots(store)[-1].files

    # the chat answers with it; the next night trains a new lineage on it, without the old turns again
    asked = run_cli("ask", "Hello", "--no-log")
    assert asked.returncode == 0 and f"loading {name}" in asked.stderr
    say(night, "My sister is called Lena.")
    third = _sleep()
    v3 = third["version"]
    assert third["outcome"] == "promoted" and third["counts"]["turns_new"] == 1
    m3 = adapters.get(night, v3).manifest
    assert m3.base == name and m3.parent is None
    assert adapters.lineage(night, v3) == [v3, v2, v1]
    listed = json.loads(run_cli("adapters", "list", "--json").stdout)
    assert {r["version"]: r["base"] for r in listed["versions"]} == {v1: None, v2: None, v3: name}
    assert [b["name"] for b in listed["bases"]] == ["tiny-llama-c1", name] and listed["current_base"] == name

    # rollback: to the new base alone, then across the consolidation to the adapter that was fused
    assert json.loads(run_cli("rollback", "--json").stdout) == {"current": f"base {name}", "previous": v3}
    assert json.loads(run_cli("rollback", "--json").stdout) == {"current": v2, "previous": f"base {name}"}
    assert adapters.current_base(night) is None
    asked = run_cli("ask", "Hello", "--no-log")
    assert asked.returncode == 0 and name not in asked.stderr  # the configured model again
    assert adapters.prunable(night, keep=0) == [v3]  # v2, fused into the base, is kept for rollback


def _measured(hits: dict[str, list[bool]], ppl: float) -> dict:
    return {
        part: {"score": sum(h) / len(h), "n": len(h), "items": [{"hit": x} for x in h]} for part, h in hits.items()
    } | {"perplexity": ppl}


def test_the_check_refuses_a_fuse_that_loses_what_the_router_keeps_or_does_not_agree():
    routed = _measured({"recall": [True] * 10, "capability": [True] * 100}, 10.2)
    alone = _measured({"recall": [True] * 10, "capability": [True] * 90 + [False] * 10}, 10.5)
    fused = _measured({"recall": [True] * 10, "capability": [True] * 90 + [False] * 10}, 10.51)
    verdict = check(routed, alone, fused, max_capability_drop=0.01)
    assert not verdict["ok"] and len(verdict["reasons"]) == 1 and "router keeps" in verdict["reasons"][0]
    assert check(routed, alone, fused, max_capability_drop=0.10)["ok"]  # within the gate's bound
    off = _measured({"recall": [False] * 3 + [True] * 7, "capability": [True] * 100}, 11.0)
    reasons = check(routed, routed, off, max_capability_drop=0.01)["reasons"]
    assert any("off the adapter's" in r for r in reasons) and any("3 of 10 recall" in r for r in reasons)
    assert any("perplexity rises +7.8%" in r for r in reasons)  # and above the 5% the router keeps
    assert check(routed, off, off, max_capability_drop=0.01, max_ppl_drift=0.2)["ok"]
