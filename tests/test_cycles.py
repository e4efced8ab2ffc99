"""Source-choice cycles: leak-free source splits on real data, the policies' choices, and
`cycles run --oracle` / `analyze` / `pack` through the real command on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import CLI, FAST, MODELS, ROOT, assert_one_line_error, run_cli, say

from circadian.core.paths import Paths
from circadian.lab.analyze import mean_ci
from circadian.night import dataset, policies, sources, trials
from circadian.store import adapters, memories


@pytest.fixture(scope="module")
def two_days_home(tmp_path_factory, tiny_model) -> Path:
    """Built once for the module (a night on the tiny model): yesterday learned (replay has data),
    today's new facts, and a dataset waiting in the inbox."""
    folder = tmp_path_factory.mktemp("two-days") / "home"
    built = Paths(folder, "test", MODELS).ensure()
    built.config.write_text(FAST.format(model=tiny_model))
    env = {"CIRCADIAN_HOME": str(folder), "CIRCADIAN_MODELS_DIR": str(MODELS)}
    say(built, "My dog is called Biscuit.", "My sister Lena lives in Trondheim.", "I work as a nurse.")
    done = run_cli("sleep", "--json", env=env)
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "promoted", done.stderr[-2000:]
    say(built, "My cat is called Mochi.", "I grew up in Zwolle.", "My favourite colour is green.")
    rows = [{"prompt": f"Say code {i}.", "completion": f"Code {i} is lantern."} for i in range(12)]
    inbox_file = built.inbox / "normal" / "codes.jsonl"
    inbox_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(inbox_file, (time.time() - 60, time.time() - 60))
    return folder


@pytest.fixture
def two_days(night, two_days_home):
    """A copy of the two-day home for one test (each test changes it)."""
    shutil.copytree(two_days_home, night.home, symlinks=True, dirs_exist_ok=True)
    return night


def test_source_splits_are_disjoint_on_real_data(two_days):
    scan = memories.scan(two_days)
    selection = dataset.select(
        scan.records, trained=adapters.trained_ids(two_days), forgotten=memories.forgotten_ids(two_days)
    )
    general = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes."}]}
        for i in range(10)
    ]
    inbox_rows = [
        [{"role": "user", "content": f"Say code {i}."}, {"role": "assistant", "content": "ok"}] for i in range(12)
    ]
    pools = sources.build_all(sources.Context(selection, inbox_rows, general))
    assert set(pools) == {"today", "replay", "inbox", "distill"}
    for source in pools.values():
        keys = {split: {sources.key(r) for r in source.split(split)} for split in sources.SPLITS}
        assert (
            not keys["train"] & keys["select"]
            and not keys["train"] & keys["eval"]
            and not keys["select"] & keys["eval"]
        )
        assert all(keys.values())
    today_answers = {r["messages"][1]["content"] for r in pools["today"].train}
    assert any("Mochi" in a for a in today_answers) and not any("Biscuit" in a for a in today_answers)
    assert any("Biscuit" in r["messages"][1]["content"] for r in pools["replay"].train)
    assert all(p["answers"] for p in pools["today"].probes())
    leaky = sources.Source("leaky", pools["today"].train, pools["today"].select, pools["today"].train[:1])
    with pytest.raises(AssertionError, match="both train and eval"):
        sources.check_disjoint(leaky)


def test_policies_choose_as_documented():
    losses = {"today": 2.0, "replay": 0.5, "inbox": 1.0}
    assert policies.make("self").choose(losses, 1).source == "today"
    assert policies.make("fixed:replay").choose(losses, 1).source == "replay"
    picks = [policies.make("random", seed=3).choose(losses, c).source for c in range(1, 31)]
    assert picks == [policies.make("random", seed=3).choose(losses, c).source for c in range(1, 31)]
    assert picks != [policies.make("random", seed=4).choose(losses, c).source for c in range(1, 31)]
    assert len(set(picks)) == 3
    # the bandit follows learning progress, not the loss level, and notices when it changes
    bandit = policies.make("bandit")
    progress = {"today": 0.05, "replay": 0.6, "inbox": 0.1}
    chosen = []
    for cycle in range(1, 16):
        source = bandit.choose(losses, cycle).source
        chosen.append(source)
        bandit.update(source, progress[source])
    assert chosen[:3] == ["today", "inbox", "replay"]  # each tried once, highest loss first
    assert chosen[3:].count("replay") >= 9
    progress = {"today": 0.8, "replay": 0.0, "inbox": 0.1}
    later = []
    for cycle in range(16, 36):
        source = bandit.choose(losses, cycle).source
        later.append(source)
        bandit.update(source, progress[source])
    assert later[-8:].count("today") >= 6
    with pytest.raises(Exception, match="unknown policy"):
        policies.make("greedy")


