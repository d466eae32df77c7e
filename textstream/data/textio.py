"""Reading the sources for ``prepare``: streaming UTF-8 decoding, normalisation, code points, fingerprint.

    from textstream.data.textio import Fingerprint, codepoints, read_texts
    for done, text in read_texts(paths, stats, chunk_size=1 << 22, errors="strict", lowercase=False):
        cps = codepoints(text)   # numpy, the narrowest unsigned dtype that holds them
    with Fingerprint(paths, stats, 1 << 22, Progress(None, "hash", None)) as fp:
        digest = fp.wait()       # the sha256 of the files' bytes, computed in a thread

Everything here works on fixed-size pieces of the sources (memory is
O(chunk), never O(text)) and hands numpy whole arrays (no Python code runs
per character). No TensorFlow here.
"""
from __future__ import annotations

import codecs
import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from textstream.errors import TextstreamError
from textstream.progress import Progress

_CARRY_MAX = 4096  # with lowercase, hold back at most this much of a chunk's tail (see _cut)
_PIECE = 1 << 18  # bytes decoded at a time (see normalised)
_COUNT_BLOCK = 1 << 18
_GATHER_BLOCK = 1 << 16


# --- reading -------------------------------------------------------------------------------
def _cut(text: str, lowercase: bool) -> int:
    """Where to split a (non-final) decoded chunk into what to emit now and what to carry.

    A trailing ``\\r`` waits for the next chunk (it may start a CRLF). With
    lowercase, the tail after the last space/newline waits too: ``str.lower`` is
    context-dependent for one letter (Greek final sigma), and whitespace ends
    that context, so lowercasing chunk by chunk equals lowercasing the whole text.
    """
    n = len(text)
    cut = n - 1 if text.endswith("\r") else n
    if lowercase:
        lo = max(0, cut - _CARRY_MAX)
        i = max(text.rfind(" ", lo, cut), text.rfind("\n", lo, cut))
        if i >= 0:
            cut = i + 1
        elif lo == 0:
            cut = 0  # one word so far: wait for its end (a word longer than _CARRY_MAX is cut anyway)
    return cut


