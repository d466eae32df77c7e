"""The step backend: what ``Generator`` needs from a single-step model, and where one comes from. No TensorFlow here.

A backend advances B streams of a trained model one character at a time.
``Generator`` and ``Session`` (``textstream.generate``) talk only to these two
small interfaces, never to tensors:

* ``StepBackend``: the model (``layers``, ``units``, ``vocab_size``), makes
  ``streams(...)`` and scores sequences with ``logits`` (the equivalence check);
* ``StreamBatch``: B streams' state wherever the backend keeps it:
  ``advance`` (feed, then generate), ``copy``, and one stream's state as numpy
  (``row_state`` / ``set_row_state``);
* ``RowBatch``: B streams' state as numpy arrays that the caller owns, for a
  caller that keeps many streams and steps a different subset of them in
  every call (the continuous-batching server, ``textstream.serve``), with
  ``StepBackend.advance_rows``.

A backend must follow the sampling rules of ``textstream.sampling`` (the
noise hash of seed, position and character), so that every backend gives
the same text for the same seed, up to the last bits of its logits.

Two backends implement them:

* ``numpy`` (``textstream.npstep``): the step in numpy, from the step
  weights saved beside each checkpoint (``textstream.stepweights``); no
  TensorFlow, so the first character comes a fraction of a second after
  the process starts;
* ``tf`` (``textstream.step``): the compiled TensorFlow step (XLA); it pays
  the TensorFlow import and a compile, and is faster for many streams at once.

``load_backend`` chooses (``BACKENDS``):

* ``"auto"`` (the default): numpy. When the checkpoint has no current step
  weights file (a run from before they existed, a file damaged, stale or
  foreign), TensorFlow loads the checkpoint, the file is written again, and
  generation still runs on numpy: the same text whichever way it loaded.
* ``"numpy"``: numpy, never importing TensorFlow; a ``TextstreamError``
  when the checkpoint has no current step weights file.
* ``"tf"``: the TensorFlow step (it writes a missing step weights file too).

``backend_from_model`` (a model in memory, e.g. during training) is TensorFlow's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np

from textstream import stepweights
from textstream.errors import TextstreamError
from textstream.npstep import NumpyStep
from textstream.run import RunPaths, checkpoint_series, existing_run

if TYPE_CHECKING:  # pragma: no cover
    from textstream.config import TrainConfig
    from textstream.vocab import Vocab

BACKENDS = ("auto", "numpy", "tf")


class StreamBatch(Protocol):
    """The state of B streams (model state, seeds, positions, sampling settings) on a backend."""

    batch: int  # B

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed stream i the ids ``feed[i]`` (any length; its position stays), then generate ``k`` >= 0 ids each.

        Returns the generated ids, int (B, k). Each generated id moves its
        stream's position by one. ``advance(0, feed)`` only feeds.
        """
        ...

    def copy(self) -> "StreamBatch":
        """An independent copy: advancing one leaves the other as it was."""
        ...

    def row_state(self, row: int) -> dict[str, np.ndarray]:
        """Stream ``row``'s state: ``h``, ``c`` float32 (layers, units); ``seed`` (folded by
        ``sampling.seed_u32``), ``position`` uint32 scalars."""
        ...

    def set_row_state(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Put stream ``row`` in ``state`` (the keys and shapes of ``row_state``, already checked)."""
        ...


@dataclass
class RowBatch:
    """B streams' state as numpy arrays owned by the caller, advanced in place by ``StepBackend.advance_rows``.

    ``h``, ``c``: float32 (layers, B, units); ``seeds`` (folded by
    ``sampling.seed_u32``) and ``positions``: uint32 (B,); ``temperature``:
    float32 (B,); ``top_p``: float32 (B,), where a row with ``top_p >= 1`` is
    sampled exactly as without top-p (so rows with and without it share a call).
    """

    h: np.ndarray
    c: np.ndarray
    seeds: np.ndarray
    positions: np.ndarray
    temperature: np.ndarray
    top_p: np.ndarray

    @property
    def batch(self) -> int:
        """B, the number of rows."""
        return int(self.seeds.shape[0])


class StepBackend(Protocol):
    """A single-step model: the weights of a trained ``CharLSTM``, ready to advance streams."""

    layers: int
    units: int
    vocab_size: int

    def streams(self, seeds: Sequence[int], temperatures: Sequence[float], top_k: int | None = None,
                top_p: float | None = None) -> StreamBatch:
        """B = ``len(seeds)`` streams in the zero state at position 0, stream i with ``seeds[i]`` and
        ``temperatures[i]`` (already checked by ``sampling.check_request``)."""
        ...

    def advance_rows(self, rows: RowBatch, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed row i the ids ``feed[i]`` (any length), then generate ``k`` >= 0 ids per row: int (B, k).

        Updates ``rows.h``, ``rows.c`` and ``rows.positions`` in place. Row i's
        ids depend only on row i (its state, seed, position and settings), never
        on the other rows or on B, so any subset of streams can share a call.
        """
        ...

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one at a time from the zero state: float (B, T, V)."""
        ...


def load_backend(run_dir: str | Path, checkpoint: str = "best",
                 backend: str = "auto") -> tuple["TrainConfig", "Vocab", StepBackend]:
    """``(config, vocab, backend)`` for a run directory's ``checkpoint`` ("best" or "last") on ``backend``.

    ``backend``: one of ``BACKENDS`` (see the module docstring).
    """
    if backend not in BACKENDS:
        raise TextstreamError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    run = existing_run(run_dir)
    checkpoint_series(checkpoint)  # an unknown name is an error on every path
    if backend != "tf":
        found = _numpy_backend(run, checkpoint)
        if found is not None:
            return found
        if backend == "numpy":
            raise TextstreamError(f"{run.root}: the {checkpoint} checkpoint has no current step weights file "
                                  f"(ckpt-N.step.npz); load it once with the auto or tf backend to write it")
    try:
        from textstream import checkpoint as checkpoints  # TensorFlow: only to read a checkpoint
    except ModuleNotFoundError as e:
        if e.name not in ("tensorflow", "tf_keras"):
            raise
        raise TextstreamError(f"{run.root}: the {checkpoint} checkpoint has no current step weights file "
                              f"and TensorFlow, which reads checkpoints, is not installed") from None
    cfg, vocab, model, weights = checkpoints.load_for_generation(run.root, checkpoint)
    if backend == "tf":
        from textstream.step import StepModel

        return cfg, vocab, StepModel.from_model(model)
    return cfg, vocab, NumpyStep(weights)


def _numpy_backend(run: RunPaths, checkpoint: str) -> tuple["TrainConfig", "Vocab", StepBackend] | None:
    """The numpy backend from the step weights file of the run's ``checkpoint``; None when there is no current one.

    The file must match its checkpoint (``stepweights.read``) and the run's
    config and vocabulary (its shapes).
    """
    prefix = run.newest_checkpoint(checkpoint)
    weights = stepweights.read(prefix) if prefix is not None else None
    if weights is None:
        return None
    cfg, vocab = run.read_config(), run.read_vocab()
    if (weights.layers, weights.units, weights.vocab_size) != (cfg.layers, cfg.units, vocab.size):
        return None
    return cfg, vocab, NumpyStep(weights)


def backend_from_model(model) -> StepBackend:
    """The backend for a ``CharLSTM`` in memory (a snapshot of its weights now), e.g. during training."""
    from textstream.step import StepModel  # TensorFlow (the model in memory has loaded it already)

    return StepModel.from_model(model)
