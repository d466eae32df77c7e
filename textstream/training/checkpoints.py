"""Saving a run's checkpoints and finding where a resume starts: the training side of checkpoints.

A checkpoint holds a ``TrainState`` under fixed names: ``model``,
``optimizer``, ``step``, ``best_val_nats``, with ``carry_state``
``carried_state`` and, with ``ema``, ``shadow``. With weight averaging a
checkpoint is written with the average in ``model`` (what every reader of a
checkpoint loads: generation, eval, export) and the training weights in
``shadow``; ``Checkpoints.resume`` swaps them back. ``CheckpointManager``
writes the data files first and the small ``checkpoint`` state file last,
by rename, so a crash during a save leaves the previous checkpoint in
force. Right after, the chief writes the model's step weights beside it
(``ckpt-N.step.npz``). A resume goes through ``resume_point``, which never
starts over: when "last" is damaged and "best" is intact it says how to
continue from "best" (``start="best"``, ``train --resume --from best``).
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from textstream._tf import tf
from textstream.errors import NoSpace, TextstreamError
from textstream.fsutil import space_checked
from textstream.model import stepweights
from textstream.model.checkpoint import first_line, step_weights_of, verify
from textstream.model.run import CHECKPOINTS, RunPaths
from textstream.model.series import Series
from textstream.temporaries import remove_path, tf_temporaries


@dataclass
class TrainState:
    """Everything a training checkpoint holds: restoring it resumes the run exactly."""

    model: Any  # textstream.model.network.CharLSTM
    optimizer: Any  # a tf_keras optimizer, built for the model's variables
    step: Any  # tf.Variable int64: optimizer steps taken
    best_val_nats: Any  # tf.Variable float64: the lowest validation loss so far (inf before any)
    carried_state: Any = None  # tf.Variable (layers, 2, batch, units) with carry_state, else None
    # with ema: one tf.Variable per trainable model variable: the weights' moving average while training,
    # the training weights inside ``averaged`` (so in a checkpoint)
    shadow: Any = None
    _swapped: bool = field(default=False, init=False, repr=False)

    def objects(self) -> dict[str, Any]:
        """The tracked objects under the names a checkpoint stores them."""
        names = ("model", "optimizer", "step", "best_val_nats", "carried_state", "shadow")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    @contextlib.contextmanager
    def averaged(self):
        """Inside: the model holds the weight average and ``shadow`` the training weights (exact swaps).

        Without an average, or already inside, it changes nothing. Validation,
        samples and every save run inside, so they see the average.
        """
        if self.shadow is None or self._swapped:
            yield
            return
        self._exchange()
        self._swapped = True
        try:
            yield
        finally:
            self._exchange()
            self._swapped = False

    def restored(self) -> None:
        """After a checkpoint (written inside ``averaged``) is restored: the training weights back in the model."""
        if self.shadow is not None:
            self._exchange()

    def _exchange(self) -> None:
        for weight, mean in zip(self.model.trainable_variables, self.shadow):
            held = tf.identity(weight)
            weight.assign(mean)
            mean.assign(held)

    @property
    def step_number(self) -> int:
        return int(self.step.numpy())

    @property
    def best(self) -> float | None:
        """The lowest validation loss so far (nats per character), None before the first."""
        best = float(self.best_val_nats.numpy())
        return None if math.isinf(best) else best


class Checkpoints:
    """The "last" and "best" series of one ``TrainState``, saved under ``directory``.

    ``directory`` has the layout of ``RUN_DIR/checkpoints`` (see ``save_directory``).
    With ``step_weights`` (the chief), every save also writes the model's step
    weights beside the checkpoint (``stepweights.write``).
    """

    def __init__(self, state: TrainState, directory: Path, *, step_weights: bool = False):
        self.state = state
        self.directory = Path(directory)
        self.step_weights = step_weights
        self._checkpoint = tf.train.Checkpoint(**state.objects())
        self._managers = {which: tf.train.CheckpointManager(self._checkpoint, str(self.directory / which),
                                                            max_to_keep=1) for which in CHECKPOINTS}

    def resume(self, point: "ResumePoint") -> None:
        """Load the checkpoint a resume starts from (``resume_point``) into the state.

        The best loss so far becomes the lower of the restored one and the
        one the "best" checkpoint on disk was saved with, so a resume never
        replaces "best" with a worse model. Every worker restores from the
        run directory (the chief's checkpoints; on several machines RUN_DIR
        must be on a shared file system for resume).
        """
        try:
            self._checkpoint.restore(str(point.start.prefix)).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise TextstreamError(f"{point.start.prefix}: cannot resume from checkpoint ({first_line(e)}); "
                                  f"does config.json or vocab.json still describe this run?") from None
        self.state.restored()
        held = recorded_best(point.best)
        if held is not None and held < float(self.state.best_val_nats.numpy()):
            self.state.best_val_nats.assign(held)

    def save(self, which: str) -> str:
        """Save the state to series ``which`` ("last" or "best"), numbered by its step; its path prefix.

        A save that fails for lack of room (a full disk, a quota, a file size
        limit) removes what it wrote, so the previous checkpoint of the series
        stays in force, and raises ``NoSpace``; so does a step weights file
        that cannot be written for that reason (the checkpoint itself is then
        saved). Other failures to write the step weights file are ignored: it
        is a cache, which generation writes again.
        """
        manager = self._managers[which]
        name = f"ckpt-{self.state.step_number}"
        directory = self.directory / which
        with self.state.averaged():  # readers of a checkpoint load the average (see the module)
            try:
                with space_checked(directory / name, needed=self.size()):
                    prefix = manager.save(checkpoint_number=self.state.step_number)
            except NoSpace:
                remove_partial_save(directory, name, current=manager.latest_checkpoint)
                raise
            if self.step_weights:
                try:
                    stepweights.write(step_weights_of(self.state.model), prefix)
                except OSError:
                    pass
        return prefix

    def saved(self, which: str) -> str | None:
        """The path prefix of the newest checkpoint of series ``which`` (restored or saved), None when there is none."""
        return self._managers[which].latest_checkpoint

    def size(self) -> int:
        """About the bytes one checkpoint takes: the model's weights and the optimizer's variables."""
        optimizer = self.state.optimizer.variables
        variables = [*self.state.model.weights, *(optimizer() if callable(optimizer) else optimizer)]
        return sum(int(np.prod(v.shape)) * v.dtype.size for v in variables)


def remove_partial_save(directory: Path, name: str, current: str | None) -> None:
    """Remove what a failed save of checkpoint ``name`` left in series ``directory``.

    TensorFlow's temporaries of the save (``ckpt-N_temp/``, ``*.tempstate*``,
    ``checkpoint.tmp*``) and, unless ``name`` is the ``current`` checkpoint
    (the one the state file names), its index, data and step weights files.
    Only for the process that holds the run's lock (it is the only writer).
    """
    for path in tf_temporaries(directory):
        remove_path(path)
    if current is not None and Path(current).name == name:
        return
    for path in directory.glob(f"{name}.*"):
        if path.name == f"{name}.index" or path.name.startswith(f"{name}.data-") or \
                path.name == name + stepweights.SUFFIX:
            remove_path(path)


@contextlib.contextmanager
def save_directory(run: RunPaths, chief: bool) -> Iterator[Path]:
    """Where this worker saves checkpoints: the run's ``checkpoints/`` on the chief.

    Every worker must take part in a save (they are collective under
    multi-worker training); the others write to a scratch directory removed
    at the end, so only the chief's checkpoints are kept.
    """
    if chief:
        yield run.checkpoint_root
        return
    with tempfile.TemporaryDirectory(prefix="textstream-worker-") as scratch:
        yield Path(scratch)


def recorded_best(found: Series) -> float | None:
    """The validation loss the "best" checkpoint ``found`` was saved with; None when it has none or is unreadable."""
    if not found.usable:
        return None
    try:
        value = float(tf.train.load_checkpoint(str(found.prefix)).get_tensor(
            "best_val_nats/.ATTRIBUTES/VARIABLE_VALUE"))
    except Exception:  # noqa: BLE001 - a checkpoint without the value (not saved by training), or damaged
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ResumePoint:
    """Where a resume starts (``start``: an intact series), the "best" series as verified, and what was put aside."""

    start: Series
    best: Series
    notices: tuple[str, ...] = ()


def resume_point(run: RunPaths, start: str = "last", *, chief: bool = True) -> ResumePoint:
    """The checkpoint a resume of ``run`` starts from: series ``start`` ("last", or "best"), verified.

    Never starts over: a damaged or missing ``start`` is one line naming the
    file, and says how to go on when the other series is intact. A damaged
    series that the resume would replace is renamed ``<series>.damaged``
    (by the ``chief`` only; never deleted), saying so in ``notices``: "best"
    when resuming from an intact "last", "last" when resuming from "best".
    """
    last, best = verify(run.series("last")), verify(run.series("best"))
    begin, other = (last, best) if start == "last" else (best, last)
    if not begin.usable:
        raise TextstreamError(_cannot_resume(run, begin, other))
    if start == "best" and last.usable and last.step != best.step:
        raise TextstreamError(f"{last.directory}: the last checkpoint (step {last.step}) is intact; resume from it "
                              f"(drop --from best), or move that directory away first to go back to step {best.step}")
    notices = []
    for damaged in (s for s in (last, best) if s.problem and s is not begin):
        moved = _put_aside(damaged.directory) if chief else damaged.directory
        notices.append(f"{damaged.problem}; moved {damaged.directory.name} aside to {moved}")
    return ResumePoint(begin, best if best.usable else Series("best", best.directory), tuple(notices))


def _cannot_resume(run: RunPaths, begin: Series, other: Series) -> str:
    """Why a resume cannot start from ``begin``, and how to go on."""
    what = begin.problem or f"{begin.directory}: no checkpoint"
    if other.usable and other.which == "best":
        return (f"{what}; cannot resume from it. The best checkpoint (step {other.step}) is intact: continue from it "
                f"with: textstream train --resume --from best -o {run.root}")
    if other.usable:
        return f"{what}; the last checkpoint (step {other.step}) is intact: resume from it without --from best"
    why = f" ({other.problem})" if other.problem else ""
    return f"{what}; no intact checkpoint to resume from{why}: start a new run with another -o"


def _put_aside(directory: Path) -> Path:
    """Rename a damaged series directory to ``<name>.damaged`` (``.damaged-2``, ... when taken); the new path."""
    for n in range(1, 1000):
        target = directory.with_name(directory.name + ".damaged" + (f"-{n}" if n > 1 else ""))
        if not os.path.lexists(target):
            os.rename(directory, target)
            return target
    raise TextstreamError(f"{directory}: damaged, and too many earlier .damaged copies beside it")
