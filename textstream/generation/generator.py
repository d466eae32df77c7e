"""Text from a trained run: streams, sessions and batches over a step backend. No TensorFlow at import.

    from textstream import Generator
    gen = Generator.load("runs/default")
    for chunk in gen.stream("The ", temperature=0.5, n=200, seed=1):
        print(chunk, end="", flush=True)

The state of a stream is ``(h, c)`` after consuming every character so far
(prime, fed text and generated text), its seed and its position (characters
generated). ``Generator`` and ``Session`` hold that state only through a
``textstream.generation.interface.StreamBatch``; ``Generator.load`` picks the backend
behind it (numpy by default, without importing TensorFlow; see
``textstream.generation.backends``).

The library never prints; the CLI (``textstream.cli.generate``) renders.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from textstream.data.prepared import load_prepared
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.backends import backend_from_model, load_backend
from textstream.generation.constraint import Constraints, split_ended
from textstream.generation.interface import StepBackend, StreamBatch
from textstream.generation.probabilities import SessionProbabilities
from textstream.generation.sampling import (
    StopCut,
    check_length,
    check_request,
    check_text_size,
    check_unknown,
    find_stop,
    per_stream,
    seed_u32,
    stream_seeds,
)
from textstream.generation.scoring import Scoring
from textstream.generation.state import SessionSaving, read as read_state
from textstream.model.run import RunPaths

FIRST_K = 32  # characters in a stream's first call: the first chunk comes quickly
MAX_K = 1024  # characters per backend call at most in stream/generate (stop strings are checked between calls)
CALL_MAX_S = 0.04  # a streaming call grows while it stays under this (a chunk at least every ~50 ms)
PRIME_CHARS = 60  # default prime: at most this many characters of a validation line

__all__ = ["Generator", "Session"]


class Generator(Scoring):
    """Text from a trained run: streams, sessions and batches over one step backend.

        from textstream import Generator
        gen = Generator.load("runs/default")            # best checkpoint; "last" also works
        print(gen.generate(["The ", "And "], 100, temperature=[0.5, 1.0], seed=0))
        for chunk in gen.stream("The ", temperature=0.8, n=500):
            print(chunk, end="", flush=True)

    Args:
        backend: the ``StepBackend`` that runs the model (``Generator.load``
            picks one; ``Generator.from_model`` wraps a model in memory).
        vocab: its ``Vocab``.
        config: the run's ``TrainConfig`` (None when unknown).
        data_dir: the prepared corpus, whose validation text primes empty
            primes (None: a newline).

    Every method returns text (``stream``: an iterator of chunks;
    ``generate``: one string per prime; ``session``: a ``Session``) and
    raises ``TextstreamError`` for what a caller can get wrong: a bad
    temperature, top-k, top-p, length or stop string, prime characters
    outside the vocabulary (named), or, in ``load``, a run directory that is
    missing, foreign or damaged (the damaged file named).
    """

    def __init__(self, backend: StepBackend, vocab: Vocab, config=None, *, data_dir: Path | None = None):
        self.backend = backend
        self.vocab = vocab
        self.config = config
        self.data_dir = data_dir  # the prepared corpus, for default primes (None: none)
        self._val: np.ndarray | None = None
        self.constraints = Constraints(vocab)  # regex -> compiled ``Constraint`` (textstream.generation.constraint)

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", *, warm: bool | int = True,
             backend: str = "auto") -> "Generator":
        """The generator for a run directory's ``checkpoint`` ("best", falling back to "last"; or "last").

        ``backend``: "auto" (numpy; TensorFlow only to read a checkpoint whose
        step weights file is missing or stale, which it writes again),
        "numpy" (never imports TensorFlow; an error without a current step
        weights file) or "tf" (the compiled TensorFlow step: faster for many
        streams). See ``textstream.generation.backends``.
        ``warm`` runs the single-stream loop once now (an int: the loop for
        that many streams), so the first character comes without waiting
        for XLA to compile it (TensorFlow backend).

            gen = Generator.load("runs/default", checkpoint="last")

        Returns the ``Generator``. Raises ``TextstreamError``: no such run, no
        checkpoint, a damaged file (named), or ``backend="numpy"`` without a
        current step weights file.
        """
        cfg, vocab, backend = load_backend(run_dir, checkpoint, backend)
        gen = cls(backend, vocab, cfg, data_dir=RunPaths(Path(run_dir)).prepared_dir())
        if warm:
            gen.warm(int(warm))
        return gen

    @classmethod
    def from_model(cls, model, vocab: Vocab, config=None, *, data_dir: str | Path | None = None) -> "Generator":
        """A generator over a ``CharLSTM`` in memory (a snapshot of its weights now), e.g. during training.

            gen = Generator.from_model(model, vocab)
            print(gen.generate(["the "], 40, temperature=0.5, seed=1)[0])
        """
        return cls(backend_from_model(model), vocab, config,
                   data_dir=Path(data_dir) if data_dir is not None else None)

    def warm(self, batch: int = 1) -> None:
        """Compile the loop for ``batch`` streams now (otherwise it compiles on first use)."""
        self.backend.streams([0] * batch, [1.0] * batch).advance(1, [np.zeros(1, np.int32)] * batch)

    # --- primes -----------------------------------------------------------------------------
    def encode(self, text: str, *, unknown: str = "error", what: str = "prime") -> np.ndarray:
        """Ids of ``text`` (at most ``MAX_TEXT_CHARS``); characters outside the vocabulary raise (listing them) or,
        with "skip", are dropped."""
        return self.vocab.encode(check_text_size(text, what), unknown=check_unknown(unknown), what=what)

    def default_prime(self, seed: int | None = None) -> str:
        """A random line of the run's validation text (chosen by ``seed``), or "\\n" when there is none.

        "" (the zero state) when there is no validation text and no newline in the vocabulary.
        """
        return self.vocab.decode(self._default_prime_ids(seed))

    def _default_prime_ids(self, seed: int | None) -> np.ndarray:
        val = self._validation()
        if len(val):
            rng = np.random.default_rng(None if seed is None else seed_u32(seed))
            ids = _line_at(val, int(rng.integers(0, len(val))), self.vocab)
            if len(ids):
                return ids
        return self.vocab.encode("\n", unknown="skip") if "\n" in self.vocab.chars else np.zeros(0, np.int32)

    def _validation(self) -> np.ndarray:
        """The prepared corpus's validation ids (empty when there is none or it cannot be read)."""
        if self._val is None:
            self._val = np.zeros(0, np.int32)
            if self.data_dir is not None:
                try:
                    self._val = load_prepared(self.data_dir).ids("val")
                except TextstreamError:
                    pass  # e.g. a cache directory cleared since training: fall back to "\n"
        return self._val

    def _prime_ids(self, prime: str | None, seed: int, unknown: str) -> np.ndarray:
        ids = self.encode(prime, unknown=unknown) if prime else np.zeros(0, np.int32)
        return ids if len(ids) else self._default_prime_ids(seed)

    # --- the three ways to generate ------------------------------------------------------------
    def stream(self, prime: str = "", *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, n: int | None = None,
               stop: str | Sequence[str] | None = None, unknown: str = "error", regex=None) -> Iterator[str]:
        """An iterator of text chunks continuing ``prime``, as they are produced (endless when ``n`` is None).

        Ends after ``n`` characters, or just before the first ``stop`` string
        (the stop string itself is not yielded). An empty prime means
        ``default_prime(seed)``. The same ``seed`` always gives the same text.
        With ``regex`` the text is always a prefix of a full match of it and
        ends where the model ends the match (``textstream.generation.constraint``).

            gen = Generator.load("runs/default")
            text = "".join(gen.stream("Once ", temperature=0.7, seed=3, n=300, stop="\\n\\n"))
        """
        stops = check_request([temperature], top_k, top_p, n=n, stop=stop, unknown=unknown)
        constraint = self.constraints(regex)
        (seed,) = stream_seeds(seed, 1)
        streams = self.backend.streams([seed], [temperature], top_k, top_p)
        streams.constrain(constraint)
        return self._stream(streams, self._prime_ids(prime, seed, unknown), n, stops)

    def _stream(self, streams: StreamBatch, prime_ids: np.ndarray, n: int | None, stops: list[str]) -> Iterator[str]:
        feed, done, k = [prime_ids], 0, FIRST_K
        decode, cut = self.vocab.decoder(), StopCut(stops)
        while n is None or done < n:
            want = k if n is None else min(k, n - done)
            t0 = time.perf_counter()
            ids = streams.advance(want, feed)[0]
            elapsed = time.perf_counter() - t0
            feed, done = None, done + want
            ids, ended = split_ended(ids)
            text, stopped = cut(decode(ids))
            if text:
                yield text
            if stopped:
                return
            if ended:
                break
            # calls as long as possible (throughput) but under CALL_MAX_S (a reader sees text steadily)
            if elapsed * 2 <= CALL_MAX_S:
                k = min(MAX_K, k * 2)
            elif elapsed > CALL_MAX_S:
                k = max(1, k // 2)
        rest = cut.flush()
        if rest:
            yield rest

    def session(self, prime: str = "", *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = None, unknown: str = "error",
                regex=None) -> "Session":
        """A stateful single stream you can feed, sample from, fork, save and restore.

        An empty prime means ``default_prime(seed)``. ``regex``: a match of it
        starts right after the prime (see ``Session.sample``).

            s = gen.session("The ", temperature=0.5, seed=0)
            a = s.sample(40)
            s.feed(" And yet")
            b = s.sample(40)
        """
        check_request([temperature], top_k, top_p, unknown=unknown)
        constraint = self.constraints(regex)
        (seed,) = stream_seeds(seed, 1)
        streams = self.backend.streams([seed], [temperature], top_k, top_p)
        streams.advance(0, [self._prime_ids(prime, seed, unknown)])
        streams.constrain(constraint)
        return Session(self, streams, unknown, matching=constraint is not None,
                       settings={"temperature": temperature, "top_k": top_k, "top_p": top_p})

    def restore(self, blob: bytes) -> "Session":
        """The session saved in ``blob`` (``Session.save``), continuing exactly where it was saved.

        A blob of another model, truncated, altered, or of an unknown format
        version raises ``TextstreamError`` saying which (``textstream.generation.state``).

            twin = gen.restore(s.save())
        """
        saved = read_state(blob, self.backend, self.vocab)
        return Session(self, saved.streams(self.backend), saved.unknown, settings=saved.settings)._resumed(saved)

    def generate(self, primes: Sequence[str], n: int, *, temperature: float | Sequence[float] = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | Sequence[int] | None = None, stop: str | Sequence[str] | None = None,
                 unknown: str = "error", regex=None) -> list[str]:
        """``n`` characters after each prime, all streams in one batch; returns one string per prime.

        ``temperature`` and ``seed`` may be one value or one per stream; an
        int seed gives stream i the seed ``seed + i``. Stream i's text equals
        ``"".join(gen.stream(primes[i], seed=seeds[i], ...))``: a batch of B
        is B single streams. Empty primes mean ``default_prime(seed_i)``.
        ``regex`` constrains every stream as in ``stream``.

            a, b = gen.generate(["The ", "The "], 100, temperature=[0.2, 1.0], seed=[5, 5])
        """
        b = len(primes)
        temps = per_stream(temperature, b, "temperature")
        stops = check_request(temps, top_k, top_p, n=n, stop=stop, unknown=unknown)
        constraint = self.constraints(regex)
        if b == 0:
            return []
        seeds = stream_seeds(seed, b)
        streams = self.backend.streams(seeds, temps, top_k, top_p)
        streams.constrain(constraint)
        feed = [self._prime_ids(p, s, unknown) for p, s in zip(primes, seeds)]
        decoders = [self.vocab.decoder() for _ in range(b)]
        texts, live, done = [""] * b, set(range(b)), 0
        while live and (done < n or feed is not None):
            k = min(MAX_K, n - done)
            ids = streams.advance(k, feed)
            feed, done = None, done + k
            for i in sorted(live):
                start = max(0, len(texts[i]) - max((len(s) for s in stops), default=1) + 1)
                row, ended = split_ended(ids[i])
                texts[i] += decoders[i](row)
                cut = find_stop(texts[i], stops, start) if stops else None
                if cut is not None:
                    texts[i] = texts[i][:cut]
                if cut is not None or ended:
                    live.discard(i)
        return texts


class Session(SessionSaving, SessionProbabilities):
    """One stream with state: ``feed`` text, ``sample`` characters, ``fork``, ``reset``, save and restore.

        import numpy as np
        s = gen.session("The ", temperature=0.8, seed=1)
        first = s.sample(50)
        twin = s.fork()                        # same state; continues identically, separately
        assert twin.sample(20) == s.sample(20)
        blob = s.save()                        # a few KB; later, in another process:
        s2 = gen.restore(blob)                 # continues exactly where s was saved
        assert s2.sample(30) == s.sample(30)
    """

    STATE_KEYS = ("h", "c", "seed", "position")

    def __init__(self, generator: Generator, streams: StreamBatch, unknown: str = "error", *, matching: bool = False,
                 settings: Mapping | None = None):
        self.generator = generator
        self.unknown = unknown
        self.settings = dict(settings or {"temperature": 1.0, "top_k": None, "top_p": None})  # for save()
        self.matching = self._initially_matching = matching  # a regex match under way (``sample``)
        self._streams = streams
        self._initial = streams.copy()
        self._decoder = generator.vocab.decoder()
        self._held = ""  # text owed to the next sample (an interrupted character)

    def feed(self, text: str) -> None:
        """Consume ``text`` as if it had been generated (the RNG position does not move)."""
        ids = self.generator.encode(text, unknown=self.unknown, what="text")
        if len(ids):
            if self.matching:  # fed text is not generated text: a match under way ends
                self._match(None)
            self._streams.advance(0, [ids])
            self._held += self._decoder.interrupt()  # a character sampled only in part stays unfinished

    def sample(self, n: int, regex=None) -> str:
        """The next ``n`` characters of this stream (fewer when a regex match ends first).

        ``regex`` starts a match here: the text generated from now on is a
        prefix of a full match, across later calls too while ``matching``; the
        call where the model ends the match returns early, and sampling is free again.
        """
        n = check_length(n)
        if regex is not None:
            self._match(self.generator.constraints(regex))
        ids, ended = split_ended(self._streams.advance(n)[0])
        if ended:
            self._match(None)
        text, self._held = self._held + self._decoder(ids), ""
        return text

    def _match(self, constraint) -> None:
        """Start a match of ``constraint`` here (None: no constraint from now on)."""
        self._streams.constrain(constraint)
        self.matching = constraint is not None

    def fork(self) -> "Session":
        """An independent copy in the same state: it continues exactly as this one would."""
        twin = copy.copy(self)
        twin._streams = self._streams.copy()
        twin._decoder = copy.copy(self._decoder)
        return twin

    def reset(self) -> None:
        """Back to the state right after the prime (RNG position 0 again)."""
        self._streams = self._initial.copy()
        self._decoder = self.generator.vocab.decoder()
        self._held = ""
        self.matching = self._initially_matching

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The stream's state as numpy arrays: ``h``/``c`` (layers, units), ``seed``/``position`` uint32.

        Save it with ``np.savez(path, **session.state)``.
        """
        return self._streams.row_state(0)

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a ``state`` taken earlier (from this model); sampling settings stay this session's."""
        missing = [k for k in self.STATE_KEYS if k not in state]
        if missing:
            raise TextstreamError(f"not a session state: missing {', '.join(missing)}")
        backend = self.generator.backend
        want = (backend.layers, backend.units)
        h_shape, c_shape = np.shape(state["h"]), np.shape(state["c"])
        if h_shape != want or c_shape != want:
            raise TextstreamError(f"session state is for a model of shape {h_shape} (layers, units); "
                                  f"this model is {want}")
        for key in ("h", "c"):
            if not np.isfinite(np.asarray(state[key], dtype=np.float64)).all():
                raise TextstreamError(f"session state: {key} holds NaN or Inf (a damaged or foreign state)")
        self._streams.set_row_state(0, state)


# --- helpers ---------------------------------------------------------------------------------
def _line_at(val: np.ndarray, pos: int, vocab: Vocab) -> np.ndarray:
    """The line of ``val`` after position ``pos`` (with its newline; at most PRIME_CHARS), as ids."""
    nl = vocab.chars.index("\n") if "\n" in vocab.chars else None
    window = np.asarray(val[pos:pos + 4096]).astype(np.int32)
    if nl is not None:
        breaks = np.flatnonzero(window == nl)
        for a, b in zip(breaks[:-1], breaks[1:]):
            if b - a > 1:  # a non-empty line
                line = window[a + 1:b + 1]
                return line if len(line) <= PRIME_CHARS else line[:PRIME_CHARS]
    start = max(0, min(pos, len(val) - PRIME_CHARS))
    return np.asarray(val[start:start + PRIME_CHARS]).astype(np.int32)
