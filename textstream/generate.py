"""Text from a trained run: streams, sessions and batches over the compiled step model.

    from textstream import Generator
    gen = Generator.load("runs/default")
    for chunk in gen.stream("The ", temperature=0.5, n=200, seed=1):
        print(chunk, end="", flush=True)

The state of a stream is ``(h, c)`` after consuming every character so far
(prime, fed text and generated text), its seed and its position (characters
generated). The next character's distribution is the head applied to the top
layer's ``h``. The compiled step itself lives in ``textstream.step``.

The library never prints; the CLI (``textstream.cli.generate``) renders.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from textstream.errors import TextstreamError
from textstream.sampling import SampleConfig, find_stop, held_back, seed_u32
from textstream.step import KMAX, PMAX, StepModel, Streams

FIRST_K = 32  # characters in a stream's first call: the first chunk comes quickly
CALL_MAX_S = 0.04  # a streaming call grows while it stays under this (a chunk at least every ~50 ms)
PRIME_CHARS = 60  # default prime: at most this many characters of a validation line

__all__ = ["Generator", "Session", "StepModel", "KMAX", "PMAX"]


class _Decoder:
    """ids -> str, vectorised (one code point per id)."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.codes = (np.array([ord(ch) for ch in chars], np.uint32) if all(len(ch) == 1 for ch in chars)
                      else None)

    def __call__(self, ids: np.ndarray) -> str:
        if self.codes is None:
            return "".join(self.chars[int(i)] for i in ids)
        return self.codes[np.asarray(ids)].astype("<u4").tobytes().decode("utf-32-le")


def _random_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1, np.uint32)[0])


def _seeds(seed: int | Sequence[int] | None, b: int) -> list[int]:
    if seed is None:
        seed = _random_seed()
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(b)]
    seeds = [int(s) for s in seed]
    if len(seeds) != b:
        raise TextstreamError(f"{len(seeds)} seeds for {b} streams")
    return seeds


def _per_stream(value, b: int, what: str) -> list[float]:
    if isinstance(value, (int, float, np.number)):
        values = [float(value)] * b
    else:
        values = [float(v) for v in value]
        if len(values) != b:
            raise TextstreamError(f"{len(values)} {what} values for {b} streams")
    return values


