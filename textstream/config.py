"""Training configuration: one dataclass, its presets, defaults in one place.

No TensorFlow here: the CLI builds configs for ``--help`` and validation
before anything heavy is imported.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textstream.errors import TextstreamError

OBJECTIVES = ("sequence", "next")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes.

    Serialised to ``RUN_DIR/config.json``; ``TrainConfig.from_dict`` reads it back.
    """

    preset: str = "default"
    # model
    layers: int = 1
    units: int = 384
    dropout: float = 0.15  # between LSTM layers and before the head
    embedding: int = 0  # 0: one-hot input (the original); N: a learned N-wide embedding
    # data
    seq_len: int = 100
    stride: int = 3  # characters between window starts for the `next` objective
    objective: str = "sequence"  # "sequence": every position predicts its next char; "next": the original
    carry_state: bool = False  # sequence: carry the LSTM state from each window to the next (truncated BPTT)
    lowercase: bool = False
    val_fraction: float = 0.05
    max_vocab: int | None = None
    errors: str = "strict"
    # optimisation
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 4e-3
    clipnorm: float = 1.0  # 0 disables clipping
    warmup_steps: int = 0
    schedule: str = "cosine"  # decay to lr * min_lr_ratio over the run's planned steps or time budget
    min_lr_ratio: float = 0.05
    # length of the run (the first one set wins: steps, then time_budget, then epochs)
    epochs: int | None = 20
    steps: int | None = None
    time_budget: float | None = None  # minutes
    seed: int = 0
    # samples after each epoch, like the original
    samples: bool = True
    sample_every: int = 1  # epochs
    sample_chars: int = 400
    temperatures: tuple[float, ...] = (0.2, 0.5, 1.0, 1.2)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> "TrainConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise TextstreamError(msg)

        need(self.layers >= 1, f"--layers must be >= 1 (got {self.layers})")
        need(self.units >= 1, f"--units must be >= 1 (got {self.units})")
        need(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1) (got {self.dropout})")
        need(self.embedding >= 0, f"--embedding must be >= 0 (got {self.embedding})")
        need(self.seq_len >= 1, f"--seq-len must be >= 1 (got {self.seq_len})")
        need(self.stride >= 1, f"--stride must be >= 1 (got {self.stride})")
        need(self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)} (got {self.objective!r})")
        need(not (self.carry_state and self.objective == "next"),
             "--carry-state needs --objective sequence (the original `next` objective has overlapping windows)")
        need(self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        need(self.lr > 0, f"--lr must be > 0 (got {self.lr})")
        need(self.clipnorm >= 0, f"--clipnorm must be >= 0 (got {self.clipnorm})")
        need(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        need(0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        need(self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})")
        need(self.steps is None or self.steps >= 1, f"--steps must be >= 1 (got {self.steps})")
        need(self.time_budget is None or self.time_budget > 0, f"--time-budget must be > 0 minutes (got {self.time_budget})")
        return self

    @property
    def window(self) -> int:
        """Characters one training example reads: the inputs plus the target after them."""
        return self.seq_len + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["temperatures"] = list(self.temperatures)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if "step" in d and "stride" not in d:  # written before the window stride was renamed
            d = {**d, "stride": d["step"]}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "temperatures" in kwargs:
            kwargs["temperatures"] = tuple(kwargs["temperatures"])
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise TextstreamError(f"{path}: no such file") from None
        except (ValueError, TypeError) as e:
            raise TextstreamError(f"{path}: not a textstream config ({e})") from None


# Presets: overrides applied on top of the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The original Keras example (Deep Learning with Python, 8.1), exactly.
    "seed": dict(
        lowercase=True, layers=1, units=128, dropout=0.0, embedding=0, seq_len=60, stride=3,
        objective="next", optimizer="rmsprop", lr=0.01, clipnorm=0.0, batch_size=1024,
        warmup_steps=0, schedule="constant", epochs=60,
    ),
    # The dataclass defaults, chosen by measurement (README "Model quality"): on tinyshakespeare
    # with a 5-minute budget on 2 CPU cores, 1x384 with dropout 0.15 and a cosine decay reached
    # 1.499 nats/char held out, ahead of 1x256 (1.52) and 1x512 (1.59 to 1.62).
    "default": dict(),
    # For tests and smoke runs: seconds on a CPU.
    "tiny": dict(layers=1, units=16, seq_len=16, batch_size=8, dropout=0.0, schedule="constant", epochs=1,
                 sample_chars=40),
}

# A preset may grow with the time budget: (minimum --time-budget in minutes, overrides), the last
# tier whose minimum the budget reaches applies, before the caller's own overrides. Measured on
# tinyshakespeare (README "Model quality"): a longer budget pays for a wider, more regularised LSTM.
BUDGET_TIERS: dict[str, list[tuple[float, dict[str, Any]]]] = {
    "default": [
        (15.0, dict(units=512, batch_size=64, dropout=0.5)),
    ],
}


def make_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """A validated config: the preset's values (its budget tier), then every override that is not None."""
    if preset not in PRESETS:
        raise TextstreamError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    budget = overrides.get("time_budget")
    for minimum, tier in BUDGET_TIERS.get(preset, []):
        if budget is not None and budget >= minimum:
            values.update(tier)
    values.update({k: v for k, v in overrides.items() if v is not None})
    # a run length given explicitly replaces the preset's default one
    if any(overrides.get(k) is not None for k in ("steps", "time_budget", "epochs")):
        for k in ("steps", "time_budget", "epochs"):
            values[k] = overrides.get(k)
    return TrainConfig(preset=preset, **values).check()
