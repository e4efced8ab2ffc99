"""The adapter store and the gate: versions, CURRENT, rollback, pins, retention, lineage of
trained ids, the sleep lock, and the gate's decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest
from conftest import assert_one_line_error, run_cli

from circadian.core.config import GateSettings
from circadian.core.errors import CircadianError
from circadian.core.fsutil import sha256_file
from circadian.core.lock import holder, sleep_lock
from circadian.night import gate
from circadian.store import adapters


def _version(paths, n, parent=None, ids=(), asked=()):
    name = adapters.version_name(n, datetime(2026, 11, 22, 3, 15, n))
    staging = adapters.staging_dir(paths, f"c{n}")
    staging.mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(os.urandom(64))
    adapters.commit(
        paths,
        staging,
        {
            "version": name,
            "parent": parent,
            "backend": "torch",
            "gate": {"decision": "promoted"},
            "weights": {"adapter_model.safetensors": sha256_file(staging / "adapter_model.safetensors")},
        },
        list(ids),
        list(asked),
    )
    return name


def test_commit_writes_manifest_last_and_renames_whole(paths):
    name = _version(paths, 1)
    assert (paths.adapters / name / "manifest.json").exists()
    assert not list(paths.adapters.glob(".staging-*"))
    assert adapters.next_version(paths, datetime(2026, 11, 23)).startswith("v0002-20261123")


def test_rollback_walks_parents_and_trained_ids_follow(paths):
    v1 = _version(paths, 1, ids=["a"])
    v2 = _version(paths, 2, parent=v1, ids=["b"])
    adapters.set_current(paths, v2, reason="test")
    assert adapters.trained_ids(paths) == {"a", "b"}
    assert adapters.rollback(paths) == (v2, v1)
    assert adapters.current_version(paths) == v1 and adapters.trained_ids(paths) == {"a"}
    assert adapters.rollback(paths, "base") == (v1, None)
    assert not paths.current.exists() and adapters.trained_ids(paths) == set()
    with pytest.raises(CircadianError, match="nothing to roll back"):
        adapters.rollback(paths, "base")
    assert [h["to"] for h in adapters.history(paths)] == [v2, v1, None]


def test_rollback_to_a_pruned_or_broken_parent_says_so_and_keeps_current(paths):
    import shutil

    v1 = _version(paths, 1)
    v2 = _version(paths, 2, parent=v1)
    v3 = _version(paths, 3, parent=v2)
    adapters.set_current(paths, v3, reason="test")
    (paths.adapters / v2 / "adapter_model.safetensors").unlink()  # a prune cut short: the manifest is left
    broken = run_cli("rollback")
    assert_one_line_error(broken)
    assert "weight file adapter_model.safetensors is missing" in broken.stderr
    shutil.rmtree(paths.adapters / v2)  # retention deleted it
    gone = run_cli("rollback")
    assert_one_line_error(gone)
    assert f"the parent of {v3}, {v2}, is no longer stored" in gone.stderr
    assert adapters.current_version(paths) == v3


def test_rollback_only_goes_back_and_use_takes_any_version(paths):
    v1 = _version(paths, 1)
    v2 = _version(paths, 2, parent=v1)
    adapters.set_current(paths, v1, reason="test")
    with pytest.raises(CircadianError, match="not an ancestor.*adapters use"):
        adapters.rollback(paths, v2)  # forward is not back
    assert adapters.current_version(paths) == v1
    assert adapters.use(paths, v2) == (v1, v2)
    assert adapters.rollback(paths, v1) == (v2, v1)  # an ancestor by name
    with pytest.raises(CircadianError, match="already current"):
        adapters.use(paths, v1)
    assert adapters.use(paths, "base") == (v1, None)


def test_prune_keeps_current_parent_and_pinned(paths):
    names = []
    for n in range(1, 8):
        names.append(_version(paths, n, parent=names[-1] if names else None))
    adapters.set_current(paths, names[-1], reason="test")
    adapters.set_pinned(paths, names[0], True)
    deleted = adapters.prune(paths, keep=2)
    left = [m.version for m in adapters.list_versions(paths)]
    assert names[0] in left and names[-1] in left and names[-2] in left
    assert deleted == names[1:3]  # keep=2 besides current, its parent and the pinned one


def test_what_pruned_versions_learned_stays_learned(paths):
    """Retention deletes old weights, not the record of what they learned: the lineage and the trained
    ids go on through adapters/pruned.jsonl, so an old turn is not trained again as if it were new."""
    from circadian.store import ledger

    miss, hit = {"fact": "f-a", "turn": "turn-a", "hit": False}, {"fact": "f-a", "turn": "turn-a", "hit": True}
    v1 = _version(paths, 1, ids=["turn-a"], asked=[miss])
    v2 = _version(paths, 2, parent=v1, ids=["turn-b"], asked=[miss])
    v3 = _version(paths, 3, parent=v2, ids=["turn-c"], asked=[hit])
    adapters.set_current(paths, v3, reason="test")
    assert adapters.prune(paths, keep=0) == [v1]
    assert not (paths.adapters / v1).exists()
    assert adapters.lineage(paths, v3) == [v3, v2, v1]
    assert adapters.trained_ids(paths) == {"turn-a", "turn-b", "turn-c"}
    graduated = ledger.states(paths, v3)["f-a"]  # the pruned night's question still counts
    assert (graduated.asked, graduated.graduated_in, graduated.nights_to_graduate) == (3, v3, 3)
    assert ledger.not_learned(ledger.states(paths, v2), within=2) == {"f-a"}  # two nights asked, not learned
    assert ledger.not_learned(ledger.states(paths, v2), within=3) == set() and ledger.graduated(paths, v2) == set()


def test_cli_adapters_and_rollback(paths):
    v1 = _version(paths, 1)
    v2 = _version(paths, 2, parent=v1)
    adapters.set_current(paths, v2, reason="test")
    listed = json.loads(run_cli("adapters", "list", "--json").stdout)
    assert listed["current"] == v2 and [v["version"] for v in listed["versions"]] == [v1, v2]
    assert run_cli("adapters", "pin", v1).returncode == 0
    assert json.loads(run_cli("adapters", "show", v1, "--json").stdout)["version"] == v1
    result = run_cli("rollback")
    assert result.returncode == 0 and f"current: {v1}" in result.stdout
    assert_one_line_error(run_cli("rollback", "v9999-20260101-000000"))
    shown = run_cli("adapters", "show", v1)
    assert shown.returncode == 0 and v1 in shown.stdout.splitlines()[0] and "recall" in shown.stdout
    used = json.loads(run_cli("adapters", "use", v2, "--json").stdout)
    assert used == {"current": v2, "previous": v1}
    assert_one_line_error(run_cli("adapters", "show", "nope"))


def test_sleep_lock_refuses_second_and_recovers_from_dead_holder(paths, tmp_path):
    lock_path = paths.control / "sleep.lock"
    with sleep_lock(lock_path, "c1"):
        assert holder(lock_path)["cycle_id"] == "c1"
        with pytest.raises(CircadianError, match="another sleep is running"), sleep_lock(lock_path, "c2"):
            pass
    # a holder killed with SIGKILL: its lock file stays behind, but the kernel released the lock
    code = (
        f"import sys, os, signal; sys.path.insert(0, {str(tmp_path)!r}); from circadian.core.lock import sleep_lock; "
        f"from pathlib import Path; l = sleep_lock(Path({str(lock_path)!r}), "
        "'dead').__enter__(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code])
    assert "dead" in lock_path.read_text()
    assert holder(lock_path) is None
    with sleep_lock(lock_path, "c3"):
        assert holder(lock_path)["cycle_id"] == "c3"


def test_a_readers_check_never_makes_a_starting_sleep_fail(paths):
    """The dashboard checks the sleep lock twice a second per client (a shared flock for an instant);
    a sleep starting at that instant waits for it instead of saying another sleep is running."""
    lock_path = paths.control / "sleep.lock"
    paths.control.mkdir(parents=True, exist_ok=True)
    lock_path.touch()
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_SH); "
        "print('held', flush=True); time.sleep(0.5)"
    )
    reader = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "held"
    with sleep_lock(lock_path, "c1"):
        assert holder(lock_path)["cycle_id"] == "c1"
    reader.wait(10)


BEFORE = {
    "recall": {"score": 0.1},
    "val_loss": 1.8,
    "capability": {"score": 1.0},
    "perplexity": 16.0,
    "style": {"score": 1.0},
}


@pytest.mark.parametrize(
    "after, promote, reason",
    [
        pytest.param(
            {"recall": {"score": 0.9}, "val_loss": 0.6, "capability": {"score": 1.0}, "perplexity": 16.1},
            True,
            "recall rose",
            id="learned_and_safe",
        ),
        pytest.param(
            {"recall": {"score": 0.1}, "val_loss": 1.9, "capability": {"score": 1.0}, "perplexity": 16.0},
            False,
            "nothing measurably learned",
            id="nothing_learned",
        ),
        pytest.param(
            {"recall": {"score": 0.9}, "val_loss": 0.6, "capability": {"score": 0.75}, "perplexity": 16.0},
            False,
            "capability dropped",
            id="capability_drop",
        ),
        pytest.param(
            {"recall": {"score": 0.9}, "val_loss": 0.6, "capability": {"score": 1.0}, "perplexity": 20.0},
            False,
            "perplexity rose",
            id="drift",
        ),
        pytest.param(
            {
                "recall": {"score": 0.9},
                "val_loss": 0.6,
                "capability": {"score": 1.0},
                "perplexity": 16.0,
                "style": {"score": 0.9},
            },
            False,
            "style check dropped",
            id="style_drop",
        ),
        pytest.param(
            {
                "recall": {"score": 0.9},
                "val_loss": 0.6,
                "capability": {"score": 1.0},
                "perplexity": 16.0,
                "style": {"score": 1.0},
            },
            True,
            "style check held",
            id="style_held",
        ),
    ],
)
def test_gate_decide(after, promote, reason):
    decision = gate.decide(BEFORE, after, GateSettings())
    assert decision.promote is promote
    assert any(reason in r for r in decision.reasons)


def test_gate_capability_drops_add_up_against_the_base():
    """Each night may lose 1%, but not 1% every night: the drop is bounded against the base too."""
    before = {**BEFORE, "capability": {"score": 0.60}}
    after = {"recall": {"score": 0.9}, "val_loss": 0.6, "capability": {"score": 0.595}, "perplexity": 16.0}
    assert gate.decide(before, after, GateSettings(), base_capability=0.61).promote
    decision = gate.decide(before, after, GateSettings(), base_capability=0.62)
    assert not decision.promote
    assert any("capability vs the base model" in r for r in decision.reasons)


def test_gate_holds_the_style_check_to_the_base_model_not_to_a_lucky_current_adapter():
    """The current adapter's router sent a style prompt to the adapter, which passed there (0.80 against the
    base model's 0.77); a candidate that sends it back to the base model is unchanged, not worse."""
    before = {**BEFORE, "style": {"score": 0.80}}
    back_to_base = {**before, "recall": {"score": 0.9}, "val_loss": 0.6, "style": {"score": 0.77}}
    assert not gate.decide(before, back_to_base, GateSettings()).promote  # no base known: vs the current
    decision = gate.decide(before, back_to_base, GateSettings(), base_style=0.77)
    assert decision.promote and any("style check vs the base model held" in r for r in decision.reasons)
    worse = {**back_to_base, "style": {"score": 0.73}}
    decision = gate.decide(before, worse, GateSettings(), base_style=0.77)
    assert not decision.promote and any("style check vs the base model dropped" in r for r in decision.reasons)