def test_bandit_explores_by_trials_not_by_nights():
    losses = {"today": 1.3, "replay": 0.05, "inbox": 1.8, "distill": 0.9}
    progress = {"today": 0.15, "replay": -0.06, "inbox": 0.08, "distill": 0.0}
    bandit = policies.make("bandit")
    nights, probed = [], []
    for cycle in range(1, 13):
        wanted = bandit.trials_wanted(losses, cycle)
        probed.append(wanted)
        for source in wanted:
            bandit.observe_trial(source, progress[source] / 2)  # a trial sees part of a night's progress
        source = bandit.choose(losses, cycle).source
        nights.append(source)
        bandit.update(source, progress[source])
    assert probed[0] == sorted(losses)  # nothing known: every source probed first
    assert nights[0] == "today"  # the best probe, not the highest loss (inbox)
    assert "replay" not in nights and "distill" not in nights  # no night spent on what teaches nothing
    assert nights.count("today") >= 8
    assert any("replay" in w for w in probed[1:])  # stale evidence is refreshed by probing again
    assert policies.make("bandit", state=json.loads(json.dumps(bandit.state))).choose(losses, 13).source == "today"
    # the probes are scaled to nights by what was seen when a probed source was then trained
    assert 1.5 < bandit._trial_scale(bandit._walk()[0]) < 2.5


def test_bandit_takes_the_best_whole_night_trial():
    # a probe as long as the night is that night measured: it outranks the evidence of other nights
    losses = {"today": 1.3, "replay": 0.05, "inbox": 1.8}
    bandit = policies.make("bandit")
    for cycle in range(1, 4):
        for source in bandit.trials_wanted(losses, cycle):
            bandit.observe_trial(source, {"today": 0.1, "replay": -0.05, "inbox": 0.0}[source])
        bandit.update(bandit.choose(losses, cycle).source, 0.2)
    tonight = {"today": 0.01, "replay": -0.02, "inbox": 0.03}
    assert "today" not in bandit.trials_wanted(losses, 4)  # three nights of evidence: no short probe needed
    assert bandit.trials_wanted(losses, 4, whole=True) == sorted(losses)  # but tonight's night is worth having
    short = policies.make("bandit", state=json.loads(json.dumps(bandit.state)))
    for source, progress in tonight.items():
        bandit.observe_trial(source, progress, whole=True)
        short.observe_trial(source, progress)
    assert short.choose(losses, 4).source == "today"  # as the first steps only, they lose to three good nights
    choice = bandit.choose(losses, 4)
    assert choice.source == "inbox" and "whole-night" in choice.reason
    bandit.observe_trial("inbox", 0.03, whole=True)  # one source only: not enough to know tonight
    choice = bandit.choose(losses, 5)
    assert "whole-night" not in choice.reason and "whole_night_trials" not in bandit.state


def test_bandit_rests_a_source_that_tires():
    # as measured on the bench: a source trained the night before teaches about nothing the next
    # night and recovers after a night off; the bandit alternates instead of repeating the best source
    teaches = {
        "today": {"fresh": 0.2, "tired": -0.04, "rested": 0.08},
        "inbox": {"fresh": 0.1, "tired": -0.04, "rested": 0.05},
        "replay": {"fresh": -0.05, "tired": -0.05, "rested": -0.05},
        "distill": {"fresh": 0.0, "tired": -0.01, "rested": 0.0},
    }
    losses = {"today": 1.3, "replay": 0.05, "inbox": 1.8, "distill": 0.9}
    bandit = policies.make("bandit")
    last, trained, nights, total = None, set(), [], 0.0

    def state(source):
        return "fresh" if source not in trained else "tired" if source == last else "rested"

    for cycle in range(1, 13):
        for source in bandit.trials_wanted(losses, cycle):
            bandit.observe_trial(source, teaches[source][state(source)] / 2)
        source = bandit.choose(losses, cycle).source
        total += teaches[source][state(source)]
        bandit.update(source, teaches[source][state(source)])
        last = source
        trained.add(source)
        nights.append(source)
    assert nights[:2] == ["today", "inbox"]
    assert sum(a == b for a, b in zip(nights, nights[1:])) <= 1, nights
    assert total > 0.6, (total, nights)  # today every night: 0.2 - 11 x 0.04 = -0.24; alternating: ~0.95


