"""``prepare()``: sources -> token files, in bounded memory. No TensorFlow here.

    from textstream.prepare import prepare
    prep = prepare(["corpus.txt"], "data/corpus")
    prep.vocab.decode(prep.ids("val")[:80])

The output directory holds three files:

* ``train.bin``, ``val.bin``: raw little-endian ids (``vocab.dtype``: uint8 up to
  256 symbols, uint16 up to 65536, else uint32), the head and the tail of the text;
* ``vocab.json``: the ``Vocab`` (chars in id order, counts, the options used) and,
  in its metadata, ``train_chars``, ``val_chars``, ``fingerprint``, ``cache_key``,
  ``sources``. It is written last: it is the commit marker.

The sources are streamed in fixed-size byte chunks, in two passes: a count of
the characters (while a thread computes the sha256 of the bytes, the
fingerprint behind the cache key: a hit stops the count), then the encoding.
Each chunk is decoded with an incremental UTF-8 decoder (a character split
between chunks survives), normalised (CRLF -> LF, optional lowercase) and
handled by numpy as an array of code points (``np.add.at`` into a 0x110000
histogram, a lookup table from code point to id): memory is O(chunk), never
O(text), and no Python code runs per character.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from textstream.corpus import cache_dir, describe, resolve
from textstream.errors import TextstreamError
from textstream.textio import codepoints, count, gather, latin1, normalised
from textstream.vocab import OOV_CHAR, Vocab

TOKENS_FORMAT = 1  # bump when the token files or the normalisation change: it invalidates caches
N_CODEPOINTS = 0x110000
ERRORS = ("strict", "replace")
_PROGRESS_EVERY = 1 << 22
_WRITEBACK_EVERY = 1 << 26  # bytes of token files between writeback kicks

ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class Prepared:
    """A prepared corpus: its directory, vocabulary and split sizes (in characters = ids)."""

    dir: Path
    vocab: Vocab
    train_chars: int
    val_chars: int
    cached: bool

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
        n = self.train_chars if split == "train" else self.val_chars
        path = self.train_path if split == "train" else self.val_path
        if n == 0:
            empty = np.empty(0, dtype=self.vocab.dtype)
            empty.flags.writeable = False
            return empty
        return np.memmap(path, dtype=self.vocab.dtype, mode="r", shape=(n,))


class _Progress:
    def __init__(self, fn: ProgressFn | None, label: str, total: int):
        self.fn, self.label, self.total, self.base, self.last = fn, label, total, 0, -_PROGRESS_EVERY
        self.update(0)

    def update(self, done_in_file: int) -> None:
        done = self.base + done_in_file
        if self.fn is not None and (done - self.last >= _PROGRESS_EVERY or done == self.total):
            self.fn(self.label, done, self.total)
            self.last = done

    def next_file(self, size: int) -> None:
        self.base += size


# --- output directory ------------------------------------------------------------------------
def _make_dir(d: Path) -> tuple[list[Path], str | None]:
    """Create ``d`` (and parents) and probe that a file can be written there.

    Returns the directories created (deepest first, to remove on failure) and a
    problem, or None.
    """
    missing: list[Path] = []
    p = d
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if d.exists() and not d.is_dir():
        return [], f"{d}: cannot write the output there: it exists and is not a directory"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [m for m in missing if m.exists()], f"{d}: cannot create the output directory ({e.strerror or e})"
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".textstream-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return missing, f"{d}: output directory is not writable ({e.strerror or e})"
    return missing, None


def _remove_dirs(created: list[Path]) -> None:
    for p in created:  # deepest first; stops at the first that is not empty
        try:
            p.rmdir()
        except OSError:
            break


def _unlink(path: str | Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _start_writeback(files: list) -> None:
    """Have the kernel start writing what we wrote so far, so the final fsync is short.

    (``POSIX_FADV_DONTNEED`` starts asynchronous writeback of dirty pages on
    Linux and drops the clean ones: the page cache does not fill with token files.)
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for f in files:
        try:
            f.flush()
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- loading ---------------------------------------------------------------------------------
def _check_sizes(d: Path, vocab: Vocab) -> tuple[int, int] | str:
    """``(train_chars, val_chars)``, or a problem. Without them in the metadata, the sizes tell."""
    size = vocab.dtype.itemsize
    found = []
    for name, key in (("train.bin", "train_chars"), ("val.bin", "val_chars")):
        try:
            got = (d / name).stat().st_size
        except FileNotFoundError:
            return f"{d / name}: missing (prepare the corpus again)"
        try:
            n = int(vocab.meta[key])
        except (KeyError, TypeError, ValueError):
            n = got // size
        if got != n * size:
            return (f"{d / name}: {got} bytes, expected {n * size} ({n} ids of {vocab.dtype}): "
                    f"truncated or from another preparation (prepare the corpus again)")
        found.append(n)
    return found[0], found[1]


