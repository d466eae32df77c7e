"""The step weights of a checkpoint and their TensorFlow-free file beside it. No TensorFlow here.

A step backend needs only a few arrays of a trained ``CharLSTM``
(``StepWeights``). Beside every checkpoint that ``generate`` may use, the
chief writes them to ``<checkpoint prefix>.step.npz`` (for example
``RUN_DIR/checkpoints/best/ckpt-1200.step.npz``), so that generation can
start without importing TensorFlow. The file is an ordinary uncompressed
``.npz`` (any numpy reads it):

    meta          a JSON string: {"format": "textstream-step/1", "layers", "units", "vocab_size",
                  "checkpoint": {"prefix": "ckpt-1200", "index_sha256": ..., "data": {file name: size}}}
    embed         (V, 4U) layer 0's input kernel row per id plus its bias (one-hot @ kernel + bias)
    recurrent_L   (U, 4U) layer L's recurrent kernel, L = 0 .. layers-1
    kernel_L      (U, 4U) layer L's input kernel, L = 1 .. layers-1
    bias_L        (4U,)   layer L's bias, L = 1 .. layers-1
    head_kernel   (U, V), head_bias (V,): the logits layer

float32, gates in Keras's order (input, forget, cell, output). The
``checkpoint`` fingerprint ties the file to its checkpoint: the prefix's
name, the sha256 of its ``.index`` file (which holds a CRC32C of every
tensor, so it changes whenever a weight does) and the name and size of each
data file. A file whose fingerprint does not match the checkpoint on disk,
or that cannot be read, is never used (``read`` returns None).

    weights = read(prefix)            # None: missing, damaged, stale or foreign
    write(weights, prefix)            # atomically; older step files in the directory are removed
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from textstream.fsutil import atomic_file, remove_quietly

FORMAT = "textstream-step/1"
SUFFIX = ".step.npz"

__all__ = ["StepWeights", "FORMAT", "SUFFIX", "path_for", "fingerprint", "read", "write", "is_current"]


@dataclass(frozen=True)
class StepWeights:
    """A trained ``CharLSTM``'s weights as a step backend uses them: float32 numpy arrays.

    ``embed`` is layer 0's kernel with the bias folded in (row ``v`` is what
    character id ``v`` adds to the gates); ``kernel``/``bias`` are layers 1
    and up; ``recurrent`` is every layer's.
    """

    embed: np.ndarray
    recurrent: tuple[np.ndarray, ...]
    kernel: tuple[np.ndarray, ...]
    bias: tuple[np.ndarray, ...]
    head_kernel: np.ndarray
    head_bias: np.ndarray

    @property
    def layers(self) -> int:
        return len(self.recurrent)

    @property
    def units(self) -> int:
        return int(self.recurrent[0].shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.head_bias.shape[0])

    @classmethod
    def from_layers(cls, lstm: Sequence[Mapping[str, np.ndarray]],
                    head: tuple[np.ndarray, np.ndarray]) -> "StepWeights":
        """From ``model.lstm_weights(model)`` and ``model.head_weights(model)`` (what ``step.TFStep`` takes)."""
        f32 = lambda a: np.ascontiguousarray(a, np.float32)  # noqa: E731
        return cls(embed=f32(np.asarray(lstm[0]["kernel"]) + np.asarray(lstm[0]["bias"])),
                   recurrent=tuple(f32(w["recurrent"]) for w in lstm),
                   kernel=tuple(f32(w["kernel"]) for w in lstm[1:]),
                   bias=tuple(f32(w["bias"]) for w in lstm[1:]),
                   head_kernel=f32(head[0]), head_bias=f32(head[1]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays under their names in the file (see the module docstring)."""
        out = {"embed": self.embed, "head_kernel": self.head_kernel, "head_bias": self.head_bias}
        out.update({f"recurrent_{i}": w for i, w in enumerate(self.recurrent)})
        out.update({f"kernel_{i + 1}": w for i, w in enumerate(self.kernel)})
        out.update({f"bias_{i + 1}": w for i, w in enumerate(self.bias)})
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], layers: int) -> "StepWeights":
        """The inverse of ``arrays``; a ``ValueError`` when a shape or type does not fit."""
        get = lambda name: np.ascontiguousarray(arrays[name], np.float32)  # noqa: E731
        w = cls(embed=get("embed"), recurrent=tuple(get(f"recurrent_{i}") for i in range(layers)),
                kernel=tuple(get(f"kernel_{i}") for i in range(1, layers)),
                bias=tuple(get(f"bias_{i}") for i in range(1, layers)),
                head_kernel=get("head_kernel"), head_bias=get("head_bias"))
        w.check()
        return w

    def check(self) -> None:
        """A ``ValueError`` unless every array has the shape the others imply."""
        v, u = self.vocab_size, self.units
        want = {"embed": (v, 4 * u), "head_kernel": (u, v), "head_bias": (v,)}
        got = {"embed": self.embed.shape, "head_kernel": self.head_kernel.shape, "head_bias": self.head_bias.shape}
        for i, w in enumerate(self.recurrent):
            want[f"recurrent_{i}"], got[f"recurrent_{i}"] = (u, 4 * u), w.shape
        for i, (k, b) in enumerate(zip(self.kernel, self.bias), 1):
            want[f"kernel_{i}"], got[f"kernel_{i}"] = (u, 4 * u), k.shape
            want[f"bias_{i}"], got[f"bias_{i}"] = (4 * u,), b.shape
        bad = [name for name in want if tuple(got[name]) != want[name]]
        if bad or len(self.kernel) != self.layers - 1 or len(self.bias) != self.layers - 1:
            raise ValueError(f"step weights of inconsistent shapes: {', '.join(bad) or 'layer count'}")


