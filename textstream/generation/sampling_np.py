"""Choosing the next character in numpy: noise, temperature, top-k, top-p, greedy. No TensorFlow here.

The numpy twin of ``textstream.generation.sampling_tf`` (the rules are in
``textstream.generation.sampling``'s docstring): the same counter-based noise hash, bit
for bit, and the same filters, so the numpy backend chooses what the
compiled TensorFlow step chooses except where the two backends' logits (or
their ``log``) differ in the last bits.

    import numpy as np
    from textstream.generation.sampling_np import choose, gumbel_noise
    logits = np.log(np.array([[0.1, 0.7, 0.2]], np.float32))
    noise = gumbel_noise(np.array([7], np.uint32), np.array([0], np.uint32), 1, 3)[0]   # (B, V) at position 0
    ids = choose(logits, np.array([1.0], np.float32), noise)

Unlike the graph ops, ``gumbel_noise`` makes the noise of ``k`` positions at
once (it does not depend on the model's state), which is how the step loop
amortises the hash.
"""
from __future__ import annotations

import numpy as np

from textstream.generation.sampling import GOLDEN, MIX_M1, MIX_M2, SEED_SALT

_M1, _M2, _SALT, _GOLDEN = (np.uint32(c) for c in (MIX_M1, MIX_M2, SEED_SALT, GOLDEN))
_UNIT = np.float32(1.0 / (1 << 23))
_HALF = np.float32(0.5)
_TINY = np.float32(1e-30)

__all__ = ["mix32", "stream_keys", "gumbel_noise", "gumbel_noise_columns", "apply_temperature", "top_k_filter",
           "top_p_filter", "choose", "choose_scaled", "constrained_scores"]


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a uint32 array, in place (uint32 arithmetic wraps); returns ``x``."""
    x ^= x >> np.uint32(16)
    x *= _M1
    x ^= x >> np.uint32(15)
    x *= _M2
    x ^= x >> np.uint32(16)
    return x


def stream_keys(seeds: np.ndarray) -> np.ndarray:
    """``mix32(seed ^ SEED_SALT)`` per stream: the part of the noise key that never changes (uint32 (B,))."""
    return mix32(np.asarray(seeds, np.uint32) ^ _SALT)


def gumbel_noise(seeds: np.ndarray, positions: np.ndarray, k: int, vocab_size: int,
                 keys: np.ndarray | None = None) -> np.ndarray:
    """Gumbel noise of positions ``positions .. positions + k - 1`` of each stream: float32 (k, B, V).

    ``seeds``/``positions``: uint32 (B,); ``keys``: ``stream_keys(seeds)`` if
    already known. Entry ``[t, b, i]`` equals ``sampling_tf.gumbel_noise``'s
    ``[b, i]`` at position ``positions[b] + t`` (up to the last bits of ``log``).
    """
    key = _position_keys(seeds, positions, k, keys)
    return _gumbel(key[:, :, None] + np.arange(vocab_size, dtype=np.uint32) * _GOLDEN)  # (k, B, V)


def gumbel_noise_columns(seeds: np.ndarray, positions: np.ndarray, k: int, vocab_size: int,
                         keys: np.ndarray | None = None) -> np.ndarray:
    """``gumbel_noise`` laid out (k, V, B): entry ``[t, i, b]`` is its ``[t, b, i]``, the same value."""
    key = _position_keys(seeds, positions, k, keys)
    return _gumbel(key[:, None, :] + (np.arange(vocab_size, dtype=np.uint32) * _GOLDEN)[None, :, None])


def _position_keys(seeds, positions, k: int, keys) -> np.ndarray:
    """The noise key of each stream at each of ``k`` positions: uint32 (k, B)."""
    keys = stream_keys(seeds) if keys is None else keys
    pos = np.asarray(positions, np.uint32)[None, :] + np.arange(k, dtype=np.uint32)[:, None]  # (k, B), wraps
    return mix32(pos ^ keys[None, :])


def _gumbel(x: np.ndarray) -> np.ndarray:
    """``-log(-log(u))`` of the uniform each hashed uint32 of ``x`` gives: float32, the shape of ``x``."""
    u = (mix32(x) >> np.uint32(9)).astype(np.float32)
    u += _HALF
    u *= _UNIT
    np.log(u, out=u)
    np.negative(u, out=u)
    np.maximum(u, _TINY, out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    return u


def apply_temperature(logits: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """``(logits - max) / T`` per row (``temperature`` (B,)); rows with T == 0 shifted but not scaled."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    t = temperature[:, None]
    return np.where(t > 0, shifted / np.where(t > 0, t, np.float32(1)), shifted)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """``-inf`` everywhere but each row's ``k`` largest logits (ties with the k-th kept); a new array."""
    k = min(max(int(k), 1), logits.shape[-1])
    kth = -np.partition(-logits, k - 1, axis=-1)[:, k - 1:k]
    return np.where(logits >= kth, logits, np.float32(-np.inf))


