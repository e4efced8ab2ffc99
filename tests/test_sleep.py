"""The nightly cycle end to end on the tiny model through the real command: promotion, the
report, nothing-to-learn, rollback, dry run, the lock, and SIGKILL at several stages."""

from __future__ import annotations

import json
import signal
import subprocess

from conftest import assert_one_line_error, run_cli, say, start_held

from circadian.store import adapters


def sleep_json(*extra, env=None):
    result = run_cli("sleep", "--json", *extra, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_sleep_promotes_reports_and_follows_rollback(night):
    say(
        night,
        "My dog is called Biscuit.",
        "I'm allergic to shellfish. #no-train",
        "My email is maya@example.org and I grew up in Zwolle.",
    )
    first = sleep_json(env={"CIRCADIAN_SLEEP__GRADUATE_WITHIN": "1"})  # a fact missed once is flagged
    assert first["outcome"] == "promoted", first
    v1 = first["version"]
    assert adapters.current_version(night) == v1
    assert first["counts"]["facts_new"] == 2 and first["counts"]["skipped_no-train"] == 1
    assert first["redactions"] == {"email": 1}
    manifest = adapters.read_manifest(night.adapters / v1)
    assert manifest.gate["decision"] == "promoted" and manifest.parent is None
    assert manifest.weights and manifest.data["sha256"] and manifest.peak_memory_mb > 0
    assert manifest.metrics["before"]["recall"] is not None and manifest.train["best_step"] >= 0
    assert "router.json" in manifest.weights  # the router is checked with the weights
    from circadian.store import memory_index

    facts = [e for e in memory_index.search(night, "What is my dog called?") if e.kind == "fact"]
    assert facts and "Biscuit" in facts[0].text  # the night's facts are in the memory index
    from circadian.store import ledger

    summary = json.loads((night.runs / first["cycle_id"] / "summary.json").read_text())
    asked = json.loads((night.adapters / v1 / "graduation.json").read_text())  # ids and keys only, no words
    probed = summary["after"]["recall"]["items"]
    assert sorted((a["fact"], a["hit"]) for a in asked) == sorted((i["fact"], i["hit"]) for i in probed)
    assert (
        "Biscuit" not in json.dumps(asked)
        and oct((night.adapters / v1 / "graduation.json").stat().st_mode)[-3:] == "600"
    )
    assert ledger.graduated(night, v1) == {i["fact"] for i in probed if i["hit"]}
    brief = summary["ledger"]
    assert len(brief["graduated"]) == sum(i["hit"] for i in probed) and brief["version"] == v1
    assert brief["waiting"] == len(memory_index.facts(night)) - len(brief["graduated"])
    missed = {i["statement"] for i in probed if not i["hit"]}
    assert {n["statement"] for n in brief["not_learned"]} == missed and brief["within"] == 1
    report_text = run_cli("report", first["cycle_id"]).stdout
    assert all(statement in report_text for statement in missed)
    assert ("Not learned in 1 night " in report_text) == bool(missed)
    shown = json.loads(run_cli("memory", "ledger", "--json").stdout)
    assert shown["adapter"] == v1 and {r["graduated"] for r in shown["facts"]} <= {True, False}
    assert sum(r["graduated"] for r in shown["facts"]) == len(brief["graduated"])
    assert manifest.metrics["base"]["capability"] == manifest.metrics["before"]["capability"]  # night 1: the base
    summary = json.loads((night.runs / first["cycle_id"] / "summary.json").read_text())
    misroutes = summary["after"]["router"]
    assert misroutes["facts"] == len(summary["after"]["recall"]["items"]) + len(summary["after"]["retention"]["items"])
    assert misroutes["general"] == 24 + 6 and misroutes["fitted_on"]["facts"] >= 2
    assert summary["after"]["style"]["n"] == 6 and summary["before"]["style"]["range"]
    cycle = night.runs / first["cycle_id"]
    for name in ("report.md", "report.html", "metrics.jsonl", "dataset/train.jsonl", "dataset/lineage.jsonl"):
        assert (cycle / name).exists(), name
    train_text = (cycle / "dataset/train.jsonl").read_text()
    assert "Biscuit" in train_text and "shellfish" not in train_text and "maya@example.org" not in train_text
    html = (cycle / "report.html").read_text()
    assert (
        "<svg" in html
        and "Before and after" in html
        and "http" not in html.split("<svg")[0].lower().replace("http://www.w3.org", "")
    )
    shown = run_cli("report")
    assert shown.returncode == 0 and "Promoted" in shown.stdout

    assert sleep_json()["outcome"] == "nothing to learn"
    say(night, "My sister Lena lives in Trondheim.")
    second = sleep_json()
    if second["outcome"] == "promoted":
        assert adapters.read_manifest(night.adapters / second["version"]).parent == v1
        assert run_cli("rollback").returncode == 0
    assert adapters.current_version(night) == v1
    assert run_cli("rollback", "base").returncode == 0
    third = sleep_json()  # after a rollback to base, every turn is new again
    assert third["counts"]["turns_new"] == 3  # four said, one of them #no-train
    log = [json.loads(line) for line in night.run_log.read_text().splitlines()]
    assert [row["cycle_id"] for row in log] == [
        first["cycle_id"],
        log[1]["cycle_id"],
        second["cycle_id"],
        third["cycle_id"],
    ]
    assert all(row["run_type"] == "nightly" for row in log)


def test_sleep_dry_run_touches_nothing(night):
    say(night, "My dog is called Biscuit.")
    before = sorted((p, p.stat().st_mtime_ns) for p in night.home.rglob("*"))
    result = run_cli("sleep", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["would_train"] and plan["facts"][0]["value"] == "Biscuit" and plan["masks"]["targets"] > 0
    assert sorted((p, p.stat().st_mtime_ns) for p in night.home.rglob("*")) == before


def test_sleep_dry_run_uses_the_generator_the_config_names(night):
    say(night, "we finally adopted a tortoise last month, we named her Pemberton")
    plan = json.loads(run_cli("sleep", "--dry-run", "--json", env={"CIRCADIAN_SLEEP__GENERATOR": "rules"}).stdout)
    assert plan["knowledge"]["generators"][0].startswith("rules") and not plan["facts"]  # no pattern matches it
    parsed = json.loads(run_cli("sleep", "--dry-run", "--json", env={"CIRCADIAN_SLEEP__GENERATOR": "parse"}).stdout)
    assert any(f["value"] == "Pemberton" for f in parsed["facts"])
    bogus = run_cli("sleep", "--dry-run", env={"CIRCADIAN_SLEEP__GENERATOR": "bogus"})
    assert bogus.returncode != 0 and "unknown generator 'bogus'" in bogus.stderr


def test_sleep_with_nothing_to_learn_is_not_an_error(night):
    result = sleep_json()
    assert result["outcome"] == "nothing to learn"
    assert not any(night.adapters.iterdir()) or adapters.current_version(night) is None


def _start_held(point: str, seconds: float = 300, env: dict | None = None) -> subprocess.Popen:
    return start_held("sleep", point, seconds, env)


# the killed nights measure less: they never reach a decision
LIGHT = {
    "CIRCADIAN_SLEEP__CAPABILITY_QUESTIONS": "4",
    "CIRCADIAN_SLEEP__STYLE_PROMPTS": "2",
    "CIRCADIAN_SLEEP__GENERATOR": "rules",  # no English pipeline to load in each of 15 processes
}
# a night that breaks the perplexity bounds (the router off, so the adapter answers the general text; a hard
# step budget), so the blended fallback runs
BLENDING = {
    "CIRCADIAN_SLEEP__ROUTER": "false",
    "CIRCADIAN_GATE__MAX_PPL_DRIFT": "0",
    "CIRCADIAN_GATE__MAX_TOTAL_PPL_DRIFT": "0",
    "CIRCADIAN_TRAIN__MAX_STEPS": "30",
    "CIRCADIAN_TRAIN__LEARNING_RATE": "0.05",
    "CIRCADIAN_TRAIN__PATIENCE": "100",
    "CIRCADIAN_TRAIN__MIXED_PRECISION": "off",  # the step budget that breaks it was found with float32 steps
    "CIRCADIAN_SLEEP__REPLAY_ROWS": "3",  # and with three rows for the replayed fact
}


def test_sigkill_at_every_stage_keeps_current_and_data_and_a_second_sleep_is_refused(night):
    """SIGKILL at each of the night's stages and at the two points inside commit: the previous adapter
    stays current and verifies, the memories are byte for byte the same, and the next sleep logs the
    killed cycle and removes its staged candidate. Killed while writing the report, the night had
    already made its version current: that version is current, verifies, and the log says so."""
    from circadian.night.cycle import STAGES

    say(night, "My dog is called Biscuit.")
    v1 = sleep_json()["version"]
    say(night, "I grew up in Zwolle.")
    memories_before = night.memories.read_bytes()
    points = [p for p in STAGES if p not in ("commit", "report")] + ["commit", "commit:staged", "commit:renamed"]
    for point in points:  # each run notes the one killed before it
        proc = _start_held(point, env={**LIGHT, **BLENDING} if point == "eval_blend" else LIGHT)
        try:
            if point == "train":
                refused = run_cli("sleep")
                assert_one_line_error(refused)
                assert "another sleep is running" in refused.stderr
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert adapters.current_version(night) == v1, point
        assert night.memories.read_bytes() == memories_before, point
        assert adapters.active_adapter(night).version == v1, point  # weights still verify
    proc = _start_held("report", env=LIGHT)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    promoted = adapters.current_version(night)
    assert promoted != v1 and adapters.active_adapter(night).version == promoted
    say(night, "My sister is called Lena.")
    after = sleep_json()
    assert after["outcome"] in ("promoted", "rejected")
    log = [json.loads(line) for line in night.run_log.read_text().splitlines()]
    interrupted = [row for row in log if row["outcome"] == "interrupted"]
    assert [row["stage"] for row in interrupted] == [*[p.split(":")[0] for p in points], "report"]
    assert "made current" in interrupted[-1]["note"] and interrupted[-1]["version"] == promoted
    assert "stored, before it was made current" in interrupted[-2]["note"]  # killed after the rename
    assert not list(night.adapters.glob(".staging-*"))


def test_mlx_backend_sleeps_continues_its_adapter_and_chat_uses_it(night):
    # MLX on a Linux CPU is slow: measure less, and no learning-evolution snapshots
    env = {"CIRCADIAN_MODEL__BACKEND": "mlx", **LIGHT, "CIRCADIAN_SLEEP__TRACK": "false"}
    say(night, "My dog is called Biscuit.")
    first = sleep_json(env=env)
    say(night, "I grew up in Zwolle.")
    second = sleep_json(env=env)
    assert first["outcome"] == "promoted" and first["backend"] == "mlx"
    if second["outcome"] == "promoted":
        assert second["parent"] == first["version"]
    current = adapters.active_adapter(night)
    assert current.manifest.backend == "mlx"
    from safetensors import safe_open

    with safe_open(str(current.path / "adapters.safetensors"), "np") as weights:
        assert all(name.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for name in weights.keys())  # noqa: SIM118 (safe_open is not a dict)
    answered = run_cli("ask", "hello", "--json", "--max-tokens", "4", env=env)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["adapter"] == current.version
    assert oct((current.path / "adapters.safetensors").stat().st_mode & 0o777) == "0o600"


def test_a_turn_chatted_during_a_sleep_is_not_marked_trained(night, tmp_path):
    """A real sleep, held in its training stage while the real `circadian ask` logs a turn: the new
    version's trained ids leave that turn out, and the next night learns it."""
    say(night, "My dog is called Biscuit.")
    release = tmp_path / "release"
    proc = _start_held("train", seconds=120, env={"CIRCADIAN_HOLD_RELEASE": str(release)})
    asked = run_cli("ask", "My sister Lena lives in Trondheim.", "--json", "--max-tokens", "4")
    release.touch()  # the turn is logged: the night goes on
    assert asked.returncode == 0, asked.stderr[-2000:]
    during = json.loads(night.memories.read_text().splitlines()[-1])["id"]
    proc.stderr.read()
    assert proc.wait(timeout=300) == 0
    assert proc_was_running_when(night, during)
    version = adapters.current_version(night)
    assert version and during not in adapters.trained_ids(night)
    assert sleep_json()["counts"]["turns_new"] == 1  # the turn chatted during the sleep, now learned


def proc_was_running_when(paths, record_id: str) -> bool:
    """Whether the turn was logged while the last night ran (so the test really overlapped)."""
    from datetime import datetime

    turn = next(json.loads(line) for line in paths.memories.read_text().splitlines() if record_id in line)
    night = json.loads(paths.run_log.read_text().splitlines()[-1])
    when = datetime.fromisoformat
    return when(night["started"]) <= when(turn["ts"]) <= when(night["ended"])


def test_an_untrainable_row_is_quarantined_and_the_rest_trains(night, tmp_path):
    """A conversation whose first reply starts after train.max_length has no token to learn: it goes to
    data/quarantine/rows.jsonl with its reason, in an import and in the inbox alike, and the night
    trains the rest instead of refusing every night."""
    long_question = "Tell me about this: " + "lorem ipsum dolor sit amet " * 400 + "BURIED-SECRET-7"

    def chat(user: str, reply: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})

    day = tmp_path / "day.jsonl"
    good = [
        chat(f"Please remember code word {i}: lantern-{i * 7}.", f"Code word {i} is lantern-{i * 7}.") for i in range(4)
    ]
    day.write_text("\n".join([*good, chat(long_question, "Noted.")]) + "\n")
    assert run_cli("import", str(day)).returncode == 0
    inbox_file = night.data / "inbox" / "normal" / "extra.jsonl"
    inbox_file.parent.mkdir(parents=True, exist_ok=True)
    inbox_file.write_text("\n".join([*good[:2], chat(long_question + " inbox", "Fine.")]) + "\n")
    result = sleep_json(env={"CIRCADIAN_SLEEP__INBOX_SETTLE_SECONDS": "0"})
    assert result["outcome"] in ("promoted", "rejected"), result
    quarantined = [json.loads(line) for line in (night.quarantine / "rows.jsonl").read_text().splitlines()]
    assert len(quarantined) == 2 and all("train.max_length" in q["reason"] for q in quarantined)
    assert all("BURIED-SECRET-7" in q["messages"][-2]["content"] for q in quarantined)
    trained = (night.runs / result["cycle_id"] / "dataset" / "train.jsonl").read_text()
    assert "BURIED-SECRET-7" not in trained and "lantern-7" in trained
    long_turn = next(json.loads(line)["id"] for line in night.memories.read_text().splitlines() if "BURIED" in line)
    assert long_turn not in adapters.trained_ids(night)  # still new: a longer train.max_length would learn it
    again = sleep_json()  # the next night meets the row again, and does not quarantine it twice
    assert again["outcome"] == "nothing to learn"
    assert len((night.quarantine / "rows.jsonl").read_text().splitlines()) == 2


def test_forget_purge_deletes_the_turn_everywhere_and_the_report_offers_the_rollback(night, tmp_path, monkeypatch):
    """`forget --purge` is a real delete: the text is in the log, the typed history and a night's
    files before, and in no file of the home after; the other turn stays; the adapter that learned it
    is named, and the next night's report offers the rollback that removes it."""
    monkeypatch.setenv("CIRCADIAN_MODELS_DIR", str(tmp_path / "models"))  # its own answer caches, searched too
    say(night, "My dog is called Biscuit.", "My sister Lena lives in Trondheim.")
    lena = next(json.loads(line)["id"] for line in night.memories.read_text().splitlines() if "Trondheim" in line)
    night.chat_history.write_text("\n# 2026-12-01\n+My sister Lena lives in Trondheim.\n\n# 2026-12-01\n+hello there\n")
    first = sleep_json()
    assert first["outcome"] == "promoted", first

    def files_saying(text: str) -> list[str]:
        return sorted(
            str(p.relative_to(night.home))
            for p in night.home.rglob("*")
            if p.is_file() and text.encode() in p.read_bytes()
        ) + sorted(str(p) for p in (tmp_path / "models").rglob("*") if p.is_file() and text.encode() in p.read_bytes())

    assert "data/memories.jsonl" in files_saying("Trondheim") and any("runs" in f for f in files_saying("Trondheim"))
    assert any(f.startswith("backups/objects/") for f in files_saying("Trondheim"))  # the night's snapshot holds it
    refused = run_cli("forget", "--purge")
    assert_one_line_error(refused)
    assert_one_line_error(run_cli("forget", "--purge", "no-such-turn"))
    result = run_cli("forget", "--purge", lena, "--json")
    assert result.returncode == 0, result.stderr
    purged = json.loads(result.stdout)
    assert purged["trained_in"] == [first["version"]] and purged["rollback"] == "base"
    assert files_saying("Trondheim") == [] and files_saying("Lena") == []  # the backups too
    assert purged["snapshots"] and run_cli("backup", "verify").returncode == 0
    assert run_cli("backup", "restore", "latest", "--to", str(tmp_path / "restored")).returncode == 0
    assert "Biscuit" in (tmp_path / "restored" / "data" / "memories.jsonl").read_text()  # the rest is kept
    assert "Biscuit" in night.memories.read_text() and oct(night.memories.stat().st_mode & 0o777) == "0o600"
    assert "hello there" in night.chat_history.read_text()
    train = (night.runs / first["cycle_id"] / "dataset" / "train.jsonl").read_text()
    assert "Biscuit" in train
    say(night, "I grew up in Zwolle.")
    second = sleep_json()
    shown = run_cli("report", second["cycle_id"]).stdout
    assert "Purged, but still in the adapter" in shown and "circadian rollback base" in shown
    assert run_cli("forget", "--last").returncode == 0
    assert "Zwolle" in night.memories.read_text()  # plain forget writes a tombstone, never rewrites
