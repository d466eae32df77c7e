"""The model's probabilities in a session: ``Session.top`` and characters streamed with their logprobs. No TensorFlow.

Every figure is a natural log of the model's own distribution, before
temperature, top-k, top-p (and before a regex's mask): what the model
believes, whatever the sampling settings do with it.

    s = gen.session("The ", seed=1)
    s.top(3)                               # [('e', -0.41), (' ', -1.9), ('a', -2.3)]: nothing changes
    for r in s.sample_logprobs(20, top=2):
        print(repr(r.char), r.logprob, r.top)

``sample_logprobs(n, top)`` samples exactly what ``sample(n)`` samples (the
same text for the same session), and each character's logprob comes from the
step that chose it (``StreamBatch.advance_logprobs``): nothing is computed
twice, and memory is that of the ``n`` records. ``stream_logprobs`` yields
them as they come, in chunks, for as long as you read.

Byte-level models: a record is one Unicode character, its logprob the sum of
its bytes'; its ``top`` alternatives are those of its first byte: a ``str``
where that byte is a whole character (ASCII), else the lead byte as ``bytes``
(the start of some longer character). ``top()`` is exact in characters: it
searches the continuations of the likeliest lead bytes (a few extra steps).
"""
from __future__ import annotations

import codecs
import heapq
import math
import numbers
from typing import Iterator, NamedTuple

import numpy as np

from textstream.errors import TextstreamError
from textstream.generation.sampling import check_length

STREAM_CHUNK = 256  # ids per call in stream_logprobs
MAX_EXPANSIONS = 64  # model steps that a byte model's top() may take, at most

__all__ = ["CharLogprob", "SessionProbabilities", "log_softmax"]


class CharLogprob(NamedTuple):
    """One generated character: ``char``, ``logprob`` (natural log), ``top`` ((alternative, logprob), ...) best first."""

    char: str
    logprob: float
    top: tuple = ()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _check_count(k, what: str) -> int:
    if not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0):
        raise TextstreamError(f"{what} must be an integer >= 0 (got {k!r})")
    return int(k)


