"""The numpy step backend: a trained ``CharLSTM``'s single step in numpy, without TensorFlow.

``NumpyStep`` holds a checkpoint's ``StepWeights`` laid out for the step
loop; ``NumpyStreams`` holds B streams' state (``h``, ``c`` per layer, seeds,
positions, sampling settings) and advances them. Together they implement
``textstream.generation.interface.StepBackend`` / ``StreamBatch``, with the sampling of
``textstream.generation.sampling_np`` (the same noise hash as the compiled TensorFlow
step), so a seed gives the TensorFlow backend's text except where the two
backends' logits differ in their last bits.

    from textstream.generation.step_np import NumpyStep
    from textstream import stepweights
    step = NumpyStep(stepweights.read("runs/default/checkpoints/best/ckpt-1200"))
    ids = step.streams([7], [0.8]).advance(100)        # numpy (1, 100)

How it stays fast (a step of the default 1x384 model is ~0.6 M multiply-adds):
every buffer is allocated once per call and written with ``out=``; the top
layer's recurrent kernel sits beside the head (``top = [head | recurrent]``:
one product gives the logits and the next step's recurrent term, as
``step_tf`` does); the gate columns are reordered to (input, forget, output,
cell) and the sigmoid gates' columns halved, so one ``tanh`` over all four
gates gives them all (``sigmoid(x) = 0.5 + 0.5 * tanh(x / 2)``; halving is
exact in float32); the noise of a whole block of positions is hashed at once
(it does not depend on the model's state); the cell's arithmetic writes only
contiguous arrays (``_Buffers.cell``). OpenBLAS runs the step's small
products on one thread (``textstream.generation.blas`` says why); 16 or
more streams run with their state transposed (``transposed_np``: faster
products) and 32 or more as parts of their rows, one thread per core
(``parallel_np``).
Log-probabilities (scoring, and sampling that records them) run the same
step in ``textstream.generation.logprobs_np``.
"""
from __future__ import annotations

from functools import cached_property
from typing import Mapping, Sequence

import numpy as np

from textstream.generation.blas import one_blas_thread
from textstream.generation.logprobs_np import Recorder, score_rows
from textstream.generation.parallel_np import feed_in_parts, generate_in_parts, score_in_parts, wide
from textstream.generation.sampling import seed_u32
from textstream.generation.sampling_np import choose_scaled, constrained_scores, gumbel_noise, stream_keys
from textstream.generation.state import weights_digest
from textstream.generation.transposed_np import TransposedWeights, finish_cell
from textstream.model.stepweights import StepWeights

NOISE_BLOCK = 1 << 16  # noise values (positions x streams x vocabulary) hashed at once, at most
f32 = np.float32

__all__ = ["NumpyStep", "NumpyStreams", "one_blas_thread"]


