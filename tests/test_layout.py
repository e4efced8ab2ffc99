"""The package layout holds: imports go one way (core <- store <- backends <- day, night <- shift, lab
<- web <- cli), no module imports another's private names, no import cycles, every module opens with
a docstring, and mlx/torch stay out of `circadian --help`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "circadian"
# a layer may import its own package and any layer of a lower rank; day and night (and shift and lab)
# share a rank and may not import each other
RANKS = {"core": 0, "store": 1, "backends": 2, "day": 3, "night": 3, "shift": 4, "lab": 4, "web": 5, "cli": 6}
TOP = {"circadian", "circadian.__main__"}  # the package itself (its version) and `python -m circadian`
HEAVY = ("torch", "mlx", "transformers", "peft", "mlx_lm")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import in the file, local ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "circadian" and parts[1] in RANKS else None


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer_and_opens_with_a_docstring():
    for name, path in modules().items():
        assert name in TOP or layer(name), f"{name} sits outside the layers {sorted(RANKS)}"
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), f"{name} has no module docstring"


def upward_imports() -> list[str]:
    problems = []
    for name, path in modules().items():
        own = layer(name)
        for line, target, _names in imports(path):
            theirs = layer(target)
            if own is None or theirs is None or theirs == own:
                continue
            if RANKS[theirs] >= RANKS[own]:
                problems.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({theirs})")
    return problems


def test_imports_go_one_way_only():
    assert upward_imports() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    planted = PACKAGE / "core" / "_planted_for_test.py"
    planted.write_text('"""planted by test_layout"""\nfrom circadian.night import sleep\n')
    try:
        assert any("_planted_for_test.py:2 (core) imports circadian.night" in p for p in upward_imports())
    finally:
        planted.unlink()


def test_no_module_takes_another_modules_private_names():
    found = []
    for name, path in modules().items():
        for line, target, names in imports(path):
            if target.startswith("circadian") and target != name:
                found += [
                    f"{path.relative_to(ROOT)}:{line} takes {n} from {target}"
                    for n in names
                    if n.startswith("_") and not n.startswith("__")
                ]
    assert found == []


def test_no_import_cycles():
    graph = {name: set() for name in modules()}
    known = set(graph)
    for name, path in modules().items():
        for _line, target, names in imports(path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in known and candidate != name:
                    graph[name].add(candidate)
                    break
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and nxt not in TOP:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node not in TOP:
            visit(node, [node])
    assert cycles == []


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom circadian.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
