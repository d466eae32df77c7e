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
the files present, every tensor read, its CRC32C checked and its values
finite), and damage is one line naming the file; ``config.json`` and
``vocab.json`` are checked against the checkpoint's shapes before a model is
built (``check_shapes``). Readers (``generate``, ``eval``, ``export``) go
through ``checked_checkpoint``.

    cfg, vocab, model = load_model("runs/tiny", "best")
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
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
from textstream.model.series import Series, glob_escape
from textstream.model.stepweights import StepWeights

MAY_BE_INFINITE = ("best_val_nats/",)  # checkpoint tensors that are infinite before a first validation


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
    files, so every ``Exception`` here is about their content. Data files
    that hold fewer bytes than the index's tensors take (cut short, or a
    hostile index) are refused before any tensor is read (nothing the index
    claims is allocated), and a float
    tensor holding NaN or Inf (the weights, the optimizer's slots) is
    damage too; only ``best_val_nats`` is infinite before a first validation.
    """
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{prefix}.index: damaged ({first_line(e)})"
    data = sorted(prefix.parent.glob(glob_escape(prefix.name) + ".data-*"))
    where = str(data[0]) if len(data) == 1 else f"{prefix}.data-*"
    try:
        claimed, held = _claimed_bytes(reader), sum(p.stat().st_size for p in data)
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{prefix}.index: damaged ({first_line(e)})"
    if claimed > held:  # tensors are stored whole: the data cut short, or an index claiming more (never allocated)
        return (f"{where}: damaged ({held:,} bytes, but {prefix.name}.index lists {claimed:,} bytes of tensors: "
                f"cut short, or the index is not its own)")
    try:
        for name in reader.get_variable_to_dtype_map():
            value = reader.get_tensor(name)
            if not name.startswith(MAY_BE_INFINITE) and _not_finite(value):
                return f"{where}: damaged ({name.split('/.ATTRIBUTES')[0]} holds NaN or Inf)"
    except Exception as e:  # noqa: BLE001 - see the docstring
        return f"{where}: damaged ({first_line(e)})"
    return None


def _claimed_bytes(reader) -> int:
    """The bytes that the numeric tensors an index lists take, by their shapes and types (strings aside)."""
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return sum(int(np.prod(shapes[name], dtype=np.float64)) * dtypes[name].size
               for name in shapes if dtypes[name] != tf.string)


def _not_finite(value) -> bool:
    a = np.asarray(value)
    return a.dtype.kind == "f" and not np.isfinite(a).all()


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
    if stepweights.read(prefix) is None:  # missing, stale or failing any check (stepweights.load): rebuilt
        save_step_weights(weights, prefix)
    return cfg, vocab, model, weights


def _load(run: RunPaths, checkpoint: str) -> tuple[TrainConfig, Vocab, Any, str]:
    """``(config, vocab, model, checkpoint prefix)`` of the run's ``checkpoint``."""
    cfg = run.read_config()
    vocab = run.read_vocab()
    prefix = latest_checkpoint(run, checkpoint)
    check_shapes(run, cfg, vocab, prefix)  # before the model is built: an edited size is one line, not an OOM
    model = build_model(cfg, vocab.size)
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise TextstreamError(f"{prefix}: cannot load checkpoint ({first_line(e)}); does config.json or "
                              f"vocab.json still describe this run?") from None
    return cfg, vocab, model, prefix


def check_shapes(run: RunPaths, cfg: TrainConfig, vocab: Vocab, prefix: str | Path) -> None:
    """A ``TextstreamError`` naming config.json or vocab.json when it does not describe the checkpoint ``prefix``.

    Read from the checkpoint's index only (``tf.train.list_variables``), before
    any model is built: layers, units and embedding width against the
    config, the number of symbols against the vocabulary.
    """
    try:
        shapes = dict(tf.train.list_variables(str(prefix)))
    except Exception as e:  # noqa: BLE001 - a damaged index: verify (latest_checkpoint) says so first
        raise TextstreamError(f"{prefix}.index: damaged ({first_line(e)})") from None
    found = model_shape(shapes)
    if found is None:
        raise TextstreamError(f"{prefix}: not a textstream checkpoint (no model/lstms, model/head variables)")
    want = {"layers": cfg.layers, "units": cfg.units, "embedding": cfg.embedding or 0}
    wrong = [k for k in want if want[k] != found[k]]
    if wrong:
        said = ", ".join(f"{k} {want[k]}" for k in wrong)
        held = ", ".join(f"{k} {found[k]}" for k in wrong)
        raise TextstreamError(f"{run.config}: {said}, but checkpoint {Path(prefix).name} holds a model of {held}: "
                              f"the file was edited or belongs to another run (restore the run's own)")
    if found["vocab_size"] != vocab.size:
        raise TextstreamError(f"{run.vocab}: {vocab.size} symbols, but checkpoint {Path(prefix).name} was trained "
                              f"with {found['vocab_size']}: the file was edited or belongs to another run")


def model_shape(shapes: dict[str, list[int]]) -> dict[str, int] | None:
    """``layers``, ``units``, ``embedding`` (0: one-hot) and ``vocab_size`` of a checkpoint's model; None if none."""
    layers = [int(m.group(1)) for name in shapes
              if (m := re.fullmatch(r"model/lstms/(\d+)/cell/recurrent_kernel/\.ATTRIBUTES/VARIABLE_VALUE", name))]
    head = shapes.get("model/head/bias/.ATTRIBUTES/VARIABLE_VALUE")
    if not layers or head is None or len(head) != 1:
        return None
    recurrent = shapes[f"model/lstms/{min(layers)}/cell/recurrent_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    embedding = shapes.get("model/encode/embeddings/.ATTRIBUTES/VARIABLE_VALUE")
    return {"layers": max(layers) + 1, "units": int(recurrent[0]), "vocab_size": int(head[0]),
            "embedding": int(embedding[1]) if embedding is not None and len(embedding) == 2 else 0}


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

