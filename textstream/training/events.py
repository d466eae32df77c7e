"""What a training run reports: small frozen dataclasses passed to ``train(..., on_event=...)``.

The library never prints; the caller renders these (``cli/train.py``'s
``TrainDisplay``) or collects them. A run emits, in this order:

    Prepared                        the corpus is tokenised (or found in the cache)
    Notice ...                      something the user should know that does not stop the run
                                    (a damaged checkpoint series put aside, a corpus prepared again)
    Started                         the model is built and, with resume, restored
    StepLogged ...                  every LOG_EVERY_S seconds of training, and at the last step
    at each epoch's end:
        Checkpointed(why="best")    only when the validation loss improved (saved before "last")
        Checkpointed(why="epoch")   "last" saved
        EpochEnd(number=N)          the validation loss
        Samples                     when samples are on and N is a multiple of sample_every
    Checkpointed(why="periodic")    inside long epochs, every CHECKPOINT_EVERY_S seconds
    at the end of a run that stopped between epochs:
        [Checkpointed(why="best")], Checkpointed(why="end"), EpochEnd(number=None)
    Finished                        the summary ``train`` also returns

A stop request ends the run with ``Checkpointed(why="interrupted")`` and an
``errors.Interrupted`` exception instead of ``Finished``. Only the chief worker
emits events. ``StepLogged``, ``EpochEnd`` (when it has a validation loss) and
``Finished`` are also the lines of ``metrics.jsonl`` (``to_dict``; kinds
``train``, ``val``, ``end``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Union

from textstream.data.tokens import TokenChoice


@dataclass(frozen=True)
class Prepared:
    """The token files the run trains on; ``choice`` says what the ids stand for (and why)."""

    dir: str
    vocab_size: int
    train_chars: int
    val_chars: int
    cached: bool
    choice: TokenChoice | None = None
    train_tokens: int | None = None  # ids; None: one per character
    val_tokens: int | None = None


@dataclass(frozen=True)
class Started:
    """Training is about to begin at ``step`` (0, or the step restored from the checkpoint)."""

    config: dict[str, Any]
    step: int
    total_steps: int | None  # None for a run with a time budget
    steps_per_epoch: float
    windows_per_epoch: int
    resumed: bool
    time_budget_s: float | None


@dataclass(frozen=True)
class StepLogged:
    """The loss and the speed after ``step`` steps (logged a few times a second)."""

    step: int
    epoch: float
    loss: float  # this step's
    loss_avg: float  # an exponential moving average
    chars_per_s: float
    lr: float
    eta_s: float | None
    total_steps: int | None

    @property
    def bits_per_char(self) -> float:
        return self.loss_avg / math.log(2)

    def to_dict(self) -> dict[str, Any]:
        """The ``train`` line of ``metrics.jsonl``."""
        return {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": self.loss,
                "loss_avg": self.loss_avg, "bits_per_char": self.bits_per_char,
                "chars_per_s": self.chars_per_s, "lr": self.lr}


@dataclass(frozen=True)
class Validation:
    """The loss on (up to ``training.EVAL_MAX_CHARS`` tokens of) the validation split.

    Per character of the text (total nats over its Unicode characters, in any
    token mode) and per token (per id; the same for character tokens).
    """

    nats_per_char: float
    chars: int
    tokens: int | None = None  # None: one per character
    nats_per_token: float | None = None
    seconds: float | None = None  # how long the validation took

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    @property
    def bits_per_token(self) -> float:
        return (self.nats_per_char if self.nats_per_token is None else self.nats_per_token) / math.log(2)


@dataclass(frozen=True)
class EpochEnd:
    """An epoch ended (``number``), or the run did between epochs (``number`` None)."""

    number: int | None
    step: int
    epoch: float
    val: Validation | None  # None without a validation split
    best: bool  # the validation loss improved: saved as the "best" checkpoint

    def to_dict(self) -> dict[str, Any]:
        """The ``val`` line of ``metrics.jsonl`` (written only when there is a validation loss)."""
        record: dict[str, Any] = {"kind": "val", "step": self.step, "epoch": self.epoch}
        if self.val is not None:
            val = self.val
            record.update(val_nats_per_char=val.nats_per_char, val_bits_per_char=val.bits_per_char,
                          val_chars=val.chars, val_bits_per_token=val.bits_per_token,
                          val_tokens=val.chars if val.tokens is None else val.tokens, val_seconds=val.seconds)
        return record


@dataclass(frozen=True)
class Sample:
    """Text generated after ``prime`` at one temperature."""

    temperature: float
    prime: str
    text: str


@dataclass(frozen=True)
class Samples:
    """Samples after an epoch, one per configured temperature, from the same prime."""

    epoch: int
    step: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class Checkpointed:
    """A checkpoint was saved: ``why`` is epoch, best, periodic, end or interrupted."""

    path: str
    why: str
    step: int


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the run (one line, naming the file concerned)."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The run's summary: emitted last and returned by ``train``."""

    step: int
    epoch: float
    loss: float  # the last step's
    wall_s: float
    stop: str  # "done" or "time budget"
    char_steps_per_s: float | None  # characters read per second (None when no step was timed)
    windows_per_s: float | None
    train_chars_seen: int  # training targets seen since step 0
    best_val_nats_per_char: float | None
    weights_sha256: str  # equal on every worker whose replicas stayed in sync

    def to_dict(self) -> dict[str, Any]:
        """The ``end`` line of ``metrics.jsonl``."""
        return {"kind": "end", **dataclasses.asdict(self)}


Event = Union[Prepared, Notice, Started, StepLogged, EpochEnd, Samples, Checkpointed, Finished]
OnEvent = Callable[[Event], None]
