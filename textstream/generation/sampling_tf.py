"""Choosing the next character inside the compiled graph: noise, temperature, top-k, top-p, greedy.

The TensorFlow ops of the rules in ``textstream.generation.sampling`` (read its
docstring first). Every function here is pure: tensors in, tensors out, no
state; the noise a stream sees at position ``p`` depends only on
``(stream seed, p, character id)``.

    from textstream._tf import tf
    from textstream.generation.sampling_tf import choose, gumbel_noise
    logits = tf.math.log(tf.constant([[0.1, 0.7, 0.2]]))
    noise = gumbel_noise(tf.constant([7], tf.uint32), tf.constant([0], tf.uint32), 3)
    ids = choose(logits, tf.constant([1.0]), noise)   # int32, shape (1,)

Sampling is Gumbel-max: ``argmax(logits / T + g)`` with ``g = -log(-log(u))``
draws from ``softmax(logits / T)`` (computed as ``argmax(logits + T * g)``).
Temperature 0 means greedy (``argmax``).
"""
from __future__ import annotations

import math

from textstream._tf import tf
from textstream.generation.sampling import GOLDEN, MIX_M1, MIX_M2, SEED_SALT


def mix32(x):
    """A bijective uint32 -> uint32 finaliser (lowbias32): every output bit depends on every input bit."""
    rs = tf.bitwise.right_shift
    x = tf.bitwise.bitwise_xor(x, rs(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(MIX_M1, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, rs(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(MIX_M2, tf.uint32)
    return tf.bitwise.bitwise_xor(x, rs(x, tf.constant(16, tf.uint32)))


def uniform(seeds, positions, vocab_size: int):
    """Uniform floats in the open interval (0, 1), shape ``(B, vocab_size)``, from ``hash(seed, position, id)``.

    ``seeds`` and ``positions`` are uint32 vectors of shape ``(B,)``. Never 0
    or 1, so the logs of Gumbel noise are always finite.
    """
    key = mix32(tf.bitwise.bitwise_xor(mix32(tf.bitwise.bitwise_xor(seeds, tf.constant(SEED_SALT, tf.uint32))),
                                      positions))  # (B,)
    ids = tf.cast(tf.range(vocab_size, dtype=tf.int32), tf.uint32)  # tf.range has no uint32 kernel
    return unit(mix32(key[:, None] + ids[None, :] * tf.constant(GOLDEN, tf.uint32)))


def unit(x):
    """uint32 bits -> float32 in the open interval (0, 1): ``(top 23 bits + 0.5) / 2**23``.

    23 bits, not 24: ``2**24 - 0.5`` is not a float32 and would round to 1.
    """
    top23 = tf.cast(tf.bitwise.right_shift(x, tf.constant(9, tf.uint32)), tf.float32)
    return (top23 + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(seeds, positions, vocab_size: int):
    """Standard Gumbel noise ``-log(-log(u))``, shape ``(B, vocab_size)``, a pure function of its inputs.

    Always finite (see ``unit`` and ``gumbel``).
    """
    return gumbel(uniform(seeds, positions, vocab_size))


def gumbel(u):
    """``-log(-log(u))`` for ``u`` in (0, 1); the inner term is kept above 1e-30, so never infinite."""
    return -tf.math.log(tf.maximum(-tf.math.log(u), 1e-30))


def apply_temperature(logits, temperature):
    """``logits / T`` per stream (``temperature`` shape ``(B,)``), shifted so the best is 0; safe for any T >= 0.

    Dividing ``logits - max`` (all <= 0) keeps the result in ``[-inf, 0]``:
    a tiny T sends everything but the best to ``-inf``, never to NaN. Rows
    with T == 0 come back unscaled (they are chosen greedily).
    """
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    t = temperature[:, None]
    return tf.where(t > 0, shifted / tf.where(t > 0, t, tf.ones_like(t)), shifted)


def top_k_filter(logits, k):
    """``-inf`` everywhere but each row's ``k`` largest logits (``k`` shape ``(B,)``, ties at the k-th kept)."""
    v = tf.shape(logits)[-1]
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth = tf.gather(ordered, tf.clip_by_value(k, 1, v) - 1, axis=-1, batch_dims=1)
    return tf.where(logits >= kth[:, None], logits, tf.constant(-math.inf, logits.dtype))


def top_p_filter(logits, p):
    """Keep each row's nucleus: the most likely characters whose probabilities first reach ``p`` (shape ``(B,)``).

    The most likely character is always kept; characters tied with the last
    one kept are kept too.
    """
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    probs = tf.nn.softmax(ordered, axis=-1)
    before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of the characters ranked above
    keep = before < p[:, None]
    n_keep = tf.maximum(tf.reduce_sum(tf.cast(keep, tf.int32), axis=-1), 1)
    last = tf.gather(ordered, n_keep - 1, axis=-1, batch_dims=1)
    return tf.where(logits >= last[:, None], logits, tf.constant(-math.inf, logits.dtype))


def choose(logits, temperature, noise, top_k=None, top_p=None):
    """Next ids (int32, shape ``(B,)``): Gumbel-max over the filtered, tempered logits; greedy where T == 0.

    ``temperature``: float32 ``(B,)``; ``noise``: from ``gumbel_noise``;
    ``top_k`` int32 ``(B,)`` and ``top_p`` float32 ``(B,)`` are optional
    (``None`` skips the sort they need); a row with top-p >= 1 is not filtered at all.

    ``argmax(logits / T + g) == argmax(logits + T * g)`` for T > 0, so the
    noise is scaled instead of the logits: nothing can overflow at any
    temperature, and T == 0 is exactly ``argmax(logits)`` (the noise is finite).
    """
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        keep = tf.math.is_finite(top_p_filter(apply_temperature(logits, temperature), top_p))
        # a row with top-p >= 1 keeps every character: exactly as with no top-p (rounding in the cumulative
        # sum must not drop a rare character), so rows with and without top-p can share one batch
        keep = tf.logical_or(keep, (top_p >= 1.0)[:, None])
        logits = tf.where(keep, logits, tf.constant(-math.inf, logits.dtype))
    return tf.argmax(logits + temperature[:, None] * noise, axis=-1, output_type=tf.int32)


def constrained_scores(logits, allowed, accepting):
    """The V + 1 candidates under a constraint (``textstream.generation.constraint``): float32 ``(B, V + 1)``.

    ``allowed``: bool ``(B, V)``; ``accepting``: bool ``(B,)``. Columns 0..V-1
    are the allowed logits (``-inf`` elsewhere); column V ("end") is the log of
    the forbidden ids' mass, ``log(sum(exp(logit - max))) + max`` over them,
    where the state is accepting (``sampling_np.constrained_scores``, the same sums).
    """
    never = tf.constant(-math.inf, logits.dtype)
    top = tf.reduce_max(logits, axis=-1)
    mass = tf.reduce_sum(tf.where(allowed, tf.zeros_like(logits), tf.exp(logits - top[:, None])), axis=-1)
    end = tf.where(accepting, tf.math.log(mass) + top, never)
    return tf.concat([tf.where(allowed, logits, never), end[:, None]], axis=-1)
