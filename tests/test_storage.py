"""The storage primitives: locked appends, atomic writes, permissions, home resolution."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

from circadian.core import fsutil
from circadian.core.paths import Paths, resolve_home

WRITER = r"""
import sys
from pathlib import Path
from circadian.core.fsutil import append_jsonl
path, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    # lines far longer than PIPE_BUF, so only the lock keeps writers from interleaving
    append_jsonl(path, [{"writer": tag, "i": i, "pad": tag * 70000}])
"""


def test_append_jsonl_concurrent_writers_produce_whole_lines_only(tmp_path):
    target = tmp_path / "memories.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), tag, "60"]) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = target.read_text().splitlines()
    assert len(lines) == 120
    rows = [json.loads(line) for line in lines]
    for tag in "ab":
        mine = [r for r in rows if r["writer"] == tag]
        assert [r["i"] for r in mine] == list(range(60))
        assert all(r["pad"] == tag * 70000 for r in mine)


def test_append_jsonl_creates_file_private(tmp_path):
    target = tmp_path / "x.jsonl"
    end = fsutil.append_jsonl(target, [{"a": 1}, {"b": 2}])
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert end == target.stat().st_size
    assert [line.value for line in fsutil.read_jsonl(target)] == [{"a": 1}, {"b": 2}]


def test_read_jsonl_reports_broken_lines_and_honours_offset(tmp_path):
    target = tmp_path / "x.jsonl"
    fsutil.append_jsonl(target, [{"a": 1}])
    offset = target.stat().st_size
    with target.open("a") as f:
        f.write("{not json\n")
    fsutil.append_jsonl(target, [{"b": 2}])
    rows = list(fsutil.read_jsonl(target))
    assert [(line.number, line.value) for line in rows] == [(1, {"a": 1}), (2, None), (3, {"b": 2})]
    assert rows[1].error.startswith("not JSON") and rows[1].raw == "{not json"
    assert [line.value for line in fsutil.read_jsonl(target, end=offset)] == [{"a": 1}]


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "CURRENT"
    fsutil.atomic_write_text(target, "v0001\n")
    fsutil.atomic_write_text(target, "v0002\n")
    assert target.read_text() == "v0002\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["CURRENT"]


def test_paths_ensure_makes_home_private(tmp_path):
    paths = Paths(tmp_path / "h").ensure()
    for folder in (paths.home, paths.data, paths.adapters, paths.control, paths.inbox / "priority"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_resolve_home_prefers_option_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCADIAN_HOME", str(tmp_path / "env"))
    assert resolve_home(tmp_path / "opt") == (tmp_path / "opt", "--home")
    assert resolve_home(None) == (tmp_path / "env", "CIRCADIAN_HOME")


def test_the_default_home_is_the_user_data_directory_never_the_checkout(monkeypatch, tmp_path):
    """A source checkout is not a home: `git clean -xfd` would delete a person's conversations."""
    monkeypatch.delenv("CIRCADIAN_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    root = Path(__file__).resolve().parent.parent
    assert (root / "pyproject.toml").is_file()
    home, source = resolve_home(None)
    assert (home, source) == (tmp_path / "xdg" / "circadian", "user data directory")
    shown = run_cli("paths", "--json", env={"CIRCADIAN_HOME": "", "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert json.loads(shown.stdout)["home"] == str(tmp_path / "xdg" / "circadian"), shown.stderr


def test_paths_models_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCADIAN_MODELS_DIR", str(tmp_path / "cache"))
    assert Paths.resolve(tmp_path / "h").models == tmp_path / "cache"
    monkeypatch.delenv("CIRCADIAN_MODELS_DIR")
    assert Paths.resolve(tmp_path / "h").models == tmp_path / "h" / "models"
    assert os.environ.get("CIRCADIAN_MODELS_DIR") is None


CUT_OFF = r"""
import resource, signal, sys
from pathlib import Path
from circadian.core.fsutil import append_jsonl
path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 100, resource.RLIM_INFINITY))
try:
    append_jsonl(path, [{"pad": "x" * 5000}])
except OSError as exc:
    print(exc.errno)
"""


def test_an_append_after_a_cut_off_one_starts_on_a_new_line(tmp_path):
    """A real process whose append is cut off by a file-size limit (as by a full disk) leaves half a
    line; the next append must not glue its record onto it: one line is lost, not two."""
    import errno

    target = tmp_path / "memories.jsonl"
    fsutil.append_jsonl(target, [{"a": 1}])
    cut = subprocess.run([sys.executable, "-c", CUT_OFF, str(target)], capture_output=True, text=True, timeout=60)
    assert cut.stdout.strip() == str(errno.EFBIG), cut.stderr
    assert not target.read_bytes().endswith(b"\n")  # the half line is there
    fsutil.append_jsonl(target, [{"b": 2}])
    lines = list(fsutil.read_jsonl(target))
    assert [line.value for line in lines] == [{"a": 1}, None, {"b": 2}]
