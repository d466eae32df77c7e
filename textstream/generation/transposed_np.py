"""The numpy step's loops for many streams, with their state held transposed (units x streams). No TensorFlow.

``step_np.NumpyStreams`` keeps each layer's state as (streams, units) rows,
the layout callers own. For a batch of streams, OpenBLAS multiplies faster
when the streams run along the columns: ``top.T @ h.T`` (a (V + 4U, U)
matrix times (U, B)) takes about 0.8x the time of ``h @ top`` for 32 rows of
the default 1x384 model, and every slice the cell reads (the logits, the
recurrent term, each gate) is then a contiguous block of rows instead of a
strided column range. Each loop here (``generate``, ``generate_logprobs``,
``generate_constrained``, ``feed``, ``score``) copies a batch's state into that layout, runs all its
steps there, and copies it back; ``step_np`` takes them for 16 streams or
more, and ``parallel_np`` runs one per part of the rows.

The arithmetic is the row loop's, operation for operation (the same
products, the same order of additions, the same ``tanh`` identity, the
same noise values, log-softmax over rows), so wherever OpenBLAS computes
the two layouts' products alike (every preset's shape on the machines
measured; a few small shapes differ in their last bits, as products of
different batch sizes can) a stream's ids and state do not depend on which
loop ran it (``tests/test_npstep.py`` checks it). The transposed weights
are made once per model, on first use: a second copy of the step weights.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from textstream.generation.logprobs_np import Recorder, block_positions, score_arrays, score_block, scored
from textstream.generation.sampling_np import choose_scaled, constrained_scores, gumbel_noise, gumbel_noise_columns

f32 = np.float32
NOISE_BLOCK = 1 << 16  # noise values (positions x vocabulary x streams) hashed at once, at most

__all__ = ["TransposedWeights", "finish_cell", "generate", "generate_logprobs", "generate_constrained", "feed", "score"]


class TransposedWeights:
    """A ``step_np.NumpyStep``'s arrays transposed for the column layout (made once per model, on first use)."""

    def __init__(self, model):
        t = lambda w: np.ascontiguousarray(w.T, f32)  # noqa: E731
        self.top = t(model.top)  # (V + 4U, U): [head | recurrent of the top layer], transposed
        self.embed = t(model.embed)  # (4U, V): layer 0's input term of each id, one column per id
        self.kernel = [None] + [t(w) for w in model.kernel[1:]]
        self.recurrent = [t(w) for w in model.recurrent]
        self.bias = [None] + [np.ascontiguousarray(b[:, None], f32) for b in model.bias[1:]]
        self.head_bias = np.ascontiguousarray(model.head_bias[:, None], f32)


class _Columns:
    """Scratch arrays of one call for ``b`` streams in the column layout, and the LSTM cell on them."""

    def __init__(self, units: int, vocab_size: int, b: int):
        u, v = units, vocab_size
        self.z = np.empty((v + 4 * u, b), f32)  # [logits before the head bias ; top layer's recurrent term]
        self.raw, self.top_rec = self.z[:v], self.z[v:]
        self.logits = np.empty((v, b), f32)
        self.scores = np.empty((v, b), f32)
        self.gates = np.empty((4 * u, b), f32)
        self.rec = np.empty((4 * u, b), f32)
        self.act = np.empty((4 * u, b), f32)  # tanh of every gate: the sigmoid gates (i, f, o), then the candidate
        self.sig, self.cand = self.act[:3 * u], self.act[3 * u:]
        self.i, self.f, self.o = self.sig[:u], self.sig[u:2 * u], self.sig[2 * u:]
        self.u = np.empty((u, b), f32)

    def cell(self, c: np.ndarray, h: np.ndarray) -> None:
        """``step_np._Buffers.cell`` on (units, b) arrays: the same operations in the same order.

        Here every gate is a block of rows, so one ``tanh`` writes them all.
        """
        np.tanh(self.gates, out=self.act)
        finish_cell(self, c, h)


