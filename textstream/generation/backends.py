"""Where a step backend comes from: ``load_backend`` (a run directory) and ``backend_from_model``. No TensorFlow here.

Two backends implement ``textstream.generation.interface``:

* ``numpy`` (``step_np``): the step in numpy, from the step weights saved
  beside each checkpoint (``textstream.model.stepweights``); no TensorFlow,
  so the first character comes a fraction of a second after the process starts;
* ``tf`` (``step_tf``): the compiled TensorFlow step (XLA); it pays the
  TensorFlow import and a compile, and runs even one stream on every core.

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
        found = _numpy_backend(run, checkpoint, strict=backend == "numpy")
        if found is not None:
            return found
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


def _numpy_backend(run: RunPaths, checkpoint: str, *,
                   strict: bool) -> tuple["TrainConfig", "Vocab", StepBackend] | None:
    """The numpy backend from the step weights file of the run's ``checkpoint``; None when there is no usable one.

    The file must pass every check of ``stepweights.load`` (it matches its
    checkpoint; finite, well-formed arrays). ``strict`` (``--backend numpy``):
    a ``TextstreamError`` naming the file instead of None, with advice that
    works (the auto backend writes or rebuilds the file from the
    checkpoint). A config or vocabulary that does not describe the weights
    is one line naming it, whatever the backend.
    """
    found = run.chosen_series(checkpoint)
    if found.prefix is None or found.problem:
        if strict:
            raise TextstreamError(found.problem or f"{run.root}: no checkpoint yet (train first)")
        return None
    try:
        weights = stepweights.load(found.prefix)
    except stepweights.StepFileError as e:
        if strict:
            how = "writes it" if e.missing else "rebuilds it from the checkpoint"
            raise TextstreamError(f"the {checkpoint} checkpoint has no current step weights file: {e}; --backend "
                                  f"numpy reads no checkpoint: generate once with --backend auto (the default), "
                                  f"which {how}") from None
        return None
    cfg, vocab = run.read_config(), run.read_vocab()
    if (weights.layers, weights.units) != (cfg.layers, cfg.units):
        raise TextstreamError(f"{run.config}: layers {cfg.layers}, units {cfg.units}, but the step weights of "
                              f"{found.prefix.name} hold layers {weights.layers}, units {weights.units}: the file "
                              f"was edited or belongs to another run (restore the run's own)")
    if weights.vocab_size != vocab.size:
        raise TextstreamError(f"{run.vocab}: {vocab.size} symbols, but the step weights of {found.prefix.name} "
                              f"hold {weights.vocab_size}: the file was edited or belongs to another run")
    return cfg, vocab, NumpyStep(weights)


def backend_from_model(model) -> StepBackend:
    """The backend for a ``CharLSTM`` in memory (a snapshot of its weights now), e.g. during training."""
    from textstream.generation.step_tf import TFStep  # TensorFlow (the model in memory has loaded it already)

    return TFStep.from_model(model)
