"""How the next character is chosen, and every check on a generation request. No TensorFlow here.

The rules (the ops that apply them in the compiled graph are in
``textstream.generation.sampling_tf``; a backend without TensorFlow applies the same ones):

* Sampling is Gumbel-max: ``argmax(logits + T * g)`` draws from
  ``softmax(logits / T)``; temperature 0 is greedy (``argmax``). Top-k keeps
  the k largest logits, top-p the smallest set of most likely characters whose
  probabilities reach p.
* The noise is a counter-based hash: ``g`` for stream seed ``s`` at stream
  position ``p`` for character id ``i`` is ``gumbel(unit(mix32(key + i * GOLDEN)))``
  with ``key = mix32(mix32(seed_u32(s) ^ SEED_SALT) ^ p)`` (uint32 arithmetic;
  ``mix32`` is lowbias32 with ``MIX_M1``/``MIX_M2``; ``unit(x) = ((x >> 9) + 0.5) / 2**23``;
  ``gumbel(u) = -log(max(-log(u), 1e-30))``), so the same seed gives the same text however the work is cut into calls and
  however many other streams share the batch.
* Stop strings are found on the Python side (``find_stop``, ``held_back``).

``check_request`` checks every input of a request at once; the CLI calls it
before TensorFlow loads and ``Generator`` calls it on every request, so a bad
value gets the same one-line ``TextstreamError`` from both.

    >>> check_request([0.5], top_k=10, n=100, stop="\\n\\n")
    ['\\n\\n']
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from textstream.errors import TextstreamError

# the noise hash (see the module docstring): uint32 constants shared by every backend
GOLDEN = 0x9E3779B9
MIX_M1 = 0x7FEB352D
MIX_M2 = 0x846CA68B
SEED_SALT = 0x5BD1E995

UNKNOWN = ("error", "skip")  # what to do with prime characters outside the vocabulary


@dataclass(frozen=True)
class SampleConfig:
    """How to pick characters: temperature (0 = greedy), optional top-k and top-p (nucleus).

    >>> SampleConfig(temperature=0.5, top_k=10).check().temperature
    0.5
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def check(self) -> "SampleConfig":
        """This config, or a ``TextstreamError`` naming the first value out of range."""
        t = self.temperature
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise TextstreamError(f"temperature must be a finite number >= 0 (got {t!r}); 0 means greedy")
        k = self.top_k
        if k is not None and not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1):
            raise TextstreamError(f"top-k must be an integer >= 1 (got {k!r})")
        p = self.top_p
        if p is not None and not (_is_real(p) and 0.0 < p <= 1.0):
            raise TextstreamError(f"top-p must be in (0, 1] (got {p!r})")
        return self


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


# --- checks on a request: one function per concept, shared by the CLI and the library ------------
def check_length(n: int | None) -> int | None:
    """``n`` (characters to generate; None = no limit), or an error when it is negative."""
    if n is not None and not (isinstance(n, numbers.Integral) and n >= 0):
        raise TextstreamError(f"n must be an integer >= 0 (got {n!r})")
    return n


def check_unknown(unknown: str) -> str:
    """``unknown`` if it is one of ``UNKNOWN`` ("error": fail listing the characters; "skip": drop them)."""
    if unknown not in UNKNOWN:
        raise TextstreamError(f"unknown must be 'error' or 'skip' (got {unknown!r})")
    return unknown


MAX_TEXT_CHARS = 1 << 24  # characters in one prime or one fed text, at most (16 Mi: minutes of feeding)
MAX_STOPS = 16  # stop strings per request, at most
MAX_STOP_CHARS = 1024  # characters in one stop string, at most


def check_text_size(text: str, what: str = "prime") -> str:
    """``text`` itself, or a ``TextstreamError`` when it is longer than ``MAX_TEXT_CHARS``."""
    if len(text) > MAX_TEXT_CHARS:
        raise TextstreamError(f"the {what} is {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are fed at once "
                              "(feed a longer text in parts)")
    return text


def stop_strings(stop: str | Sequence[str] | None) -> list[str]:
    """``stop`` as a list (one string or several; None: none): none empty, at most ``MAX_STOPS`` of at most
    ``MAX_STOP_CHARS`` characters."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    if any(not s for s in stops):
        raise TextstreamError("stop strings must not be empty")
    if len(stops) > MAX_STOPS:
        raise TextstreamError(f"{len(stops)} stop strings; at most {MAX_STOPS}")
    longest = max(stops, key=len, default="")
    if len(longest) > MAX_STOP_CHARS:
        raise TextstreamError(f"a stop string of {len(longest):,} characters; at most {MAX_STOP_CHARS:,}")
    return stops


def check_request(temperatures: Sequence[float], top_k: int | None = None, top_p: float | None = None, *,
                  n: int | None = None, stop: str | Sequence[str] | None = None,
                  unknown: str = "error") -> list[str]:
    """Check every input of a generation request; returns the stop strings as a list.

    ``temperatures``: one per stream (each checked with ``top_k`` and ``top_p``).
    """
    for t in list(temperatures) or [1.0]:  # top-k and top-p are checked even for no streams
        SampleConfig(temperature=t, top_k=top_k, top_p=top_p).check()
    check_length(n)
    check_unknown(unknown)
    return stop_strings(stop)


# --- seeds and per-stream values ------------------------------------------------------------------
def random_seed() -> int:
    """A fresh seed from the operating system's entropy (for a request made without one)."""
    return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])


def stream_seeds(seed: int | Sequence[int] | None, b: int) -> list[int]:
    """One seed per stream: ``seed + i`` for an int, the list as given (length ``b``), random for None."""
    if seed is None:
        seed = random_seed()
    if isinstance(seed, numbers.Integral):
        return [int(seed) + i for i in range(b)]
    seeds = [int(s) for s in seed]
    if len(seeds) != b:
        raise TextstreamError(f"{len(seeds)} seeds for {b} streams")
    return seeds


def per_stream(value: float | Sequence[float], b: int, what: str) -> list[float]:
    """One float per stream: a single value repeated, or a list of exactly ``b`` values."""
    if _is_real(value):
        return [float(value)] * b
    values = [float(v) for v in value]
    if len(values) != b:
        raise TextstreamError(f"{len(values)} {what} values for {b} streams")
    return values


def seed_u32(seed: int) -> int:
    """Any Python int (negative, huge) folded to a well-mixed uint32 stream seed."""
    x = int(seed) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 33)) & 0xFFFFFFFF


# --- stop strings -----------------------------------------------------------------------------
def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index where the earliest stop string in ``text`` begins (searching from ``start``), or None.

    >>> find_stop("one. two. three", [". t"])
    3
    """
    best = None
    for s in stops:
        if not s:
            continue
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still be the beginning of a stop string.

    A streaming caller emits ``text[:len(text) - held_back(text, stops)]`` and
    keeps the rest until the next characters decide.

    >>> held_back("abc\\n", ["\\n\\n"])
    1
    """
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class StopCut:
    """Cuts a stream's text at the first stop string, holding back what may still become one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.pending = ""

    def __call__(self, text: str) -> tuple[str, bool]:
        """``(text to emit now, whether a stop string ended the stream)`` after ``text`` arrives."""
        text = self.pending + text
        if not self.stops:
            self.pending = ""
            return text, False
        cut = find_stop(text, self.stops)
        if cut is not None:
            self.pending = ""
            return text[:cut], True
        keep = held_back(text, self.stops)
        self.pending = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """What was held back (the stream ends without a stop string)."""
        text, self.pending = self.pending, ""
        return text
