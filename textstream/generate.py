"""Text from a trained run: a stateful single-step model, streams, sessions and batches.

    from textstream import Generator
    gen = Generator.load("runs/default")
    for chunk in gen.stream("The ", temperature=0.5, n=200, seed=1):
        print(chunk, end="", flush=True)

``StepModel`` is a single-step copy of a ``CharLSTM``: the same weights, the
LSTM cell written out, and a compiled loop (XLA, ``tf.while_loop``) that first
feeds given characters and then generates up to ``KMAX`` characters per call
for a batch of B streams, carrying ``(h, c)`` of every layer from call to
call. Characters are chosen in the graph (``textstream.sampling``) with noise
that depends only on (stream seed, stream position, character), so a seed
gives the same text however the work is cut into calls or batched.

The state of a stream is ``(h, c)`` after consuming every character so far
(prime, fed text and generated text), its seed and its position (characters
generated). The next character's distribution is the head applied to the top
layer's ``h``.

The library never prints; the CLI (``generate_ui``) renders.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from textstream.errors import TextstreamError
from textstream.sampling import SampleConfig, find_stop, held_back, seed_u32

KMAX = 1024  # characters generated per compiled call, at most (the output buffer's length)
PMAX = 256  # characters fed per compiled call, at most (the feed buffer's length)
FIRST_K = 32  # characters in a stream's first call: the first chunk comes quickly
CALL_MAX_S = 0.04  # a streaming call grows while it stays under this (a chunk at least every ~50 ms)
PRIME_CHARS = 60  # default prime: at most this many characters of a validation line

__all__ = ["Generator", "Session", "StepModel", "KMAX", "PMAX"]


# --- the compiled step model ---------------------------------------------------------------------
def _tf():
    from textstream._tf import tf

    return tf


_COMPILED: dict = {}


def _compiled():
    """The module's compiled functions, built once per process (weights are arguments, so every
    model of the same shape shares one XLA executable per batch size)."""
    if _COMPILED:
        return _COMPILED
    tf = _tf()
    from textstream import sampling

    def cell(g, c):
        i, f, cc, o = tf.split(g, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cc)
        return tf.sigmoid(o) * tf.tanh(c), c

    def consume(w, hs, cs, x, top_rec=None):
        """Every layer takes one step on ids ``x`` (B,); ``top_rec`` = h_top @ rec_top if already computed."""
        n = len(hs)
        g = tf.gather(w["embed"], x)  # one-hot @ kernel + bias == row x of (kernel + bias)
        g += top_rec if (n == 1 and top_rec is not None) else tf.matmul(hs[0], w["rec"][0])
        h, c = cell(g, cs[0])
        new_h, new_c = [h], [c]
        for layer in range(1, n):
            g = tf.matmul(h, w["kernel"][layer - 1]) + w["bias"][layer - 1]
            g += top_rec if (layer == n - 1 and top_rec is not None) else tf.matmul(hs[layer], w["rec"][layer])
            h, c = cell(g, cs[layer])
            new_h.append(h)
            new_c.append(c)
        return new_h, new_c

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def run(w, h, c, feed, feed_len, n_feed, seeds, positions, temperature, k, top_k, top_p):
        """Feed ``feed[:n_feed]`` (P, B) (stream b only its first ``feed_len[b]``), then generate ``k``."""
        n = len(w["rec"])
        # dynamic: with reduce_retracing the traced signature may leave the vocabulary size unknown
        # (XLA still compiles each concrete shape)
        vocab = tf.shape(w["head_bias"])[0]
        hs, cs = list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n))

        def feed_body(t, hs, cs):
            nh, nc = consume(w, hs, cs, feed[t])
            on = (t < feed_len)[:, None]
            return (t + 1, [tf.where(on, a, b) for a, b in zip(nh, hs)],
                    [tf.where(on, a, b) for a, b in zip(nc, cs)])

        _, hs, cs = tf.while_loop(lambda t, *_: t < n_feed, feed_body, (tf.constant(0), hs, cs))

        out = tf.TensorArray(tf.int32, size=KMAX, element_shape=feed_len.shape)

        def sample_body(i, hs, cs, pos, out):
            z = tf.matmul(hs[-1], w["top"])  # [head kernel | top recurrent kernel]: one matmul
            logits = z[:, :vocab] + w["head_bias"]
            noise = sampling.gumbel_noise(seeds, pos, vocab)
            x = sampling.choose(logits, temperature, noise, top_k, top_p)
            hs, cs = consume(w, hs, cs, x, z[:, vocab:])
            return i + 1, hs, cs, pos + tf.constant(1, tf.uint32), out.write(i, x)

        _, hs, cs, positions, out = tf.while_loop(
            lambda i, *_: i < k, sample_body, (tf.constant(0), hs, cs, positions, out))
        return tf.stack(hs), tf.stack(cs), positions, out.stack()

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def logits(w, h, c, ids):
        """Teacher-forced: logits after each of ``ids`` (T, B) -> (T, B, V), and the final state."""
        n = len(w["rec"])
        hs, cs = list(tf.unstack(h, num=n)), list(tf.unstack(c, num=n))
        steps = tf.shape(ids)[0]
        out = tf.TensorArray(tf.float32, size=steps)

        def body(t, hs, cs, out):
            hs, cs = consume(w, hs, cs, ids[t])
            return t + 1, hs, cs, out.write(t, tf.matmul(hs[-1], w["head_kernel"]) + w["head_bias"])

        _, hs, cs, out = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), hs, cs, out))
        return out.stack(), tf.stack(hs), tf.stack(cs)

    _COMPILED.update(run=run, logits=logits)
    return _COMPILED


class StepModel:
    """A single-step copy of a trained ``CharLSTM`` (same weights) for B streams at a time.

    ``run`` feeds characters and generates ``k`` more in one compiled call;
    ``logits`` scores a sequence position by position (the equivalence check).

        from textstream.run import load_model
        cfg, vocab, model = load_model("runs/default")
        step = StepModel.from_model(model)
        h, c = step.zero_state(1)
        per_position = step.logits([[1, 2, 3]])     # numpy (1, 3, V)
    """

    def __init__(self, lstm: Sequence[Mapping[str, np.ndarray]], head: tuple[np.ndarray, np.ndarray]):
        tf = _tf()
        f32 = lambda a: tf.constant(np.asarray(a, np.float32))  # noqa: E731
        head_kernel, head_bias = head
        self.layers = len(lstm)
        self.units = int(np.asarray(lstm[0]["recurrent"]).shape[0])
        self.vocab_size = int(np.asarray(head_bias).shape[0])
        top = np.concatenate([np.asarray(head_kernel), np.asarray(lstm[-1]["recurrent"])], axis=1)
        self.weights = {
            "embed": f32(np.asarray(lstm[0]["kernel"]) + np.asarray(lstm[0]["bias"])),
            "rec": [f32(w["recurrent"]) for w in lstm],
            "kernel": [f32(w["kernel"]) for w in lstm[1:]],
            "bias": [f32(w["bias"]) for w in lstm[1:]],
            "head_kernel": f32(head_kernel),
            "head_bias": f32(head_bias),
            "top": f32(top),
        }
        self._zero_feed: dict[int, tuple] = {}
        self._concrete: dict[tuple, object] = {}

    @classmethod
    def from_model(cls, model) -> "StepModel":
        """The step copy of a ``textstream.model.CharLSTM`` (its weights as they are now)."""
        from textstream.model import head_weights, lstm_weights

        return cls(lstm_weights(model), head_weights(model))

    def zero_state(self, batch: int):
        """``(h, c)``: float32 tensors of shape (layers, batch, units), all zero."""
        tf = _tf()
        z = tf.zeros([self.layers, batch, self.units], tf.float32)
        return z, z

    def run(self, h, c, seeds, positions, temperature, k: int, feed: Sequence[np.ndarray] | None = None,
            top_k=None, top_p=None):
        """One compiled call: feed each stream its ids (at most ``PMAX``), then generate ``k`` <= ``KMAX``.

        ``seeds``/``positions``: uint32 (B,); ``temperature``: float32 (B,);
        ``top_k``: int32 (B,) or None; ``top_p``: float32 (B,) or None.
        Returns ``(h, c, positions, ids)`` with ``ids`` a numpy int32 array (B, k).
        """
        tf = _tf()
        batch = int(h.shape[1])
        if not 0 <= k <= KMAX:
            raise ValueError(f"k must be in [0, {KMAX}] (got {k})")
        if feed is None or not any(len(f) for f in feed):
            if batch not in self._zero_feed:
                self._zero_feed[batch] = (tf.zeros([PMAX, batch], tf.int32), tf.zeros([batch], tf.int32))
            buf, lens = self._zero_feed[batch]
            n_feed = 0
        else:
            lens_np = np.array([len(f) for f in feed], np.int32)
            if lens_np.max() > PMAX:
                raise ValueError(f"at most {PMAX} ids per call (got {lens_np.max()})")
            arr = np.zeros([PMAX, batch], np.int32)
            for b, f in enumerate(feed):
                arr[:len(f), b] = f
            buf, lens, n_feed = tf.constant(arr), tf.constant(lens_np), int(lens_np.max())
        args = (self.weights, h, c, buf, lens, tf.constant(n_feed, tf.int32), seeds, positions, temperature,
                tf.constant(k, tf.int32), top_k, top_p)
        key = (batch, top_k is None, top_p is None)
        fn = self._concrete.get(key)
        if fn is None:  # calling the traced function directly skips tf.function's dispatch (~0.5 ms a call)
            fn = self._concrete[key] = _compiled()["run"].get_concrete_function(*args)
        h, c, positions, ids = fn(*args)
        return h, c, positions, ids.numpy()[:k].T

    def feed(self, h, c, ids: Sequence[np.ndarray]):
        """Consume each stream's ids (any length), in calls of ``PMAX``; returns the new ``(h, c)``."""
        tf = _tf()
        batch = int(h.shape[1])
        dummy = (tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.uint32), tf.zeros([batch], tf.float32))
        longest = max((len(f) for f in ids), default=0)
        for lo in range(0, longest, PMAX):
            h, c, _, _ = self.run(h, c, *dummy, 0, feed=[np.asarray(f[lo:lo + PMAX]) for f in ids])
        return h, c

    def logits(self, ids, state=None) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one character at a time: numpy (B, T, V)."""
        tf = _tf()
        ids = np.asarray(ids, np.int32)
        h, c = state if state is not None else self.zero_state(ids.shape[0])
        out, _, _ = _compiled()["logits"](self.weights, h, c, tf.constant(ids.T))
        return np.transpose(out.numpy(), (1, 0, 2))


# --- streams: B of them, their state on the device ------------------------------------------------
def _bucket(b: int) -> int:
    """Rows actually computed for ``b`` streams: 1, 2, 4, ... 64, then multiples of 64 (few XLA compiles)."""
    if b <= 64:
        return 1 << (b - 1).bit_length()
    return -(-b // 64) * 64


class _Streams:
    """The state of B streams (model state, seeds, positions, sampling settings) and the calls on it.

    The batch is padded to ``_bucket(B)`` rows so that any B reuses one of a
    few compiled executables; the padding rows are computed and dropped.
    """

    def __init__(self, step: StepModel, seeds: Sequence[int], temperature: Sequence[float],
                 top_k: int | None, top_p: float | None):
        tf = _tf()
        self.batch = b = len(seeds)
        rows = _bucket(b)
        pad = lambda values, fill, dtype: tf.constant(  # noqa: E731
            np.array(list(values) + [fill] * (rows - b), dtype))
        self.step = step
        self.h, self.c = step.zero_state(rows)
        self.seeds = pad((seed_u32(s) for s in seeds), 0, np.uint32)
        self.positions = tf.zeros([rows], tf.uint32)
        self.temperature = pad(temperature, 1.0, np.float32)
        keep_all = top_k is None or top_k >= step.vocab_size  # no sort when top-k keeps everything
        self.top_k = None if keep_all else tf.constant(np.full(rows, int(top_k), np.int32))
        self.top_p = None if top_p is None or top_p >= 1.0 else tf.constant(np.full(rows, top_p, np.float32))

    def copy(self) -> "_Streams":
        new = object.__new__(_Streams)
        new.__dict__.update(self.__dict__)  # tensors are immutable: sharing them is copying them
        return new

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed (each stream's ids, any length), then generate ``k`` <= KMAX ids per stream: (B, k)."""
        if feed is not None:
            rows = int(self.h.shape[1])
            feed = list(feed) + [np.zeros(0, np.int32)] * (rows - len(feed))
            longest = max((len(f) for f in feed), default=0)
            if longest > PMAX:
                cut = (longest - 1) // PMAX * PMAX  # all but the last chunk, fed without sampling
                self.h, self.c = self.step.feed(self.h, self.c, [f[:cut] for f in feed])
                feed = [f[cut:] for f in feed]
        self.h, self.c, self.positions, ids = self.step.run(
            self.h, self.c, self.seeds, self.positions, self.temperature, k, feed, self.top_k, self.top_p)
        return ids[:self.batch]


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
        from textstream.run import RunPaths, load_model

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
        s = _Streams(self.step, [0] * batch, [1.0] * batch, None, None)
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

    def _stream(self, streams: "_Streams", prime_ids: np.ndarray, n: int | None, stops: list[str]) -> Iterator[str]:
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

    def _streams(self, seeds, temperatures, top_k, top_p) -> _Streams:
        for t in temperatures:
            SampleConfig(temperature=t, top_k=top_k, top_p=top_p).validate()
        return _Streams(self.step, seeds, temperatures, top_k, top_p)


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

    def __init__(self, generator: Generator, streams: _Streams, unknown: str = "error"):
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
        tf = _tf()
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
