"""The server's ``regex`` patterns, compiled with a deadline in a child process and kept in a bounded LRU.

A pattern becomes a token automaton over the vocabulary
(``textstream.generation.constraint.compile_constraint``). Some patterns blow
up while ``interegular`` builds their automaton (``(a|b)*a(a|b){18}`` takes
minutes; the number of states doubles with each repeat), and a thread
cannot be stopped, so the server compiles each new pattern in a child
process (``forkserver``: a clean process, not a fork of the one running the
engine) and kills it past ``COMPILE_S``: the request gets a 400 naming
``regex``, and no thread of the server is left busy. Compiled patterns are
kept, the most recently used first, up to ``CACHE_BYTES`` of tables.

    patterns = Patterns(vocab)
    constraint = patterns("(yes|no)")         # a Constraint, or ApiError 400 (param "regex")
"""
from __future__ import annotations

import multiprocessing
import threading
from collections import OrderedDict

from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.constraint import Constraint, compile_constraint
from textstream.serve.errors import ApiError

COMPILE_S = 10.0  # seconds a new pattern may take to compile
CACHE_BYTES = 256 << 20  # bytes of compiled tables kept, at most

__all__ = ["Patterns", "COMPILE_S"]


def _compile(pattern: str, vocab: Vocab, conn) -> None:
    """The child process: compile and send back ``("ok", Constraint)`` or ``("error", message)``."""
    try:
        conn.send(("ok", compile_constraint(pattern, vocab)))
    except TextstreamError as e:
        conn.send(("error", str(e)))
    except Exception as e:  # noqa: BLE001: whatever interegular raises for syntax it does not take
        conn.send(("error", f"regex {pattern[:64]!r} could not be compiled ({type(e).__name__})"))


class Patterns:
    """Compiled patterns for one vocabulary (thread-safe; a compile blocks only its caller)."""

    def __init__(self, vocab: Vocab, *, timeout_s: float = COMPILE_S, max_bytes: int = CACHE_BYTES):
        self.vocab, self.timeout_s, self.max_bytes = vocab, timeout_s, max_bytes
        self._cache: OrderedDict[str, Constraint] = OrderedDict()
        self._lock = threading.Lock()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["textstream.serve.regexes"])  # each child forks with it imported

    def __call__(self, pattern: str) -> Constraint:
        with self._lock:
            if pattern in self._cache:
                self._cache.move_to_end(pattern)
                return self._cache[pattern]
        compiled = self._compile(pattern)
        with self._lock:
            self._cache[pattern] = compiled
            while len(self._cache) > 1 and sum(map(_nbytes, self._cache.values())) > self.max_bytes:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, pattern: str) -> Constraint:
        ours, theirs = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_compile, args=(pattern, self.vocab, theirs), daemon=True)
        child.start()
        theirs.close()
        try:
            if not ours.poll(self.timeout_s):
                raise ApiError(400, f"regex: {pattern[:64]!r} did not compile within {self.timeout_s:g} s (its "
                                    f"automaton grows too large; bound its repeats)", param="regex",
                               code="invalid_value")
            try:
                kind, value = ours.recv()
            except EOFError:  # the child died (out of memory, killed)
                raise ApiError(400, f"regex: {pattern[:64]!r} could not be compiled (the compiler ran out of "
                                    f"memory or was stopped)", param="regex", code="invalid_value") from None
        finally:
            ours.close()
            if child.is_alive():
                child.kill()
            child.join(5)
        if kind == "error":
            message = value if value.startswith("regex") else f"regex: {value}"
            raise ApiError(400, message if len(message) <= 300 else message[:297] + "...", param="regex",
                           code="invalid_value")
        return value


def _nbytes(c: Constraint) -> int:
    return c.next.nbytes + c.bias.nbytes + c.accepting.nbytes + c.ends.nbytes
