"""A prepared corpus read back: ``Prepared`` and ``load_prepared``. No TensorFlow here.

A prepared corpus directory (``textstream.data.preparation.prepare`` writes
it) holds ``vocab.json`` (written last: the commit marker), ``train.bin``
and ``val.bin``. Loading checks that each is a regular file (a FIFO in its
place is one line, never a hang) and each token file's size against the
counts ``vocab.json`` records, so a truncated or foreign file is one line
naming it. A process that uses the files for long (``train``) holds the
corpus (``Prepared.hold``: ``cache.Lease``), and ``cache clean`` leaves it
alone meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textstream.claims import check_regular
from textstream.data.cache import Lease, mark_used
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError


@dataclass
class Prepared:
    """A prepared corpus: its directory, vocabulary and split sizes, in characters and in ids (tokens).

    The two counts are equal for character tokens; ``train_tokens``/``val_tokens``
    default to the character counts.
    """

    dir: Path
    vocab: Vocab
    train_chars: int
    val_chars: int
    cached: bool
    train_tokens: int | None = None
    val_tokens: int | None = None
    lease: Lease | None = field(default=None, repr=False, compare=False)

    def hold(self) -> "Prepared":
        """Mark the files in use by this process until ``release`` (or its end): ``cache clean`` keeps them.

        A ``TextstreamError`` when they were removed before the lease was taken.
        """
        if self.lease is None:
            self.lease = Lease(self.dir)
            if not (self.dir / "vocab.json").is_file():
                self.release()
                raise TextstreamError(f"{self.dir}: the prepared corpus was removed as it was being opened "
                                      f"(textstream cache clean?); run the command again")
        return self

    def release(self) -> None:
        """End ``hold``."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def __post_init__(self) -> None:
        if self.train_tokens is None:
            self.train_tokens = self.train_chars
        if self.val_tokens is None:
            self.val_tokens = self.val_chars

    @property
    def train_path(self) -> Path:
        return self.dir / "train.bin"

    @property
    def val_path(self) -> Path:
        return self.dir / "val.bin"

    def ids(self, split: str) -> np.ndarray:
        """The ids of ``"train"`` or ``"val"``: a read-only memory map (an empty array for 0 chars)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (got {split!r})")
        n = self.train_tokens if split == "train" else self.val_tokens
        path = self.train_path if split == "train" else self.val_path
        if n == 0:
            empty = np.empty(0, dtype=self.vocab.dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(path, dtype=self.vocab.dtype, mode="r", shape=(n,))


def load_prepared(dir: Path) -> Prepared:
    """The prepared corpus in ``dir`` (as written by ``prepare``), checked against its vocab.json; marked used."""
    d = Path(dir)
    try:
        check_regular(d / "vocab.json")
    except FileNotFoundError:
        raise TextstreamError(f"{d / 'vocab.json'}: missing (not a prepared corpus)") from None
    vocab = Vocab.load(d / "vocab.json")
    train, val = (_split_size(d / f"{split}.bin", vocab, split) for split in ("train", "val"))
    mark_used(d)
    return Prepared(d, vocab, train_chars=train[0], val_chars=val[0], cached=True, train_tokens=train[1],
                    val_tokens=val[1])


def _split_size(path: Path, vocab: Vocab, split: str) -> tuple[int, int]:
    """``(characters, ids)`` of token file ``path``, checked against ``vocab.meta`` (the size tells without it)."""
    size = vocab.dtype.itemsize
    try:
        got = check_regular(path).st_size
    except FileNotFoundError:
        raise TextstreamError(f"{path}: missing (prepare the corpus again)") from None
    meta = vocab.meta
    try:
        n = int(meta[f"{split}_tokens"])
    except (KeyError, TypeError, ValueError):
        n = got // size
    if got != n * size:
        raise TextstreamError(f"{path}: {got} bytes, expected {n * size} ({n} ids of {vocab.dtype}): "
                              f"truncated or from another preparation (prepare the corpus again)")
    try:
        chars = int(meta.get(f"{split}_chars", n))
    except (TypeError, ValueError):
        chars = n
    return chars, n
