"""How many characters each engine call generates (``Pacer``): about ``call_s`` of work, no more than needed.

``k`` adapts (from the least seconds per step of the recent calls of about
this batch size) so that a call takes about ``call_s`` (text reaches readers
steadily, and a new request waits at most one call to join), longer for
large batches so that the streams get at most ``EVENTS_PER_S`` updates per
second together (each update costs Python work on the server and the client:
with 256 streams and short calls that work, not the model, would set the
pace); a call that carries a new stream generates at most ``FIRST_K`` so its
first characters come quickly, and a call never goes past the end of a
stream that returns its state (that state must be the one after its last character).

    pacer = Pacer(0.05)
    k = pacer.choose(ready, n_feed)                # ready: the engine's streams in this call
    pacer.learn(len(ready), seconds, n_feed + k)
"""
from __future__ import annotations

from collections import deque

FIRST_K = 4  # characters generated in a call that carries a new stream (its first text comes quickly)
K_CAP = 256  # characters per call at most
CALL_S = 0.05  # a call's target duration: k grows or shrinks to it
EVENTS_PER_S = 1000  # stream updates per second at most (each costs Python work: decode, an HTTP event, a client)
RECENT_CALLS = 16  # calls per batch size class that the step-time estimate looks at

__all__ = ["Pacer", "CALL_S", "FIRST_K", "K_CAP", "EVENTS_PER_S"]


class Pacer:
    """The step-time estimates of recent calls, by batch size class, and the ``k`` they give."""

    def __init__(self, call_s: float = CALL_S):
        self.call_s = call_s
        self._step_s: dict[int, deque[float]] = {}  # recent seconds per character step, by batch size class

    def choose(self, ready: list, n_feed: int) -> int:
        """Characters for this call: about ``call_s`` of work, ``FIRST_K`` when a stream starts, no more than needed."""
        recent = self._step_s.get(_size_class(len(ready)))
        per_step = min(recent) if recent else None  # the least: a call the OS put aside says nothing of the model
        target = max(self.call_s, len(ready) / EVENTS_PER_S)
        k = FIRST_K if per_step is None else int(target / per_step) - n_feed
        if not all(s.started for s in ready):
            k = min(k, FIRST_K)
        need = max(s.spec.max_chars - s.taken for s in ready)
        exact = [s.spec.max_chars - s.taken for s in ready if s.spec.return_state]  # never past a saved stream's end
        return max(1, min(k, K_CAP, need, *exact))

    def learn(self, batch: int, seconds: float, steps: int) -> None:
        """Remember this call's seconds per step for its batch size class (the last ``RECENT_CALLS``)."""
        self._step_s.setdefault(_size_class(batch), deque(maxlen=RECENT_CALLS)).append(seconds / max(1, steps))


def _size_class(b: int) -> int:
    """Batch sizes that cost about the same per step share an estimate: powers of two."""
    return 1 << (b - 1).bit_length()
