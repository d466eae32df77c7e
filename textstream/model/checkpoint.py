"""Reading checkpoints back: verify one, load a model from it, its step weights. Writing is training's.

    RUN_DIR/checkpoints/last/   the newest training state (tf.train.CheckpointManager, one kept)
    RUN_DIR/checkpoints/best/   the state with the lowest validation loss so far

A checkpoint holds a training state under fixed names (``model``,
``optimizer``, ``step``, ``best_val_nats``, and ``carried_state``,
``shadow`` when used; ``textstream.training.checkpoints`` writes them). With
weight averaging, ``model`` holds the average: what every reader loads
(generation, eval, export). Beside each checkpoint the chief writes the
model's step weights (``ckpt-N.step.npz``, see ``textstream.model.stepweights``),
which generation reads without TensorFlow; a checkpoint without a current
one gets it on its first load for generation.

Every checkpoint is checked before it is used (``verify``: the state file,
the files present, every tensor read and its CRC32C checked), and damage is
one line naming the file. Readers (``generate``, ``eval``, ``export``) go
through ``checked_checkpoint``.

    cfg, vocab, model = load_model("runs/tiny", "best")
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from textstream._tf import tf
from textstream.config import TrainConfig
from textstream.data.vocab import Vocab
from textstream.errors import NoSpace, TextstreamError
from textstream.model import stepweights
from textstream.model.network import build_model, head_weights, lstm_weights
from textstream.model.run import RunPaths, existing_run
from textstream.model.series import Series
from textstream.model.stepweights import StepWeights


def verify(found: Series) -> Series:
    """``found`` with ``problem`` set when its checkpoint's files cannot all be read back (None stays None).

    Reads every tensor of the checkpoint: TensorFlow checks each one's
    CRC32C, so a truncated, emptied, overwritten or bit-flipped index or
    data file is found here, before anything is restored or replaced.
    """
    if not found.usable:
        return found
    problem = _read_problem(found.prefix)
    return dataclasses.replace(found, problem=problem) if problem else found


def _read_problem(prefix: Path) -> str | None:
    """One line naming the damaged file of the checkpoint ``prefix``, or None when every tensor reads back.

    TensorFlow reports damage as many exception types (``OpError``s,
    ``IndexError`` for a short read, ...) and this code only reads the
    files, so every ``Exception`` here is about their content.
    """
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{prefix}.index: damaged ({first_line(e)})"
    try:
        for name in reader.get_variable_to_dtype_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - see the docstring
        data = sorted(prefix.parent.glob(prefix.name + ".data-*"))
        where = str(data[0]) if len(data) == 1 else f"{prefix}.data-*"
        return f"{where}: damaged ({first_line(e)})"
    return None


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (TensorFlow's run to many), at most 200 characters."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def checked_checkpoint(run: RunPaths, which: str = "best") -> Series:
    """The intact checkpoint ``which`` ("best", falling back to "last" when never saved; or "last") of a run.

    A ``TextstreamError`` naming the damaged file (and the intact other
    checkpoint, if there is one), or saying there is no checkpoint yet.
    """
    found = verify(run.chosen_series(which))
    if found.problem:
        other = verify(run.series("last" if found.which == "best" else "best"))
        hint = (f"; the {other.which} checkpoint (step {other.step}) is intact: --checkpoint {other.which} reads it"
                if other.usable else "")
        raise TextstreamError(found.problem + hint)
    if found.prefix is None:
        raise TextstreamError(f"{run.root}: no checkpoint yet (train first)")
    return found


def latest_checkpoint(run: RunPaths, which: str = "best") -> str:
    """Path prefix of the newest intact checkpoint of kind ``which`` ("best" or "last"); see ``checked_checkpoint``.

    "best" falls back to "last" for runs that never evaluated (no validation split).
    """
    return str(checked_checkpoint(run, which).prefix)


def load_model(run_dir: Path | str, checkpoint: str = "best") -> tuple[TrainConfig, Vocab, Any]:
    """``(config, vocab, model)`` with the weights of the run's ``checkpoint``.

    The model is a ``textstream.model.network.CharLSTM``; optimizer state is not loaded.
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
        raise TextstreamError(f"{prefix}: cannot load checkpoint ({first_line(e)}); does config.json or "
                              f"vocab.json still describe this run?") from None
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

