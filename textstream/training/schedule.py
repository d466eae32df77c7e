"""How long a run lasts and how fast it goes: the learning rate, the length plan, the meter.

No TensorFlow here: these are plain numbers, unit-tested on their own.

    plan = Plan.make(cfg, start=0, steps_for_epochs=1200)  # cfg.steps, else the time budget, else epochs
    meter = Meter(chars_per_step=cfg.batch_size * cfg.seq_len)
    lr = plan.lr(cfg, step)                                # warm-up, then constant or cosine
    meter.add(loss, seconds)                               # after each step
    meter.loss_avg, meter.rate, plan.time_left(step, meter)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from textstream.config import TrainConfig

NO_END = 10**12  # the step horizon of a run with a time budget


def lr_at(cfg: TrainConfig, step: int, total: int | None, progress: float | None = None) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then constant or cosine to ``lr * min_lr_ratio``.

    The cosine runs over the planned ``total`` steps, or, for a run with a time
    budget, over ``progress`` (the fraction of the budget spent).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine" and (total or progress is not None):
        t = progress if progress is not None else (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        t = min(1.0, max(0.0, t))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    return cfg.lr


@dataclass(frozen=True)
class Plan:
    """Where the run stops: at ``total`` steps, or at ``deadline`` (``time.monotonic()``) for a time budget."""

    start: int
    total: int | None  # None with a time budget
    budget_s: float | None = None
    deadline: float | None = None

    @classmethod
    def make(cls, cfg: TrainConfig, start: int, steps_for_epochs: int, now: float | None = None) -> "Plan":
        """The first length ``cfg`` sets wins: ``steps``, then ``time_budget`` (from ``now``), then epochs.

        ``steps_for_epochs``: the steps ``cfg.epochs`` (or one epoch) take.
        """
        if cfg.steps:
            return cls(start, cfg.steps)
        if cfg.time_budget:
            budget = cfg.time_budget * 60
            return cls(start, None, budget, (time.monotonic() if now is None else now) + budget)
        return cls(start, steps_for_epochs)

    @property
    def horizon(self) -> int:
        """The step the loop runs to (a time budget ends the loop before it)."""
        return self.total if self.total is not None else self.start + NO_END

    def progress(self, now: float) -> float | None:
        """The fraction of the time budget spent (None without one)."""
        return None if self.deadline is None else 1.0 - (self.deadline - now) / self.budget_s

    def out_of_time(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def lr(self, cfg: TrainConfig, step: int, now: float) -> float:
        """The learning rate for ``step``: the cosine runs over the planned steps or the budget."""
        return lr_at(cfg, step, self.total, self.progress(now))

    def time_left(self, step: int, meter: "Meter", now: float) -> float | None:
        """Seconds to the end: the planned steps at the meter's speed, or what is left of the budget."""
        if self.total is not None:
            return meter.eta(self.total - step)
        if self.deadline is not None:
            return max(0.0, self.deadline - now)
        return None


@dataclass
class Meter:
    """The speed of the training steps and their smoothed loss.

    The first ``untimed`` steps (tracing and compiling) count for the loss
    average but not for the speed; until a timed step exists, ``rate`` is the
    last step's speed.
    """

    chars_per_step: int  # characters the model reads per step (batch_size * seq_len)
    untimed: int = 2
    decay: float = 0.95  # of the loss average
    steps: int = 0
    loss: float = math.nan  # the last step's
    loss_avg: float | None = None
    last_s: float = field(default=math.inf, repr=False)
    timed_steps: int = field(default=0, repr=False)
    timed_s: float = field(default=0.0, repr=False)

    def add(self, loss: float, seconds: float) -> None:
        """Count one step that took ``seconds`` and ended with ``loss``."""
        self.steps += 1
        self.loss = loss
        self.last_s = max(seconds, 1e-9)
        if self.steps > self.untimed:
            self.timed_steps += 1
            self.timed_s += seconds
        self.loss_avg = loss if self.loss_avg is None else self.decay * self.loss_avg + (1 - self.decay) * loss

    @property
    def steady_rate(self) -> float | None:
        """Characters per second over the timed steps; None before the first."""
        return self.chars_per_step * self.timed_steps / self.timed_s if self.timed_s > 0 else None

    @property
    def rate(self) -> float:
        """Characters per second: the steady rate, else the last step's (0 before any step)."""
        steady = self.steady_rate
        return steady if steady is not None else self.chars_per_step / self.last_s

    def eta(self, steps_left: int) -> float:
        """Seconds that ``steps_left`` more steps take at the current rate (inf before any step)."""
        rate = self.rate
        return steps_left * self.chars_per_step / rate if rate > 0 else math.inf


class Every:
    """A timer that falls due ``seconds`` after it was made or last ``reset``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last = time.monotonic()

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.last >= self.seconds

    def reset(self, now: float | None = None) -> None:
        self.last = time.monotonic() if now is None else now