# --- the library API --------------------------------------------------------------------------
class Generator:
    """Text from a trained run: streams, sessions and batches over one step model.

        from textstream import Generator
        gen = Generator.load("runs/default")            # best checkpoint; "last" also works
        print(gen.generate(["The ", "And "], 100, temperature=[0.5, 1.0], seed=0))
        for chunk in gen.stream("The ", temperature=0.8, n=500):
            print(chunk, end="", flush=True)
    """

    def __init__(self, step: StepModel, vocab, config=None, run_dir: Path | None = None,
                 data_dir: Path | None = None):
        self.step = step
        self.vocab = vocab
        self.config = config
        self.run_dir = run_dir
        self.data_dir = data_dir
        self._decode = _Decoder(vocab.chars)
        self._val = None

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", *, warm: bool | int = True) -> "Generator":
        """The generator for a run directory's ``checkpoint`` ("best", falling back to "last"; or "last").

        ``warm`` compiles the single-stream loop now (an int: the loop for that
        many streams), so the first character comes without waiting for XLA.

            gen = Generator.load("runs/default", checkpoint="last")
        """
        from textstream.checkpoint import load_model
        from textstream.run import RunPaths

        cfg, vocab, model = load_model(run_dir, checkpoint)
        paths = RunPaths(Path(run_dir))
        gen = cls(StepModel.from_model(model), vocab, cfg, paths.root, paths.prepared_dir())
        if warm:
            gen.warm(int(warm))
        return gen

    @classmethod
    def from_model(cls, model, vocab, config=None, *, data_dir: str | Path | None = None) -> "Generator":
        """A generator over a ``CharLSTM`` in memory (a snapshot of its weights now), e.g. during training.

            gen = Generator.from_model(model, vocab)
            print(gen.generate(["the "], 40, temperature=0.5, seed=1)[0])
        """
        return cls(StepModel.from_model(model), vocab, config, None,
                   Path(data_dir) if data_dir is not None else None)

    def warm(self, batch: int = 1) -> None:
        """Compile the loop for ``batch`` streams now (otherwise it compiles on first use)."""
        s = Streams(self.step, [0] * batch, [1.0] * batch, None, None)
        s.advance(1, [np.zeros(1, np.int32)] * batch)

    # --- primes -----------------------------------------------------------------------------
    def encode(self, text: str, *, unknown: str = "error", what: str = "prime") -> np.ndarray:
        """Ids of ``text``; characters outside the vocabulary raise (listing them) or, with "skip", are dropped."""
        if unknown not in ("error", "skip"):
            raise TextstreamError(f"unknown must be 'error' or 'skip' (got {unknown!r})")
        return self.vocab.encode(text, unknown=unknown, what=what)

    def default_prime(self, seed: int | None = None) -> str:
        """A random line of the run's validation text (chosen by ``seed``), or "\\n" when there is none.

        "" (the zero state) when there is no validation text and no newline in the vocabulary.
        """
        return self.vocab.decode(self._default_prime_ids(seed))

    def _default_prime_ids(self, seed: int | None) -> np.ndarray:
        val = self._validation()
        if val is not None and len(val):
            rng = np.random.default_rng(None if seed is None else seed_u32(seed))
            ids = _line_at(val, int(rng.integers(0, len(val))), self.vocab)
            if len(ids):
                return ids
        return self.vocab.encode("\n", unknown="skip") if "\n" in self.vocab.chars else np.zeros(0, np.int32)

    def _validation(self):
        if self._val is None and self.data_dir is not None:
            path = self.data_dir / "val.bin"
            try:
                size = path.stat().st_size
                itemsize = self.vocab.dtype.itemsize
                self._val = (np.memmap(path, dtype=self.vocab.dtype, mode="r", shape=(size // itemsize,))
                             if size >= itemsize else np.zeros(0, self.vocab.dtype))
            except (OSError, ValueError):
                self._val = np.zeros(0, self.vocab.dtype)
        return self._val

    def _prime_ids(self, prime: str | None, seed: int, unknown: str) -> np.ndarray:
        ids = self.encode(prime, unknown=unknown) if prime else np.zeros(0, np.int32)
        return ids if len(ids) else self._default_prime_ids(seed)

    # --- the three ways to generate ------------------------------------------------------------
    def stream(self, prime: str = "", *, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, n: int | None = None,
               stop: str | Sequence[str] | None = None, unknown: str = "error") -> Iterator[str]:
        """An iterator of text chunks continuing ``prime``, as they are produced (endless when ``n`` is None).

        Ends after ``n`` characters, or just before the first ``stop`` string
        (the stop string itself is not yielded). An empty prime means
        ``default_prime(seed)``. The same ``seed`` always gives the same text.

            gen = Generator.load("runs/default")
            text = "".join(gen.stream("Once ", temperature=0.7, seed=3, n=300, stop="\\n\\n"))
        """
        if n is not None and n < 0:
            raise TextstreamError(f"n must be >= 0 (got {n})")
        stops = _stops(stop)
        (seed,) = _seeds(seed, 1)
        streams = self._streams([seed], [temperature], top_k, top_p)
        prime_ids = self._prime_ids(prime, seed, unknown)
        return self._stream(streams, prime_ids, n, stops)

    def _stream(self, streams: "Streams", prime_ids: np.ndarray, n: int | None, stops: list[str]) -> Iterator[str]:
        feed = [prime_ids]
        done, k, pending = 0, FIRST_K, ""
        while n is None or done < n:
            want = k if n is None else min(k, n - done)
            t0 = time.perf_counter()
            ids = streams.advance(want, feed)[0]
            elapsed = time.perf_counter() - t0
            feed = None
            done += want
            text = pending + self._decode(ids)
            if stops:
                cut = find_stop(text, stops)
                if cut is not None:
                    if cut:
                        yield text[:cut]
                    return
                keep = held_back(text, stops)
                text, pending = text[:len(text) - keep], text[len(text) - keep:]
            if text:
                yield text
            # calls as long as possible (throughput) but under CALL_MAX_S (a reader sees text steadily)
            if elapsed * 2 <= CALL_MAX_S:
                k = min(KMAX, k * 2)
            elif elapsed > CALL_MAX_S:
                k = max(1, k // 2)
        if pending:
            yield pending

    def session(self, prime: str = "", *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, seed: int | None = None, unknown: str = "error") -> "Session":
        """A stateful single stream you can feed, sample from, fork, save and restore.

        An empty prime means ``default_prime(seed)``.

            s = gen.session("The ", temperature=0.5, seed=0)
            a = s.sample(40)
            s.feed(" And yet")
            b = s.sample(40)
        """
        (seed,) = _seeds(seed, 1)
        streams = self._streams([seed], [temperature], top_k, top_p)
        streams.advance(0, [self._prime_ids(prime, seed, unknown)])
        return Session(self, streams, unknown)

    def generate(self, primes: Sequence[str], n: int, *, temperature: float | Sequence[float] = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 seed: int | Sequence[int] | None = None, stop: str | Sequence[str] | None = None,
                 unknown: str = "error") -> list[str]:
        """``n`` characters after each prime, all streams in one batch; returns one string per prime.

        ``temperature`` and ``seed`` may be one value or one per stream; an
        int seed gives stream i the seed ``seed + i``. Stream i's text equals
        ``"".join(gen.stream(primes[i], seed=seeds[i], ...))``: a batch of B
        is B single streams. Empty primes mean ``default_prime(seed_i)``.

            a, b = gen.generate(["The ", "The "], 100, temperature=[0.2, 1.0], seed=[5, 5])
        """
        b = len(primes)
        if b == 0:
            return []
        if n < 0:
            raise TextstreamError(f"n must be >= 0 (got {n})")
        seeds = _seeds(seed, b)
        temps = _per_stream(temperature, b, "temperature")
        stops = _stops(stop)
        streams = self._streams(seeds, temps, top_k, top_p)
        feed = [self._prime_ids(p, s, unknown) for p, s in zip(primes, seeds)]
        texts = [""] * b
        live = list(range(b))
        done = 0
        while done < n or feed is not None:
            k = min(KMAX, n - done)
            ids = streams.advance(k, feed)
            feed = None
            done += k
            for i in list(live):
                start = max(0, len(texts[i]) - max((len(s) for s in stops), default=1) + 1)
                texts[i] += self._decode(ids[i])
                cut = find_stop(texts[i], stops, start) if stops else None
                if cut is not None:
                    texts[i] = texts[i][:cut]
                    live.remove(i)
            if not live:
                break
        return texts

    def _streams(self, seeds, temperatures, top_k, top_p) -> Streams:
        for t in temperatures:
            SampleConfig(temperature=t, top_k=top_k, top_p=top_p).check()
        return Streams(self.step, seeds, temperatures, top_k, top_p)


class Session:
    """One stream with state: ``feed`` text, ``sample`` characters, ``fork``, ``reset``, save and restore.

        import numpy as np
        s = gen.session("The ", temperature=0.8, seed=1)
        first = s.sample(50)
        twin = s.fork()                        # same state; continues identically, separately
        assert twin.sample(20) == s.sample(20)
        np.savez("state.npz", **s.state)       # later, in another process:
        s2 = gen.session("The ", temperature=0.8)
        s2.set_state(np.load("state.npz"))     # continues exactly where s was saved
    """

    STATE_KEYS = ("h", "c", "seed", "position")

    def __init__(self, generator: Generator, streams: Streams, unknown: str = "error"):
        self.generator = generator
        self._streams = streams
        self._initial = streams.copy()
        self.unknown = unknown

    def feed(self, text: str) -> None:
        """Consume ``text`` as if it had been generated (the RNG position does not move)."""
        ids = self.generator.encode(text, unknown=self.unknown, what="text")
        if len(ids):
            self._streams.advance(0, [ids])

    def sample(self, n: int) -> str:
        """The next ``n`` characters of this stream."""
        if n < 0:
            raise TextstreamError(f"n must be >= 0 (got {n})")
        parts = []
        for lo in range(0, n, KMAX):
            parts.append(self.generator._decode(self._streams.advance(min(KMAX, n - lo))[0]))
        return "".join(parts)

    def fork(self) -> "Session":
        """An independent copy in the same state: it continues exactly as this one would."""
        twin = Session(self.generator, self._streams.copy(), self.unknown)
        twin._initial = self._initial
        return twin

    def reset(self) -> None:
        """Back to the state right after the prime (RNG position 0 again)."""
        self._streams = self._initial.copy()

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The stream's state as numpy arrays: ``h``/``c`` (layers, units), ``seed``/``position`` uint32.

        Save it with ``np.savez(path, **session.state)``.
        """
        s = self._streams
        return {"h": s.h.numpy()[:, 0].copy(), "c": s.c.numpy()[:, 0].copy(),
                "seed": np.asarray(s.seeds.numpy()[0], np.uint32), "position": np.asarray(s.positions.numpy()[0], np.uint32)}

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a ``state`` taken earlier (from this model); sampling settings stay this session's."""
        from textstream._tf import tf

        step = self.generator.step
        missing = [k for k in self.STATE_KEYS if k not in state]
        if missing:
            raise TextstreamError(f"not a session state: missing {', '.join(missing)}")
        h, c = (np.asarray(state[k], np.float32) for k in ("h", "c"))
        want = (step.layers, step.units)
        if h.shape != want or c.shape != want:
            raise TextstreamError(f"session state is for a model of shape {h.shape} (layers, units); "
                                  f"this model is {want}")
        s = self._streams.copy()
        s.h, s.c = tf.constant(h[:, None]), tf.constant(c[:, None])
        s.seeds = tf.constant(np.asarray(state["seed"], np.uint32).reshape(1))
        s.positions = tf.constant(np.asarray(state["position"], np.uint32).reshape(1))
        self._streams = s


# --- helpers ---------------------------------------------------------------------------------
def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else [str(s) for s in stop]
    if any(not s for s in stops):
        raise TextstreamError("stop strings must not be empty")
    return stops


def _line_at(val: np.ndarray, pos: int, vocab) -> np.ndarray:
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
