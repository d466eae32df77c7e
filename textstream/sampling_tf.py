"""Choosing the next character, inside the compiled graph: temperature, top-k, top-p, greedy, noise.

Every function here is pure: tensors in, tensors out, no state. The
randomness is a counter-based hash, so the noise a stream sees at position
``p`` depends only on ``(stream seed, p, character id)``: the same seed gives
the same text whatever the number of characters generated per call and
however many other streams share the batch.

    from textstream._tf import tf
    from textstream.sampling import choose, gumbel_noise
    logits = tf.math.log(tf.constant([[0.1, 0.7, 0.2]]))
    noise = gumbel_noise(tf.constant([7], tf.uint32), tf.constant([0], tf.uint32), 3)
    ids = choose(logits, tf.constant([1.0]), noise)   # int32, shape (1,)

Sampling is Gumbel-max: ``argmax(logits / T + g)`` with ``g = -log(-log(u))``
draws from ``softmax(logits / T)`` (computed as ``argmax(logits + T * g)``).
Temperature 0 means greedy (``argmax``).
Stop strings are found on the Python side (``find_stop``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from textstream.errors import TextstreamError

_GOLDEN = 0x9E3779B9
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_SEED_SALT = 0x5BD1E995


@dataclass(frozen=True)
class SampleConfig:
    """How to pick characters: temperature (0 = greedy), optional top-k and top-p (nucleus).

    >>> SampleConfig(temperature=0.5, top_k=10).check().temperature
    0.5
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def check(self) -> "SampleConfig":
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise TextstreamError(f"temperature must be a finite number >= 0 (got {t!r}); 0 means greedy")
        if self.top_k is not None and (int(self.top_k) != self.top_k or self.top_k < 1):
            raise TextstreamError(f"top-k must be an integer >= 1 (got {self.top_k!r})")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise TextstreamError(f"top-p must be in (0, 1] (got {self.top_p!r})")
        return self


def seed_u32(seed: int) -> int:
    """Any Python int (negative, huge) folded to a well-mixed uint32 stream seed."""
    x = int(seed) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 33)) & 0xFFFFFFFF


# --- in-graph pieces ------------------------------------------------------------------------
def _tf():
    from textstream._tf import tf

    return tf


def mix32(x):
    """A bijective uint32 -> uint32 finaliser (lowbias32): every output bit depends on every input bit."""
    tf = _tf()
    rs = tf.bitwise.right_shift
    x = tf.bitwise.bitwise_xor(x, rs(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(_M1, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, rs(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(_M2, tf.uint32)
    return tf.bitwise.bitwise_xor(x, rs(x, tf.constant(16, tf.uint32)))


def uniform(seeds, positions, vocab_size: int):
    """Uniform floats in the open interval (0, 1), shape ``(B, vocab_size)``, from ``hash(seed, position, id)``.

    ``seeds`` and ``positions`` are uint32 vectors of shape ``(B,)``. Never 0
    or 1, so the logs of Gumbel noise are always finite.
    """
    tf = _tf()
    key = mix32(tf.bitwise.bitwise_xor(mix32(tf.bitwise.bitwise_xor(seeds, tf.constant(_SEED_SALT, tf.uint32))),
                                      positions))  # (B,)
    ids = tf.cast(tf.range(vocab_size, dtype=tf.int32), tf.uint32)  # tf.range has no uint32 kernel
    return unit(mix32(key[:, None] + ids[None, :] * tf.constant(_GOLDEN, tf.uint32)))


def unit(x):
    """uint32 bits -> float32 in the open interval (0, 1): ``(top 23 bits + 0.5) / 2**23``.

    23 bits, not 24: ``2**24 - 0.5`` is not a float32 and would round to 1.
    """
    tf = _tf()
    top23 = tf.cast(tf.bitwise.right_shift(x, tf.constant(9, tf.uint32)), tf.float32)
    return (top23 + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(seeds, positions, vocab_size: int):
    """Standard Gumbel noise ``-log(-log(u))``, shape ``(B, vocab_size)``, a pure function of its inputs.

    Always finite (see ``unit`` and ``gumbel``).
    """
    return gumbel(uniform(seeds, positions, vocab_size))


def gumbel(u):
    """``-log(-log(u))`` for ``u`` in (0, 1); the inner term is kept above 1e-30, so never infinite."""
    tf = _tf()
    return -tf.math.log(tf.maximum(-tf.math.log(u), 1e-30))


def apply_temperature(logits, temperature):
    """``logits / T`` per stream (``temperature`` shape ``(B,)``), shifted so the best is 0; safe for any T >= 0.

    Dividing ``logits - max`` (all <= 0) keeps the result in ``[-inf, 0]``:
    a tiny T sends everything but the best to ``-inf``, never to NaN. Rows
    with T == 0 come back unscaled (they are chosen greedily).
    """
    tf = _tf()
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    t = temperature[:, None]
    return tf.where(t > 0, shifted / tf.where(t > 0, t, tf.ones_like(t)), shifted)


def top_k_filter(logits, k):
    """``-inf`` everywhere but each row's ``k`` largest logits (``k`` shape ``(B,)``, ties at the k-th kept)."""
    tf = _tf()
    v = tf.shape(logits)[-1]
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    kth = tf.gather(ordered, tf.clip_by_value(k, 1, v) - 1, axis=-1, batch_dims=1)
    return tf.where(logits >= kth[:, None], logits, tf.constant(-math.inf, logits.dtype))


def top_p_filter(logits, p):
    """Keep each row's nucleus: the most likely characters whose probabilities first reach ``p`` (shape ``(B,)``).

    The most likely character is always kept; characters tied with the last
    one kept are kept too.
    """
    tf = _tf()
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
    (``None`` skips the sort they need).

    ``argmax(logits / T + g) == argmax(logits + T * g)`` for T > 0, so the
    noise is scaled instead of the logits: nothing can overflow at any
    temperature, and T == 0 is exactly ``argmax(logits)`` (the noise is finite).
    """
    tf = _tf()
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        keep = tf.math.is_finite(top_p_filter(apply_temperature(logits, temperature), top_p))
        logits = tf.where(keep, logits, tf.constant(-math.inf, logits.dtype))
    return tf.argmax(logits + temperature[:, None] * noise, axis=-1, output_type=tf.int32)


# --- Python side --------------------------------------------------------------------------------
def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index where the earliest stop string in ``text`` begins (searching from ``start``), or None.

    >>> find_stop("one. two. three", [". t"])
    3
    """
    best = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the beginning of a stop string.

    A streaming caller emits ``text[:len(text) - held_back(text, stops)]`` and
    keeps the rest until the next characters decide.

    >>> held_back("abc\\n", ["\\n\\n"])
    1
    """
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep
