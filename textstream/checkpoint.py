"""Checkpoints: finding a run's newest one and loading a model from it.

    cfg, vocab, model = load_model("runs/tiny", "best")
"""
from __future__ import annotations

from pathlib import Path

from textstream._tf import tf
from textstream.config import TrainConfig
from textstream.errors import TextstreamError
from textstream.model import build_model
from textstream.run import CHECKPOINTS, RunPaths, existing_run
from textstream.vocab import Vocab


def latest_checkpoint(paths: RunPaths, which: str = "best") -> str:
    """Path prefix of the newest checkpoint of kind ``which`` ("best" or "last").

    "best" falls back to "last" for runs that never evaluated (no validation split).
    """
    if which not in CHECKPOINTS:
        raise TextstreamError(f"unknown checkpoint {which!r}; choose one of: {', '.join(CHECKPOINTS)}")
    order = [which] + (["last"] if which == "best" else [])
    for kind in order:
        prefix = tf.train.latest_checkpoint(str(paths.checkpoints(kind)))
        if prefix:
            return prefix
    raise TextstreamError(f"{paths.root}: no checkpoint yet (train first)")


def load_model(run_dir: Path | str, checkpoint: str = "best"):
    """``(config, vocab, model)`` with the weights of the run's ``checkpoint``.

    The model is a ``textstream.model.CharLSTM``; optimizer state is not loaded.
    """
    paths = existing_run(run_dir)
    cfg = TrainConfig.load(paths.config)
    vocab = Vocab.load(paths.vocab)
    model = build_model(cfg, vocab.size)
    prefix = latest_checkpoint(paths, checkpoint)
    try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise TextstreamError(f"{prefix}: cannot load checkpoint ({str(e).splitlines()[0]})") from None
    return cfg, vocab, model