# --- the file beside a checkpoint ----------------------------------------------------------------
def path_for(prefix: str | os.PathLike) -> Path:
    """The step-weights file of the checkpoint ``prefix`` (``.../ckpt-N`` -> ``.../ckpt-N.step.npz``)."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + SUFFIX)


def fingerprint(prefix: str | os.PathLike) -> dict[str, Any]:
    """What ties a step file to the checkpoint ``prefix`` on disk: its name, its index's sha256, its data files' sizes.

    Content only (no times, no absolute paths): a run directory copied
    elsewhere keeps valid step files. An ``OSError`` when the index cannot be read.
    """
    prefix = Path(prefix)
    index = prefix.with_name(prefix.name + ".index")
    digest = hashlib.sha256(index.read_bytes()).hexdigest()
    data = {}
    with os.scandir(prefix.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix.name + ".data-"):
                data[entry.name] = entry.stat().st_size
    return {"prefix": prefix.name, "index_sha256": digest, "data": dict(sorted(data.items()))}


def write(weights: StepWeights, prefix: str | os.PathLike) -> Path:
    """Write ``weights`` beside the checkpoint ``prefix``, atomically, and remove step files of removed checkpoints.

    Call it after the checkpoint itself is written (the fingerprint is of its
    files). Returns the file's path; an ``OSError`` when it cannot be written.
    """
    path = path_for(prefix)
    meta = {"format": FORMAT, "layers": weights.layers, "units": weights.units, "vocab_size": weights.vocab_size,
            "checkpoint": fingerprint(prefix)}
    with atomic_file(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **weights.arrays())
    for old in path.parent.glob("*" + SUFFIX):
        stem = old.name[:-len(SUFFIX)]
        if not old.with_name(stem + ".index").exists():
            remove_quietly(old)  # its checkpoint is gone (CheckpointManager keeps one)
    return path


def read(prefix: str | os.PathLike) -> StepWeights | None:
    """The step weights beside the checkpoint ``prefix``, or None when missing, unreadable, stale or foreign."""
    try:
        with np.load(path_for(prefix), allow_pickle=False) as npz:
            meta = _current_meta(npz, prefix)
            return None if meta is None else StepWeights.from_arrays(npz, int(meta["layers"]))
    except Exception:  # noqa: BLE001 - see _current_meta
        return None


def is_current(prefix: str | os.PathLike) -> bool:
    """Whether the step file beside ``prefix`` is readable and matches the checkpoint (only its header is read)."""
    try:
        with np.load(path_for(prefix), allow_pickle=False) as npz:
            return _current_meta(npz, prefix) is not None
    except Exception:  # noqa: BLE001 - see _current_meta
        return False


def _current_meta(npz, prefix: str | os.PathLike) -> dict | None:
    """The file's header when it is a step file of the checkpoint ``prefix`` as it is on disk now, else None.

    Its callers treat any exception on the way (a missing or truncated file,
    an altered zip, a missing array, a bad JSON header, a checkpoint gone:
    numpy and zipfile raise many kinds) as "no usable file": a cache miss,
    never a traceback.
    """
    meta = json.loads(str(npz["meta"][()]))
    if isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("checkpoint") == fingerprint(prefix):
        return meta
    return None
