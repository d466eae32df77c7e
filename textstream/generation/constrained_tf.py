"""The compiled sampling loop under a regex constraint (the TensorFlow step backend's).

``constrained_loop`` is ``step_tf``'s sampling loop with the token DFA of a
``textstream.generation.constraint.Constraint`` applied in the graph: each
stream's DFA state picks its row of ``next``, the forbidden ids get ``-inf``
and the "end" candidate the forbidden mass (``sampling_tf.constrained_scores``),
and the Gumbel-max draw runs over the V + 1 scores with the usual noise. A
stream whose match ends stays as it is (state, position) and writes -1; the
loop stops once every stream has ended. The LSTM step comes in as ``consume``
(``step_tf.consume``), so this module does not import the step backend.
"""
from __future__ import annotations

import weakref

from textstream._tf import tf
from textstream.generation.sampling_tf import choose, constrained_scores, gumbel_noise

__all__ = ["constrained_loop", "constraint_tensors"]

_TENSORS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # Constraint -> its padded tables as tensors


def constraint_tensors(constraint) -> tuple:
    """``constraint.padded()`` as tensors, made once per ``Constraint`` while it lives (the server's engine
    calls ``advance_rows`` under one constraint turn after turn)."""
    tensors = _TENSORS.get(constraint)
    if tensors is None:
        tensors = _TENSORS[constraint] = tuple(map(tf.constant, constraint.padded()))
    return tensors


def constrained_loop(consume, w, hs, cs, seeds, positions, temperature, k, top_k, top_p, constraint, kmax: int):
    """Generate up to ``k`` ids per stream under ``constraint``; returns ``(hs, cs, positions, (ids, state, steps))``.

    ``constraint``: ``(next (N, V) int32, ends (N,) bool, state (B,) int32)`` (``Constraint.padded``);
    a stream whose state is -1 has ended. ``ids``: (``kmax``, B), -1 where a
    stream did not generate; ``steps``: how many steps ran (the rest of ``ids`` is unwritten).
    """
    table, ends, state = constraint
    vocab = tf.shape(w["head_bias"])[0]
    out = tf.TensorArray(tf.int32, size=kmax, element_shape=seeds.shape)

    def body(i, hs, cs, pos, out, state):
        z = tf.matmul(hs[-1], w["top"])  # [head kernel | top recurrent kernel], as in step_tf
        at = tf.maximum(state, 0)
        row = tf.gather(table, at)  # (B, V): the state after each id, -1 where it is not allowed
        scores = constrained_scores(z[:, :vocab] + w["head_bias"], row >= 0, tf.gather(ends, at))
        x = choose(scores, temperature, gumbel_noise(seeds, pos, vocab + 1), top_k, top_p)
        go = tf.logical_and(state >= 0, x < vocab)
        x = tf.where(go, x, 0)
        new_h, new_c = consume(w, hs, cs, x, z[:, vocab:])
        keep = go[:, None]
        return (i + 1, [tf.where(keep, a, b) for a, b in zip(new_h, hs)],
                [tf.where(keep, a, b) for a, b in zip(new_c, cs)], pos + tf.cast(go, tf.uint32),
                out.write(i, tf.where(go, x, -1)), tf.where(go, tf.gather(row, x, batch_dims=1), -1))

    def more(i, *loop):
        return tf.logical_and(i < k, tf.reduce_any(loop[-1] >= 0))

    steps, hs, cs, positions, out, state = tf.while_loop(more, body, (tf.constant(0), hs, cs, positions, out, state))
    return hs, cs, positions, (out.stack(), state, steps)
