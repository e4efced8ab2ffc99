"""What both backends' training loops share: the learning-rate schedule, early stopping with the best
step kept, and the step budget of a run.

The schedule is written once for both: `warmup_cosine` computes with Python floats (torch's LambdaLR)
or with MLX arrays (an mlx.optimizers schedule, traced inside mlx-lm's compiled step), through the
small `ops` it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

FLOOR = 0.1  # the cosine decays to this share of the peak learning rate

PYTHON_OPS = SimpleNamespace(minimum=min, maximum=max, cos=math.cos, where=lambda c, a, b: a if c else b)


def warmup_cosine(step, *, total: int, warmup: int, floor: float = FLOOR, ops=PYTHON_OPS):
    """Given a step (0-based), return the learning-rate factor: linear warm-up from 1/warmup to 1 over
    the first `warmup` steps, then cosine decay to `floor` at step `total`."""
    warm = ops.minimum((step + 1) / max(1, warmup), 1.0)
    progress = ops.minimum(ops.maximum((step - warmup) / max(1, total - warmup), 0.0), 1.0)
    decay = floor + (1 - floor) * 0.5 * (1 + ops.cos(math.pi * progress))
    return ops.where(step < warmup, warm, decay)


def total_steps(rows: int, settings) -> int:
    """Given the number of training rows and the TrainSettings, return how many steps the run takes at
    most: `max_epochs` passes in batches of `batch_size`, but no fewer than `min_steps` (a small night
    needs more passes to learn its few facts), capped by `max_steps` (at least one)."""
    per_epoch = math.ceil(rows / settings.batch_size)
    return max(1, min(settings.max_steps, max(settings.min_steps, math.ceil(settings.max_epochs * per_epoch))))


@dataclass
class EarlyStopping:
    """The validation-loss bookkeeping of a run: the best loss and its step, evaluations without an
    improvement of at least `min_delta`, and whether to stop (after `patience` of them, never before
    `min_steps`). The caller keeps the weights of the best step when `observe` says it improved."""

    patience: int
    min_steps: int
    min_delta: float
    best: float | None = None
    best_step: int = 0
    bad: int = 0
    initial: float | None = None

    @classmethod
    def of(cls, settings) -> EarlyStopping:
        return cls(settings.patience, settings.min_steps, settings.min_delta)

    def start(self, loss: float | None) -> None:
        """The validation loss before the first step (None: nothing validates)."""
        self.initial = self.best = loss
        self.best_step = 0

    def observe(self, step: int, loss: float) -> bool:
        """Given a step's validation loss, return True when it is the new best."""
        if self.initial is None and self.best is None:
            self.initial = loss
        if self.best is None or loss < self.best - self.min_delta:
            self.best, self.best_step, self.bad = loss, step, 0
            return True
        self.bad += 1
        return False

    def should_stop(self, step: int) -> bool:
        return self.bad >= self.patience and step >= self.min_steps

    REASON = "early stop: validation loss stopped improving"
