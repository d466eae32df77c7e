"""Log-probabilities on the numpy step backend: scoring fed ids, and recording them while sampling. No TensorFlow.

Both run the step of ``textstream.generation.step_np`` as generation does
(one product of the top layer's state with ``[head | recurrent]`` gives the
logits and the next recurrent term), and take the log-softmax of a block of
positions at once after the loop (it does not feed back into the state), so
the loop itself pays for one copy per step at most.

    from textstream.generation.logprobs_np import score_rows
    h = np.zeros((step.layers, 1, step.units), np.float32); c = h.copy()
    lp = score_rows(step, h, c, np.array([[3, 1, 4]]))     # float32 (1, 3); h, c now after the three ids
"""
from __future__ import annotations

import numpy as np

BLOCK_FLOATS = 1 << 18  # floats of logits (positions x rows x V) kept for one block, at most
f32 = np.float32

__all__ = ["score_rows", "score_arrays", "scored", "block_positions", "score_block", "log_softmax", "best_of",
           "Recorder"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``logits - logsumexp(logits)`` over the last axis, float32 (a new array)."""
    top = logits.max(axis=-1, keepdims=True)
    shifted = logits - top
    lse = np.log(np.exp(shifted).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(f32)
    shifted -= lse
    return shifted


def score_rows(model, h: np.ndarray, c: np.ndarray, ids, top: int | None = None):
    """ln p of each ``ids[b, t]`` given row b's state before it: float32 (B, T); ``h``, ``c`` advanced in place.

    ``model``: a ``step_np.NumpyStep``; ``h``, ``c``: float32 (layers, B, units), C-contiguous.
    ``NumpyStep.score_rows`` calls it with OpenBLAS on one thread (as the sampling loop runs).
    With ``top`` (an int): ``(logprobs, top_ids (B, T, top), top_logprobs (B, T, top))``, best first.
    """
    ids = np.asarray(ids, np.int64)
    b, steps = ids.shape
    v = model.vocab_size
    out, best = score_arrays(b, steps, v, top)
    if steps == 0:
        return scored(out, best)
    kept = np.empty((block_positions(b, v, steps), b, v), f32)  # each position's logits (one product buffer)
    buf = model.scratch(b)
    h_top = h[-1]
    for lo in range(0, steps, len(kept)):
        n = min(len(kept), steps - lo)
        for t in range(n):
            np.dot(h_top, model.top, out=buf.z)
            np.add(buf.raw, model.head_bias, out=kept[t])
            model.consume(ids[:, lo + t], h, c, buf, top_rec=buf.top_rec)
        score_block(kept[:n], ids, lo, out, best)
    return scored(out, best)


def score_arrays(rows: int, steps: int, vocab_size: int, top: int | None):
    """The arrays a scoring of (rows, steps) ids fills: ``(out, best)``.

    ``out``: the logprobs (B, T); ``best``: with ``top`` (an int) the
    alternatives' ``(ids, logprobs)``, (B, T, top) each, else None.
    """
    out = np.empty((rows, steps), f32)
    if top is None:
        return out, None
    top = max(0, min(int(top), vocab_size))
    return out, (np.zeros((rows, steps, top), np.int32), np.zeros((rows, steps, top), f32))


def scored(out: np.ndarray, best):
    """What ``score_rows`` returns: ``out``, or ``(out, top_ids, top_logprobs)``."""
    return out if best is None else (out, *best)


def block_positions(rows: int, vocab_size: int, steps: int) -> int:
    """Positions of logits kept at once for ``rows`` rows scoring ``steps`` ids (``BLOCK_FLOATS`` at most)."""
    return max(1, min(steps, BLOCK_FLOATS // (rows * vocab_size)))


def score_block(logits: np.ndarray, ids: np.ndarray, lo: int, out: np.ndarray, best) -> None:
    """Positions ``lo .. lo + n - 1`` from their logits (n, B, V): ``out`` (B, T) and ``best`` (or None) filled."""
    n = len(logits)
    if best is not None and not best[0].shape[2]:
        best = None  # top 0: no alternatives to fill
    chosen = np.take_along_axis(logits, ids[:, lo:lo + n].T[:, :, None], axis=2)[:, :, 0]
    out[:, lo:lo + n] = (chosen - _logsumexp(logits)).T
    if best is not None:
        top_ids, top_lp = best_of(log_softmax(logits), best[0].shape[2])
        best[0][:, lo:lo + n], best[1][:, lo:lo + n] = top_ids.transpose(1, 0, 2), top_lp.transpose(1, 0, 2)


def best_of(lp: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` largest of ``lp`` over its last axis, best first: ``(ids int32, values)``, shape (..., top)."""
    v = lp.shape[-1]
    best = np.argpartition(-lp, top - 1, axis=-1)[..., :top] if top < v else \
        np.broadcast_to(np.arange(v), lp.shape).copy()
    vals = np.take_along_axis(lp, best, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(best, order, axis=-1).astype(np.int32), np.take_along_axis(vals, order, axis=-1)


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis (float64 sum), float32 (...,)."""
    top = logits.max(axis=-1)
    total = np.exp(logits - top[..., None]).sum(axis=-1, dtype=np.float64)
    return (np.log(total) + top).astype(f32)


class Recorder:
    """What ``NumpyStreams`` fills while it samples ``k`` ids per row: each position's logits, block by block.

    The sampling loop copies its logits into ``block(n)`` at each step and
    calls ``add(ids)`` after the block; ``result()`` is ``(chosen, top_ids,
    top_logprobs)`` as ``StreamBatch.advance_logprobs`` returns them.
    """

    def __init__(self, batch: int, k: int, top: int, vocab_size: int):
        self.top = max(0, min(int(top), vocab_size))
        self.chosen = np.zeros((batch, k), f32)
        self.top_ids = np.zeros((batch, k, self.top), np.int32)
        self.top_logprobs = np.zeros((batch, k, self.top), f32)
        self._buffer = np.empty((0, batch, vocab_size), f32)
        self._done = 0

    def block(self, n: int) -> np.ndarray:
        """A (n, B, V) buffer for the logits of the next ``n`` positions (reused from block to block)."""
        if len(self._buffer) < n:
            self._buffer = np.empty((n, *self._buffer.shape[1:]), f32)
        return self._buffer[:n]

    def add(self, ids: np.ndarray) -> None:
        """The block's chosen ids, int (B, n): their log-probabilities and the block's top alternatives."""
        n = ids.shape[1]
        lp = log_softmax(self._buffer[:n])  # (n, B, V)
        at = slice(self._done, self._done + n)
        self.chosen[:, at] = np.take_along_axis(lp, ids.T[:, :, None].astype(np.int64), axis=2)[:, :, 0].T
        if self.top:
            top_ids, top_lp = best_of(lp, self.top)
            self.top_ids[:, at], self.top_logprobs[:, at] = top_ids.transpose(1, 0, 2), top_lp.transpose(1, 0, 2)
        self._done += n

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.chosen, self.top_ids, self.top_logprobs
