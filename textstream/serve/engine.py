"""The continuous-batching loop: every active stream advanced together, a few characters per call. No TensorFlow here.

One thread owns a pool of stream slots (each slot: the stream's LSTM state,
seed, position and sampling settings, as rows of numpy arrays) and repeats:

1. take the streams admitted since the last call (their slot rows reset) and
   drop the cancelled ones (their slots freed at once);
2. feed one chunk of prompt to streams whose prompt is still longer than
   ``FEED_CHUNK``, or that must have their whole prompt fed before they
   generate (a feed-only call on just those rows, so a long prompt delays
   the others by at most one chunk per turn): a prompt worth caching (the
   prefix cache, ``textstream.serve.prefix``: its state is kept once fed,
   and a new stream whose prompt begins with a kept one starts from that
   state), a stream that returns its state (``textstream.serve.state``),
   and an echoed prompt that is scored (fed with ``score_rows_top``);
3. gather the *ready* streams (prompt short enough, output buffer below
   ``buffer_chars``) into one ``RowBatch`` per kind (plain; recording
   logprobs, ``textstream.serve.logprobs``; one per regex constraint),
   feed the new ones their prompt and generate ``k`` characters for all of
   them, and scatter the rows back;
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

``k`` adapts so that a call takes about ``call_s`` (``textstream.serve.pacing``).

    engine = Engine(generator.backend, generator.vocab, max_streams=64, notify=print)
    engine.start()
    (stream,) = engine.admit([StreamSpec(prompt=generator.encode("The "), seed=1, max_chars=100)])
    text, finish = stream.take()      # what is there now; finish is set once the stream is over
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.constraint import split_ended
from textstream.generation.interface import RowBatch, StepBackend
from textstream.generation.sampling import seed_u32
from textstream.serve.logprobs import Records
from textstream.serve.pacing import CALL_S, Pacer
from textstream.serve.prefix import PrefixCache
from textstream.serve.state import Saving, end_state
from textstream.serve.stream import BUFFER_CHARS, Stream, StreamSpec

FEED_CHUNK = 256  # prompt characters fed per stream per call
TOP = 5  # alternatives a logprobs call records (each stream keeps its own number: one compiled shape for all)
IDLE_WAIT_S = 0.5  # how long the loop sleeps with nothing to do before checking again

__all__ = ["Engine", "EngineStats", "EngineFull", "EngineClosed", "CALL_S", "FEED_CHUNK"]

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
    ``on_call(batch, k, fed)`` after each backend call (``fed``: prompt ids fed);
    ``on_prefix(ids)`` after each lookup in ``prefix_cache`` (ids served from it, 0: a miss).
    """

    def __init__(self, backend: StepBackend, vocab: Vocab, *, max_streams: int = 256,
                 buffer_chars: int = BUFFER_CHARS, call_s: float = CALL_S,
                 notify: Callable[[list[Stream]], None] | None = None,
                 on_call: Callable[[int, int, int], None] | None = None,
                 prefix_cache: PrefixCache | None = None, on_prefix: Callable[[int], None] | None = None):
        self.backend = backend
        self.prefix = prefix_cache if prefix_cache is not None and prefix_cache.max_bytes else None
        self.on_prefix = on_prefix or (lambda ids: None)
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
        self._match = np.zeros(max_streams, np.int32)  # each slot's state in its regex's automaton
        self._lock = threading.Lock()  # guards _free, _inbox, _accepting, _next_id
        self._free = list(range(max_streams - 1, -1, -1))
        self._inbox: list[Stream] = []
        self._accepting = True
        self._next_id = 0
        self._active: list[Stream] = []  # engine thread only
        self.pacer = Pacer(call_s)
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
                s = Stream(self._next_id, spec, self._free.pop(), self.vocab.decoder(), self._wake, self.buffer_chars)
                s.logprobs = Records() if spec.logprobs is not None else None
                s.saving = Saving() if spec.return_state else None
                streams.append(s)
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
            i, spec = s.slot, s.spec
            if spec.start is None:
                self._h[:, i], self._c[:, i], self._seeds[i], self._positions[i] = 0.0, 0.0, seed_u32(spec.seed), 0
            else:  # a saved session continued (textstream.serve.state)
                self._h[:, i], self._c[:, i] = spec.start.h, spec.start.c
                self._seeds[i], self._positions[i] = spec.start.seed, spec.start.position
                s.hold(spec.start.pending)
            self._temperature[i] = spec.temperature
            self._top_p[i] = 1.0 if spec.top_p is None else spec.top_p
            self._match[i] = 0
            s.prompt_first = spec.return_state or spec.score_prompt or spec.max_chars == 0 or self._cacheable(s)
            if self._cacheable(s):
                hit = self.prefix.lookup(spec.prompt)
                if hit is not None:
                    s.fed, self._h[:, i], self._c[:, i] = hit
                self.on_prefix(0 if hit is None else hit[0])
            self._active.append(s)
            self.stats.admitted += 1

    def _cacheable(self, s: Stream) -> bool:
        """Whether ``s``'s prompt is looked up in the prefix cache and kept there: long, from the zero state."""
        return (self.prefix is not None and len(s.spec.prompt) > FEED_CHUNK and s.spec.start is None
                and not s.spec.score_prompt)

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
        """One turn: a feed-only call for long prompts, then one call per kind of ready stream; False if idle."""
        fed = self._feed_prompts()
        for s in [s for s in self._active if s.prompt_first and not s.prompt_done and not s.prompt_left]:
            self._prompt_done(s)
        ready = [s for s in self._active if not s.paused and not s.done
                 and (s.prompt_done if s.prompt_first else s.prompt_left <= FEED_CHUNK)]
        self.stats.paused = sum(1 for s in self._active if s.paused)
        self.stats.waiting = sum(1 for s in self._active if not s.started)
        if not ready:
            return self._retire_done() or fed
        feed = [s.spec.prompt[s.fed:] for s in ready] if any(s.prompt_left for s in ready) else None
        n_feed = max((len(f) for f in feed), default=0) if feed else 0
        k = self.pacer.choose(ready, n_feed)
        t0 = time.perf_counter()
        kinds: dict[tuple, list[int]] = {}
        for j, s in enumerate(ready):
            kinds.setdefault((id(s.spec.constraint), s.logprobs is not None), []).append(j)
        for rows in kinds.values():
            group = [ready[j] for j in rows]
            top = TOP if group[0].logprobs is not None else None
            out = self._call(group, k, [feed[j] for j in rows] if feed else None, group[0].spec.constraint, top)
            for r, s in enumerate(group):
                self._receive(s, out, r)
        self.stats.call_seconds = time.perf_counter() - t0
        self.pacer.learn(len(ready), self.stats.call_seconds, n_feed + k)
        self.stats.waiting = sum(1 for s in self._active if not s.started)  # true until the next turn
        self.stats.calls += 1
        self.stats.chars += k * len(ready)
        self.stats.last_k, self.stats.last_batch = k, len(ready)
        self.notify([s for s in ready if not s.done])
        self._retire_done()
        return True

    def _feed_prompts(self) -> bool:
        """Feed a chunk of prompt to the streams that take theirs in feed-only calls; False if there were none."""
        long = [s for s in self._active if s.prompt_left and (s.prompt_left > FEED_CHUNK or s.prompt_first)]
        plain = [s for s in long if not s.spec.score_prompt]
        if plain:
            self._call(plain, 0, [s.spec.prompt[s.fed:s.fed + FEED_CHUNK] for s in plain])
        by_length: dict[int, list[Stream]] = {}
        for s in long:
            if s.spec.score_prompt:
                by_length.setdefault(min(FEED_CHUNK, s.prompt_left), []).append(s)
        for n, group in by_length.items():
            self._score(group, np.stack([s.spec.prompt[s.fed:s.fed + n] for s in group]).astype(np.int32))
        for s in long:
            s.fed += min(FEED_CHUNK, s.prompt_left)
        return bool(long)

    def _score(self, streams: list[Stream], ids: np.ndarray) -> None:
        """Feed ``ids`` (B, n) to ``streams`` recording each id's logprob and alternatives (an echoed prompt)."""
        slots = np.array([s.slot for s in streams], np.int64)
        h, c = self._h[:, slots], self._c[:, slots]
        chosen, top_ids, top_lp = self.backend.score_rows_top(h, c, ids, TOP)
        self._h[:, slots], self._c[:, slots] = h, c
        for r, s in enumerate(streams):
            s.logprobs.add_prompt(ids[r], chosen[r], top_ids[r, :, :s.spec.logprobs], top_lp[r, :, :s.spec.logprobs])
        self.on_call(len(streams), 0, ids.size)

    def _prompt_done(self, s: Stream) -> None:
        """``s``'s prompt has been fed whole: keep its state (cache, saving); a stream of 0 characters ends."""
        s.prompt_done, i = True, s.slot
        if self._cacheable(s):
            self.prefix.store(s.spec.prompt, self._h[:, i], self._c[:, i])
        if s.saving is not None:
            s.saving.after_prompt = (self._h[:, i].copy(), self._c[:, i].copy(), int(self._positions[i]))
        if s.spec.max_chars == 0:
            s.receive(np.zeros(0, np.int32))
            self._save(s)
            self.notify([s])

    def _receive(self, s: Stream, out, r: int) -> None:
        """Hand stream ``s`` its row ``r`` of a call's output (ids, and the logprobs when recorded)."""
        ids, ended = split_ended(out[0][r] if isinstance(out, tuple) else out[r])
        if s.logprobs is not None:
            s.logprobs.add(ids, *(a[r, :, :s.spec.logprobs] if a.ndim == 3 else a[r] for a in out[1:]))
        if s.saving is not None:
            s.saving.ids.append(ids)
        s.fed, s.started = len(s.spec.prompt), True
        s.receive(ids, ended)
        self._save(s)

    def _save(self, s: Stream) -> None:
        """A stream that returns its state and has finished: save the state, then let its finish through."""
        if s.held_finish is None:
            return
        i, finish = s.slot, s.held_finish
        top_p = float(self._top_p[i])
        try:
            s.state = end_state(self.backend, self.vocab, s, self._h[:, i], self._c[:, i], int(self._seeds[i]),
                                int(self._positions[i]), float(self._temperature[i]), None if top_p >= 1 else top_p)
        except TextstreamError as e:  # a state that cannot be saved (NaN in it): the choice goes without one
            log.error("the state of a stream could not be saved: %s", e)
        s.held_finish = None
        s.end(finish)

    def _retire_done(self) -> bool:
        """Retire the streams that have finished (by length, stop, a regex's end); False if none."""
        finished = [s for s in self._active if s.done]
        self._retire(finished, "length")
        return bool(finished)

    def _call(self, streams: list[Stream], k: int, feed: list[np.ndarray] | None, constraint=None,
              top: int | None = None):
        """One backend call on ``streams``' slots (rows gathered, advanced, scattered back): ids (B, k), or with
        ``top`` ``(ids, chosen, top_ids, top_logprobs)``."""
        slots = np.array([s.slot for s in streams], np.int64)
        rows = RowBatch(h=self._h[:, slots], c=self._c[:, slots], seeds=self._seeds[slots],
                        positions=self._positions[slots], temperature=self._temperature[slots],
                        top_p=self._top_p[slots], constraint=constraint,
                        match=None if constraint is None else self._match[slots])
        if top is None:
            out = self.backend.advance_rows(rows, k, feed)
        else:
            out = self.backend.advance_rows_logprobs(rows, k, top, feed)
        self._h[:, slots], self._c[:, slots] = rows.h, rows.c
        self._positions[slots] = rows.positions
        if constraint is not None:
            self._match[slots] = rows.match
        self.on_call(len(streams), k, sum(map(len, feed)) if feed else 0)
        return out