def finish_cell(buf, c: np.ndarray, h: np.ndarray) -> None:
    """The LSTM cell after ``tanh`` of its gates, in place, in either layout.

    ``buf`` has ``sig`` (tanh of the halved sigmoid gates, which this turns
    into the sigmoids: ``sigmoid(x) = 0.5 + 0.5 * tanh(x / 2)``), its views
    ``i``, ``f``, ``o``, the candidate ``cand`` and scratch ``u``:
    ``c = f * c + i * cand``, ``h = o * tanh(c)``.
    """
    buf.sig *= f32(0.5)
    buf.sig += f32(0.5)
    c *= buf.f
    np.multiply(buf.cand, buf.i, out=buf.u)
    c += buf.u
    np.tanh(c, out=h)
    h *= buf.o


def _first_layer(w: TransposedWeights, x: np.ndarray, h: np.ndarray, c: np.ndarray, buf: _Columns,
                 rec: np.ndarray) -> None:
    """Layer 0's step on ids ``x`` (b,) given its recurrent term ``rec`` (4U, b): ``h[0]``, ``c[0]`` in place."""
    np.take(w.embed, x, axis=1, out=buf.gates, mode="wrap")  # (ids are in range; "wrap" is the cheapest mode)
    buf.gates += rec
    buf.cell(c[0], h[0])


def _upper_layers(w: TransposedWeights, h: np.ndarray, c: np.ndarray, buf: _Columns, turn,
                  top_rec: np.ndarray | None) -> None:
    """Layers 1.. take their step (``top_rec``: the top layer's recurrent term, if already computed).

    The products run outside ``turn``, the operations between them inside it.
    """
    top, g = len(w.recurrent) - 1, buf.gates
    for layer in range(1, top + 1):
        rec = top_rec if layer == top and top_rec is not None else buf.rec
        if rec is buf.rec:
            np.dot(w.recurrent[layer], h[layer], out=rec)
        np.dot(w.kernel[layer], h[layer - 1], out=g)
        with turn:
            g += w.bias[layer]
            g += rec
            buf.cell(c[layer], h[layer])


def _columns_of(a: np.ndarray) -> np.ndarray:
    """(layers, b, units) -> a contiguous (layers, units, b) copy."""
    return np.ascontiguousarray(a.transpose(0, 2, 1))