def load_prepared(dir: Path) -> Prepared:
    """The prepared corpus in ``dir`` (as written by ``prepare``), checked against its vocab.json."""
    d = Path(dir)
    if not (d / "vocab.json").is_file():
        raise TextstreamError(f"{d}: not a prepared corpus (no vocab.json)")
    vocab = Vocab.load(d / "vocab.json")
    sizes = _check_sizes(d, vocab)
    if isinstance(sizes, str):
        raise TextstreamError(sizes)
    return Prepared(d, vocab, sizes[0], sizes[1], cached=True)


def _cache_hit(d: Path, key: str) -> Prepared | None:
    if not (d / "vocab.json").is_file():
        return None
    try:
        vocab = Vocab.load(d / "vocab.json")
    except TextstreamError:
        return None
    if vocab.meta.get("cache_key") != key:
        return None
    sizes = _check_sizes(d, vocab)
    if isinstance(sizes, str):
        return None
    return Prepared(d, vocab, sizes[0], sizes[1], cached=True)


# --- prepare ---------------------------------------------------------------------------------
def _build_vocab(counts: np.ndarray, total: int, max_vocab: int | None) -> tuple[np.ndarray, list[str], list[int], int | None]:
    present = np.flatnonzero(counts)
    if max_vocab is not None and len(present) > max_vocab:
        order = np.lexsort((present, -counts[present]))  # most frequent first, ties by code point
        kept = np.sort(present[order[: max_vocab - 1]])
        kept_counts = counts[kept]
        oov_id: int | None = len(kept)
        chars = [chr(c) for c in kept.tolist()] + [OOV_CHAR]
        cnts = kept_counts.tolist() + [int(total - kept_counts.sum())]
    else:
        kept, oov_id = present, None
        chars = [chr(c) for c in kept.tolist()]
        cnts = counts[kept].tolist()
    return kept, chars, cnts, oov_id


def prepare(sources: Sequence, out_dir: Path | None = None, *, lowercase: bool = False,
            val_fraction: float = 0.05, max_vocab: int | None = None, errors: str = "strict",
            min_chars: int = 61, chunk_size: int = 1 << 22, on_progress: ProgressFn | None = None) -> Prepared:
    """Encode ``sources`` into ``out_dir`` (default: the cache, keyed by content and options).

    A directory that already holds this preparation (same content, same
    options) is returned as is (``cached=True``); nothing is re-encoded.
    """
    if errors not in ERRORS:
        raise TextstreamError(f"errors must be one of {', '.join(ERRORS)} (got {errors!r})")
    if not 0.0 <= val_fraction < 1.0:
        raise TextstreamError(f"--val-fraction must be in [0, 1) (got {val_fraction})")
    if max_vocab is not None and max_vocab < 1:
        raise TextstreamError(f"--max-vocab must be >= 1 (got {max_vocab})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")
    options = {"lowercase": bool(lowercase), "val_fraction": float(val_fraction), "max_vocab": max_vocab,
               "errors": errors}

    # check the output first, before any work (downloads included)
    root = Path(out_dir) if out_dir is not None else cache_dir() / "prepared"
    created, problem = _make_dir(root)
    if problem and (out_dir is None or not (root / "vocab.json").is_file()):
        raise TextstreamError(problem)
    try:
        paths, stats = _sources(sources, on_progress)
    except BaseException:
        _remove_dirs(created)
        raise
    total_bytes = sum(st.st_size for st in stats)

    hasher = _Hasher(paths, stats, max(chunk_size, 1 << 20))
    hasher.start()
    try:
        # pass 1: count characters, while a thread hashes the bytes for the cache key;
        # once the hash is known, a cache hit stops the count
        counts = np.zeros(N_CODEPOINTS, dtype=np.int64)
        total = 0
        prog, hash_prog = _Progress(on_progress, "count", total_bytes), _Progress(on_progress, "hash", total_bytes)
        key = fingerprint = out = None
        for p, st in zip(paths, stats):
            for done, text in normalised(p, chunk_size=chunk_size, errors=errors, lowercase=lowercase):
                cps = codepoints(text)
                count(counts, cps)
                total += len(cps)
                prog.update(done)
                if key is None:
                    hash_prog.update(hasher.done)
                    if not hasher.is_alive():
                        key, fingerprint, out = _key(hasher, options, out_dir, root)
                        hash_prog.update(hasher.done)
                        hit = _cache_hit(out, key)
                        if hit is not None:
                            _check_min(hit.train_chars, min_chars, paths)
                            return hit
            prog.next_file(st.st_size)
        while key is None and hasher.is_alive():
            hasher.join(0.05)
            hash_prog.update(hasher.done)
        if key is None:
            key, fingerprint, out = _key(hasher, options, out_dir, root)
            hit = _cache_hit(out, key)
            if hit is not None:
                _check_min(hit.train_chars, min_chars, paths)
                return hit
        if problem:
            raise TextstreamError(problem)
        if out != root:
            more, problem = _make_dir(out)
            created = more + created
            if problem:
                raise TextstreamError(problem)

        n_val = math.floor(total * val_fraction)
        n_train = total - n_val
        _check_min(n_train, min_chars, paths)

        kept, chars, cnts, oov_id = _build_vocab(counts, total, max_vocab)
        del counts
        meta = {"tokens_format": TOKENS_FORMAT, "cache_key": key, "fingerprint": fingerprint,
                "train_chars": n_train, "val_chars": n_val, "source_bytes": total_bytes,
                "sources": [str(p) for p in paths]}
        vocab = Vocab(chars=chars, counts=cnts, oov_id=oov_id, options=options, meta=meta)

        # pass 2: encode
        _encode(paths, stats, out, vocab, kept, n_train, total, chunk_size=chunk_size, errors=errors,
                lowercase=lowercase, on_progress=on_progress, total_bytes=total_bytes)
    except BaseException:
        _remove_dirs(created)
        raise
    finally:
        hasher.halt()
    return Prepared(out, vocab, n_train, n_val, cached=False)