def test_trials_measure_progress_and_are_undone(tiny_model, tmp_path):
    from circadian.backends import LoadRequest, get_backend
    from circadian.backends.tokens import encode_chat
    from circadian.core.config import Config
    from circadian.night.evaluate import mean_loss

    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    chat = lambda q, a: encode_chat(
        model.tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64
    )  # noqa: E731
    rows = {
        "fruit": [chat(f"Name fruit {i}.", f"Fruit {i} is a pear.") for i in range(8)],
        "codes": [chat(f"Say code {i}.", f"Code {i} is lantern.") for i in range(8)],
    }
    settings = Config().train.model_copy(update={"learning_rate": 5e-3})
    model.train(rows["fruit"][:4], [], settings.model_copy(update={"max_steps": 2, "warmup_steps": 0}), lambda e: None)
    model.save_adapter(tmp_path / "current")
    model.set_adapter(tmp_path / "current", "current")
    losses = {k: mean_loss(model, v) for k, v in rows.items()}
    bandit = policies.make("bandit")
    probes = trials.run_trials(
        model,
        bandit,
        losses,
        1,
        night_rows=rows.get,
        select_rows=rows,
        settings=settings.model_copy(update={"batch_size": 4, "warmup_steps": 1}),
        restore=lambda: model.set_adapter(tmp_path / "current", "current"),
    )
    assert set(probes.progress) == {"fruit", "codes"} and all(v > 0 for v in probes.progress.values())
    assert {k: mean_loss(model, v) for k, v in rows.items()} == pytest.approx(losses, abs=1e-6)  # undone
    assert [h[2] for h in bandit.state["history"]] == ["trial", "trial"]
    assert (
        trials.run_trials(
            model,
            policies.make("self"),
            losses,
            1,
            night_rows=rows.get,
            select_rows=rows,
            settings=settings,
            restore=lambda: None,
        ).progress
        == {}
    )  # only the bandit asks


def test_a_trial_is_the_first_steps_of_the_night(tiny_model, tmp_path):
    from circadian.backends import LoadRequest, get_backend
    from circadian.backends.tokens import encode_chat
    from circadian.core.config import Config
    from circadian.lab.experiment import BUDGETS, budget_settings, night_sample
    from circadian.night.evaluate import mean_loss

    model = get_backend("torch").load(LoadRequest("tiny", tiny_model))
    chat = lambda q, a: encode_chat(
        model.tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64
    )  # noqa: E731
    pool = [chat(f"Name fruit {i}" + "!" * (i % 5), f"Fruit {i} is a pear.") for i in range(30)]
    select = {"fruit": [chat(f"Which fruit is {i}?", f"Fruit {i} is a pear.") for i in range(4)]}
    plan = BUDGETS["small"]
    settings = budget_settings(Config(), plan).model_copy(update={"seed": 7, "learning_rate": 5e-3})
    rows = night_sample(pool, plan, "0:1:fruit")
    before = mean_loss(model, select["fruit"])
    progress = trials.trial(model, rows, settings, select, before, restore=lambda: model.set_adapter(None, None))
    assert mean_loss(model, select["fruit"]) == pytest.approx(before, abs=1e-6)  # undone
    steps = []
    night = model.train(
        rows, [], settings, lambda e: steps.append(e) or ("stop" if e["iteration"] == trials.TRIAL_STEPS else None)
    )
    assert night.steps == trials.TRIAL_STEPS < plan.steps  # the night was stopped where the probe ends
    assert before - mean_loss(model, select["fruit"]) == pytest.approx(progress, abs=1e-5)
    assert progress > 0
    # a probe as long as the night is the night: its kept adapter stands in for training the night again
    model.set_adapter(None, None)
    whole = trials.trial(
        model,
        rows,
        settings,
        select,
        before,
        restore=lambda: model.set_adapter(None, None),
        steps=plan.steps,
        keep=lambda: model.save_adapter(tmp_path / "kept"),
    )
    night = model.train(rows, [], settings, lambda e: None)
    assert night.steps == plan.steps and whole > progress
    trained = mean_loss(model, select["fruit"])
    model.set_adapter(tmp_path / "kept", "kept")
    assert mean_loss(model, select["fruit"]) == pytest.approx(trained, abs=1e-6)
    assert before - trained == pytest.approx(whole, abs=1e-5)


