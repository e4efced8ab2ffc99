"""Where everything lives: the home (state directory) and every named path inside it.

The home is resolved in this order: the `--home` option, `CIRCADIAN_HOME`, else the platform's user
data directory (never a source checkout, which `git clean -xfd` would empty). The model cache is
`<home>/models` unless `CIRCADIAN_MODELS_DIR` points elsewhere (the demo and the tests share one
cache that way). Nothing here touches the disk except `ensure()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from circadian.core.fsutil import private_dir

HOME_ENV = "CIRCADIAN_HOME"
MODELS_ENV = "CIRCADIAN_MODELS_DIR"


def resolve_home(option: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Given the `--home` option (or None), return (home path, where it came from)."""
    if option:
        return Path(option).expanduser().absolute(), "--home"
    if env := os.environ.get(HOME_ENV):
        return Path(env).expanduser().absolute(), HOME_ENV
    from platformdirs import user_data_dir

    return Path(user_data_dir("circadian", appauthor=False)), "user data directory"


def old_checkout_home() -> Path | None:
    """The source checkout this package runs from, if conversations were kept in it (it was the
    default home before issue 18; `git clean -xfd` would delete them)."""
    root = Path(__file__).resolve().parents[2]
    found = root / "data" / "memories.jsonl"
    return root if (root / "pyproject.toml").is_file() and found.is_file() else None


@dataclass(frozen=True)
class Paths:
    """Every file and folder of one home. Pure: building it touches nothing."""

    home: Path
    home_source: str = "--home"
    models_override: Path | None = None

    @classmethod
    def resolve(cls, option: str | os.PathLike | None = None) -> Paths:
        home, source = resolve_home(option)
        models = os.environ.get(MODELS_ENV)
        return cls(home, source, Path(models).expanduser().absolute() if models else None)

    # top level
    @property
    def config(self) -> Path:
        return self.home / "circadian.toml"

    @property
    def models(self) -> Path:
        return self.models_override or self.home / "models"

    @property
    def adapters(self) -> Path:
        return self.home / "adapters"

    @property
    def current(self) -> Path:
        return self.adapters / "CURRENT"

    @property
    def control(self) -> Path:
        return self.home / "control"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def chat_history(self) -> Path:
        return self.home / "chat_history"

    # data
    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def memories(self) -> Path:
        return self.data / "memories.jsonl"

    @property
    def tombstones(self) -> Path:
        return self.data / "tombstones.jsonl"

    @property
    def imports(self) -> Path:
        return self.data / "imports.jsonl"

    @property
    def inbox(self) -> Path:
        return self.data / "inbox"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def runs(self) -> Path:
        return self.data / "runs"

    @property
    def run_log(self) -> Path:
        return self.runs / "run_log.jsonl"

    @property
    def choice_log(self) -> Path:
        return self.runs / "choice_log.jsonl"

    def ensure(self) -> Paths:
        """Create the home's folders (mode 0700) if missing; return self."""
        private_dir(self.home)
        for folder in (
            self.data,
            self.adapters,
            self.control,
            self.inbox / "priority",
            self.inbox / "normal",
            self.quarantine,
            self.runs,
        ):
            private_dir(folder)
        return self

    def as_dict(self) -> dict[str, str]:
        """Return the named paths as strings, for `circadian paths`."""
        names = [
            "home",
            "config",
            "memories",
            "tombstones",
            "imports",
            "inbox",
            "quarantine",
            "runs",
            "run_log",
            "choice_log",
            "adapters",
            "current",
            "models",
            "control",
            "logs",
            "chat_history",
        ]
        return {name: str(getattr(self, name)) for name in names}