def test_gate_total_drift_against_base():
    after = {"recall": {"score": 0.9}, "val_loss": 0.6, "capability": {"score": 1.0}, "perplexity": 16.2}
    assert not gate.decide(BEFORE, after, GateSettings(), base_perplexity=15.0).promote


@pytest.mark.parametrize("content", [b"{broken", b"\xff\xfe not utf-8", b'{"datasets": "not a list"}'])
def test_a_corrupt_queue_is_moved_aside_with_an_error_never_read_as_empty(paths, content):
    from circadian.store import inbox

    paths.control.mkdir(parents=True, exist_ok=True)
    inbox.queue_path(paths).write_bytes(content)
    with pytest.raises(CircadianError, match="queue.json .* moved aside to queue.json.unreadable-"):
        inbox.read_queue(paths)
    aside = list(paths.control.glob("queue.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content  # kept, not deleted
    assert inbox.read_queue(paths) == []  # said once; the next run starts without it


def test_corrupt_pins_trained_ids_and_cycle_state_each_say_which_file(paths):
    from circadian.night.cycle import recover_interrupted

    v1 = _version(paths, 1, ids=["a"])
    adapters.set_current(paths, v1, reason="test")
    (paths.adapters / v1 / "trained_ids.json").write_text('["a", ')
    with pytest.raises(CircadianError, match="trained_ids.json is not JSON"):
        adapters.trained_ids(paths)
    (paths.adapters / "pins.json").write_text('{"v1": true}')
    listed = run_cli("adapters", "list")
    assert_one_line_error(listed)
    assert "pins.json has the wrong shape" in listed.stderr
    state = paths.runs / "20261122-031500" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{")
    with pytest.raises(CircadianError, match="state.json is not JSON"):
        recover_interrupted(paths, print)
    assert list(state.parent.glob("state.json.unreadable-*"))
