"""The compiled single-step model: a stateful copy of a trained ``CharLSTM`` that generates in graph.

``StepModel`` is a single-step copy of a ``CharLSTM``: the same weights, the
LSTM cell written out, and a compiled loop (XLA, ``tf.while_loop``) that first
feeds given characters and then generates up to ``KMAX`` characters per call
for a batch of B streams, carrying ``(h, c)`` of every layer from call to
call. Characters are chosen in the graph (``textstream.sampling``) with noise
that depends only on (stream seed, stream position, character), so a seed
gives the same text however the work is cut into calls or batched.

``Streams`` holds the state of B streams on the device (model state, seeds,
positions, sampling settings) and advances them with one compiled call.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from textstream.sampling import seed_u32

KMAX = 1024  # characters generated per compiled call, at most (the output buffer's length)
PMAX = 256  # characters fed per compiled call, at most (the feed buffer's length)

__all__ = ["StepModel", "Streams", "KMAX", "PMAX"]


# --- the compiled step model ---------------------------------------------------------------------
def _tf():
    from textstream._tf import tf

    return tf


_COMPILED: dict = {}


def _compiled():
    """The module's compiled functions, built once per process (weights are arguments, so every
    model of the same shape shares one XLA executable per batch size)."""
    if _COMPILED:
        return _COMPILED
    tf = _tf()
    from textstream import sampling

    def cell(g, c):
        i, f, cc, o = tf.split(g, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cc)
        return tf.sigmoid(o) * tf.tanh(c), c

    def consume(w, hs, cs, x, top_rec=None):
        """Every layer takes one step on ids ``x`` (B,); ``top_rec`` = h_top @ rec_top if already computed."""
        n = len(hs)
        g = tf.gather(w["embed"], x)  # one-hot @ kernel + bias == row x of (kernel + bias)
        g += top_rec if (n == 1 and top_rec is not None) else tf.matmul(hs[0], w["rec"][0])
        h, c = cell(g, cs[0])
        new_h, new_c = [h], [c]
        for layer in range(1, n):
            g = tf.matmul(h, w["kernel"][layer - 1]) + w["bias"][layer - 1]
            g += top_rec if (layer == n - 1 and top_rec is not None) else tf.matmul(hs[layer], w["rec"][layer])
            h, c = cell(g, cs[layer])
            new_h.append(h)
            new_c.append(c)
        return new_h, new_c

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def run(w, h, c, feed, feed_len, n_feed, seeds, positions, temperature, k, top_k, top_p):
        """Feed ``feed[:n_feed]`` (P, B) (stream b only its first ``feed_len[b]``), then generate ``k``."""
        n = len(w["rec"])
        # dynamic: with reduce_retracing the traced signature may leave the vocabulary size unknown
        # (XLA still compiles each concrete shape)
        vocab = tf.shape(w["head_bias"])[0]
        hs, cs = list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n))

        def feed_body(t, hs, cs):
            nh, nc = consume(w, hs, cs, feed[t])
            on = (t < feed_len)[:, None]
            return (t + 1, [tf.where(on, a, b) for a, b in zip(nh, hs)],
                    [tf.where(on, a, b) for a, b in zip(nc, cs)])

        _, hs, cs = tf.while_loop(lambda t, *_: t < n_feed, feed_body, (tf.constant(0), hs, cs))

        out = tf.TensorArray(tf.int32, size=KMAX, element_shape=feed_len.shape)

        def sample_body(i, hs, cs, pos, out):
            z = tf.matmul(hs[-1], w["top"])  # [head kernel | top recurrent kernel]: one matmul
            logits = z[:, :vocab] + w["head_bias"]
            noise = sampling.gumbel_noise(seeds, pos, vocab)
            x = sampling.choose(logits, temperature, noise, top_k, top_p)
            hs, cs = consume(w, hs, cs, x, z[:, vocab:])
            return i + 1, hs, cs, pos + tf.constant(1, tf.uint32), out.write(i, x)

        _, hs, cs, positions, out = tf.while_loop(
            lambda i, *_: i < k, sample_body, (tf.constant(0), hs, cs, positions, out))
        return tf.stack(hs), tf.stack(cs), positions, out.stack()

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def logits(w, h, c, ids):
        """Teacher-forced: logits after each of ``ids`` (T, B) -> (T, B, V), and the final state."""
        n = len(w["rec"])
        hs, cs = list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n))
        steps = tf.shape(ids)[0]
        out = tf.TensorArray(tf.float32, size=steps)

        def body(t, hs, cs, out):
            hs, cs = consume(w, hs, cs, ids[t])
            return t + 1, hs, cs, out.write(t, tf.matmul(hs[-1], w["head_kernel"]) + w["head_bias"])

        _, hs, cs, out = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), hs, cs, out))
        return out.stack(), tf.stack(hs), tf.stack(cs)

    _COMPILED.update(run=run, logits=logits)
    return _COMPILED


class StepModel:
    """A single-step copy of a trained ``CharLSTM`` (same weights) for B streams at a time.

    ``run`` feeds characters and generates ``k`` more in one compiled call;
    ``logits`` scores a sequence position by position (the equivalence check).

        from textstream.checkpoint import load_model
        cfg, vocab, model = load_model("runs/default")
        step = StepModel.from_model(model)
        h, c = step.zero_state(1)
        per_position = step.logits([[1, 2, 3]])     # numpy (1, 3, V)
    """

    def __init__(self, lstm: Sequence[Mapping[str, np.ndarray]], head: tuple[np.ndarray, np.ndarray]):
        tf = _tf()
        f32 = lambda a: tf.constant(np.asarray(a, np.float32))  # noqa: E731
        head_kernel, head_bias = head
        self.layers = len(lstm)
        self.units = int(np.asarray(lstm[0]["recurrent"]).shape[0])
        self.vocab_size = int(np.asarray(head_bias).shape[0])
        top = np.concatenate([np.asarray(head_kernel), np.asarray(lstm[-1]["recurrent"])], axis=1)
        self.weights = {
            "embed": f32(np.asarray(lstm[0]["kernel"]) + np.asarray(lstm[0]["bias"])),
            "rec": [f32(w["recurrent"]) for w in lstm],
            "kernel": [f32(w["kernel"]) for w in lstm[1:]],
            "bias": [f32(w["bias"]) for w in lstm[1:]],
            "head_kernel": f32(head_kernel),
            "head_bias": f32(head_bias),
            "top": f32(top),
        }
        self._zero_feed: dict[int, tuple] = {}
        self._concrete: dict[tuple, object] = {}

    @classmethod
    def from_model(cls, model) -> "StepModel":
        """The step copy of a ``textstream.model.CharLSTM`` (its weights as they are now)."""
        from textstream.model import head_weights, lstm_weights

        return cls(lstm_weights(model), head_weights(model))

    def zero_state(self, batch: int):
        """``(h, c)``: float32 tensors of shape (layers, batch, units), all zero."""
        tf = _tf()
        z = tf.zeros([self.layers, batch, self.units], tf.float32)
        return z, z

    def run(self, h, c, seeds, positions, temperature, k: int, feed: Sequence[np.ndarray] | None = None,
            top_k=None, top_p=None):
        """One compiled call: feed each stream its ids (at most ``PMAX``), then generate ``k`` <= ``KMAX``.

        ``seeds``/``positions``: uint32 (B,); ``temperature``: float32 (B,);
        ``top_k``: int32 (B,) or None; ``top_p``: float32 (B,) or None.
        Returns ``(h, c, positions, ids)`` with ``ids`` a numpy int32 array (B, k).
        """
        tf = _tf()
        batch = int(h.shape[1])
        if not 0 <= k <= KMAX:
            raise ValueError(f"k must be in [0, {KMAX}] (got {k})")
        if feed is None or not any(len(f) for f in feed):
            if batch not in self._zero_feed:
                self._zero_feed[batch] = (tf.zeros([PMAX, batch], tf.int32), tf.zeros([batch], tf.int32))
            buf, lens = self._zero_feed[batch]
            n_feed = 0
        else:
            lens_np = np.array([len(f) for f in feed], np.int32)
            if lens_np.max() > PMAX:
                raise ValueError(f"at most {PMAX} ids per call (got {lens_np.max()})")
            arr = np.zeros([PMAX, batch], np.int32)
            for b, f in enumerate(feed):
                arr[:len(f), b] = f
            buf, lens, n_feed = tf.constant(arr), tf.constant(lens_np), int(lens_np.max())
        args = (self.weights, h, c, buf, lens, tf.constant(n_feed, tf.int32), seeds, positions, temperature,
                tf.constant(k, tf.int32), top_k, top_p)
        key = (batch, top_k is None, top_p is None)
        fn = self._concrete.get(key)
        if fn is None:  # calling the traced function directly skips tf.function's dispatch (~0.5 ms a call)
            fn = self._concrete[key] = _compiled()["run"].get_concrete_function(*args)
        h, c, positions, ids = fn(*args)
        return h, c, positions, ids.numpy()[:k].T

    def feed(self, h, c, ids: Sequence[np.ndarray]):
        """Consume each stream's ids (any length), in calls of ``PMAX``; returns the new ``(h, c)``."""
        tf = _tf()
        batch = int(h.shape[1])
        dummy = (tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.float32))
        longest = max((len(f) for f in ids), default=0)
        for lo in range(0, longest, PMAX):
            h, c, _, _ = self.run(h, c, *dummy, 0, feed=[np.asarray(f[lo:lo + PMAX]) for f in ids])
        return h, c

    def logits(self, ids, state=None) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one character at a time: numpy (B, T, V)."""
        tf = _tf()
        ids = np.asarray(ids, np.int32)
        h, c = state if state is not None else self.zero_state(ids.shape[0])
        out, _, _ = _compiled()["logits"](self.weights, h, c, tf.constant(ids.T))
        return np.transpose(out.numpy(), (1, 0, 2))


# --- streams: B of them, their state on the device ------------------------------------------------
def _bucket(b: int) -> int:
    """Rows actually computed for ``b`` streams: 1, 2, 4, ... 64, then multiples of 64 (few XLA compiles)."""
    if b <= 64:
        return 1 << (b - 1).bit_length()
    return -(-b // 64) * 64


class Streams:
    """The state of B streams (model state, seeds, positions, sampling settings) and the calls on it.

    The batch is padded to ``_bucket(B)`` rows so that any B reuses one of a
    few compiled executables; the padding rows are computed and dropped.
    """

    def __init__(self, step: StepModel, seeds: Sequence[int], temperature: Sequence[float],
                 top_k: int | None, top_p: float | None):
        tf = _tf()
        self.batch = b = len(seeds)
        rows = _bucket(b)
        pad = lambda values, fill, dtype: tf.constant(  # noqa: E731
            np.array(list(values) + [fill] * (rows - b), dtype))
        self.step = step
        self.h, self.c = step.zero_state(rows)
        self.seeds = pad((seed_u32(s) for s in seeds), 0, np.uint32)
        self.positions = tf.zeros([rows], tf.uint32)
        self.temperature = pad(temperature, 1.0, np.float32)
        keep_all = top_k is None or top_k >= step.vocab_size  # no sort when top-k keeps everything
        self.top_k = None if keep_all else tf.constant(np.full(rows, int(top_k), np.int32))
        self.top_p = None if top_p is None or top_p >= 1.0 else tf.constant(np.full(rows, top_p, np.float32))

    def copy(self) -> "Streams":
        new = object.__new__(Streams)
        new.__dict__.update(self.__dict__)  # tensors are immutable: sharing them is copying them
        return new

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed (each stream's ids, any length), then generate ``k`` <= KMAX ids per stream: (B, k)."""
        if feed is not None:
            rows = int(self.h.shape[1])
            feed = list(feed) + [np.zeros(0, np.int32)] * (rows - len(feed))
            longest = max((len(f) for f in feed), default=0)
            if longest > PMAX:
                cut = (longest - 1) // PMAX * PMAX  # all but the last chunk, fed without sampling
                self.h, self.c = self.step.feed(self.h, self.c, [f[:cut] for f in feed])
                feed = [f[cut:] for f in feed]
        self.h, self.c, self.positions, ids = self.step.run(
            self.h, self.c, self.seeds, self.positions, self.temperature, k, feed, self.top_k, self.top_p)
        return ids[:self.batch]
