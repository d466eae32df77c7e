"""Checkpoints: what one holds, the run's "last" and "best" series, and loading a model back.

    RUN_DIR/checkpoints/last/   the newest training state (tf.train.CheckpointManager, one kept)
    RUN_DIR/checkpoints/best/   the state with the lowest validation loss so far

A checkpoint holds a ``TrainState`` under fixed names: ``model``,
``optimizer``, ``step``, ``best_val_nats`` and, with ``carry_state``,
``carried_state``. ``CheckpointManager`` writes the data files first and
the small ``checkpoint`` state file last, by rename, so a crash during a save
leaves the previous checkpoint in force. Right after, the chief writes the
model's step weights beside it (``ckpt-N.step.npz``, see
``textstream.stepweights``), which generation reads without TensorFlow; a
checkpoint without a current one gets it on its first load for generation.

    cfg, vocab, model = load_model("runs/tiny", "best")
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from textstream import stepweights
from textstream._tf import tf
from textstream.config import TrainConfig
from textstream.errors import NoSpace, TextstreamError
from textstream.fsutil import space_checked
from textstream.model import build_model, head_weights, lstm_weights
from textstream.run import CHECKPOINTS, RunPaths, checkpoint_series, existing_run
from textstream.stepweights import StepWeights
from textstream.temporaries import remove_path, tf_temporaries
from textstream.vocab import Vocab


@dataclass
class TrainState:
    """Everything a training checkpoint holds: restoring it resumes the run exactly."""

    model: Any  # textstream.model.CharLSTM
    optimizer: Any  # a tf_keras optimizer, built for the model's variables
    step: Any  # tf.Variable int64: optimizer steps taken
    best_val_nats: Any  # tf.Variable float64: the lowest validation loss so far (inf before any)
    carried_state: Any = None  # tf.Variable (layers, 2, batch, units) with carry_state, else None

    def objects(self) -> dict[str, Any]:
        """The tracked objects under the names a checkpoint stores them."""
        names = ("model", "optimizer", "step", "best_val_nats", "carried_state")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

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

    def restore(self, run: RunPaths) -> bool:
        """Load the newest "last" checkpoint of ``run`` into the state; False when there is none.

        Every worker restores from the run directory (the chief's checkpoints;
        on several machines RUN_DIR must be on a shared file system for resume).
        """
        prefix = tf.train.latest_checkpoint(str(run.checkpoints("last")))
        if not prefix:
            return False
        try:
            self._checkpoint.restore(prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise TextstreamError(f"{prefix}: cannot resume from checkpoint ({str(e).splitlines()[0]})") from None
        return True

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


def latest_checkpoint(run: RunPaths, which: str = "best") -> str:
    """Path prefix of the newest checkpoint of kind ``which`` ("best" or "last").

    "best" falls back to "last" for runs that never evaluated (no validation split).
    """
    for kind in checkpoint_series(which):
        prefix = tf.train.latest_checkpoint(str(run.checkpoints(kind)))
        if prefix:
            return prefix
    raise TextstreamError(f"{run.root}: no checkpoint yet (train first)")


def load_model(run_dir: Path | str, checkpoint: str = "best") -> tuple[TrainConfig, Vocab, Any]:
    """``(config, vocab, model)`` with the weights of the run's ``checkpoint``.

    The model is a ``textstream.model.CharLSTM``; optimizer state is not loaded.
    """
    cfg, vocab, model, _ = _load(existing_run(run_dir), checkpoint)
    return cfg, vocab, model


def load_for_generation(run_dir: Path | str, checkpoint: str = "best") -> tuple[TrainConfig, Vocab, Any, StepWeights]:
    """``load_model`` plus the model's step weights, written beside the checkpoint when its file is missing or stale.

    The file is a cache: when it cannot be written (a read-only run
    directory, a full disk) generation goes on without it.
    """
    cfg, vocab, model, prefix = _load(existing_run(run_dir), checkpoint)
    weights = step_weights_of(model)
    if not stepweights.is_current(prefix):
        save_step_weights(weights, prefix)
    return cfg, vocab, model, weights


def _load(run: RunPaths, checkpoint: str) -> tuple[TrainConfig, Vocab, Any, str]:
    """``(config, vocab, model, checkpoint prefix)`` of the run's ``checkpoint``."""
    cfg = run.read_config()
    vocab = run.read_vocab()
    model = build_model(cfg, vocab.size)
    prefix = latest_checkpoint(run, checkpoint)
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise TextstreamError(f"{prefix}: cannot load checkpoint ({str(e).splitlines()[0]})") from None
    return cfg, vocab, model, prefix


def step_weights_of(model) -> StepWeights:
    """A ``CharLSTM``'s weights as a step backend uses them (a snapshot of them now)."""
    return StepWeights.from_layers(lstm_weights(model), head_weights(model))


def save_step_weights(weights: StepWeights, prefix: str | Path) -> bool:
    """Write ``weights`` beside the checkpoint ``prefix``; False when the file cannot be written.

    The file only saves generation the TensorFlow import: a failure here must
    not stop training, and the first load for generation writes it again.
    """
    try:
        stepweights.write(weights, prefix)
    except (OSError, NoSpace):
        return False
    return True


def weights_sha256(model) -> str:
    """sha256 of a model's weights: equal on every worker whose replicas stayed in sync."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()