def generate(streams, k: int, turn: threading.Lock | None = None, record: Recorder | None = None) -> np.ndarray:
    """``streams._generate(k)`` (a ``step_np.NumpyStreams``, unconstrained) in the column layout: int32 (B, k).

    Its ``h`` and ``c`` (views or not) are written back and its positions
    moved by ``k``. The caller holds OpenBLAS on one thread. ``turn``: a
    lock shared by loops running on other threads at the same time; each
    holds it for the short operations between its products, so that the
    threads take turns there instead of handing the GIL to each other at
    every one of them (which costs more than the operations). ``record``: a
    ``logprobs_np.Recorder`` that keeps each position's logits, as the row loop's.
    """
    model, b, v = streams.model, streams.batch, streams.model.vocab_size
    w, top = model.transposed, model.layers - 1
    turn = turn if turn is not None else contextlib.nullcontext()
    h, c = _columns_of(streams.h), _columns_of(streams.c)
    ids = np.empty((k, b), np.intp)
    buf = _Columns(model.units, v, b)
    plain = streams.top_k is None and streams.top_p is None
    temperature = streams.temperature[None, None, :]
    block = max(1, NOISE_BLOCK // max(1, b * v))
    for lo in range(0, k, block):
        n = min(block, k - lo)
        noise = gumbel_noise_columns(streams.seeds, streams.positions + np.uint32(lo), n, v, keys=streams.keys)
        noise *= temperature  # T * g, as the row loop computes it
        kept = record.block(n) if record is not None else None
        for t in range(n):
            np.dot(w.top, h[top], out=buf.z)  # the logits and the top layer's recurrent term
            if top:
                np.dot(w.recurrent[0], h[0], out=buf.rec)
            with turn:
                np.add(buf.raw, w.head_bias, out=buf.logits)
                if kept is not None:
                    kept[t] = buf.logits.T
                if plain:
                    np.add(buf.logits, noise[t], out=buf.scores)
                    x = buf.scores.argmax(axis=0, out=ids[lo + t])
                else:
                    x = ids[lo + t] = choose_scaled(buf.logits.T, noise[t].T, streams.temperature, streams.top_k,
                                                    streams.top_p)
                _first_layer(w, x, h, c, buf, buf.rec if top else buf.top_rec)
            if top:
                _upper_layers(w, h, c, buf, turn, buf.top_rec)
        if record is not None:
            record.add(ids[lo:lo + n].T)
    streams.h[...] = h.transpose(0, 2, 1)
    streams.c[...] = c.transpose(0, 2, 1)
    streams.positions += np.uint32(k)
    return ids.T.astype(np.int32)


def generate_logprobs(streams, k: int, top: int, turn: threading.Lock | None = None):
    """``generate`` that also returns ``(chosen, top_ids, top_logprobs)`` (``StreamBatch.advance_logprobs``)."""
    record = Recorder(streams.batch, k, top, streams.model.vocab_size)
    return (generate(streams, k, turn, record), *record.result())


def feed(model, h: np.ndarray, c: np.ndarray, ids: np.ndarray, turn: threading.Lock | None = None) -> None:
    """Row b takes a step on each of ``ids[b]`` (B, T) without sampling: ``h``, ``c`` (layers, B, units) in place.

    ``step_np.NumpyStreams._feed``'s loop (over rows fed equally long) in the
    column layout; ``model``: a ``step_np.NumpyStep``; ``turn`` as in ``generate``.
    """
    w = model.transposed
    turn = turn if turn is not None else contextlib.nullcontext()
    hc, cc = _columns_of(h), _columns_of(c)
    buf = _Columns(model.units, model.vocab_size, ids.shape[0])
    for x in np.ascontiguousarray(np.asarray(ids, np.intp).T):  # one contiguous row of ids per step
        np.dot(w.recurrent[0], hc[0], out=buf.rec)
        with turn:
            _first_layer(w, x, hc, cc, buf, buf.rec)
        _upper_layers(w, hc, cc, buf, turn, None)
    h[...] = hc.transpose(0, 2, 1)
    c[...] = cc.transpose(0, 2, 1)


def score(model, h: np.ndarray, c: np.ndarray, ids: np.ndarray, top: int | None = None,
          turn: threading.Lock | None = None):
    """``logprobs_np.score_rows`` in the column layout: the same values; ``h``, ``c`` (layers, B, units) in place.

    Each block's logits are laid back as (positions, B, V) before the
    log-softmax, so that the reduction runs as the row loop runs it.
    """
    ids = np.asarray(ids, np.int64)
    b, steps = ids.shape
    v, w, top_layer = model.vocab_size, model.transposed, model.layers - 1
    turn = turn if turn is not None else contextlib.nullcontext()
    out, best = score_arrays(b, steps, v, top)
    if steps == 0:
        return scored(out, best)
    hc, cc = _columns_of(h), _columns_of(c)
    buf = _Columns(model.units, v, b)
    kept = np.empty((block_positions(b, v, steps), v, b), f32)
    columns = np.ascontiguousarray(ids.T.astype(np.intp))  # (T, B): one contiguous row of ids per step
    for lo in range(0, steps, len(kept)):
        n = min(len(kept), steps - lo)
        for t in range(n):
            np.dot(w.top, hc[top_layer], out=buf.z)
            if top_layer:
                np.dot(w.recurrent[0], hc[0], out=buf.rec)
            with turn:
                np.add(buf.raw, w.head_bias, out=kept[t])
                _first_layer(w, columns[lo + t], hc, cc, buf, buf.rec if top_layer else buf.top_rec)
            if top_layer:
                _upper_layers(w, hc, cc, buf, turn, buf.top_rec)
        score_block(np.ascontiguousarray(kept[:n].transpose(0, 2, 1)), ids, lo, out, best)
    h[...] = hc.transpose(0, 2, 1)
    c[...] = cc.transpose(0, 2, 1)
    return scored(out, best)


def generate_constrained(streams, k: int, turn: threading.Lock | None = None) -> np.ndarray:
    """``streams._generate_constrained(k)`` in the column layout: the same ids; -1 after a stream's match ends.

    The V + 1 scores (``sampling_np.constrained_scores``) are computed on
    the logits laid back as rows, as the row loop computes them. The
    streams' ``constraint_state`` is written in place (a part's is a view).
    """
    model, b, v, con = streams.model, streams.batch, streams.model.vocab_size, streams.constraint
    w, top = model.transposed, model.layers - 1
    turn = turn if turn is not None else contextlib.nullcontext()
    h, c = _columns_of(streams.h), _columns_of(streams.c)
    out, buf = np.empty((b, k), np.int32), _Columns(model.units, v, b)
    logits, rows = np.empty((b, v), f32), np.empty((b, v), f32)
    scores, picks = np.empty((b, v + 1), f32), np.empty((b, v + 1), f32)
    live = streams.constraint_state >= 0
    state = np.maximum(streams.constraint_state, 0)
    ends = np.where(live, k, 0)  # ids each stream generates in this call (k: its match goes on)
    kept = {r: (h[:, :, r].copy(), c[:, :, r].copy()) for r in np.flatnonzero(~live)}
    plain = streams.top_k is None and streams.top_p is None
    temperature = streams.temperature[None, :, None]
    block, lo, size = max(1, NOISE_BLOCK // max(1, b * (v + 1))), 0, 16
    while lo < k and live.any():
        n = min(size, block, k - lo)
        size *= 2  # noise blocks grow from 16 positions: a match may end soon
        noise = gumbel_noise(streams.seeds, streams.positions + np.uint32(lo), n, v + 1, keys=streams.keys)
        noise *= temperature
        for t in range(n):
            np.dot(w.top, h[top], out=buf.z)
            if top:
                np.dot(w.recurrent[0], h[0], out=buf.rec)
            with turn:
                np.add(buf.raw, w.head_bias, out=buf.logits)
                np.copyto(logits, buf.logits.T)
                np.take(con.bias, state, axis=0, out=rows)
                constrained_scores(logits, rows, con.ends[state], out=scores)
                if plain:
                    x = np.add(scores, noise[t], out=picks).argmax(axis=1)
                else:
                    x = choose_scaled(scores, noise[t], streams.temperature, streams.top_k, streams.top_p)
                end = x == v
                if end.any():
                    for r in np.flatnonzero(end & live):  # its match ended: the stream stays as it is now
                        kept[r], ends[r] = (h[:, :, r].copy(), c[:, :, r].copy()), lo + t
                    live &= ~end
                    x[end] = 0
                out[:, lo + t] = x
                if not live.any():
                    break
                state = con.next[state, x]  # (an ended stream may go to -1: still an index, undone below)
                _first_layer(w, x, h, c, buf, buf.rec if top else buf.top_rec)
            if top:
                _upper_layers(w, h, c, buf, turn, buf.top_rec)
        lo += n
    for r, (hr, cr) in kept.items():
        h[:, :, r], c[:, :, r] = hr, cr
        out[r, ends[r]:] = -1
    streams.h[...] = h.transpose(0, 2, 1)
    streams.c[...] = c.transpose(0, 2, 1)
    streams.positions += ends.astype(np.uint32)
    streams.constraint_state[...] = np.where(live, state, -1)
    return out