class _Hasher(threading.Thread):
    """The sha256 of the sources (each file's size, then its bytes), computed in a thread.

    hashlib releases the GIL on large buffers, so on a multi-core machine the
    hash costs almost no wall time next to the count.
    """

    def __init__(self, paths: Sequence[Path], stats: list, bufsize: int):
        super().__init__(name="textstream-hash", daemon=True)
        self.paths, self.stats, self.bufsize = list(paths), stats, bufsize
        self.done = 0
        self.digest: str | None = None
        self.error: TextstreamError | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        h = hashlib.sha256()
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        for p, st in zip(self.paths, self.stats):
            h.update(f"{st.st_size}\n".encode())
            try:
                with open(p, "rb", buffering=0) as f:
                    while n := f.readinto(buf):
                        if self._halt.is_set():
                            return
                        h.update(view[:n])
                        self.done += n
            except OSError as e:
                self.error = TextstreamError(f"{p}: cannot read ({e.strerror or e})")
                return
        self.digest = h.hexdigest()

    def halt(self) -> None:
        self._halt.set()
        self.join()


def _key(hasher: _Hasher, options: dict, out_dir: Path | None, root: Path) -> tuple[str, str, Path]:
    """``(cache key, fingerprint, output dir)`` once ``hasher`` has finished."""
    hasher.join()
    if hasher.error is not None:
        raise hasher.error
    assert hasher.digest is not None
    key_src = json.dumps({"tokens_format": TOKENS_FORMAT, "fingerprint": hasher.digest, "options": options},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    return key, hasher.digest, (root if out_dir is not None else root / key)


def _sources(sources: Sequence, on_progress: ProgressFn | None) -> tuple[list[Path], list[os.stat_result]]:
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


def _encode(paths: Sequence[Path], stats: list, out: Path, vocab: Vocab, kept: np.ndarray, n_train: int,
            total: int, *, chunk_size: int, errors: str, lowercase: bool, on_progress: ProgressFn | None,
            total_bytes: int) -> None:
    dtype = vocab.dtype
    lut = np.full(N_CODEPOINTS, vocab.oov_id or 0, dtype=dtype)
    lut[kept] = np.arange(len(kept), dtype=dtype)
    table8 = lut[:256].tobytes() if dtype.itemsize == 1 else None  # bytes.translate table: latin-1 chunks
    luts = {1: lut[:256].copy(), 2: lut[:1 << 16].copy(), 4: lut}  # small tables for narrow code points

    tmps: list[str | None] = [None, None]
    files = []
    try:
        for i, name in enumerate(("train.bin", "val.bin")):
            fd, tmps[i] = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            files.append(os.fdopen(fd, "wb"))
        ftrain, fval = files
        pos = written = kicked = 0
        prog = _Progress(on_progress, "encode", total_bytes)
        for p, st in zip(paths, stats):
            for done, text in normalised(p, chunk_size=chunk_size, errors=errors, lowercase=lowercase):
                one = latin1(text) if table8 is not None else None
                if one is not None:
                    buf = memoryview(one.translate(table8))
                else:
                    cps = codepoints(text)
                    buf = memoryview(gather(luts[cps.dtype.itemsize], cps)).cast("B")
                n = len(buf) // dtype.itemsize
                k = min(max(n_train - pos, 0), n) * dtype.itemsize
                if k:
                    ftrain.write(buf[:k])
                if k < len(buf):
                    fval.write(buf[k:])
                pos += n
                written += len(buf)
                if written - kicked >= _WRITEBACK_EVERY:
                    _start_writeback(files)
                    kicked = written
                prog.update(done)
            prog.next_file(st.st_size)
            try:
                now = p.stat()
            except OSError:
                now = None
            if now is None or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise TextstreamError(f"{p}: the file changed while it was being prepared; try again")
        if pos != total:
            raise TextstreamError(f"{describe(paths)}: the text changed while it was being prepared "
                                  f"({total} characters counted, {pos} encoded); try again")
        for f in files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        # commit: drop the old marker, move the token files in, write the marker last
        _unlink(out / "vocab.json")
        os.replace(tmps[0], out / "train.bin")
        tmps[0] = None
        os.replace(tmps[1], out / "val.bin")
        tmps[1] = None
        vocab.save(out / "vocab.json")
        _fsync_dir(out)
    finally:
        for f in files:
            f.close()
        for t in tmps:
            _unlink(t)
