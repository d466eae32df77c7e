"""Shared fixtures: run directories made without training (random weights, saved like train.py saves).

``make_run(tmp_path, text=..., **cfg_overrides)`` writes ``config.json``,
``vocab.json`` and ``checkpoints/last`` for a tiny ``CharLSTM`` over the
characters of ``text``; with ``val_text`` it also writes a prepared corpus
directory (``val.bin`` + ``vocab.json``) and ``data.json`` pointing at it.
Weights are random, scaled up (``scale``) so the next-character
distributions are far from flat.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TEXT = ("It was the best of times, it was the worst of times,\n"
        "it was the age of wisdom, it was the age of foolishness;\n"
        "THE END? 0123456789 -- (quoted) 'yes' \"no\" !\n")


def make_run(root: Path, text: str = TEXT, *, name: str = "run", scale: float = 3.0, seed: int = 0,
             val_text: str | None = None, checkpoint: str = "last", **cfg_overrides) -> Path:
    """A run directory holding a tiny model with random weights; returns its path."""
    from textstream._tf import tf
    from textstream.config import make_config
    from textstream.model.network import build_model
    from textstream.data.vocab import Vocab

    run = Path(root) / name
    run.mkdir(parents=True)
    cfg = make_config("tiny", seed=seed, **cfg_overrides)
    vocab = Vocab(chars=sorted(set(text)))
    model = build_model(cfg, vocab.size)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")
    vocab.save(run / "vocab.json")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run / "checkpoints" / checkpoint),
                                         max_to_keep=1)
    manager.save()
    if val_text is not None:
        prep = Path(root) / f"{name}_prepared"
        prep.mkdir()
        vocab.save(prep / "vocab.json")
        vocab.encode(val_text).astype(vocab.dtype).tofile(prep / "val.bin")
        (prep / "train.bin").write_bytes(b"")
        (run / "data.json").write_text(json.dumps({"dir": str(prep), "sources": []}), encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One-layer, 16-unit, one-hot, ``sequence`` model over ``TEXT``'s characters, with a validation split."""
    return make_run(tmp_path_factory.mktemp("runs"), val_text=TEXT * 2)


@pytest.fixture(scope="session")
def tiny_gen(tiny_run):
    """``Generator`` for ``tiny_run`` (compiled once for the whole test session)."""
    from textstream.generation.generator import Generator

    return Generator.load(tiny_run)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow tests (real corpora, several processes); CI passes it")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with pytest --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
