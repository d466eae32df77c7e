"""Log-probabilities on the TensorFlow step backend: scoring fed ids, and sampling that records them.

The compiled twins of ``textstream.generation.logprobs_np``: the step of
``textstream.generation.step_tf`` (its ``consume`` is passed in, as
``constrained_tf`` takes it), one product of the top layer's state with
``[head | recurrent]`` per position, the log-softmax of those logits. Calls
cover ``CHUNK`` positions each (one compiled shape per batch bucket); rows
are padded to the buckets ``step_tf`` uses.
"""
from __future__ import annotations

import numpy as np

from textstream._tf import tf
from textstream.generation.sampling_tf import choose, gumbel_noise

CHUNK = 256  # positions per compiled call

__all__ = ["CHUNK", "score_rows", "sample_logprobs", "rows_for"]


def rows_for(b: int) -> int:
    """Rows computed for ``b``: 1, 2, 4, ... 64, then multiples of 64 (few XLA compiles; as ``step_tf``)."""
    return 1 << (b - 1).bit_length() if b <= 64 else -(-b // 64) * 64


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _score(consume, w, h, c, ids, n, top: int = 0):
    """ln p of ``ids[t]`` (CHUNK, B) for ``t < n``, each from the state before it, and the ``top`` likeliest ids
    and their ln p: ``(logprobs, h, c, top_ids, top_logprobs)``."""
    layers = len(w["rec"])
    vocab = tf.shape(w["head_bias"])[0]
    out, best, best_lp = (tf.TensorArray(dtype, size=CHUNK, element_shape=shape) for dtype, shape in (
        (tf.float32, ids.shape[1:]), (tf.int32, (ids.shape[1], top)), (tf.float32, (ids.shape[1], top))))

    def body(t, hs, cs, out, best, best_lp):
        z = tf.matmul(hs[-1], w["top"])
        logits = z[:, :vocab] + w["head_bias"]
        x = ids[t]
        lse = tf.reduce_logsumexp(logits, axis=-1, keepdims=True)
        lp = tf.gather(logits, x, batch_dims=1) - lse[:, 0]
        if top:
            top_lp, top_ids = tf.math.top_k(logits - lse, k=top)
            best, best_lp = best.write(t, top_ids), best_lp.write(t, top_lp)
        hs, cs = consume(w, hs, cs, x, z[:, vocab:])
        return t + 1, hs, cs, out.write(t, lp), best, best_lp

    start = (tf.constant(0), list(tf.unstack(h, num=layers)), list(tf.unstack(c, num=layers)), out, best, best_lp)
    _, hs, cs, out, best, best_lp = tf.while_loop(lambda t, *_: t < n, body, start)
    tops = (best.stack(), best_lp.stack()) if top else (tf.zeros([0]), tf.zeros([0]))
    return out.stack(), tf.stack(hs), tf.stack(cs), *tops


def score_rows(step, consume, h: np.ndarray, c: np.ndarray, ids, top: int | None = None):
    """ln p of each ``ids[b, t]`` given row b's state before it: float32 (B, T); ``h``, ``c`` updated in place.

    ``step``: a ``step_tf.TFStep``; ``h``, ``c``: numpy float32 (layers, B, units). With ``top`` (an int):
    ``(logprobs, top_ids (B, T, top), top_logprobs (B, T, top))``, best first.
    """
    ids = np.asarray(ids, np.int32)
    b, steps = ids.shape
    out = np.empty((b, steps), np.float32)
    if top is not None:
        top = max(0, min(int(top), step.vocab_size))
        best = (np.zeros((b, steps, top), np.int32), np.zeros((b, steps, top), np.float32))
    if steps == 0 or b == 0:
        return out if top is None else (out, *best)
    pad = rows_for(b) - b
    th = tf.constant(np.pad(h, ((0, 0), (0, pad), (0, 0))))
    tc = tf.constant(np.pad(c, ((0, 0), (0, pad), (0, 0))))
    for lo in range(0, steps, CHUNK):
        n = min(CHUNK, steps - lo)
        chunk = np.zeros((CHUNK, b + pad), np.int32)
        chunk[:n, :b] = ids[:, lo:lo + n].T
        lp, th, tc, top_ids, top_lp = _score(consume, step.weights, th, tc, tf.constant(chunk),
                                             tf.constant(n, tf.int32), top or 0)
        out[:, lo:lo + n] = lp.numpy()[:n, :b].T
        if top:
            best[0][:, lo:lo + n] = np.swapaxes(top_ids.numpy()[:n, :b], 0, 1)
            best[1][:, lo:lo + n] = np.swapaxes(top_lp.numpy()[:n, :b], 0, 1)
    h[...], c[...] = th.numpy()[:, :b], tc.numpy()[:, :b]
    return out if top is None else (out, *best)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _sample(consume, w, h, c, seeds, positions, temperature, k, top_k, top_p, top: int):
    """``k`` <= CHUNK ids per stream, with ln p of each and the ``top`` likeliest ids and their ln p."""
    layers = len(w["rec"])
    vocab = tf.shape(w["head_bias"])[0]
    arrays = [tf.TensorArray(dtype, size=CHUNK, element_shape=shape) for dtype, shape in (
        (tf.int32, seeds.shape), (tf.float32, seeds.shape), (tf.int32, (seeds.shape[0], top)),
        (tf.float32, (seeds.shape[0], top)))]

    def body(i, hs, cs, pos, ids, chosen, top_ids, top_lp):
        z = tf.matmul(hs[-1], w["top"])  # [head kernel | top recurrent kernel]: one matmul, as step_tf samples
        logits = z[:, :vocab] + w["head_bias"]
        x = choose(logits, temperature, gumbel_noise(seeds, pos, vocab), top_k, top_p)
        lp = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)  # the formula _score uses
        best_lp, best = tf.math.top_k(lp, k=top)
        hs, cs = consume(w, hs, cs, x, z[:, vocab:])
        return (i + 1, hs, cs, pos + tf.constant(1, tf.uint32), ids.write(i, x),
                chosen.write(i, tf.gather(lp, x, batch_dims=1)), top_ids.write(i, best), top_lp.write(i, best_lp))

    start = (tf.constant(0), list(tf.unstack(h, num=layers)), list(tf.unstack(c, num=layers)), positions, *arrays)
    _, hs, cs, positions, *arrays = tf.while_loop(lambda i, *_: i < k, body, start)
    return (tf.stack(hs), tf.stack(cs), positions, *(a.stack() for a in arrays))


def sample_logprobs(streams, consume, k: int, top: int) -> tuple[np.ndarray, ...]:
    """Generate ``k`` ids per stream of a ``step_tf.TFStreams`` (advanced in place) recording log-probabilities.

    Returns ``(ids, chosen, top_ids, top_logprobs)`` as ``StreamBatch.advance_logprobs`` does.
    """
    b, vocab = streams.batch, streams.model.vocab_size
    top = max(0, min(int(top), vocab))
    parts = []
    for lo in range(0, k, CHUNK):
        n = min(CHUNK, k - lo)
        streams.h, streams.c, streams.positions, *out = _sample(
            consume, streams.model.weights, streams.h, streams.c, streams.seeds, streams.positions,
            streams.temperature, tf.constant(n, tf.int32), streams.top_k, streams.top_p, top)
        parts.append([np.swapaxes(a.numpy()[:n, :b], 0, 1) for a in out])
    if not parts:
        return (np.zeros((b, 0), np.int32), np.zeros((b, 0), np.float32), np.zeros((b, 0, top), np.int32),
                np.zeros((b, 0, top), np.float32))
    return tuple(np.concatenate(column, axis=1) for column in zip(*parts))