class SessionProbabilities:
    """``top``, ``sample_logprobs`` and ``stream_logprobs`` (a mixin of ``textstream.generation.generator.Session``)."""

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` likeliest next characters with their natural-log probabilities, best first; the state stays.

        The model's own distribution (before temperature, top-k, top-p or a
        regex). Byte models: whole characters (the search is exact), and a
        character the session has begun (its first bytes generated, not yet
        returned) is completed.

            s = gen.session("The ", seed=0)
            (best, logprob), *_ = s.top(5)
        """
        k = _check_count(k, "k")
        if k == 0:
            return []
        backend, vocab = self.generator.backend, self.generator.vocab
        h, c = (self._streams.row_state(0)[key][:, None].copy() for key in ("h", "c"))
        if vocab.is_bytes:
            return _byte_top(backend, h, c, self._decoder.pending, k)
        lp = log_softmax(backend.head_logits(h[-1]))[0]
        best = np.argsort(-lp, kind="stable")[:k]
        return [(vocab.chars[i], float(lp[i])) for i in best]

    def sample_logprobs(self, n: int, top: int = 0) -> list[CharLogprob]:
        """``sample(n)`` with each character's logprob and its ``top`` likeliest alternatives: a list of ``CharLogprob``.

        ``"".join(r.char for r in s.sample_logprobs(n))`` is what ``s.sample(n)``
        would have returned. Not during a regex match (a ``TextstreamError``).

            for r in s.sample_logprobs(100, top=3):
                print(f"{r.char!r} {r.logprob:.3f}", r.top)
        """
        n, top = check_length(n), _check_count(top, "top")
        if self.matching:
            raise TextstreamError("logprobs are not available during a regex match (sample the match with sample())")
        vocab = self.generator.vocab
        ids, chosen, top_ids, top_lp = (a[0] for a in self._streams.advance_logprobs(n, top))
        records = [CharLogprob(ch, math.nan) for ch in self._held]
        self._held = ""
        if not vocab.is_bytes:
            self._decoder(ids)
            chars = vocab.chars
            records += [CharLogprob(chars[i], float(lp), tuple((chars[j], float(v)) for j, v in zip(ti, tv)))
                        for i, lp, ti, tv in zip(ids.tolist(), chosen.tolist(), top_ids.tolist(), top_lp.tolist())]
            return records
        return records + self._byte_records(ids, chosen, top_ids, top_lp)

    def stream_logprobs(self, n: int | None = None, top: int = 0) -> Iterator[CharLogprob]:
        """``sample_logprobs`` as an iterator, ``STREAM_CHUNK`` ids per call (endless when ``n`` is None).

            for r in s.stream_logprobs(1000, top=2):
                print(r.char, end="", flush=True)
        """
        n, top = check_length(n), _check_count(top, "top")
        done = 0
        while n is None or done < n:
            k = STREAM_CHUNK if n is None else min(STREAM_CHUNK, n - done)
            yield from self.sample_logprobs(k, top)
            done += k

    def _byte_records(self, ids, chosen, top_ids, top_lp) -> list[CharLogprob]:
        """Group generated bytes into characters (a character begun in an earlier call continues its sums)."""
        pending = self._decoder.pending
        carried = getattr(self, "_logprob_partial", None)  # (pending bytes, logprob so far, first byte's top)
        total, first_top = (carried[1], carried[2]) if carried and carried[0] == pending and pending else (
            (math.nan, ()) if pending else (0.0, ()))
        records = []
        for b, lp, ti, tv in zip(ids.tolist(), chosen.tolist(), top_ids.tolist(), top_lp.tolist()):
            if not self._decoder.pending:
                total, first_top = 0.0, tuple((chr(j) if j < 0x80 else bytes([j]), float(v)) for j, v in zip(ti, tv))
            before = total
            total += lp
            text = self._decoder(np.array([b], np.uint8))
            if len(text) == 1:
                records.append(CharLogprob(text, total, first_top))
            elif text:  # an invalid sequence ended by this byte: U+FFFD for it, then this byte's own character
                records.append(CharLogprob(text[0], before, first_top))
                records += [CharLogprob(ch, math.nan) for ch in text[1:-1]]
                records.append(CharLogprob(text[-1], float(lp)))
            if text:
                total, first_top = 0.0, ()
        self._logprob_partial = (self._decoder.pending, total, first_top)
        return records


def _byte_top(backend, h: np.ndarray, c: np.ndarray, pending: bytes, k: int) -> list[tuple[str, float]]:
    """The ``k`` likeliest whole characters next for a byte model (after the held-back ``pending`` bytes).

    Best first over the UTF-8 prefix tree: a prefix's probability bounds every
    character that extends it, so the search stops once the ``k``-th character
    found is likelier than every prefix left to expand.
    """
    found: list[tuple[float, str]] = []
    frontier = [(-0.0, pending, h, c)]  # (-logprob of the prefix, its bytes, state after it)
    for _ in range(MAX_EXPANSIONS):
        if not frontier:
            break
        neg, prefix, h, c = heapq.heappop(frontier)
        bound = sorted(found, reverse=True)[k - 1][0] if len(found) >= k else -math.inf
        if -neg <= bound:
            break
        lp = log_softmax(backend.head_logits(h[-1]))[0] - neg
        for b in np.argsort(-lp, kind="stable").tolist():
            if lp[b] <= bound:
                break
            seq = prefix + bytes([b])
            kind = _utf8_kind(seq)
            if kind == "char":
                found.append((float(lp[b]), seq.decode("utf-8")))
                if len(found) >= k:
                    bound = sorted(found, reverse=True)[k - 1][0]
            elif kind == "prefix":
                h2, c2 = h.copy(), c.copy()
                backend.score_rows(h2, c2, np.array([[b]]))  # feed the byte: the state after the longer prefix
                heapq.heappush(frontier, (-float(lp[b]), seq, h2, c2))
    return [(ch, lp) for lp, ch in sorted(found, reverse=True)[:k]]


def _utf8_kind(seq: bytes) -> str:
    """"char" (one whole character), "prefix" (the start of one) or "invalid"."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        text = decoder.decode(seq)
    except UnicodeDecodeError:
        return "invalid"
    if len(text) == 1 and not decoder.getstate()[0]:
        return "char"
    return "prefix" if not text and decoder.getstate()[0] == seq else "invalid"