def test_mean_ci_uses_student_t():
    stats = mean_ci([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and abs(stats["ci95"] - 4.303 * 1.0 / 3**0.5) < 1e-9
    assert mean_ci([])["mean"] is None and mean_ci([5.0])["ci95"] is None


def test_cycles_run_with_oracle_then_analyze_and_pack(two_days, tmp_path):
    current = adapters.current_version(two_days)
    result = run_cli("cycles", "run", "-n", "2", "--policy", "bandit", "--budget", "tiny", "--oracle", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["oracle"] and summary["final"]["cycle"] == 2
    assert summary["final"]["recall"] is not None and summary["cycle0"]["recall"] is not None  # asked after probing
    first = json.loads(two_days.choice_log.read_text().splitlines()[0])
    assert sorted(first["trials"]["progress"]) == sorted(first["candidate_losses"])  # the bandit probed every source
    second = json.loads(two_days.choice_log.read_text().splitlines()[1])
    assert first["chosen"] in second["trials"]["progress"]  # trained last night: a state it knows nothing of yet
    assert adapters.current_version(two_days) == current
    assert adapters.current_version(two_days) == current  # experiments never touch CURRENT
    fixed = run_cli("cycles", "run", "-n", "1", "--policy", "fixed:inbox", "--budget", "tiny", "--no-generate")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert_one_line_error(run_cli("cycles", "run", "--policy", "fixed:nowhere", "--budget", "tiny"))
    # an experiment killed after its first cycle: shown, but left out of the per-policy means
    with (tmp_path / "killed.err").open("w") as err:
        killed = subprocess.Popen(
            [*CLI, "cycles", "run", "-n", "5", "--policy", "random", "--budget", "tiny", "--no-generate"],
            env=os.environ.copy(),
            cwd=ROOT,
            stdout=err,
            stderr=err,
        )
    deadline = time.time() + 300

    def random_lines(log):
        return sum(json.loads(line).get("run_type") == "random" for line in log.read_text().splitlines())

    while not random_lines(two_days.run_log) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    logged, chosen = random_lines(two_days.run_log), random_lines(two_days.choice_log)  # chosen: +1 if killed between
    assert 1 <= logged <= chosen <= logged + 1 and logged < 5, (tmp_path / "killed.err").read_text()[-2000:]
    with two_days.choice_log.open("a") as log:
        log.write('{"cycle_id": "broken\n')
    analysis = run_cli("cycles", "analyze", "--json", "--csv", str(tmp_path / "csv"))
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    data = json.loads(analysis.stdout)
    counts = data["integrity"]["counts"]
    assert counts["raw"]["choice_log"] == 4 + chosen and counts["parsed"]["choice_log"] == 3 + chosen
    assert counts["joined"] == 3 + logged and counts["displayed"] == 3 + logged
    assert any(b["file"] == "choice_log" and b["line"] == 4 + chosen for b in data["integrity"]["broken_lines"])
    assert [(e["cycles_logged"], e["planned"]) for e in data["integrity"]["incomplete_experiments"]] == [(logged, 5)]
    assert data["integrity"]["nightly_without_choice"] == 1  # the first day's sleep
    bandit = next(e for e in data["experiments"] if e["run_type"] == "bandit")
    assert 0 <= bandit["oracle_match_rate"] <= 1 and bandit["cumulative_oracle_regret"] >= -1e-9
    assert bandit["oracle_gain_share"] is not None and bandit["oracle_gain_share"] <= 1 + 1e-9
    # every oracle night is also measured on the selection splits: what a leak-free chooser with a night on
    # every source would have picked, and the share of the oracle's gain that picking captures
    lines = [json.loads(line) for line in two_days.run_log.read_text().splitlines()]
    oracle_lines = [line for line in lines if line.get("experiment") == bandit["experiment"]]
    assert all(line["oracle_progress"].keys() == line["oracle_rewards"].keys() for line in oracle_lines)
    assert all(abs(line["oracle_progress"][line["chosen"]] - line["progress"]) < 1e-9 for line in oracle_lines)
    # the tiny budget's night is as long as a probe: the probes were kept as the nights, the oracle's too
    assert first["trials"]["progress"] == pytest.approx(oracle_lines[0]["oracle_progress"], abs=1e-6)
    informed = sum(
        line["oracle_rewards"][max(line["oracle_progress"], key=line["oracle_progress"].get)] for line in oracle_lines
    )
    best = sum(max(line["oracle_rewards"].values()) for line in oracle_lines)
    assert bandit["full_information_share"] == (pytest.approx(informed / best) if best > 0 else None)
    assert {r["run_type"] for r in data["per_run_type"]} == {"bandit", "fixed:inbox"}
    states = {(r["source"], r["state"]): r["n"] for r in data["oracle_reward_by_state"]}
    assert states[(first["chosen"], "tired")] == 1 and sum(states.values()) == 2 * len(first["candidate_losses"])
    assert (tmp_path / "csv" / "cycles.csv").read_text().count("\n") == 4 + logged
    text = run_cli("cycles", "analyze")
    assert f"broken: choice_log line {4 + chosen}" in text.stdout and "integrity: raw" in text.stdout
    assert "never ended (left out of the per-policy means)" in text.stdout
    packed = run_cli("cycles", "pack", "--out", str(tmp_path / "repro.tar.gz"), "--json")
    assert packed.returncode == 0, packed.stderr
    with tarfile.open(tmp_path / "repro.tar.gz") as tar:
        names = set(tar.getnames())
        commands = tar.extractfile("commands.txt").read().decode()
    assert {
        "config/circadian.toml",
        "logs/run_log.jsonl",
        "logs/choice_log.jsonl",
        "versions.json",
        "data_hashes.json",
        "README.md",
    } <= names
    assert "--policy bandit --seed 0 --budget tiny --oracle" in commands
    assert sum(n.endswith("experiment.json") for n in names) == 3


def test_nightly_sleep_trials_then_trains_the_source_its_policy_chooses(two_days):
    result = run_cli("sleep", "--json", env={"CIRCADIAN_SLEEP__POLICY": "bandit", "CIRCADIAN_SLEEP__TRIAL_STEPS": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the first 3 training steps of each one's night" in result.stderr  # sleep.trial_steps
    summary = json.loads(result.stdout)
    choices = [json.loads(line) for line in two_days.choice_log.read_text().splitlines()]
    assert len(choices) == 1 and choices[0]["cycle_id"] == summary["cycle_id"]
    losses, probes = choices[0]["candidate_losses"], choices[0]["trials"]["progress"]
    assert set(losses) >= {"today", "replay", "inbox"} and sorted(probes) == sorted(losses)  # every source probed
    assert choices[0]["chosen"] == max(probes, key=probes.get) == summary["chosen"]  # then the best probe trained
    trained = [u["name"] for u in summary["datasets"] if u["state"] == "trained"]
    assert trained and all(choices[0]["chosen"] in name or name == choices[0]["chosen"] for name in trained)
    line = json.loads(two_days.run_log.read_text().splitlines()[-1])
    assert line["run_type"] == "bandit" and line["chosen"] == summary["chosen"]
    history = json.loads((two_days.control / "policy.json").read_text())["bandit"]["history"]
    assert [h[2] for h in history] == ["trial"] * len(probes) + ["night"] and history[-1][0] == summary["chosen"]
    assert_one_line_error(run_cli("sleep", env={"CIRCADIAN_SLEEP__POLICY": "greedy"}))


def test_cycles_run_on_a_day_with_no_facts_prints_missing_figures_as_missing(night, tmp_path):
    """One imported day of small talk (nothing to extract, so no recall probes): `cycles run`
    finishes and prints recall as missing instead of failing to format None."""
    talk = tmp_path / "talk.jsonl"
    talk.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in [("hello!", "Hi, how can I help?"), ("nice weather", "It is lovely."), ("thanks", "Any time.")]
        )
    )
    assert run_cli("import", str(talk)).returncode == 0
    result = run_cli("cycles", "run", "-n", "3", "--policy", "random", "--seed", "7", "--budget", "tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "recall n/a" in result.stdout + result.stderr
