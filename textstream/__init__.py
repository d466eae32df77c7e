"""textstream: character-level LSTM language models, trained from disk, streamed out.

    from textstream import Generator
    gen = Generator.load("runs/default")
    for chunk in gen.stream("The ", temperature=0.5):
        print(chunk, end="", flush=True)

Importing ``textstream`` is cheap: names load on first use, and TensorFlow
only with what needs it (``train``, ``evaluate``, ``load_model``,
``Generator.load`` on the TensorFlow backend).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from textstream.errors import TextstreamError

__version__ = "0.1.0"

_LAZY = {
    "Vocab": "textstream.data.vocab",
    "TrainConfig": "textstream.config",
    "make_config": "textstream.config",
    "prepare": "textstream.data.preparation",
    "Prepared": "textstream.data.prepared",
    "train": "textstream.training.loop",
    "evaluate": "textstream.training.evaluation",
    "Generator": "textstream.generation.generator",
    "Session": "textstream.generation.generator",
    "load_model": "textstream.model.checkpoint",
}

__all__ = ["TextstreamError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textstream' has no attribute {name!r}")
