"""The continuous-batching loop: every active stream advanced together, a few characters per call. No TensorFlow here.

One thread owns a pool of stream slots (each slot: the stream's LSTM state,
seed, position and sampling settings, as rows of numpy arrays) and repeats:

1. take the streams admitted since the last call (their slot rows reset) and
   drop the cancelled ones (their slots freed at once);
2. feed one chunk of prompt to streams whose prompt is still longer than
   ``FEED_CHUNK`` (a feed-only call on just those rows, so a long prompt
   delays the others by at most one chunk per turn);
3. gather the *ready* streams (prompt short enough, output buffer below
   ``buffer_chars``) into one ``RowBatch``, feed the new ones their prompt
   and generate ``k`` characters for all of them in ONE backend call, and
   scatter the rows back;
4. decode, cut at stop strings and ``max_chars``, hand the text to each
   stream's buffer, tell the reader (``notify``), and retire finished streams.

Invariants:

* a stream's text depends only on its own spec (prompt, seed, temperature,
  top-p, length, stops): the backend's rows are independent and the sampling
  noise is a hash of (seed, position, character), so whatever else is served
  at the same time, and however calls are cut, a seed gives the same text;
* a slow reader never slows the loop: its buffer is bounded (a stream whose
  unread text reaches ``buffer_chars`` sits out the next calls, its state kept
  in its slot) and the loop never waits on a reader;
* a cancelled stream (the client went away) leaves at the next turn and its
  slot is free for the next request; ``admit`` refuses when no slot is free.

``k`` adapts (from the least seconds per step of the recent calls of about
this batch size) so that a call takes about ``call_s`` (text reaches readers
steadily, and a new request waits at most one call to join), longer for
large batches so that the streams get at most ``EVENTS_PER_S`` updates per
second together (each update costs Python work on the server and the client:
with 256 streams and short calls that work, not the model, would set the
pace); a call that carries a new stream generates at most ``FIRST_K`` so its
first characters come quickly.

    engine = Engine(generator.backend, generator.vocab, max_streams=64, notify=print)
    engine.start()
    (stream,) = engine.admit([StreamSpec(prompt=generator.encode("The "), seed=1, max_chars=100)])
    text, finish = stream.take()      # what is there now; finish is set once the stream is over
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from textstream.data.vocab import Vocab
from textstream.generation.interface import RowBatch, StepBackend
from textstream.generation.sampling import seed_u32
from textstream.serve.stream import BUFFER_CHARS, Stream, StreamSpec

FIRST_K = 4  # characters generated in a call that carries a new stream (its first text comes quickly)
K_CAP = 256  # characters per call at most
CALL_S = 0.05  # a call's target duration: k grows or shrinks to it
EVENTS_PER_S = 1000  # stream updates per second at most (each costs Python work: decode, an HTTP event, a client)
FEED_CHUNK = 256  # prompt characters fed per stream per call
RECENT_CALLS = 16  # calls per batch size class that the step-time estimate looks at
IDLE_WAIT_S = 0.5  # how long the loop sleeps with nothing to do before checking again

__all__ = ["Engine", "EngineStats", "EngineFull", "EngineClosed"]

log = logging.getLogger("textstream.serve")


class EngineFull(Exception):
    """Every stream slot is taken: try again shortly."""


class EngineClosed(Exception):
    """The engine takes no new streams (draining, closed or failed)."""


@dataclass
class EngineStats:
    """Counters for ``/health`` and benchmarks (written by the engine thread)."""

    calls: int = 0
    chars: int = 0  # characters generated (including those cut off by stops and max_chars)
    admitted: int = 0
    last_k: int = 0
    last_batch: int = 0
    call_seconds: float = 0.0
    paused: int = 0  # streams sitting out the last call because their reader is slow
    waiting: int = 0  # streams admitted that have not generated yet (their prompt is being fed)
    finished: dict[str, int] = field(default_factory=dict)


class Engine:
    """Continuous batching over a ``StepBackend``: a thread that advances every ready stream in one call.

    ``admit`` (any thread) adds streams or raises ``EngineFull`` /
    ``EngineClosed``; ``cancel`` ends one; ``drain`` stops admitting;
    ``close`` stops the thread. ``notify(streams)`` is called from the engine
    thread after each call with the streams that have new text or finished;
    ``on_call(batch, k, fed)`` after each backend call (``fed``: prompt ids fed).
    """

    def __init__(self, backend: StepBackend, vocab: Vocab, *, max_streams: int = 256,
                 buffer_chars: int = BUFFER_CHARS, call_s: float = CALL_S,
                 notify: Callable[[list[Stream]], None] | None = None,
                 on_call: Callable[[int, int, int], None] | None = None):
        self.backend = backend
        self.vocab = vocab
        self.max_streams = max_streams
        self.buffer_chars = buffer_chars
        self.call_s = call_s
        self.notify = notify or (lambda streams: None)
        self.on_call = on_call or (lambda batch, k, fed: None)
        self.stats = EngineStats()
        self.error: BaseException | None = None
        shape = (backend.layers, max_streams, backend.units)
        self._h, self._c = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        self._seeds = np.zeros(max_streams, np.uint32)
        self._positions = np.zeros(max_streams, np.uint32)
        self._temperature = np.ones(max_streams, np.float32)
        self._top_p = np.ones(max_streams, np.float32)
        self._lock = threading.Lock()  # guards _free, _inbox, _accepting, _next_id
        self._free = list(range(max_streams - 1, -1, -1))
        self._inbox: list[Stream] = []
        self._accepting = True
        self._next_id = 0
        self._active: list[Stream] = []  # engine thread only
        self._step_s: dict[int, deque[float]] = {}  # recent seconds per character step, by batch size class
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- any thread ----------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._loop, name="textstream-engine", daemon=True)
        self._thread.start()
        return self

    def warm(self, max_batch: int | None = None) -> None:
        """Call the backend once for every batch size up to ``max_batch`` (default ``max_streams``), before ``start``.

        A backend that compiles per batch size (the TensorFlow one, bucketed)
        compiles now instead of stalling every stream the first time a size comes.
        """
        layers, units = self.backend.layers, self.backend.units
        for b in range(1, (max_batch or self.max_streams) + 1):
            for top_p in (1.0, 0.5):  # without top-p, and with it (a backend may compile the two apart)
                zeros = np.zeros((layers, b, units), np.float32)
                rows = RowBatch(h=zeros, c=zeros.copy(), seeds=np.zeros(b, np.uint32),
                                positions=np.zeros(b, np.uint32), temperature=np.ones(b, np.float32),
                                top_p=np.full(b, top_p, np.float32))
                self.backend.advance_rows(rows, 1)

    def admit(self, specs: Sequence[StreamSpec]) -> list[Stream]:
        """New streams for ``specs``, all or none: ``EngineFull`` when too few slots are free."""
        with self._lock:
            if not self._accepting:
                raise EngineClosed("the engine is not accepting streams")
            if len(specs) > len(self._free):
                raise EngineFull(f"{len(specs)} streams asked, {len(self._free)} free")
            streams = []
            for spec in specs:
                streams.append(Stream(self._next_id, spec, self._free.pop(), self.vocab.decoder(), self._wake,
                                      self.buffer_chars))
                self._next_id += 1
            self._inbox.extend(streams)
        self._wake.set()
        return streams

    def cancel(self, stream: Stream) -> None:
        """End ``stream`` at the next turn and free its slot (no effect on a finished stream)."""
        if not stream.done:
            stream.cancelled = True
            self._wake.set()

    @property
    def streams(self) -> int:
        """Slots taken: streams admitted and not yet retired."""
        with self._lock:
            return self.max_streams - len(self._free)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def drain(self) -> None:
        """Admit no more streams; the running ones go on."""
        with self._lock:
            self._accepting = False

    def cancel_all(self) -> None:
        """Cancel every stream, admitted or running."""
        with self._lock:
            self._accepting = False
            streams = list(self._inbox) + list(self._active)
        for s in streams:
            self.cancel(s)

    def close(self, timeout: float | None = 10.0) -> None:
        """Cancel everything and stop the loop thread."""
        self.cancel_all()
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._closing:
                self._wake.clear()
                self._take_inbox()
                self._retire([s for s in self._active if s.cancelled], "cancelled")
                if not self._turn():
                    self._wake.wait(IDLE_WAIT_S)
            self._retire(list(self._active), "cancelled")
        except BaseException as e:  # noqa: BLE001: the readers must hear of it; the app reports it
            log.error("the generation engine failed", exc_info=e)
            self.error = e
            with self._lock:
                self._accepting = False
            self._take_inbox()
            self._retire(list(self._active), "error")

    def _take_inbox(self) -> None:
        """Move admitted streams into the active set, their slot rows reset to the start of their stream."""
        with self._lock:
            new, self._inbox = self._inbox, []
        for s in new:
            i = s.slot
            self._h[:, i] = 0.0
            self._c[:, i] = 0.0
            self._seeds[i] = seed_u32(s.spec.seed)
            self._positions[i] = 0
            self._temperature[i] = s.spec.temperature
            self._top_p[i] = 1.0 if s.spec.top_p is None else s.spec.top_p
            self._active.append(s)
            self.stats.admitted += 1

    def _retire(self, streams: list[Stream], finish: str) -> None:
        """Take ``streams`` out of the active set and free their slots; unfinished ones end with ``finish``."""
        if not streams:
            return
        gone = {s.id for s in streams}
        self._active = [s for s in self._active if s.id not in gone]
        for s in streams:
            s.end(finish)
            self.stats.finished[s.finish] = self.stats.finished.get(s.finish, 0) + 1
        with self._lock:
            self._free.extend(s.slot for s in streams)
        self.notify(streams)

    def _turn(self) -> bool:
        """One turn: a feed-only call for long prompts, then one call for every ready stream; False if idle."""
        long = [s for s in self._active if s.prompt_left > FEED_CHUNK]
        if long:
            self._call(long, 0, [s.spec.prompt[s.fed:s.fed + FEED_CHUNK] for s in long])
            for s in long:
                s.fed += FEED_CHUNK
        ready = [s for s in self._active if s.prompt_left <= FEED_CHUNK and not s.paused]
        self.stats.paused = sum(1 for s in self._active if s.paused)
        self.stats.waiting = sum(1 for s in self._active if not s.started)
        if not ready:
            return bool(long)
        feed = [s.spec.prompt[s.fed:] for s in ready] if any(s.prompt_left for s in ready) else None
        n_feed = max((len(f) for f in feed), default=0) if feed else 0
        k = self._choose_k(ready, n_feed)
        t0 = time.perf_counter()
        ids = self._call(ready, k, feed)
        self._learn(len(ready), time.perf_counter() - t0, n_feed + k)
        for s, row in zip(ready, ids):
            s.fed, s.started = len(s.spec.prompt), True
            s.receive(row)
        self.stats.waiting = sum(1 for s in self._active if not s.started)  # true until the next turn
        self.stats.calls += 1
        self.stats.chars += k * len(ready)
        self.stats.last_k, self.stats.last_batch = k, len(ready)
        finished = [s for s in ready if s.done]
        self.notify([s for s in ready if not s.done])
        self._retire(finished, "length")
        return True

    def _call(self, streams: list[Stream], k: int, feed: list[np.ndarray] | None) -> np.ndarray:
        """One backend call on the slots of ``streams``: gather their rows, advance, scatter them back."""
        slots = np.array([s.slot for s in streams], np.int64)
        rows = RowBatch(h=self._h[:, slots], c=self._c[:, slots], seeds=self._seeds[slots],
                        positions=self._positions[slots], temperature=self._temperature[slots],
                        top_p=self._top_p[slots])
        ids = self.backend.advance_rows(rows, k, feed)
        self._h[:, slots], self._c[:, slots] = rows.h, rows.c
        self._positions[slots] = rows.positions
        self.on_call(len(streams), k, sum(map(len, feed)) if feed else 0)
        return ids

    def _choose_k(self, ready: list[Stream], n_feed: int) -> int:
        """Characters for this call: about ``call_s`` of work, ``FIRST_K`` when a stream starts, no more than needed."""
        recent = self._step_s.get(_size_class(len(ready)))
        per_step = min(recent) if recent else None  # the least: a call the OS put aside says nothing of the model
        target = max(self.call_s, len(ready) / EVENTS_PER_S)
        k = FIRST_K if per_step is None else int(target / per_step) - n_feed
        if not all(s.started for s in ready):
            k = min(k, FIRST_K)
        need = max(s.spec.max_chars - s.taken for s in ready)
        return max(1, min(k, K_CAP, need))

    def _learn(self, batch: int, seconds: float, steps: int) -> None:
        """Remember this call's seconds per step for its batch size class (the last ``RECENT_CALLS``)."""
        self.stats.call_seconds = seconds
        self._step_s.setdefault(_size_class(batch), deque(maxlen=RECENT_CALLS)).append(seconds / max(1, steps))


def _size_class(b: int) -> int:
    """Batch sizes that cost about the same per step share an estimate: powers of two."""
    return 1 << (b - 1).bit_length()