def top_p_filter(logits: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """Each row's nucleus: the most likely characters whose probabilities first reach ``p``; the rest ``-inf``.

    ``p``: one value or one per row. The most likely character is always
    kept, and those tied with the last one kept.
    """
    p = np.asarray(p, np.float32).reshape(-1, 1)
    ordered = -np.sort(-logits, axis=-1)
    probs = np.exp(ordered - ordered[:, :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    before = np.zeros_like(probs)  # mass of the characters ranked above (an exclusive cumulative sum)
    np.cumsum(probs[:, :-1], axis=-1, out=before[:, 1:])
    n_keep = np.maximum((before < p).sum(axis=-1), 1)
    last = ordered[np.arange(len(ordered)), n_keep - 1][:, None]
    return np.where(logits >= last, logits, np.float32(-np.inf))


def choose_scaled(logits: np.ndarray, scaled_noise: np.ndarray, temperature: np.ndarray,
                  top_k: int | None = None, top_p: float | np.ndarray | None = None) -> np.ndarray:
    """Next ids (B,): ``argmax(filtered logits + T * g)``, given ``scaled_noise = T * g`` (float32 (B, V)).

    ``sampling_tf.choose`` with the noise already multiplied by the temperature
    (the step loop scales a block of positions at once). ``top_p``: one value
    or one per row; a row with top-p >= 1 is not filtered at all (rounding in
    the cumulative sum must not drop a rare character).
    """
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        keep = np.isfinite(top_p_filter(apply_temperature(logits, temperature), top_p))
        keep |= np.asarray(top_p, np.float32).reshape(-1, 1) >= 1
        logits = np.where(keep, logits, np.float32(-np.inf))
    return (logits + scaled_noise).argmax(axis=-1)


def choose(logits: np.ndarray, temperature: np.ndarray, noise: np.ndarray, top_k: int | None = None,
           top_p: float | np.ndarray | None = None) -> np.ndarray:
    """Next ids (B,): Gumbel-max over the filtered logits with noise ``noise`` scaled by ``temperature`` (B,)."""
    return choose_scaled(logits, temperature[:, None] * noise, temperature, top_k, top_p)


def constrained_scores(logits: np.ndarray, bias: np.ndarray, accepting: np.ndarray,
                       out: np.ndarray | None = None) -> np.ndarray:
    """The V + 1 candidates under a constraint (``textstream.generation.constraint``): float32 (B, V + 1).

    ``bias``: (B, V), 0 where an id is allowed and ``-inf`` elsewhere;
    ``accepting``: bool (B,) (``Constraint.ends``). Columns 0..V-1 are the allowed logits; column V
    ("end") is the log of the forbidden ids' mass, ``log(sum(exp(logit - max))) + max``
    over them, where the state is accepting, ``-inf`` elsewhere (``sampling_tf.constrained_scores``).
    """
    b, v = logits.shape
    out = np.empty((b, v + 1), np.float32) if out is None else out
    np.add(logits, bias, out=out[:, :v])
    if not accepting.any():
        out[:, v] = -np.inf
        return out
    top = logits.max(axis=1)
    mass = np.exp(logits - top[:, None]).sum(axis=1, where=bias < 0)
    with np.errstate(divide="ignore"):
        out[:, v] = np.where(accepting, np.log(mass) + top, np.float32(-np.inf))
    return out
