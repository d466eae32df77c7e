"""Training windows from token files, as a ``tf.data.Dataset`` of integer ids.

Nothing here holds the corpus or a list of window offsets: windows are read
from disk with ``os.pread`` (no memory map, so the page cache never counts
against this process) and the per-epoch order is a keyed pseudo-random
permutation computed on demand. A batch is a pure function of
``(seed, global step, shard)``, which makes resume exact and sharding across
workers trivial.

The stream of windows is the concatenation of epoch permutations, cut into
batches of ``batch_size``: every window is visited exactly once per epoch,
every batch is full, and an epoch boundary may fall inside a batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textstream.config import WINDOW_PHASES
from textstream.errors import TextstreamError


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A keyed bijection of ``[0, n)``, evaluated at ``index`` (int array), in O(len(index)).

    A balanced Feistel network over the smallest even bit width covering n,
    with cycle walking for values that land outside ``[0, n)``.
    """
    if n <= 1:
        return np.zeros_like(index, dtype=np.int64)
    bits = max(2, int(n - 1).bit_length())
    bits += bits & 1
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    keys = [_mix(np.array([(key * 4 + r + 1) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0] for r in range(rounds)]

    def once(v: np.ndarray) -> np.ndarray:
        left, right = v >> half, v & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << half) | right

    with np.errstate(over="ignore"):
        out = once(np.asarray(index, dtype=np.uint64))
        bad = out >= np.uint64(n)
        while bad.any():
            out[bad] = once(out[bad])
            bad = out >= np.uint64(n)
    return out.astype(np.int64)


def epoch_key(seed: int, epoch: int) -> int:
    with np.errstate(over="ignore"):
        return int(_mix(np.array([(seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFFFF)], dtype=np.uint64))[0] >> np.uint64(1))


def window_phase(seed: int, epoch: int, period: int, phases: str = "cycle") -> int:
    """The offset in ``[0, period)`` by which epoch ``epoch`` shifts its tiling of windows ``period`` long.

    ``cycle``: every offset once in each block of ``period`` epochs (a keyed
    permutation per block), so a window's exact characters, and the context
    each of them is predicted from, come back only after ``period`` epochs.
    ``random``: each epoch's offset drawn on its own,
    which repeats offsets within a few epochs (the first 16 epochs of seed 0
    with 16-character windows used 8 of the 16).
    """
    if phases == "random":
        return epoch_key(seed ^ 0x5EED, epoch) % period
    if phases != "cycle":
        raise ValueError(f"phases must be one of {WINDOW_PHASES} (got {phases!r})")
    block, i = divmod(int(epoch), period)
    return int(permute(np.array([i], dtype=np.int64), period, epoch_key(seed ^ 0x5EED, block))[0])


class TokenFile:
    """Random-access reads of ids from a raw little-endian token file."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        try:
            self.nbytes = self.path.stat().st_size
        except FileNotFoundError:
            raise TextstreamError(f"{self.path}: token file missing (prepare the corpus again)") from None
        if self.nbytes % self.dtype.itemsize:
            raise TextstreamError(f"{self.path}: size {self.nbytes} is not a multiple of {self.dtype.itemsize} "
                                  f"({self.dtype}): truncated or foreign file")
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.nbytes // self.dtype.itemsize

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` ids from position ``start`` (clipped at the end of the file)."""
        size = self.dtype.itemsize
        data = os.pread(self._open(), length * size, start * size)
        return np.frombuffer(data, dtype=self.dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``(len(starts), length)`` int32 array of the windows beginning at ``starts``."""
        fd, size = self._open(), self.dtype.itemsize
        buf = b"".join([os.pread(fd, length * size, int(s) * size) for s in starts])
        if len(buf) != len(starts) * length * size:
            raise TextstreamError(f"{self.path}: short read (file changed during training?)")
        return np.frombuffer(buf, dtype=self.dtype).reshape(len(starts), length).astype(np.int32)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self):  # file descriptors do not travel
        return {**self.__dict__, "_fd": None}


@dataclass
class Windows:
    """The training windows of one token file for one objective.

    ``sequence``: windows of ``seq_len + 1`` ids start every ``seq_len`` ids,
    shifted by a per-epoch phase in ``[0, seq_len)`` (``window_phase`` with
    ``phases``); inputs are the first ``seq_len`` ids, targets the same slice
    shifted by one.
    ``next`` (the original): windows start every ``stride`` ids; inputs are
    ``seq_len`` ids, the target is the one after them.
    """

    tokens: TokenFile
    seq_len: int
    objective: str = "sequence"
    stride: int = 3
    seed: int = 0
    phases: str = "cycle"
    carry = False  # batches are (inputs, targets); see ``CarriedWindows`` for carried state

    def __post_init__(self) -> None:
        n_ids, w = len(self.tokens), self.seq_len + 1
        if self.objective == "next":
            self.count = 0 if n_ids < w else (n_ids - w) // self.stride + 1
        else:
            self.stride = self.seq_len  # sequence windows tile the text
            self.count = max(0, (n_ids - self.seq_len) // self.seq_len)
        if self.count == 0:
            raise TextstreamError(f"{self.tokens.path}: {n_ids} characters is shorter than one training window "
                                  f"({w} characters for --seq-len {self.seq_len})")

    def phase(self, epoch: int) -> int:
        if self.objective == "next":
            return 0
        return window_phase(self.seed, epoch, self.seq_len, self.phases)

    def starts(self, positions: np.ndarray) -> np.ndarray:
        """Start offsets of the windows at global stream ``positions`` (epoch * count + rank)."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, ranks = np.divmod(positions, self.count)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            sel = epochs == e
            idx = permute(ranks[sel], self.count, epoch_key(self.seed, int(e)))
            out[sel] = idx * self.stride + self.phase(int(e))
        return out

    def batch(self, step: int, batch_size: int, shard: int = 0, num_shards: int = 1):
        """``(inputs, targets)`` of global ``step``; shard ``k`` of ``n`` gets its contiguous slice.

        inputs: int32 ``(b, seq_len)``; targets: int32 ``(b, seq_len)`` (sequence) or ``(b,)`` (next),
        with ``b = batch_size // num_shards``.
        """
        per = batch_size // num_shards
        positions = step * batch_size + shard * per + np.arange(per, dtype=np.int64)
        w = self.tokens.windows(self.starts(positions), self.seq_len + 1)
        if self.objective == "next":
            return w[:, :-1], w[:, -1]
        return w[:, :-1], w[:, 1:]

    def epoch_of(self, step: int, batch_size: int) -> float:
        """Epochs completed (fractional) after ``step`` batches."""
        return step * batch_size / self.count

    def steps_for_epochs(self, epochs: float, batch_size: int) -> int:
        return int(np.ceil(epochs * self.count / batch_size))


@dataclass
class CarriedWindows:
    """Consecutive windows for training with carried state (truncated backpropagation through time).

    As char-rnn does: each epoch cuts the token file into ``batch_size`` strips
    of ``L = len // batch_size`` ids, shifted by a per-epoch phase in
    ``[0, seq_len)`` (``window_phase``); batch row ``r`` reads its strip window after window, so
    the LSTM state a row ends one step with is the right start for its next
    step. Rows take the strips in a per-epoch shuffled order. ``batch`` also
    returns ``reset``, 1.0 for rows whose state must start from zero (the
    first step of every epoch). Windows per epoch: ``batch_size * K`` with
    ``K = (L - seq_len) // seq_len`` steps.
    """

    tokens: TokenFile
    seq_len: int
    batch_size: int
    seed: int = 0
    phases: str = "cycle"
    objective = "sequence"
    carry = True

    def __post_init__(self) -> None:
        n_ids, t, b = len(self.tokens), self.seq_len, self.batch_size
        self.strip = n_ids // b
        self.steps_per_epoch = (self.strip - t) // t
        if self.steps_per_epoch < 1:
            raise TextstreamError(f"{self.tokens.path}: {n_ids} characters is too short to carry state across "
                                  f"windows with --batch-size {b} and --seq-len {t} (needs {2 * b * t}); "
                                  f"lower them or pass --no-carry-state")
        self.count = self.steps_per_epoch * b

    def phase(self, epoch: int) -> int:
        return window_phase(self.seed, epoch, self.seq_len, self.phases)

    def batch(self, step: int, batch_size: int, shard: int = 0, num_shards: int = 1):
        """``(inputs, targets, reset)`` of global ``step``: int32 ``(b, seq_len)`` twice and float32 ``(b,)``."""
        if batch_size != self.batch_size:
            raise ValueError(f"CarriedWindows were cut for batch size {self.batch_size}, not {batch_size}")
        per = batch_size // num_shards
        epoch, k = divmod(int(step), self.steps_per_epoch)
        rows = shard * per + np.arange(per, dtype=np.int64)
        strips = permute(rows, batch_size, epoch_key(self.seed, epoch))
        starts = strips * self.strip + self.phase(epoch) + k * self.seq_len
        w = self.tokens.windows(starts, self.seq_len + 1)
        reset = np.full(per, 1.0 if k == 0 else 0.0, np.float32)
        return w[:, :-1], w[:, 1:], reset

    def epoch_of(self, step: int, batch_size: int) -> float:
        return step / self.steps_per_epoch

    def steps_for_epochs(self, epochs: float, batch_size: int) -> int:
        return int(np.ceil(epochs * self.steps_per_epoch))


def dataset(windows: Windows, batch_size: int, start_step: int, end_step: int, *,
            pipeline: int = 0, num_pipelines: int = 1, replicas_per_pipeline: int = 1):
    """``tf.data.Dataset`` of ``(inputs, targets)`` for global steps ``[start_step, end_step)``.

    For ``CarriedWindows`` the elements are ``(inputs, targets, reset)``.

    Under ``tf.distribute`` each input pipeline (worker) reads only its own
    replicas' shards of every global batch, and emits one per-replica batch
    per replica, in replica order, as ``distribute_datasets_from_function``
    expects. Ids stay integers (int32); the model one-hots them on its device.
    """
    from textstream._tf import tf

    shards = num_pipelines * replicas_per_pipeline
    if batch_size % shards:
        raise TextstreamError(f"--batch-size {batch_size} is not divisible by the {shards} replicas")
    per = batch_size // shards
    target_shape = [per] if windows.objective == "next" else [per, windows.seq_len]
    first_shard = pipeline * replicas_per_pipeline

    def load(k):
        step, local = divmod(int(k), replicas_per_pipeline)
        return windows.batch(step, batch_size, first_shard + local, shards)

    shapes = [[per, windows.seq_len], target_shape] + ([[per]] if windows.carry else [])  # reset flags

    def fetch(k):
        out = tf.numpy_function(load, [k], [tf.int32, tf.int32, tf.float32][:len(shapes)], stateful=False)
        for t, shape in zip(out, shapes):
            t.set_shape(shape)
        return tuple(out)

    ds = tf.data.Dataset.range(start_step * replicas_per_pipeline, end_step * replicas_per_pipeline)
    ds = ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
