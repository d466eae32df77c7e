"""The exported step model: a ``tf.Module`` whose signatures carry the LSTM state explicitly.

``StepGraph`` holds a trained ``CharLSTM``'s weights (the step layout of
``textstream.generation.step_tf``: layer 0's kernel and bias folded into one row per
character) and four signatures, saved with ``tf.saved_model.save``:

    initial_state(batch)                     -> {h, c}
    step(ids, h, c)                          -> {logits, h, c}
    generate(prime_ids, n, temperature, seed, position, h, c) -> {ids, h, c, position}
    vocabulary()                             -> {chars, tokens, oov_id, lowercase}

``h`` and ``c`` are float32 of shape (layers, batch, units): the state after
every character consumed so far; nothing else is carried between calls.
``generate`` feeds ``prime_ids`` (int32 (batch, P); ids < 0 are padding that
leave a stream's state as it is), then samples ``n`` ids per stream with
textstream's own in-graph sampler (``textstream.generation.sampling_tf``: Gumbel-max
with the noise hash of (seed, position, id)), so a seed gives the text
``Generator.generate`` gives with that seed. ``seed`` and ``position`` are
int64 (batch,): the seed is folded the way ``sampling.seed_u32`` folds it,
the position counts the characters generated so far (0 for a new stream;
pass back the returned one to continue a stream exactly).

The graph is plain TensorFlow ops (no XLA attribute, no Python objects), so
the SavedModel loads wherever TensorFlow does, without textstream.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from textstream._tf import tf
from textstream.generation.sampling_tf import choose, gumbel_noise
from textstream.generation.step_tf import consume
from textstream.model.checkpoint import step_weights_of
from textstream.model.stepweights import StepWeights

# the constants of ``textstream.generation.sampling.seed_u32`` (splitmix64's finaliser), applied in the graph
_FOLD_M1 = 0xFF51AFD7ED558CCD
_FOLD_M2 = 0xC4CEB9FE1A85EC53


def fold_seed(seed):
    """int64 seeds (B,) -> uint32 stream seeds, as ``textstream.generation.sampling.seed_u32`` folds a Python int."""
    x = tf.bitcast(tf.cast(seed, tf.int64), tf.uint64)  # two's complement == Python's ``& (2**64 - 1)``
    shift = tf.constant(33, tf.uint64)
    for m in (_FOLD_M1, _FOLD_M2):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift)) * tf.constant(m, tf.uint64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
    return tf.cast(tf.bitwise.bitwise_and(x, tf.constant(0xFFFFFFFF, tf.uint64)), tf.uint32)


class StepGraph(tf.Module):
    """The single-step model with explicit state, ready for ``tf.saved_model.save`` (see the module docstring).

        graph = StepGraph.from_model(model, vocab_info)
        tf.saved_model.save(graph, path, signatures=graph.signatures())
    """

    def __init__(self, weights: StepWeights, vocab_info: Mapping[str, object]):
        super().__init__(name="textstream_step")
        var = lambda a, name: tf.Variable(a, trainable=False, name=name)  # noqa: E731
        self.layers, self.units, self.vocab_size = weights.layers, weights.units, weights.vocab_size
        self.embed = var(weights.embed, "embed")
        self.rec = [var(w, f"recurrent_{i}") for i, w in enumerate(weights.recurrent)]
        self.kernel = [var(w, f"kernel_{i}") for i, w in enumerate(weights.kernel, 1)]
        self.bias = [var(w, f"bias_{i}") for i, w in enumerate(weights.bias, 1)]
        self.head_kernel = var(weights.head_kernel, "head_kernel")
        self.head_bias = var(weights.head_bias, "head_bias")
        self.chars = tf.constant([str(ch) for ch in vocab_info["chars"]], tf.string)
        self.tokens = tf.constant(str(vocab_info["tokens"]), tf.string)
        self.oov_id = tf.constant(int(vocab_info["oov_id"]), tf.int32)
        self.lowercase = tf.constant(bool(vocab_info["lowercase"]), tf.bool)
        self._specs()

    @classmethod
    def from_model(cls, model, vocab_info: Mapping[str, object]) -> "StepGraph":
        """The step graph of a ``textstream.model.network.CharLSTM`` (its weights now)."""
        return cls(step_weights_of(model), vocab_info)

    def _specs(self) -> None:
        """Trace the signatures' functions for this model's shapes (any batch size)."""
        state = tf.TensorSpec([self.layers, None, self.units], tf.float32)
        self.initial_state = tf.function(self._initial_state, input_signature=[tf.TensorSpec([], tf.int32)])
        self.step = tf.function(self._step, input_signature=[tf.TensorSpec([None], tf.int32), state, state])
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64), state, state])
        self.vocabulary = tf.function(self._vocabulary, input_signature=[])

    def signatures(self) -> dict:
        """The signatures to save, by name."""
        return {"initial_state": self.initial_state, "step": self.step, "generate": self.generate,
                "vocabulary": self.vocabulary}

    # --- the signatures' bodies --------------------------------------------------------------
    def _initial_state(self, batch):
        zeros = tf.zeros(tf.stack([self.layers, batch, self.units]), tf.float32)
        return {"h": zeros, "c": zeros}

    def _step(self, ids, h, c):
        hs, cs = self._consume(tf.unstack(h, num=self.layers), tf.unstack(c, num=self.layers), ids)
        logits = tf.matmul(hs[-1], self.head_kernel) + self.head_bias
        return {"logits": logits, "h": tf.stack(hs), "c": tf.stack(cs)}

    def _vocabulary(self):
        return {"chars": tf.identity(self.chars), "tokens": tf.identity(self.tokens),
                "oov_id": tf.identity(self.oov_id), "lowercase": tf.identity(self.lowercase)}

    def _generate(self, prime_ids, n, temperature, seed, position, h, c):
        hs, cs = self._feed(tf.unstack(h, num=self.layers), tf.unstack(c, num=self.layers), prime_ids)
        vocab = self.vocab_size
        top = tf.concat([self.head_kernel, self.rec[-1]], axis=1)  # head and top recurrence: one matmul a step
        seeds = fold_seed(seed)
        n = tf.maximum(n, 0)
        out = tf.TensorArray(tf.int32, size=n + 1, element_shape=tf.TensorShape([None]))  # + 1: see below

        def body(i, hs, cs, pos, out):
            z = tf.matmul(hs[-1], top)
            x = choose(z[:, :vocab] + self.head_bias, temperature, gumbel_noise(seeds, pos, vocab))
            hs, cs = self._consume(hs, cs, x, z[:, vocab:])
            return i + 1, hs, cs, pos + tf.constant(1, tf.uint32), out.write(i, x)

        _, hs, cs, pos, out = tf.while_loop(lambda i, *_: i < n, body,
                                            (tf.constant(0), hs, cs, tf.cast(position, tf.uint32), out))
        out = out.write(n, tf.zeros(tf.shape(seed), tf.int32))  # never empty: stacking none needs a static shape
        ids = tf.transpose(out.stack()[:n])
        return {"ids": ids, "h": tf.stack(hs), "c": tf.stack(cs), "position": tf.cast(pos, tf.int64)}

    # --- the LSTM, one character at a time (textstream.generation.step_tf's arithmetic, on this module's variables) ----
    def _consume(self, hs, cs, x, top_rec=None):
        w = {"embed": self.embed, "rec": self.rec, "kernel": self.kernel, "bias": self.bias}
        return consume(w, hs, cs, x, top_rec)

    def _feed(self, hs, cs, ids):
        """Consume ``ids`` (B, P) column by column; a stream skips its ids < 0 (padding)."""
        def body(t, hs, cs):
            x = ids[:, t]
            on = (x >= 0)[:, None]
            nh, nc = self._consume(hs, cs, tf.maximum(x, 0))
            return (t + 1, [tf.where(on, a, b) for a, b in zip(nh, hs)],
                    [tf.where(on, a, b) for a, b in zip(nc, cs)])

        _, hs, cs = tf.while_loop(lambda t, *_: t < tf.shape(ids)[1], body, (tf.constant(0), hs, cs))
        return hs, cs


def write_savedmodel(dest: Path, model, vocab_info: Mapping[str, object], vocab_file: Path) -> None:
    """Save the step graph of ``model`` (a ``CharLSTM``) as a SavedModel directory ``dest`` (must not exist).

    ``vocab_file`` (the run's ``vocab.json``) is copied to ``dest/assets/vocab.json``.
    """
    graph = StepGraph.from_model(model, vocab_info)
    graph.vocab_file = tf.saved_model.Asset(str(vocab_file))
    tf.saved_model.save(graph, str(dest), signatures=graph.signatures())
