"""One stream of the engine: what it generates (``StreamSpec``) and the buffer its reader takes text from (``Stream``).

The engine thread feeds a ``Stream`` generated ids (``receive``: decode,
cut at stop strings and at ``max_chars``, buffer); the reader, in any
thread, ``take``s everything buffered. The buffer is what keeps a slow reader
from slowing the others: a stream whose unread text reaches its ``limit`` is
``paused`` (the engine skips it) until its reader takes the text.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from textstream.generation.sampling import StopCut

BUFFER_CHARS = 16384  # unread characters a stream may hold before it sits out (its reader is slow)

__all__ = ["Stream", "StreamSpec", "BUFFER_CHARS"]


@dataclass(frozen=True)
class StreamSpec:
    """What one stream generates: the ids to feed first, then up to ``max_chars`` characters."""

    prompt: np.ndarray
    seed: int
    temperature: float = 1.0
    top_p: float | None = None
    max_chars: int = 16
    stops: tuple[str, ...] = ()


class Stream:
    """One stream in the engine: its spec and slot, and the buffer of text its reader has not taken yet.

    The engine thread writes the buffer; the reader calls ``take`` (any
    thread). ``finish`` is None while the stream runs, then "stop" (a stop
    string), "length" (``max_chars``), "cancelled" or "error".
    """

    def __init__(self, sid: int, spec: StreamSpec, slot: int, decode: Callable[[np.ndarray], str],
                 wake: threading.Event, limit: int = BUFFER_CHARS):
        self.id = sid
        self.spec = spec
        self.slot = slot
        self.fed = 0  # prompt ids fed so far (engine thread)
        self.taken = 0  # generated characters counted towards max_chars (engine thread)
        self.started = False  # has been in a generating call (engine thread)
        self.cancelled = False  # set by the reader's side (``Engine.cancel``)
        self._decode = decode
        self._cut = StopCut(spec.stops)
        self._lock = threading.Lock()
        self._out: list[str] = []
        self._unread = 0
        self._finish: str | None = None
        self._wake = wake  # the engine's: a paused stream whose reader catches up may run again
        self.limit = limit  # unread characters at which the stream sits out (its reader is slow)

    @property
    def prompt_left(self) -> int:
        """Prompt ids not fed yet."""
        return len(self.spec.prompt) - self.fed

    @property
    def unread(self) -> int:
        """Characters in the buffer."""
        return self._unread

    @property
    def paused(self) -> bool:
        """The reader is behind: the stream sits out until it takes its text."""
        return self._unread >= self.limit

    @property
    def finish(self) -> str | None:
        """None while the stream runs; then why it ended ("stop", "length", "cancelled", "error")."""
        return self._finish

    @property
    def done(self) -> bool:
        """The engine has finished with this stream (its last text may still be unread)."""
        return self._finish is not None

    def take(self) -> tuple[str, str | None]:
        """``(all unread text, finish reason or None)``: the finish reason comes with the last text."""
        with self._lock:
            text = "".join(self._out)
            self._out.clear()
            was_full, self._unread = self._unread >= self.limit, 0
            finish = self._finish
        if was_full and not finish:
            self._wake.set()  # the engine skips a stream whose buffer is full: it may run again
        return text, finish

    # --- engine side -------------------------------------------------------------------------
    def receive(self, ids: np.ndarray) -> None:
        """Decode generated ids, cut at stops and ``max_chars``, and buffer the text (engine thread)."""
        text = self._decode(ids)[:self.spec.max_chars - self.taken]
        self.taken += len(text)
        out, stopped = self._cut(text)
        finish = "stop" if stopped else ("length" if self.taken >= self.spec.max_chars else None)
        if finish == "length":
            out += self._cut.flush()
        self._push(out, finish)

    def end(self, finish: str) -> None:
        """End the stream now with ``finish`` (engine thread; no effect on a finished stream)."""
        if self._finish is None:
            self._push("", finish)

    def _push(self, text: str, finish: str | None) -> None:
        with self._lock:
            if text:
                self._out.append(text)
                self._unread += len(text)
            if finish is not None:
                self._finish = finish
