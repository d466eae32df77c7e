"""``prepare()``: sources -> token files, in bounded memory. No TensorFlow here.

    from textstream.data.preparation import prepare
    prep = prepare(["corpus.txt"], "data/corpus")
    prep.vocab.decode(prep.ids("val")[:80])

The output directory holds three files:

* ``train.bin``, ``val.bin``: raw little-endian ids (``vocab.dtype``: uint8 up to
  256 symbols, uint16 up to 65536, else uint32), the head and the tail of the text
  (split by characters); with byte tokens, the UTF-8 bytes of the normalised text;
* ``vocab.json``: the ``Vocab`` (what ids stand for, chars in id order, counts, the
  options used) and, in its metadata, ``train_chars``, ``val_chars`` (characters),
  ``train_tokens``, ``val_tokens`` (ids), ``distinct_chars``, ``fingerprint``,
  ``cache_key``, ``sources``. It is written last: it is the commit marker.

What ids stand for (``tokens``: ``chars``, ``bytes`` or ``auto``) is decided
after the count, from the histogram of the characters (``vocab.vocab_for``).

The sources are streamed in fixed-size byte chunks, in two passes: a count of
the characters (while a thread computes the sha256 of the bytes, the
fingerprint behind the cache key: a hit stops the count), then the encoding.
Reading, decoding and normalising are in ``textio``: each chunk becomes a numpy
array of code points (``np.add.at`` into a 0x110000 histogram, then a lookup
table from code point to id): memory is O(chunk), never O(text), and no Python
code runs per character.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from textstream.claims import claim_directory, entries_of, make_directory
from textstream.config import check_prepare_options
from textstream.data.cache import PREPARED_FILES, in_use
from textstream.data.prepared import Prepared, load_prepared
from textstream.data.sources import cache_dir, describe, resolve
from textstream.data.textio import Fingerprint, codepoints, count, gather, latin1, read_texts
from textstream.data.tokens import vocab_for
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.fsutil import PendingFile, fsync_dir, start_writeback
from textstream.progress import Progress, ProgressFn
from textstream.temporaries import remove_stale, subdirectories

TOKENS_FORMAT = 1  # bump when the token files or the normalisation change: it invalidates caches
N_CODEPOINTS = 0x110000
_WRITEBACK_EVERY = 1 << 26  # bytes of token files between writeback kicks


def _cached(d: Path, key: str) -> Prepared | None:
    """The preparation in ``d`` if it is the one keyed ``key`` and intact, else None (a damaged one is redone)."""
    try:
        prep = load_prepared(d)
    except TextstreamError:
        return None
    return prep if prep.vocab.meta.get("cache_key") == key else None


# --- prepare ---------------------------------------------------------------------------------
def prepare(sources: Sequence, out_dir: Path | None = None, *, lowercase: bool = False,
            val_fraction: float = 0.05, max_vocab: int | None = None, tokens: str = "auto", errors: str = "strict",
            min_chars: int = 61, chunk_size: int = 1 << 22, on_progress: ProgressFn | None = None,
            force: bool = False) -> Prepared:
    """Encode ``sources`` into token files in ``out_dir`` (default: the cache, keyed by content and options).

        from textstream import prepare
        prep = prepare(["corpus.txt"], "data/corpus")
        print(prep.vocab.decode(prep.ids("val")[:80]))

    Args:
        sources: files, directories (their text files, recursively, in sorted
            order) and registry names (downloaded once into the cache).
        out_dir: where to write ``vocab.json``, ``train.bin``, ``val.bin``;
            None: a directory of the cache keyed by the sources' bytes and
            the options.
        lowercase, val_fraction, max_vocab, tokens, errors: the corpus
            options (``textstream prepare --help``); ``tokens`` is "chars",
            "bytes" or "auto" (``data.tokens.vocab_for``). The validation split
            is the tail ``val_fraction`` of the characters in every mode.
        min_chars: the fewest training characters accepted (one window).
        chunk_size: bytes read at a time; memory is O(chunk), never O(text).
        on_progress: ``on_progress(label, done, total)`` for each pass.
        force: write into an ``out_dir`` that holds other files (never a
            run directory or an export; see ``claims.claim_directory``).
            Without it, ``out_dir`` must be missing, empty or an earlier
            preparation's.

    Returns:
        ``Prepared``: the directory, its ``Vocab``, the split sizes, and
        ``cached`` (True when an identical preparation was found and nothing
        was re-encoded).

    Raises:
        TextstreamError: a missing, binary or non-UTF-8 source, an unknown
            corpus name, a text shorter than ``min_chars``, an output
            directory that holds something else or cannot be written, a
            full disk: one line naming the file. Nothing half-written stays.
    """
    options = _options(lowercase, val_fraction, max_vocab, tokens, errors, chunk_size)
    root = Path(out_dir) if out_dir is not None else cache_dir() / "prepared"
    if out_dir is not None:  # before any work, downloads too: never over another kind's files
        claim_directory(root, what="prepare", kind="prepared corpus", own=is_prepared_dir, force=force,
                        writes=sorted(PREPARED_FILES))
    created, unwritable = _claim_output(root, explicit=out_dir is not None)
    try:
        paths, stats = _sources(sources, on_progress)
        total_bytes = sum(st.st_size for st in stats)
        texts = partial(read_texts, paths, stats, chunk_size=chunk_size, errors=errors, lowercase=lowercase)

        # pass 1: count the characters while a thread hashes the bytes; a cache hit stops the count
        progress = Progress(on_progress, "count", total_bytes)
        with Fingerprint(paths, stats, max(chunk_size, 1 << 20), Progress(on_progress, "hash", total_bytes)) as fp:
            lookup = _CacheLookup(fp, options, root, keyed=out_dir is None)
            counted = _count_pass(texts(), progress, stop=lookup.poll)
            hit = lookup.wait()
        if hit is not None:
            _check_min(hit.train_chars, min_chars, paths)
            return hit
        if unwritable is not None:
            raise unwritable
        out = lookup.out
        if in_use(out):
            raise TextstreamError(f"{out}: holds a prepared corpus that a running process (a train) uses; "
                                  f"prepare into another directory, or wait for it to end")
        if out != root:
            created = _make_dir(out) + created
        assert counted is not None  # only a hit stops the count
        counts, total = counted
        n_val = math.floor(total * val_fraction)
        n_train = total - n_val
        _check_min(n_train, min_chars, paths)  # ids >= characters: enough characters is enough ids
        meta = {"tokens_format": TOKENS_FORMAT, "cache_key": lookup.key, "fingerprint": lookup.digest,
                "train_chars": n_train, "val_chars": n_val, "source_bytes": total_bytes,
                "sources": [str(p) for p in paths]}
        vocab, kept = vocab_for(counts, total, tokens=tokens, max_vocab=max_vocab, options=options, meta=meta)
        del counts, counted

        # pass 2: encode, then commit (vocab.json last)
        table = _ByteTable() if vocab.is_bytes else _IdTable(vocab, kept)
        _encode(texts(), out, vocab, table, n_train, total, Progress(on_progress, "encode", total_bytes),
                what=describe(paths))
    except BaseException:
        _remove_dirs(created)
        raise
    return Prepared(out, vocab, n_train, n_val, cached=False, train_tokens=vocab.meta["train_tokens"],
                    val_tokens=vocab.meta["val_tokens"])


def _options(lowercase: bool, val_fraction: float, max_vocab: int | None, tokens: str, errors: str,
             chunk_size: int) -> dict:
    """The options that shape the output (they are part of the cache key), checked."""
    check_prepare_options(lowercase=bool(lowercase), val_fraction=val_fraction, max_vocab=max_vocab, tokens=tokens,
                          errors=errors)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    return {"lowercase": bool(lowercase), "val_fraction": float(val_fraction), "max_vocab": max_vocab,
            "tokens": tokens, "errors": errors}


def _sources(sources: Sequence, on_progress: ProgressFn | None) -> tuple[list[Path], list[os.stat_result]]:
    """The source files (see ``corpus.resolve``) and their ``os.stat``; an empty or unreadable one raises."""
    paths = resolve(list(sources or []), on_progress)
    stats = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            raise TextstreamError(f"{p}: cannot read ({e.strerror or e})") from None
        if st.st_size == 0:
            raise TextstreamError(f"{p}: empty file")
        stats.append(st)
    return paths, stats


def _check_min(n_train: int, min_chars: int, paths: Sequence[Path]) -> None:
    if n_train < min_chars:
        raise TextstreamError(f"{describe(paths)}: corpus too short: {n_train} training characters, need at least "
                              f"{min_chars} (one window of seq_len + 1)")


# --- the output directory --------------------------------------------------------------------
def _claim_output(root: Path, *, explicit: bool) -> tuple[list[Path], TextstreamError | None]:
    """Make ``root`` ready for the output: the directories created, and a problem to raise on a cache miss only.

    An explicit output directory that cannot be written but holds a
    vocab.json may hold this very preparation: its problem waits for the lookup.
    Temporaries left there by preparations that were killed are removed (in
    the cache: in every prepared directory), those of running ones kept.
    """
    try:
        created = _make_dir(root)
    except TextstreamError as e:
        if explicit and (root / "vocab.json").is_file():
            return [], e
        raise
    remove_stale([root] if explicit else [root, *subdirectories(root)])
    return created, None


def is_prepared_dir(d: Path) -> bool:
    """Whether directory ``d`` holds only what ``prepare`` writes (an earlier preparation, whole or stopped)."""
    return set(entries_of(d)) <= PREPARED_FILES


def _make_dir(d: Path) -> list[Path]:
    """Create ``d`` (and parents) and probe that a file can be written there; the directories created, deepest first.

    Raises ``TextstreamError`` (having removed what it created) when ``d`` cannot hold the output.
    """
    missing = make_directory(d)
    try:
        PendingFile(d / "vocab.json").discard()  # a temporary, as the token files will be
    except OSError as e:
        _remove_dirs(missing)
        raise TextstreamError(f"{d}: output directory is not writable ({e.strerror or e})") from None
    return missing


def _remove_dirs(created: list[Path]) -> None:
    for p in created:  # deepest first; stops at the first that is not empty (or not there)
        try:
            p.rmdir()
        except OSError:
            break


# --- pass 1: count and cache lookup --------------------------------------------------------
def _count_pass(texts: Iterable[tuple[int, str]], progress: Progress,
                stop: Callable[[], bool]) -> tuple[np.ndarray, int] | None:
    """``(code point histogram, number of characters)`` of ``texts``; None when ``stop()`` said so."""
    counts = np.zeros(N_CODEPOINTS, dtype=np.int64)
    total = 0
    for done, text in texts:
        cps = codepoints(text)
        count(counts, cps)
        total += len(cps)
        progress.update(done)
        if stop():
            return None
    return counts, total


class _CacheLookup:
    """The cache key once the fingerprint is known, and the output directory's preparation if it has that key.

    ``poll()`` during the count (True on a hit: stop counting), ``wait()``
    after it: either way the lookup happens once. With ``keyed``, the output
    directory is ``root/<key>`` (the cache), else ``root`` itself.
    """

    def __init__(self, fingerprint: Fingerprint, options: dict, root: Path, *, keyed: bool):
        self._fingerprint, self._options, self._root, self._keyed = fingerprint, options, root, keyed
        self.out = root
        self.digest: str | None = None
        self.key: str | None = None
        self.hit: Prepared | None = None

    def poll(self) -> bool:
        if self.key is None:
            digest = self._fingerprint.poll()
            if digest is None:
                return False
            self._look_up(digest)
        return self.hit is not None

    def wait(self) -> Prepared | None:
        if self.key is None:
            self._look_up(self._fingerprint.wait())
        return self.hit

    def _look_up(self, digest: str) -> None:
        key_src = json.dumps({"tokens_format": TOKENS_FORMAT, "fingerprint": digest, "options": self._options},
                             sort_keys=True)
        self.digest, self.key = digest, hashlib.sha256(key_src.encode()).hexdigest()[:24]
        if self._keyed:
            self.out = self._root / self.key
        self.hit = _cached(self.out, self.key)


# --- pass 2: encode --------------------------------------------------------------------------
class _IdTable:
    """Text -> the bytes of its ids (``vocab.dtype``), through a table from code point to id."""

    def __init__(self, vocab: Vocab, kept: np.ndarray):
        dtype = vocab.dtype
        lut = np.full(N_CODEPOINTS, vocab.oov_id or 0, dtype=dtype)
        lut[kept] = np.arange(len(kept), dtype=dtype)
        self.itemsize = dtype.itemsize
        self._table8 = lut[:256].tobytes() if dtype.itemsize == 1 else None  # bytes.translate table: latin-1 text
        self._luts = {1: lut[:256].copy(), 2: lut[:1 << 16].copy(), 4: lut}  # small tables for narrow code points

    def __call__(self, text: str) -> memoryview:
        one = latin1(text) if self._table8 is not None else None
        if one is not None:
            return memoryview(one.translate(self._table8))
        cps = codepoints(text)
        return memoryview(gather(self._luts[cps.dtype.itemsize], cps)).cast("B")


class _ByteTable:
    """Text -> its UTF-8 bytes, which are its ids with byte tokens."""

    itemsize = 1

    def __call__(self, text: str) -> bytes:
        return text.encode("utf-8")


def _encode(texts: Iterable[tuple[int, str]], out: Path, vocab: Vocab, table: _IdTable | _ByteTable, n_train: int,
            total: int, progress: Progress, *, what: str) -> None:
    """Write the ids of ``texts``: the first ``n_train`` characters' to train.bin, the rest to val.bin.

    The numbers of ids go into ``vocab.meta`` (``train_tokens``, ``val_tokens``); vocab.json is written last.
    """
    sizes = _expected_sizes(vocab, n_train, total, progress.total or 0)
    with PendingFile(out / "train.bin", size=sizes[0]) as train, PendingFile(out / "val.bin", size=sizes[1]) as val:
        n, n_ids = _write_ids(texts, table, n_train, (train, val), progress)
        if n != total:
            raise TextstreamError(f"{what}: the text changed while it was being prepared "
                                  f"({total} characters counted, {n} encoded); try again")
        vocab.meta.update(train_tokens=n_ids[0], val_tokens=n_ids[1])
        train.sync()
        val.sync()
        # commit: drop the old marker, move the token files in, write the marker last
        (out / "vocab.json").unlink(missing_ok=True)
        fsync_dir(out)
        train.commit(sync_dir=False)
        val.commit()
        vocab.save(out / "vocab.json")


def _expected_sizes(vocab: Vocab, n_train: int, total: int, source_bytes: int) -> tuple[int, int]:
    """The bytes train.bin and val.bin will take (for a full disk's message): exact for characters, about for bytes."""
    if vocab.is_bytes:  # the UTF-8 of the normalised text: about the sources' size
        share = n_train / total if total else 1.0
        return round(source_bytes * share), round(source_bytes * (1 - share))
    size = vocab.dtype.itemsize
    return n_train * size, (total - n_train) * size


def _write_ids(texts: Iterable[tuple[int, str]], table: _IdTable | _ByteTable, n_train: int,
               files: tuple[PendingFile, PendingFile], progress: Progress) -> tuple[int, tuple[int, int]]:
    """Write the ids of ``texts``' first ``n_train`` characters to ``files[0]``, of the rest to ``files[1]``.

    Returns the number of characters, and of ids written to each file.
    """
    pos = kicked = 0
    written = [0, 0]
    for done, text in texts:
        k = min(max(n_train - pos, 0), len(text))  # characters of this piece that go to train
        parts = ((0, text),) if k == len(text) else ((1, text),) if k == 0 else ((0, text[:k]), (1, text[k:]))
        for which, part in parts:
            buf = table(part)
            files[which].write(buf)
            written[which] += len(buf)
        pos += len(text)
        if sum(written) - kicked >= _WRITEBACK_EVERY:
            start_writeback(f.file for f in files)
            kicked = sum(written)
        progress.update(done)
    size = table.itemsize
    return pos, (written[0] // size, written[1] // size)
