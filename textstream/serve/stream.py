"""One stream of the engine: what it generates (``StreamSpec``) and the buffer its reader takes text from (``Stream``).

The engine thread feeds a ``Stream`` generated ids (``receive``: decode,
cut at stop strings and at ``max_chars``, buffer); the reader, in any
thread, ``take``s everything buffered (and, with ``logprobs``, the records
of the characters taken: ``textstream.serve.logprobs``). A stream asked to
return its state holds its finish back until the engine has saved the state
(``state``, ``textstream.serve.state``), so the state comes with the last text. The buffer is what keeps a slow reader
from slowing the others: a stream whose unread text reaches its ``limit`` is
``paused`` (the engine skips it) until its reader takes the text.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from textstream.generation.sampling import StopCut
from textstream.generation.state import SavedSession

BUFFER_CHARS = 16384  # unread characters a stream may hold before it sits out (its reader is slow)

__all__ = ["Stream", "StreamSpec", "BUFFER_CHARS"]


@dataclass(frozen=True)
class StreamSpec:
    """What one stream generates: the ids to feed first, then up to ``max_chars`` characters.

    ``start``: a saved session to continue (its state, folded seed and
    position; the prompt is fed on top) instead of the zero state;
    ``return_state``: save the state at the end (``Stream.state``);
    ``constraint``: a compiled regex (``textstream.generation.constraint``);
    ``logprobs``: record each character's log-probability and this many
    alternatives; ``score_prompt``: record the prompt's too (echo).
    """

    prompt: np.ndarray
    seed: int
    temperature: float = 1.0
    top_p: float | None = None
    max_chars: int = 16
    stops: tuple[str, ...] = ()
    start: SavedSession | None = None
    return_state: bool = False
    constraint: object = None
    logprobs: int | None = None
    score_prompt: bool = False


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
        self.pushed = 0  # characters put in the buffer so far (the text the reader gets)
        self.prompt_first = False  # its prompt is fed whole before it generates (engine thread)
        self.prompt_done = False
        self.logprobs = None  # a ``textstream.serve.logprobs.Records`` when the spec asks for logprobs
        self.saving = None  # a ``textstream.serve.state.Saving`` when the spec asks for the state (engine thread)
        self.state: str | None = None  # the saved state at the end (base64), with ``return_state``
        self.held_finish: str | None = None  # the finish held back until the state is saved (engine thread)
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
    def receive(self, ids: np.ndarray, ended: bool = False) -> None:
        """Decode generated ids, cut at stops and ``max_chars``, and buffer the text (engine thread).

        ``ended``: a regex match ended after ``ids`` (the stream finishes with "stop").
        """
        text = self._decode(ids)[:self.spec.max_chars - self.taken]
        self.taken += len(text)
        out, stopped = self._cut(text)
        finish = "stop" if stopped else ("length" if self.taken >= self.spec.max_chars else
                                         ("stop" if ended else None))
        if finish is not None and not stopped:
            out += self._cut.flush()
        if finish is not None and self.spec.return_state:
            finish, self.held_finish = None, finish
        self._push(out, finish)

    @property
    def pending(self) -> bytes:
        """The bytes of an unfinished character the decoder holds back (a byte model's; b"" otherwise)."""
        return getattr(self._decode, "pending", b"")

    def hold(self, pending: bytes) -> None:
        """Start with ``pending``, the start of a character a saved session had generated (engine thread)."""
        if pending:
            self._decode(np.frombuffer(pending, np.uint8))

    def end(self, finish: str) -> None:
        """End the stream now with ``finish`` (engine thread; no effect on a finished stream)."""
        if self._finish is None:
            self._push("", finish)

    def _push(self, text: str, finish: str | None) -> None:
        with self._lock:
            if text:
                self._out.append(text)
                self._unread += len(text)
                self.pushed += len(text)
            if finish is not None:
                self._finish = finish
