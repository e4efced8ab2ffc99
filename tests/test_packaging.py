"""The package as a user installs it: a wheel built from the checkout, installed (not editable) into a
fresh virtual environment, answers `circadian ask` and plans `circadian sleep --dry-run`, reading its
evaluation sets, templates and prompts as package data (nothing from the checkout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ROOT


def _site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python*/site-packages"))


def test_a_wheel_installs_into_a_fresh_venv_and_answers_and_plans(tmp_path, tiny_model):
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(dist.glob("circadian-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    # the dependencies come from the test environment, as plain paths (its editable circadian is not loaded)
    (_site_packages(venv) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        **os.environ,
        "CIRCADIAN_HOME": str(tmp_path / "home"),
        "CIRCADIAN_MODEL__NAME": str(tiny_model),
        "PYTHONPATH": "",
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "circadian"), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import circadian; print(circadian.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    asked = run("ask", "My dog is called Biscuit.", "--json", "--max-tokens", "4")
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert json.loads(asked.stdout)["logged"] is True
    planned = run("sleep", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    plan = json.loads(planned.stdout)
    assert plan["would_train"] and plan["facts"][0]["value"] == "Biscuit"
    assert plan["capability_questions"] > 0 and plan["distill_rows_wanted"] > 0  # package data, read from the wheel
    assert run("--version").stdout.startswith("circadian ")
