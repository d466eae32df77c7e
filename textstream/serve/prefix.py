"""The prefix-state cache: the LSTM state after a long prompt, kept so that neither it nor a prompt that extends
it is fed again.

An LSTM's whole context is its state (``h``, ``c``: a few kilobytes), and the
state after feeding ids from the zero state depends on those ids only. So
the engine (``textstream.serve.engine``) keeps, after it has fed a long
prompt, the state right after it, keyed by the prompt's exact ids; a new
prompt that equals or extends a kept one starts from the longest kept prefix
and feeds only the rest. That is exact (the same text as without the cache,
for every seed: sampling depends on the state, the seed and the position,
and a fed prompt never moves the position) and isolated (a stream starts from
a kept state only when its prompt begins with exactly the ids that made it).

A key is the prompt's length and the BLAKE2b-256 digest of its ids (int32,
little-endian). ``lookup`` hashes the prompt once, front to back, taking the
digest at each length the cache holds (``hashlib``'s ``copy``), so finding
the longest kept prefix costs one pass over the prompt whatever the number
of entries. The cache is a bounded LRU: ``max_bytes`` (``textstream serve
--prefix-cache-mb``) over the entries' ``entry_bytes`` (the state and the
key's bookkeeping); the least recently used entries go first. It is used by
the engine thread only.

    cache = PrefixCache(64 << 20, layers=1, units=384)
    cache.store(ids, h, c)                    # h, c: float32 (layers, units), copied
    hit = cache.lookup(longer_ids)            # (length, h, c) of the longest kept prefix, or None
"""
from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict

import numpy as np

ENTRY_OVERHEAD = 512  # bytes of an entry beside its state: the key, the dict's slot, two array headers
DEFAULT_MB = 64

__all__ = ["PrefixCache", "DEFAULT_MB", "entry_bytes"]


def entry_bytes(layers: int, units: int) -> int:
    """Bytes one entry takes: ``h`` and ``c`` (float32, layers x units each) and ``ENTRY_OVERHEAD``."""
    return 2 * 4 * layers * units + ENTRY_OVERHEAD


class PrefixCache:
    """A bounded LRU of the state after each kept prompt (see the module docstring)."""

    def __init__(self, max_bytes: int, *, layers: int, units: int):
        self.max_bytes = max(0, int(max_bytes))
        self.entry = entry_bytes(layers, units)
        self._entries: OrderedDict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lengths: list[int] = []  # the lengths held, sorted, one per entry (bisect)
        self.hits = self.misses = 0
        self.chars = 0  # prompt ids served from the cache (not fed)

    @property
    def bytes(self) -> int:
        """Bytes the entries take now (at most ``max_bytes``)."""
        return len(self._entries) * self.entry

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
        """``(length, h, c)`` of the longest kept prompt that ``ids`` begins with (equal or shorter), or None.

        ``h``, ``c`` are the cache's own arrays: copy them before changing them (the engine copies them into a
        stream's slot). Counts a hit or a miss; the entry found becomes the most recently used.
        """
        found = None
        if self._lengths and len(ids):
            raw = np.ascontiguousarray(ids, "<i4")
            hasher, done = hashlib.blake2b(digest_size=32), 0
            for length in sorted(set(self._lengths[:bisect.bisect_right(self._lengths, len(raw))])):
                hasher.update(raw[done:length].data)
                done = length
                if (length, hasher.copy().digest()) in self._entries:
                    found = (length, hasher.copy().digest())
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(found)
        self.hits += 1
        self.chars += found[0]
        h, c = self._entries[found]
        return found[0], h, c

    def store(self, ids: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        """Keep ``h``, ``c`` (copied) as the state after ``ids``, evicting the least recently used past the bound."""
        if self.entry > self.max_bytes or not len(ids):
            return
        key = _key(ids)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = (np.array(h, np.float32), np.array(c, np.float32))
        bisect.insort(self._lengths, key[0])
        while self.bytes > self.max_bytes:
            (length, _), _ = self._entries.popitem(last=False)
            del self._lengths[bisect.bisect_left(self._lengths, length)]

    def clear(self) -> None:
        self._entries.clear()
        self._lengths.clear()


def _key(ids: np.ndarray) -> tuple[int, bytes]:
    raw = np.ascontiguousarray(ids, "<i4")
    return len(raw), hashlib.blake2b(raw.data, digest_size=32).digest()