class NumpyStep:
    """A single-step copy of a trained ``CharLSTM`` in numpy (a ``textstream.generation.interface.StepBackend``).

        step = NumpyStep(weights)                        # textstream.model.stepweights.StepWeights
        per_position = step.logits([[1, 2, 3]])          # numpy (1, 3, V)
    """

    def __init__(self, weights: StepWeights):
        weights.check()
        self.weights = weights
        self.layers, self.units, self.vocab_size = weights.layers, weights.units, weights.vocab_size
        u = self.units
        order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]  # Keras (i, f, c, o) -> (i, f, o, c)
        scale = np.r_[np.full(3 * u, 0.5, f32), np.ones(u, f32)]  # sigmoid gates halved (exact)
        gates = lambda w: np.ascontiguousarray(w[..., order] * scale, f32)  # noqa: E731
        self.embed = gates(weights.embed)
        self.recurrent = [gates(w) for w in weights.recurrent]
        self.kernel = [None] + [gates(w) for w in weights.kernel]  # indexed by layer; layer 0 uses embed
        self.bias = [None] + [gates(b) for b in weights.bias]
        self.head_kernel = np.ascontiguousarray(weights.head_kernel, f32)
        self.head_bias = np.ascontiguousarray(weights.head_bias, f32)
        self.top = np.ascontiguousarray(np.concatenate([self.head_kernel, self.recurrent[-1]], axis=1))

    def streams(self, seeds: Sequence[int], temperatures: Sequence[float], top_k: int | None = None,
                top_p: float | None = None) -> "NumpyStreams":
        """B = ``len(seeds)`` streams in the zero state, at position 0 (see ``NumpyStreams``)."""
        return NumpyStreams(self, seeds, temperatures, top_k, top_p)

    def advance_rows(self, rows, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed row i ``feed[i]``, then generate ``k`` ids per row of caller-owned arrays, updated in place.

        ``rows`` has ``h``, ``c`` float32 (layers, B, units), ``seeds`` (folded)
        and ``positions`` uint32 (B,), ``temperature`` and ``top_p`` float32
        (B,; a row with top-p >= 1 is not filtered), and maybe a ``constraint``
        with each row's ``match`` state: continuous batching, where any subset
        of streams shares a call. Returns int32 (B, k).
        """
        streams = self._row_streams(rows)
        ids = streams.advance(k, feed)
        if getattr(rows, "constraint", None) is not None:
            rows.match[...] = streams.constraint_state
        return ids

    def advance_rows_logprobs(self, rows, k: int, top: int, feed: Sequence[np.ndarray] | None = None):
        """``advance_rows`` (unconstrained) returning ``(ids, chosen, top_ids, top_logprobs)``."""
        return self._row_streams(rows).advance_logprobs(k, top, feed)

    def _row_streams(self, rows) -> "NumpyStreams":
        """``NumpyStreams`` over the arrays of ``rows`` (advancing it advances them in place)."""
        streams = object.__new__(NumpyStreams)
        streams.model, streams.batch = self, int(rows.seeds.shape[0])
        streams.h, streams.c, streams.positions = rows.h, rows.c, rows.positions  # advanced in place
        streams.seeds, streams.keys = rows.seeds, stream_keys(rows.seeds)
        streams.temperature, streams.top_k = np.asarray(rows.temperature, f32), None
        streams.top_p = rows.top_p if (rows.top_p < 1.0).any() else None
        streams.constraint = getattr(rows, "constraint", None)  # (a RowBatch has one; other row holders may not)
        streams.constraint_state = rows.match if streams.constraint is not None else np.zeros(streams.batch, np.int32)
        return streams

    @cached_property
    def transposed(self) -> TransposedWeights:
        """The arrays transposed for ``transposed_np``'s loop over many streams (made on first use)."""
        return TransposedWeights(self)

    def logits(self, ids) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one character at a time: float32 (B, T, V)."""
        ids = np.asarray(ids, np.int64)
        batch, steps = ids.shape
        streams = self.streams([0] * batch, [1.0] * batch)
        out = np.empty((batch, steps, self.vocab_size), f32)
        buffers = _Buffers(self, batch)
        with one_blas_thread():
            for t in range(steps):
                streams.consume(ids[:, t], buffers)
                np.dot(streams.h[-1], self.head_kernel, out=buffers.scores)
                np.add(buffers.scores, self.head_bias, out=out[:, t])
        return out

    @cached_property
    def fingerprint(self) -> str:
        """``state.weights_digest`` of the weights: what a saved session is checked against."""
        return weights_digest(self.weights)

    def head_logits(self, h_top: np.ndarray) -> np.ndarray:
        """The logits after top-layer states ``h_top`` (B, units), as the sampling loop computes them: (B, V)."""
        with one_blas_thread():
            z = np.dot(np.ascontiguousarray(h_top, f32), self.top)
        logits = z[:, :self.vocab_size]
        logits += self.head_bias
        return logits

    def score_rows(self, h: np.ndarray, c: np.ndarray, ids) -> np.ndarray:
        """ln p of each ``ids[b, t]`` (B, T) given row b's state before it; ``h``, ``c`` advanced in place."""
        return self.score_rows_top(h, c, ids, None)

    def score_rows_top(self, h: np.ndarray, c: np.ndarray, ids, top: int | None):
        """``score_rows`` with the ``top`` likeliest ids at each position: ``(logprobs, top_ids, top_logprobs)``."""
        ids = np.asarray(ids, np.int64)
        with one_blas_thread():
            if wide(*ids.shape):  # many rows: the column layout, a part of them per core (parallel_np)
                return score_in_parts(self, h, c, ids, top)
            return score_rows(self, h, c, ids, top)

    def scratch(self, b: int) -> "_Buffers":
        """Scratch arrays (and the LSTM cell) for ``b`` streams, as ``consume`` takes them."""
        return _Buffers(self, b)

    # --- one step of every layer (the arithmetic; state lives in the caller's arrays) ---------------
    def consume(self, x: np.ndarray, h: np.ndarray, c: np.ndarray, buffers: "_Buffers",
                top_rec: np.ndarray | None = None) -> None:
        """Every layer takes one step on ids ``x`` (b,): ``h``, ``c`` (layers, b, units) updated in place.

        ``top_rec``: the top layer's recurrent term ``h[-1] @ recurrent[-1]``
        when already computed (the sampling loop gets it with the logits).
        """
        g = buffers.gates
        top = self.layers - 1
        np.take(self.embed, x, axis=0, out=g, mode="clip")  # ("raise", the default, copies through a temporary)
        for layer in range(self.layers):
            if layer:
                np.dot(h[layer - 1], self.kernel[layer], out=g)
                g += self.bias[layer]
            if layer == top and top_rec is not None:
                g += top_rec
            else:
                np.dot(h[layer], self.recurrent[layer], out=buffers.rec)
                g += buffers.rec
            buffers.cell(c[layer], h[layer])


class _Buffers:
    """Scratch arrays of one call for ``b`` streams, and the LSTM cell on them (views made once)."""

    def __init__(self, model: NumpyStep, b: int):
        u, v = model.units, model.vocab_size
        self.gates = np.empty((b, 4 * u), f32)
        self.rec = np.empty((b, 4 * u), f32)
        self.z = np.empty((b, v + 4 * u), f32)  # [logits before the head bias | top layer's recurrent term]
        self.raw, self.top_rec = self.z[:, :v], self.z[:, v:]
        self.logits = np.empty((b, v), f32)  # raw + head bias, written to an array of its own (see cell)
        self.scores = np.empty((b, v), f32)
        self.u = np.empty((b, u), f32)
        self.sig = np.empty((b, 3 * u), f32)  # the sigmoid gates (i, f, o), contiguous (see cell)
        self.i, self.f, self.o = self.sig[:, :u], self.sig[:, u:2 * u], self.sig[:, 2 * u:]
        self.cand = np.empty((b, u), f32)
        self.pre_sig, self.pre_cand = self.gates[:, :3 * u], self.gates[:, 3 * u:]

    def cell(self, c: np.ndarray, h: np.ndarray) -> None:
        """``c = sigmoid(f) * c + sigmoid(i) * tanh(cand)``, ``h = sigmoid(o) * tanh(c)``, in place.

        ``tanh`` of every gate; the sigmoid gates were halved, so ``sigmoid =
        0.5 + 0.5 * tanh``. Every result goes to a contiguous array (the
        sigmoids to ``sig``, the candidate to ``cand``): numpy's loops that
        write into a column slice of the gates run several times slower.
        """
        np.tanh(self.pre_sig, out=self.sig)
        np.tanh(self.pre_cand, out=self.cand)
        finish_cell(self, c, h)


class NumpyStreams:
    """The state of B streams in numpy arrays, and the steps on it (a ``textstream.generation.interface.StreamBatch``).

    ``h``, ``c``: float32 (layers, B, units); ``seeds`` (folded by
    ``sampling.seed_u32``) and ``positions``: uint32 (B,); ``constraint``
    (a ``textstream.generation.constraint.Constraint`` or None) and each
    stream's state in it, ``constraint_state`` int32 (B,; -1: its match has ended).
    """

    def __init__(self, model: NumpyStep, seeds: Sequence[int], temperatures: Sequence[float],
                 top_k: int | None = None, top_p: float | None = None):
        self.model = model
        self.batch = b = len(seeds)
        self.h = np.zeros((model.layers, b, model.units), f32)
        self.c = np.zeros_like(self.h)
        self.seeds = np.array([seed_u32(s) for s in seeds], np.uint32)
        self.keys = stream_keys(self.seeds)
        self.positions = np.zeros(b, np.uint32)
        self.temperature = np.array(temperatures, f32).reshape(b)
        self.top_k = None if top_k is None or top_k >= model.vocab_size else int(top_k)
        self.top_p = None if top_p is None or top_p >= 1.0 else np.full(b, top_p, f32)  # per row
        self.constraint, self.constraint_state = None, np.zeros(b, np.int32)

    def copy(self) -> "NumpyStreams":
        """An independent copy: advancing one leaves the other as it was."""
        new = object.__new__(NumpyStreams)
        new.__dict__.update(self.__dict__)
        for name in ("h", "c", "seeds", "keys", "positions", "constraint_state"):
            setattr(new, name, getattr(self, name).copy())
        return new

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed stream i the ids ``feed[i]`` (any length), then generate ``k`` ids per stream: int32 (B, k)."""
        with one_blas_thread():
            if feed is not None:
                self._feed(feed)
            if wide(self.batch, k):  # many streams: the column layout, a part of the rows per core (parallel_np)
                return generate_in_parts(self, k)
            return self._generate(k) if self.constraint is None else self._generate_constrained(k)

    def advance_logprobs(self, k: int, top: int = 0, feed: Sequence[np.ndarray] | None = None):
        """``advance`` (unconstrained) that also returns ``(chosen, top_ids, top_logprobs)`` of every step."""
        with one_blas_thread():
            if feed is not None:
                self._feed(feed)
            if wide(self.batch, k):  # many streams: the column layout (parallel_np)
                return generate_in_parts(self, k, top)
            record = Recorder(self.batch, k, top, self.model.vocab_size)
            return (self._generate(k, record), *record.result())

    def constrain(self, constraint) -> None:
        """Generate under ``constraint`` from now on, every stream at the start of a match (None: free again).

        Under a constraint ``advance`` pads a stream whose match has ended
        with -1, and that stream stays as it is until ``constrain`` is called again.
        """
        self.constraint, self.constraint_state = constraint, np.zeros(self.batch, np.int32)

    def consume(self, x: np.ndarray, buffers: _Buffers | None = None) -> None:
        """Every stream takes one step on its id ``x[b]`` without sampling (positions stay)."""
        self.model.consume(np.asarray(x), self.h, self.c, buffers or _Buffers(self.model, self.batch))

    def _feed(self, feed: Sequence[np.ndarray]) -> None:
        """Consume each stream's ids; streams whose feed has ended keep their state.

        The streams still fed change at most B times, so the loop runs in
        segments over a fixed set of rows (all of them when the feeds are as long).
        """
        lens = np.array([len(f) for f in feed] + [0] * (self.batch - len(feed)), np.int64)
        longest = int(lens.max(initial=0))
        if longest == 0:
            return
        ids = np.zeros((self.batch, longest), np.int64)
        for b, f in enumerate(feed):
            ids[b, :len(f)] = f
        start = 0
        for end in sorted(set(int(n) for n in lens if n > 0)):
            rows = np.flatnonzero(lens >= end)
            every = len(rows) == self.batch
            h, c = (self.h, self.c) if every else (self.h[:, rows], self.c[:, rows])
            if wide(len(rows), end - start):  # many rows: the column layout, a part of them per core
                feed_in_parts(self.model, h, c, ids[rows, start:end])
            else:
                buffers = _Buffers(self.model, len(rows))
                for t in range(start, end):
                    self.model.consume(ids[rows, t], h, c, buffers)
            if not every:
                self.h[:, rows], self.c[:, rows] = h, c
            start = end

    def _generate(self, k: int, record: Recorder | None = None) -> np.ndarray:
        """Generate ``k`` ids per stream (the sampling loop); positions move by ``k``; ``record`` keeps the logits."""
        model, b, v = self.model, self.batch, self.model.vocab_size
        out = np.empty((b, k), np.int32)
        buf = _Buffers(model, b)
        plain = self.top_k is None and self.top_p is None
        h_top, temperature = self.h[-1], self.temperature[None, :, None]
        block = max(1, NOISE_BLOCK // max(1, b * v))
        for lo in range(0, k, block):
            n = min(block, k - lo)
            noise = gumbel_noise(self.seeds, self.positions + np.uint32(lo), n, v, keys=self.keys)
            noise *= temperature  # T * g, as the graph computes it; T = 0 rows become greedy
            kept = record.block(n) if record is not None else None
            for t in range(n):
                np.dot(h_top, model.top, out=buf.z)
                np.add(buf.raw, model.head_bias, out=buf.logits)
                if kept is not None:
                    kept[t] = buf.logits
                if plain:
                    np.add(buf.logits, noise[t], out=buf.scores)
                    x = buf.scores.argmax(axis=1)
                else:
                    x = choose_scaled(buf.logits, noise[t], self.temperature, self.top_k, self.top_p)
                out[:, lo + t] = x
                model.consume(x, self.h, self.c, buf, top_rec=buf.top_rec)
            if record is not None:
                record.add(out[:, lo:lo + n])
        self.positions += np.uint32(k)
        return out

    def _generate_constrained(self, k: int) -> np.ndarray:
        """``_generate`` over the V + 1 scores of ``sampling_np.constrained_scores``; a stream stops where it ends."""
        model, b, v, con = self.model, self.batch, self.model.vocab_size, self.constraint
        out, buf = np.empty((b, k), np.int32), _Buffers(model, b)
        rows, scores, picks = np.empty((b, v), f32), np.empty((b, v + 1), f32), np.empty((b, v + 1), f32)
        live = self.constraint_state >= 0
        state = np.maximum(self.constraint_state, 0)
        ends = np.where(live, k, 0)  # ids each stream generates in this call (k: its match goes on)
        kept = {r: (self.h[:, r].copy(), self.c[:, r].copy()) for r in np.flatnonzero(~live)}
        plain = self.top_k is None and self.top_p is None
        h_top, temperature = self.h[-1], self.temperature[None, :, None]
        block, lo, size = max(1, NOISE_BLOCK // max(1, b * (v + 1))), 0, 16
        while lo < k and live.any():
            n = min(size, block, k - lo)
            size *= 2  # noise blocks grow from 16 positions: a match may end soon
            noise = gumbel_noise(self.seeds, self.positions + np.uint32(lo), n, v + 1, keys=self.keys)
            noise *= temperature
            for t in range(n):
                np.dot(h_top, model.top, out=buf.z)
                np.add(buf.raw, model.head_bias, out=buf.logits)
                np.take(con.bias, state, axis=0, out=rows)
                can_end = con.ends[state]
                constrained_scores(buf.logits, rows, can_end, out=scores)
                if plain:
                    x = np.add(scores, noise[t], out=picks).argmax(axis=1)
                else:
                    x = choose_scaled(scores, noise[t], self.temperature, self.top_k, self.top_p)
                end = x == v
                if end.any():
                    for r in np.flatnonzero(end & live):  # its match ended: the stream stays as it is now
                        kept[r], ends[r] = (self.h[:, r].copy(), self.c[:, r].copy()), lo + t
                    live &= ~end
                    x[end] = 0
                out[:, lo + t] = x
                if not live.any():
                    break
                state = con.next[state, x]  # (a stream that has ended may go to -1: still an index, undone below)
                model.consume(x, self.h, self.c, buf, top_rec=buf.top_rec)
            lo += n
        for r, (h, c) in kept.items():
            self.h[:, r], self.c[:, r] = h, c
            out[r, ends[r]:] = -1
        self.positions += ends.astype(np.uint32)
        self.constraint_state = np.where(live, state, -1).astype(np.int32)
        return out

    def row_state(self, row: int) -> dict[str, np.ndarray]:
        """Stream ``row``'s state: ``h``/``c`` float32 (layers, units), ``seed``/``position`` uint32."""
        return {"h": self.h[:, row].copy(), "c": self.c[:, row].copy(),
                "seed": np.array(self.seeds[row], np.uint32), "position": np.array(self.positions[row], np.uint32)}

    def set_row_state(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Put stream ``row`` in ``state`` (as ``row_state`` returns it; shapes already checked)."""
        self.h[:, row], self.c[:, row] = state["h"], state["c"]
        self.seeds[row] = np.uint32(state["seed"])
        self.keys[row] = stream_keys(self.seeds[row:row + 1])[0]
        self.positions[row] = np.uint32(state["position"])