def normalised(path: Path, *, chunk_size: int, errors: str, lowercase: bool) -> Iterator[tuple[int, str]]:
    """``(bytes read so far, normalised text)`` for consecutive pieces of one file.

    The file is read ``chunk_size`` bytes at a time and each read is decoded in
    pieces of at most ``_PIECE`` bytes: small pieces keep the temporaries
    (str, code point arrays) in the CPU caches and out of the way of the
    allocator's fragmentation, which is both faster and smaller.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    carry = ""
    pos = 0
    with open(path, "rb", buffering=0) as f:
        # one buffer for every read of the file (a fresh chunk per read leaves the allocator fragmented)
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(min(chunk_size, size) if size > 0 else chunk_size)
        while True:
            n = f.readinto(buf)
            final = not n
            nul = buf.find(b"\0", 0, n)
            if nul >= 0:
                raise TextstreamError(f"{path}: binary file (NUL byte at offset {pos + nul}), not UTF-8 text")
            view = memoryview(buf)[:n]
            for start in range(0, max(n, 1), _PIECE):
                piece = view[start:start + _PIECE]
                pending = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(piece, final)
                except UnicodeDecodeError as e:
                    raise TextstreamError(f"{path}: invalid UTF-8 at byte offset {pos - pending + e.start} "
                                          f"({e.reason}); pass --errors replace to read it as U+FFFD") from None
                pos += len(piece)
                if carry:
                    text, carry = carry + text, ""
                if not final:
                    cut = _cut(text, lowercase)
                    if cut < len(text):
                        text, carry = text[:cut], text[cut:]
                if "\r" in text:
                    text = text.replace("\r\n", "\n")
                if lowercase:
                    text = text.lower()
                if text:
                    yield pos, text
            if final:
                return


def read_texts(paths: Sequence[Path], stats: Sequence[os.stat_result], *, chunk_size: int, errors: str,
               lowercase: bool) -> Iterator[tuple[int, str]]:
    """``(bytes read so far, all files together; normalised text)`` for consecutive pieces of ``paths``.

    ``stats`` are the files' ``os.stat`` results from before the reading: a
    file whose size or modification time differs once read raises (it changed
    under us). Each file is decoded on its own: a CR ending one file stays a CR.
    """
    base = 0
    for path, st in zip(paths, stats):
        for done, text in normalised(path, chunk_size=chunk_size, errors=errors, lowercase=lowercase):
            yield base + done, text
        base += st.st_size
        try:
            now = path.stat()
        except OSError:
            now = None
        if now is None or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise TextstreamError(f"{path}: the file changed while it was being prepared; try again")


# --- bytes ----------------------------------------------------------------------------------
class Fingerprint(threading.Thread):
    """The sha256 of the sources (each file's size, then its bytes), computed in a thread.

    hashlib releases the GIL on large buffers, so on a multi-core machine the
    hash costs almost no wall time next to the count. As a context manager it
    starts, and stops (without waiting for the end of the files) on exit.
    """

    def __init__(self, paths: Sequence[Path], stats: Sequence[os.stat_result], bufsize: int, progress: Progress):
        super().__init__(name="textstream-hash", daemon=True)
        self.paths, self.stats, self.bufsize, self.progress = list(paths), list(stats), bufsize, progress
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

    def poll(self) -> str | None:
        """The digest if the thread has finished (its error raised), else None; reports the progress."""
        self.progress.update(self.done)
        return None if self.is_alive() else self._result()

    def wait(self) -> str:
        """The digest, once the thread has finished (its error raised)."""
        while self.is_alive():
            self.join(0.05)
            self.progress.update(self.done)
        return self._result()

    def _result(self) -> str:
        self.join()
        self.progress.update(self.done)
        if self.error is not None:
            raise self.error
        assert self.digest is not None
        return self.digest

    def __enter__(self) -> "Fingerprint":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join()


# --- code points ---------------------------------------------------------------------------
_HEADER = sys.getsizeof("\xe9") - 2  # CPython's compact non-ASCII str header (PEP 393)


def _kind(text: str) -> int:
    """Bytes per character CPython uses for ``text`` (1, 2 or 4); 0 when it cannot tell."""
    if text.isascii():  # O(1) for str
        return 1
    n = len(text) + 1
    extra = sys.getsizeof(text) - _HEADER
    kind, rest = divmod(extra, n)
    return kind if rest == 0 and kind in (1, 2, 4) else 0


def latin1(text: str) -> bytes | None:
    """``text`` as one byte per character when every code point is < 256, else None."""
    if _kind(text) not in (0, 1):
        return None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as the narrowest unsigned array that holds them.

    Encoding to the width CPython already stores the string in is close to a
    memcpy; UTF-32 from a 1- or 2-byte string is ten times slower.
    """
    kind = _kind(text)
    if kind in (0, 1):
        one = latin1(text)
        if one is not None:
            return np.frombuffer(one, dtype=np.uint8)
    if kind in (0, 2):
        two = text.encode("utf-16-le")
        if len(two) == 2 * len(text):  # no surrogate pairs: all in the BMP
            return np.frombuffer(two, dtype="<u2")
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def count(counts: np.ndarray, cps: np.ndarray) -> None:
    """Add the histogram of ``cps`` to ``counts``."""
    if cps.dtype == np.uint8 and len(cps) >= 2:
        # pairs of bytes as one uint16: a 65536-bin histogram, then fold (faster than add.at on bytes)
        even = len(cps) // 2 * 2
        h = np.bincount(cps[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
        counts[:256] += h.sum(axis=0) + h.sum(axis=1)
        if even < len(cps):
            counts[cps[-1]] += 1
    else:
        for i in range(0, len(cps), _COUNT_BLOCK):  # blocks: cache-friendly, bounded temporaries
            np.add.at(counts, cps[i:i + _COUNT_BLOCK], 1)


def gather(table: np.ndarray, cps: np.ndarray) -> np.ndarray:
    """``table[cps]``, in blocks (about 1.5x faster than one call, and bounded temporaries)."""
    out = np.empty(len(cps), dtype=table.dtype)
    for i in range(0, len(cps), _GATHER_BLOCK):
        np.take(table, cps[i:i + _GATHER_BLOCK], out=out[i:i + _GATHER_BLOCK])
    return out
