"""The compiled single-step model (the TensorFlow step backend): a stateful copy of a trained ``CharLSTM``.

``TFStep`` has the same weights as a ``CharLSTM``, the LSTM cell written
out, and a compiled loop (XLA, ``tf.while_loop``) that first feeds given
characters and then generates up to ``KMAX`` characters per call for a batch
of B streams, carrying ``(h, c)`` of every layer from call to call.
Characters are chosen in the graph (``textstream.generation.sampling_tf``) with noise
that depends only on (stream seed, stream position, character), so a seed
gives the same text however the work is cut into calls or batched.

``TFStreams`` holds the state of B streams on the device (model state, seeds,
positions, sampling settings) and advances them with compiled calls.
Together they implement ``textstream.generation.interface.StepBackend`` / ``StreamBatch``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from textstream._tf import tf
from textstream.config import TrainConfig
from textstream.data.vocab import Vocab
from textstream.generation.constrained_tf import constrained_loop, constraint_tensors
from textstream.generation.interface import RowBatch
from textstream.generation.logprobs_tf import sample_logprobs, score_rows
from textstream.generation.sampling import seed_u32
from textstream.generation.sampling_tf import choose, gumbel_noise
from textstream.generation.state import weights_digest
from textstream.model.checkpoint import load_model, step_weights_of
from textstream.model.stepweights import StepWeights

KMAX = 1024  # characters generated per compiled call, at most (the output buffer's length)
PMAX = 256  # characters fed per compiled call, at most (the feed buffer's length)

__all__ = ["TFStep", "TFStreams", "load", "KMAX", "PMAX"]


# --- the graph: weights are arguments, so models of one shape share an XLA executable per batch size ----
def lstm_cell(g, c):
    """One LSTM cell update from the gate pre-activations ``g`` (B, 4U), Keras gate order i, f, c, o."""
    i, f, cc, o = tf.split(g, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cc)
    return tf.sigmoid(o) * tf.tanh(c), c


def consume(w, hs, cs, x, top_rec=None):
    """Every layer takes one step on ids ``x`` (B,); ``top_rec`` = h_top @ rec_top if already computed.

    ``w`` holds ``embed`` (V, 4U: layer 0's kernel rows plus its bias), ``rec`` (one (U, 4U) per
    layer), ``kernel`` and ``bias`` (the upper layers'); tensors or variables.
    """
    n = len(hs)
    g = tf.gather(w["embed"], x)  # one-hot @ kernel + bias == row x of (kernel + bias)
    g += top_rec if (n == 1 and top_rec is not None) else tf.matmul(hs[0], w["rec"][0])
    h, c = lstm_cell(g, cs[0])
    new_h, new_c = [h], [c]
    for layer in range(1, n):
        g = tf.matmul(h, w["kernel"][layer - 1]) + w["bias"][layer - 1]
        g += top_rec if (layer == n - 1 and top_rec is not None) else tf.matmul(hs[layer], w["rec"][layer])
        h, c = lstm_cell(g, cs[layer])
        new_h.append(h)
        new_c.append(c)
    return new_h, new_c


def _feed_loop(w, hs, cs, feed, feed_len, n_feed):
    """Consume ``feed[:n_feed]`` (P, B); stream b takes only its first ``feed_len[b]`` ids."""
    def body(t, hs, cs):
        nh, nc = consume(w, hs, cs, feed[t])
        on = (t < feed_len)[:, None]
        return (t + 1, [tf.where(on, a, b) for a, b in zip(nh, hs)],
                [tf.where(on, a, b) for a, b in zip(nc, cs)])

    _, hs, cs = tf.while_loop(lambda t, *_: t < n_feed, body, (tf.constant(0), hs, cs))
    return hs, cs


def _sample_loop(w, hs, cs, seeds, positions, temperature, k, top_k, top_p):
    """Generate ``k`` ids per stream: returns ``(hs, cs, positions, ids (KMAX, B))``."""
    # dynamic: with reduce_retracing the traced signature may leave the vocabulary size unknown
    # (XLA still compiles each concrete shape)
    vocab = tf.shape(w["head_bias"])[0]
    out = tf.TensorArray(tf.int32, size=KMAX, element_shape=seeds.shape)

    def body(i, hs, cs, pos, out):
        z = tf.matmul(hs[-1], w["top"])  # [head kernel | top recurrent kernel]: one matmul
        logits = z[:, :vocab] + w["head_bias"]
        x = choose(logits, temperature, gumbel_noise(seeds, pos, vocab), top_k, top_p)
        hs, cs = consume(w, hs, cs, x, z[:, vocab:])
        return i + 1, hs, cs, pos + tf.constant(1, tf.uint32), out.write(i, x)

    _, hs, cs, positions, out = tf.while_loop(lambda i, *_: i < k, body, (tf.constant(0), hs, cs, positions, out))
    return hs, cs, positions, out.stack()


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _run(w, h, c, feed, feed_len, n_feed, seeds, positions, temperature, k, top_k, top_p, constraint=None):
    """Feed ``feed[:n_feed]`` (P, B) (stream b only its first ``feed_len[b]``), then generate ``k``.

    With a ``constraint`` (``constrained_tf.constrained_loop``) the ids come with the new constraint states.
    """
    n = len(w["rec"])
    hs, cs = _feed_loop(w, list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n)), feed, feed_len, n_feed)
    if constraint is None:
        hs, cs, positions, ids = _sample_loop(w, hs, cs, seeds, positions, temperature, k, top_k, top_p)
    else:
        hs, cs, positions, ids = constrained_loop(consume, w, hs, cs, seeds, positions, temperature, k, top_k, top_p,
                                                  constraint, KMAX)
    return tf.stack(hs), tf.stack(cs), positions, ids


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _teacher_forced(w, h, c, ids):
    """Logits after each of ``ids`` (T, B) -> (T, B, V), and the final state."""
    n = len(w["rec"])
    hs, cs = list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n))
    steps = tf.shape(ids)[0]
    out = tf.TensorArray(tf.float32, size=steps)

    def body(t, hs, cs, out):
        hs, cs = consume(w, hs, cs, ids[t])
        return t + 1, hs, cs, out.write(t, tf.matmul(hs[-1], w["head_kernel"]) + w["head_bias"])

    _, hs, cs, out = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), hs, cs, out))
    return out.stack(), tf.stack(hs), tf.stack(cs)


# --- the step model ----------------------------------------------------------------------------
def load(run_dir: str | Path, checkpoint: str = "best") -> tuple[TrainConfig, Vocab, "TFStep"]:
    """``(config, vocab, step model)`` of a run directory's ``checkpoint`` ("best" or "last")."""
    cfg, vocab, model = load_model(run_dir, checkpoint)
    return cfg, vocab, TFStep.from_model(model)


class TFStep:
    """A single-step copy of a trained ``CharLSTM`` (same weights) for B streams at a time.

    ``streams`` makes B streams to advance; ``run`` feeds characters and
    generates ``k`` more in one compiled call; ``logits`` scores a sequence
    position by position (the equivalence check).

        from textstream.generation.step_tf import load
        cfg, vocab, step_model = load("runs/default")
        per_position = step_model.logits([[1, 2, 3]])     # numpy (1, 3, V)
        ids = step_model.streams([7], [0.8]).advance(100)  # numpy (1, 100)
    """

    def __init__(self, weights: StepWeights):
        f32 = tf.constant
        self.layers, self.units, self.vocab_size = weights.layers, weights.units, weights.vocab_size
        self.weights = {
            "embed": f32(weights.embed),
            "rec": [f32(w) for w in weights.recurrent],
            "kernel": [f32(w) for w in weights.kernel],
            "bias": [f32(w) for w in weights.bias],
            "head_kernel": f32(weights.head_kernel),
            "head_bias": f32(weights.head_bias),
            "top": f32(np.concatenate([weights.head_kernel, weights.recurrent[-1]], axis=1)),
        }
        self._zero_feed: dict[int, tuple] = {}
        self._concrete: dict[tuple, object] = {}
        self.fingerprint = weights_digest(weights)  # what a saved session is checked against (state.py)

    @classmethod
    def from_model(cls, model) -> "TFStep":
        """The step copy of a ``textstream.model.network.CharLSTM`` (its weights as they are now)."""
        return cls(step_weights_of(model))

    def zero_state(self, batch: int):
        """``(h, c)``: float32 tensors of shape (layers, batch, units), all zero."""
        z = tf.zeros([self.layers, batch, self.units], tf.float32)
        return z, z

    def streams(self, seeds: Sequence[int], temperatures: Sequence[float], top_k: int | None = None,
                top_p: float | None = None) -> "TFStreams":
        """B = ``len(seeds)`` streams in the zero state, at position 0 (see ``TFStreams``)."""
        return TFStreams(self, seeds, temperatures, top_k, top_p)

    def run(self, h, c, seeds, positions, temperature, k: int, feed: Sequence[np.ndarray] | None = None,
            top_k=None, top_p=None, constraint=None):
        """One compiled call: feed each stream its ids (at most ``PMAX``), then generate ``k`` <= ``KMAX``.

        ``seeds``/``positions``: uint32 (B,); ``temperature``: float32 (B,);
        ``top_k``: int32 (B,) or None; ``top_p``: float32 (B,) or None;
        ``constraint``: None or ``(next, accepting, state)`` tensors (``constrained_tf``).
        Returns ``(h, c, positions, ids)`` with ``ids`` a numpy int32 array (B, k)
        (under a constraint -1 after a stream's match ended, and the new state as a fifth item).
        """
        batch = int(h.shape[1])
        if not 0 <= k <= KMAX:
            raise ValueError(f"k must be in [0, {KMAX}] (got {k})")
        buf, lens, n_feed = self._feed_buffer(batch, feed)
        args = (self.weights, h, c, buf, lens, tf.constant(n_feed, tf.int32), seeds, positions, temperature,
                tf.constant(k, tf.int32), top_k, top_p, constraint)
        key = (batch, top_k is None, top_p is None, None if constraint is None else tuple(constraint[0].shape))
        fn = self._concrete.get(key)
        if fn is None:  # calling the traced function directly skips tf.function's dispatch (~0.5 ms a call)
            fn = self._concrete[key] = _run.get_concrete_function(*args)
        h, c, positions, ids = fn(*args)
        if constraint is None:
            return h, c, positions, ids.numpy()[:k].T
        ids, state, steps = ids
        ids = ids.numpy()[:k].T
        ids[:, int(steps):] = -1  # the loop ended early: every stream's match had ended
        return h, c, positions, ids, state

    def _feed_buffer(self, batch: int, feed: Sequence[np.ndarray] | None):
        """``(ids (PMAX, batch), lengths (batch,), longest)`` for ``run``; one cached zero buffer when empty."""
        if feed is None or not any(len(f) for f in feed):
            if batch not in self._zero_feed:
                self._zero_feed[batch] = (tf.zeros([PMAX, batch], tf.int32), tf.zeros([batch], tf.int32))
            return (*self._zero_feed[batch], 0)
        lens = np.array([len(f) for f in feed], np.int32)
        if lens.max() > PMAX:
            raise ValueError(f"at most {PMAX} ids per call (got {lens.max()})")
        arr = np.zeros([PMAX, batch], np.int32)
        for b, f in enumerate(feed):
            arr[:len(f), b] = f
        return tf.constant(arr), tf.constant(lens), int(lens.max())

    def feed(self, h, c, ids: Sequence[np.ndarray]):
        """Consume each stream's ids (any length), in calls of ``PMAX``; returns the new ``(h, c)``."""
        batch = int(h.shape[1])
        dummy = (tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.float32))
        longest = max((len(f) for f in ids), default=0)
        for lo in range(0, longest, PMAX):
            h, c, _, _ = self.run(h, c, *dummy, 0, feed=[np.asarray(f[lo:lo + PMAX]) for f in ids])
        return h, c

    def advance_rows(self, rows: RowBatch, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed row i ``feed[i]`` (any length), then generate ``k`` ids per row; ``rows`` is updated in place.

        The rows run as a ``TFStreams`` padded to ``_bucket(B)`` rows (few compiles; ``top_p`` only when a
        row uses it, < 1), under ``rows.constraint`` when there is one; returns int32 (B, k).
        """
        if rows.batch == 0 or (k == 0 and not (feed is not None and any(len(f) for f in feed))):
            return np.zeros((rows.batch, 0), np.int32)
        streams = self._row_streams(rows)
        ids = streams.advance(k, feed)
        self._store_rows(streams, rows)
        return ids

    def advance_rows_logprobs(self, rows: RowBatch, k: int, top: int, feed: Sequence[np.ndarray] | None = None):
        """``advance_rows`` (unconstrained) returning ``(ids, chosen, top_ids, top_logprobs)`` (``logprobs_tf``)."""
        streams = self._row_streams(rows)
        out = streams.advance_logprobs(k, top, feed)
        self._store_rows(streams, rows)
        return out

    def _row_streams(self, rows: RowBatch) -> "TFStreams":
        b = rows.batch
        pad = _bucket(b) - b
        grow = lambda a, fill: tf.constant(  # noqa: E731
            np.concatenate([a, np.full(pad, fill, a.dtype)]) if pad else a)
        streams = object.__new__(TFStreams)
        streams.model, streams.batch, streams.top_k = self, b, None
        streams.h, streams.c = (tf.constant(np.pad(a, ((0, 0), (0, pad), (0, 0))) if pad else a)
                                for a in (rows.h, rows.c))
        streams.seeds, streams.positions = grow(rows.seeds, 0), grow(rows.positions, 0)
        streams.temperature = grow(rows.temperature, 1.0)
        streams.top_p = grow(rows.top_p, 1.0) if (rows.top_p < 1.0).any() else None
        constraint = getattr(rows, "constraint", None)  # (a RowBatch has one; other row holders may not)
        streams.constraint = None if constraint is None else constraint_tensors(constraint)
        streams.constraint_state = None if constraint is None else grow(rows.match, -1)
        return streams

    def _store_rows(self, streams: "TFStreams", rows: RowBatch) -> None:
        b = rows.batch
        rows.h[...], rows.c[...] = streams.h.numpy()[:, :b], streams.c.numpy()[:, :b]
        rows.positions[...] = streams.positions.numpy()[:b]
        if streams.constraint is not None:
            rows.match[...] = streams.constraint_state.numpy()[:b]

    def logits(self, ids, state=None) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one character at a time: numpy (B, T, V)."""
        ids = np.asarray(ids, np.int32)
        h, c = state if state is not None else self.zero_state(ids.shape[0])
        out, _, _ = _teacher_forced(self.weights, h, c, tf.constant(ids.T))
        return np.transpose(out.numpy(), (1, 0, 2))

    def head_logits(self, h_top: np.ndarray) -> np.ndarray:
        """The logits after top-layer states ``h_top`` (B, units), as the sampling loop computes them: (B, V)."""
        z = tf.matmul(tf.constant(np.asarray(h_top, np.float32)), self.weights["top"])
        return (z[:, :self.vocab_size] + self.weights["head_bias"]).numpy()

    def score_rows(self, h: np.ndarray, c: np.ndarray, ids) -> np.ndarray:
        """ln p of each ``ids[b, t]`` (B, T) given row b's state before it; ``h``, ``c`` updated in place."""
        return score_rows(self, consume, h, c, ids)

    def score_rows_top(self, h: np.ndarray, c: np.ndarray, ids, top: int):
        """``score_rows`` with the ``top`` likeliest ids at each position: ``(logprobs, top_ids, top_logprobs)``."""
        return score_rows(self, consume, h, c, ids, top)


# --- streams: B of them, their state on the device ------------------------------------------------
def _bucket(b: int) -> int:
    """Rows actually computed for ``b`` streams: 1, 2, 4, ... 64, then multiples of 64 (few XLA compiles)."""
    if b <= 64:
        return 1 << (b - 1).bit_length()
    return -(-b // 64) * 64


class TFStreams:
    """The state of B streams (model state, seeds, positions, sampling settings) and the calls on it.

    The batch is padded to ``_bucket(B)`` rows so that any B reuses one of a
    few compiled executables; the padding rows are computed and dropped.
    A ``textstream.generation.interface.StreamBatch``.
    """

    def __init__(self, model: TFStep, seeds: Sequence[int], temperatures: Sequence[float],
                 top_k: int | None = None, top_p: float | None = None):
        self.batch = b = len(seeds)
        rows = _bucket(b)
        pad = lambda values, fill, dtype: tf.constant(  # noqa: E731
            np.array(list(values) + [fill] * (rows - b), dtype))
        self.model = model
        self.h, self.c = model.zero_state(rows)
        self.seeds = pad((seed_u32(s) for s in seeds), 0, np.uint32)
        self.positions = tf.zeros([rows], tf.uint32)
        self.temperature = pad(temperatures, 1.0, np.float32)
        keep_all = top_k is None or top_k >= model.vocab_size  # no sort when top-k keeps everything
        self.top_k = None if keep_all else tf.constant(np.full(rows, int(top_k), np.int32))
        self.top_p = None if top_p is None or top_p >= 1.0 else tf.constant(np.full(rows, top_p, np.float32))
        self.constraint = self.constraint_state = None  # (next, ends) tensors; int32 (rows,), -1: ended

    def constrain(self, constraint) -> None:
        """Generate under ``constraint`` (a ``textstream.generation.constraint.Constraint``) from now on; None: free.

        Every stream starts a match; under a constraint ``advance`` pads a
        stream whose match has ended with -1, and it stays as it is until
        ``constrain`` is called again.
        """
        self.constraint = None if constraint is None else tuple(map(tf.constant, constraint.padded()))
        rows = int(self.h.shape[1])
        self.constraint_state = None if constraint is None else tf.constant(
            np.array([0] * self.batch + [-1] * (rows - self.batch), np.int32))  # padding rows: ended

    def copy(self) -> "TFStreams":
        """An independent copy: advancing one leaves the other as it was."""
        new = object.__new__(TFStreams)
        new.__dict__.update(self.__dict__)  # tensors are immutable: sharing them is copying them
        return new

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed stream i the ids ``feed[i]`` (any length), then generate ``k`` ids per stream: int32 (B, k)."""
        if feed is None and k == 0:
            return np.zeros((self.batch, 0), np.int32)
        if feed is not None:
            feed = self._feed_all_but_last_call(feed)
        parts = []
        for lo in range(0, max(k, 1), KMAX):  # one call even for k == 0 (it feeds)
            n = min(KMAX, k - lo)
            if self.constraint is None:
                self.h, self.c, self.positions, ids = self.model.run(
                    self.h, self.c, self.seeds, self.positions, self.temperature, n, feed, self.top_k, self.top_p)
            elif feed is None and not (self.constraint_state.numpy() >= 0).any():
                ids = np.full((self.batch, n), -1, np.int32)  # every match has ended
            else:
                self.h, self.c, self.positions, ids, self.constraint_state = self.model.run(
                    self.h, self.c, self.seeds, self.positions, self.temperature, n, feed, self.top_k, self.top_p,
                    (*self.constraint, self.constraint_state))
            parts.append(ids[:self.batch])
            feed = None
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def advance_logprobs(self, k: int, top: int = 0, feed: Sequence[np.ndarray] | None = None):
        """``advance`` (unconstrained) that also returns ``(chosen, top_ids, top_logprobs)`` (``logprobs_tf``)."""
        if feed is not None and any(len(f) for f in feed):
            self.advance(0, feed)
        return sample_logprobs(self, consume, k, top)

    def _feed_all_but_last_call(self, feed: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Pad ``feed`` to the bucket's rows and consume all but its last ``PMAX`` chunk; returns the rest."""
        rows = int(self.h.shape[1])
        feed = list(feed) + [np.zeros(0, np.int32)] * (rows - len(feed))
        longest = max((len(f) for f in feed), default=0)
        if longest <= PMAX:
            return feed
        cut = (longest - 1) // PMAX * PMAX  # all but the last chunk, fed without sampling
        self.h, self.c = self.model.feed(self.h, self.c, [f[:cut] for f in feed])
        return [f[cut:] for f in feed]

    def row_state(self, row: int) -> dict[str, np.ndarray]:
        """Stream ``row``'s state as numpy: ``h``/``c`` float32 (layers, units), ``seed``/``position`` uint32."""
        return {"h": np.array(self.h[:, row]), "c": np.array(self.c[:, row]),
                "seed": np.array(self.seeds[row], np.uint32), "position": np.array(self.positions[row], np.uint32)}

    def set_row_state(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Put stream ``row`` in ``state`` (as ``row_state`` returns it; shapes already checked)."""
        h, c = np.array(self.h), np.array(self.c)  # (layers, rows, units)
        h[:, row], c[:, row] = state["h"], state["c"]
        seeds, positions = np.array(self.seeds), np.array(self.positions)
        seeds[row], positions[row] = np.uint32(state["seed"]), np.uint32(state["position"])
        self.h, self.c = tf.constant(h), tf.constant(c)
        self.seeds, self.positions = tf.constant(seeds), tf.constant(positions)
