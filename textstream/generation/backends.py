"""Where a step backend comes from: ``load_backend`` (a run directory) and ``backend_from_model``. No TensorFlow here.

Two backends implement ``textstream.generation.interface``:

* ``numpy`` (``step_np``): the step in numpy, from the step weights saved
  beside each checkpoint (``textstream.model.stepweights``); no TensorFlow,
  so the first character comes a fraction of a second after the process starts;
* ``tf`` (``step_tf``): the compiled TensorFlow step (XLA); it pays the
  TensorFlow import and a compile, and is faster for many streams at once.

``load_backend`` chooses (``BACKENDS``):

* ``"auto"`` (the default): numpy. When the checkpoint has no current step
  weights file (missing, damaged, stale or foreign), TensorFlow loads the
  checkpoint, the file is written again, and generation still runs on
  numpy: the same text whichever way it loaded.
* ``"numpy"``: numpy, never importing TensorFlow; a ``TextstreamError``
  when the checkpoint has no current step weights file.
* ``"tf"``: the TensorFlow step (it writes a missing step weights file too).

``backend_from_model`` (a model in memory, e.g. during training) is TensorFlow's.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textstream.errors import TextstreamError
from textstream.generation.interface import StepBackend
from textstream.generation.step_np import NumpyStep
from textstream.model import stepweights
from textstream.model.run import RunPaths, checkpoint_series, existing_run

if TYPE_CHECKING:  # pragma: no cover
    from textstream.config import TrainConfig
    from textstream.data.vocab import Vocab

BACKENDS = ("auto", "numpy", "tf")


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
        from textstream.model import checkpoint as checkpoints  # TensorFlow: only to read a checkpoint
    except ModuleNotFoundError as e:
        if e.name not in ("tensorflow", "tf_keras"):
            raise
        raise TextstreamError(f"{run.root}: the {checkpoint} checkpoint has no current step weights file "
                              f"and TensorFlow, which reads checkpoints, is not installed") from None
    cfg, vocab, model, weights = checkpoints.load_for_generation(run.root, checkpoint)
    if backend == "tf":
        from textstream.generation.step_tf import TFStep

        return cfg, vocab, TFStep.from_model(model)
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
    from textstream.generation.step_tf import TFStep  # TensorFlow (the model in memory has loaded it already)

    return TFStep.from_model(model)
