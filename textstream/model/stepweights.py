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
or that fails any check of ``load`` (it is read without trusting it: see
there; NaN or Inf in an array is damage), is never used.

    weights = load(prefix)            # StepFileError naming the file: missing, damaged, stale or foreign
    weights = read(prefix)            # the same, None instead of the error
    write(weights, prefix)            # atomically; older step files in the directory are removed
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from textstream.claims import open_regular, read_regular
from textstream.errors import TextstreamError
from textstream.fsutil import atomic_file, remove_quietly

FORMAT = "textstream-step/1"
SUFFIX = ".step.npz"
MAX_META_BYTES = 1 << 16  # the JSON header member: a few hundred bytes

__all__ = ["StepWeights", "StepFileError", "FORMAT", "SUFFIX", "path_for", "fingerprint", "load", "read", "write",
           "is_current"]


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
    digest = hashlib.sha256(read_regular(index)).hexdigest()
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


class StepFileError(TextstreamError):
    """The step weights file of a checkpoint cannot be used: missing, stale (another checkpoint's), or damaged.

    The message names the file and says which; ``missing`` tells the first apart.
    """

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def load(prefix: str | os.PathLike) -> StepWeights:
    """The step weights beside the checkpoint ``prefix``, every array checked; a ``StepFileError`` otherwise.

    Read without trusting the file: a regular file (a FIFO is refused, not
    waited on), a zip whose members are all stored (a compressed member is
    refused before it is inflated), a JSON header whose fingerprint matches
    the checkpoint on disk, then each array's own header (name, shape,
    float32) and size checked against what the header implies before its
    data is read, and the data finite (no NaN or Inf).
    """
    path = path_for(prefix)
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise StepFileError(f"{path}: missing", missing=True) from None
    except OSError as e:
        raise StepFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except TextstreamError as e:
        raise StepFileError(str(e)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                return _checked(zf, path, prefix)
        except StepFileError:
            raise
        except Exception as e:  # noqa: BLE001 - zipfile and numpy report damaged bytes in many types
            raise StepFileError(f"{path}: damaged ({first_line(e)})") from None


def read(prefix: str | os.PathLike) -> StepWeights | None:
    """The step weights beside the checkpoint ``prefix``, or None when missing, damaged, stale or foreign (``load``)."""
    try:
        return load(prefix)
    except StepFileError:
        return None


def is_current(prefix: str | os.PathLike) -> bool:
    """Whether the step file beside ``prefix`` passes every check of ``load`` (then generation may use it)."""
    return read(prefix) is not None


def _checked(zf: zipfile.ZipFile, path: Path, prefix: str | os.PathLike) -> StepWeights:
    """The weights in the open step file ``zf``, read as ``load`` says (every problem: ``StepFileError``)."""
    members = {info.filename: info for info in zf.infolist()}
    packed = sorted(name for name, info in members.items() if info.compress_type != zipfile.ZIP_STORED)
    if packed:
        raise StepFileError(f"{path}: damaged ({packed[0]} is compressed; a step file is stored uncompressed)")
    if "meta.npy" not in members or members["meta.npy"].file_size > MAX_META_BYTES:
        raise StepFileError(f"{path}: damaged (no readable meta header)")
    with zf.open("meta.npy") as fp:
        meta = json.loads(str(np.lib.format.read_array(io.BytesIO(fp.read(MAX_META_BYTES)), allow_pickle=False)[()]))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StepFileError(f"{path}: not a textstream step file (format {_short(meta)})")
    sizes = [meta.get(k) for k in ("layers", "units", "vocab_size")]
    if not all(type(n) is int and n >= 1 for n in sizes):
        raise StepFileError(f"{path}: damaged (its header's layers, units and vocab_size are not counts)")
    if meta.get("checkpoint") != fingerprint(prefix):
        raise StepFileError(f"{path}: stale (written for another state of checkpoint {Path(prefix).name})")
    layers, units, vocab = sizes
    if len(members) != 3 * layers + 2:  # meta, embed, the head's two, and three per layer but the first's one
        raise StepFileError(f"{path}: damaged ({len(members)} members, not the {3 * layers + 2} of a "
                            f"{layers}-layer model)")
    want = _shapes(layers, units, vocab)
    names = {f"{name}.npy" for name in want} | {"meta.npy"}
    if set(members) != names:
        odd = sorted(set(members) ^ names)
        raise StepFileError(f"{path}: damaged ({odd[0]}: {'unexpected' if odd[0] in members else 'missing'})")
    arrays = {name: _array(zf, members[f"{name}.npy"], shape, path) for name, shape in want.items()}
    try:
        return StepWeights.from_arrays(arrays, layers)
    except ValueError as e:
        raise StepFileError(f"{path}: damaged ({e})") from None


def _shapes(layers: int, units: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """The arrays of a step file and their shapes (the module docstring's table)."""
    want = {"embed": (vocab, 4 * units), "head_kernel": (units, vocab), "head_bias": (vocab,)}
    for i in range(layers):
        want[f"recurrent_{i}"] = (units, 4 * units)
    for i in range(1, layers):
        want[f"kernel_{i}"], want[f"bias_{i}"] = (units, 4 * units), (4 * units,)
    return want


def _array(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """One stored member: its .npy header checked (shape, float32, C order, size) before any data is read; finite."""
    with zf.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        got, fortran, dtype = read_header(fp)
        nbytes = int(np.prod(shape)) * 4
        if tuple(got) != shape or dtype != np.dtype("<f4") or fortran or info.file_size != fp.tell() + nbytes:
            raise StepFileError(f"{path}: damaged ({info.filename} is {dtype} {tuple(got)} in "
                                f"{info.file_size:,} bytes; the header says float32 {shape})")
        data = fp.read(nbytes)
    if len(data) != nbytes:
        raise StepFileError(f"{path}: damaged ({info.filename} is cut short)")
    a = np.frombuffer(data, "<f4").reshape(shape)
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):  # NaN and +-Inf reach the extremes
        raise StepFileError(f"{path}: damaged ({info.filename[:-4]} holds NaN or Inf)")
    return a


def _short(value: Any) -> str:
    text = repr(value.get("format") if isinstance(value, dict) else type(value).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line, at most 160 characters."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= 160 else line[:157] + "..."
