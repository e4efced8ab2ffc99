"""Backups (issue 20): snapshots of a real home through the real `circadian backup` command, dedup by
content, verify that catches a damaged file, restore into a new home that the CLI then reads, the
retention rule, a mirror, and the snapshot retention of adapter versions takes first."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from conftest import assert_one_line_error, run_cli
from test_store import _version

from circadian.core.config import Config
from circadian.store import adapters, backups, memories


def _home_with_a_day(paths) -> str:
    memories.append(
        paths,
        [
            memories.make_record(
                [{"role": "user", "content": "My dog is called Biscuit."}, {"role": "assistant", "content": "Noted."}],
                session="s",
                model="m",
                adapter=None,
                source="chat",
            )
        ],
    )
    paths.config.write_text('[chat]\nsystem_prompt = "Be brief."\n')
    version = _version(paths, 1, ids=["t1"])
    adapters.set_current(paths, version, reason="test")
    return version


def _cli_json(*args):
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_snapshot_restores_into_a_new_home_that_reads_as_the_old(paths, tmp_path):
    version = _home_with_a_day(paths)
    first = _cli_json("backup", "run")
    assert first["files"] >= 5 and first["added_bytes"] == first["bytes"]
    memories.append(
        paths,
        [
            memories.make_record(
                [{"role": "user", "content": "I grew up in Zwolle."}],
                session="s",
                model="m",
                adapter=None,
                source="chat",
            )
        ],
    )
    second = _cli_json("backup", "run")
    changed = paths.memories.stat().st_size  # only the memories changed: only they are stored again
    assert second["added_bytes"] == changed and second["bytes"] > second["added_bytes"]
    store = paths.home / "backups"
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in store.rglob("*") if p.is_file())
    listed = _cli_json("backup", "list")["snapshots"]
    assert [s["id"] for s in listed] == [second["id"]]  # the same day: its last snapshot is kept
    assert _cli_json("backup", "verify")["problems"] == []

    target = tmp_path / "restored"
    assert run_cli("backup", "restore", "latest", "--to", str(target)).returncode == 0
    for name in ("data/memories.jsonl", "circadian.toml", f"adapters/{version}/manifest.json", "adapters/CURRENT"):
        assert (target / name).read_bytes() == (paths.home / name).read_bytes(), name
    assert oct((target / "data/memories.jsonl").stat().st_mode)[-3:] == "600"
    status = json.loads(run_cli("status", "--home", str(target), "--json").stdout)
    assert status["adapter"] == version and status["memories"]["turns"] == 2
    again = run_cli("backup", "restore", "latest", "--to", str(target))
    assert_one_line_error(again)
    assert "is not empty" in again.stderr

    weights = next(
        p
        for p in store.glob("objects/*/*")
        if p.read_bytes() == (paths.adapters / version / "adapter_model.safetensors").read_bytes()
    )
    weights.write_bytes(b"bit rot")
    damaged = run_cli("backup", "verify", "--json")
    assert damaged.returncode == 1
    problems = json.loads(damaged.stdout)["problems"]
    assert [(p["file"], p["problem"]) for p in problems] == [
        (f"adapters/{version}/adapter_model.safetensors", "content changed")
    ]
    refused = run_cli("backup", "restore", "latest", "--to", str(tmp_path / "other"))
    assert_one_line_error(refused)
    assert "damaged" in refused.stderr


def test_the_index_locks_and_staging_are_left_out(paths):
    from circadian.store import memory_index

    _home_with_a_day(paths)
    memory_index.rebuild(paths)
    (paths.adapters / ".staging-c9").mkdir()
    (paths.adapters / ".staging-c9" / "adapter_model.safetensors").write_bytes(b"half")
    files = {p.as_posix() for p in backups.home_files(paths)}
    assert "data/memories.jsonl" in files and "circadian.toml" in files
    assert not any("memory_index" in f or f.endswith(".lock") or ".staging-" in f for f in files)


def test_retention_keeps_the_last_of_each_day_week_and_month():
    start = datetime(2026, 1, 1, 3, 0).astimezone()
    taken = [backups.Snapshot(f"s{n:03d}", (start + timedelta(days=n)).isoformat(), "nightly") for n in range(115)]
    kept = backups.kept_by_rule(taken, daily=7, weekly=4, monthly=12)
    days = {datetime.fromisoformat(s.created_at).date() for s in taken if s.id in kept}
    newest = start.date() + timedelta(days=114)  # 25 April
    assert {newest - timedelta(days=d) for d in range(7)} <= days  # the last 7 days
    sundays = {d for d in days if d.isoweekday() == 7}  # a week's last snapshot is its Sunday's
    assert len(sundays) >= 3
    month_ends = {d for d in days if (d + timedelta(days=1)).day == 1}
    assert {d.month for d in month_ends} == {1, 2, 3}  # Jan, Feb, Mar ended; April is the newest's month
    assert len(kept) < 7 + 4 + 12  # periods overlap: fewer than the sum
    before = [backups.Snapshot("b1", (start + timedelta(days=1)).isoformat(), "before retention", kind="before")]
    assert "b1" in backups.kept_by_rule(taken + before, daily=7, weekly=4, monthly=0)  # thinned apart


def test_a_version_retention_deletes_stays_restorable_and_is_mirrored(paths, tmp_path):
    names = []
    for n in range(1, 5):
        names.append(_version(paths, n, parent=names[-1] if names else None))
    adapters.set_current(paths, names[-1], reason="test")
    config = Config()
    config.store.keep = 1
    config.backup.mirror = str(tmp_path / "mirror")
    said = []
    assert backups.prune_versions(paths, config, say=said.append) == [names[0]]
    assert not (paths.adapters / names[0]).exists() and names[0] in said[0]
    for store in (paths.home / "backups", tmp_path / "mirror"):
        (snapshot,) = backups.snapshots(store)
        assert snapshot.kind == "before" and f"adapters/{names[0]}/manifest.json" in snapshot.files
        assert backups.verify(store)["problems"] == []
    restored = backups.restore(tmp_path / "mirror", "latest", tmp_path / "restored")
    assert (tmp_path / "restored" / "adapters" / names[0] / "adapter_model.safetensors").exists() and restored.id
    names.append(_version(paths, 5, parent=names[-1]))
    adapters.set_current(paths, names[-1], reason="test")
    assert adapters.prunable(paths, 1) == [names[1]]
    config.backup.dir = str(tmp_path / "full")
    (tmp_path / "full").write_text("a file, not a folder")  # the snapshot cannot be taken: nothing is deleted
    kept = [m.version for m in adapters.list_versions(paths)]
    with pytest.raises(OSError):
        backups.prune_versions(paths, config)
    assert [m.version for m in adapters.list_versions(paths)] == kept
