"""The seed baseline: the original Keras character-level LSTM example, reimplemented faithfully.

Deep Learning with Python (1st ed.), listings 8.1-8.6: the text is lowercased,
cut into 60-character windows every 3 characters, each window and its next
character one-hot encoded into dense ``bool`` arrays held in memory
(``x``: windows x 60 x V, ``y``: windows x V), then
``Sequential([LSTM(128), Dense(V, softmax)])`` is trained with
``RMSprop(learning_rate=0.01)`` on categorical cross-entropy through
``model.fit(x, y, ...)``, one epoch per outer iteration. Generation one-hot
encodes the current 60-character window and calls ``model.predict`` once per
character, sampling with the original reweighting (``log(p) / T``).

This is the yardstick textstream's ``--preset seed`` is measured against
(``tools.bench.train``), so it keeps the original's costs on purpose:
about 60 * V / 3 bytes (~1.1 KB) of RAM per corpus character for ``x``, plus
the copy ``model.fit`` makes when it turns ``x`` into a tensor.

Batch size: the book uses ``batch_size=128`` and that is the default here;
textstream's ``seed`` preset (``textstream/config.py``) trains with batch 1024,
so ``tools.bench.train`` runs this baseline with ``--batch-size 1024`` to compare
like for like (same model, same windows per step).

Deviations from the book, none of which change what is computed:
``vectorize`` fills the same arrays with numpy indexing (in chunks) instead of
a Python loop over every character; ``RMSprop(learning_rate=...)`` replaces
the deprecated ``lr=``; ``fit`` runs silently (``verbose=0``);
``evaluate_nats`` is new (the book never measured held-out loss).

Usage (the last line of stdout is JSON)::

    python -m tools.baselines.seed /work/shared/corpora/nietzsche.txt --steps 60 --batch-size 1024
    python -m tools.baselines.seed CORPUS --minutes 5 --generate 400

As a library (from the repository root)::

    from tools.baselines.seed import load_text, vectorize, build_model, train
    x, y, chars = vectorize(load_text("nietzsche.txt"))
    model = build_model(len(chars))
    stats = train(model, x, y, batch_size=1024, steps=20)
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

MAXLEN = 60
STEP = 3
_VECTORIZE_CHUNK = 8192  # windows one-hot encoded per numpy call (bounds the temporary index arrays)

_tf_modules = None


def _tf():
    """(tf, tf_keras), imported quietly on first use (so ``--help`` and the vectoriser stay light)."""
    global _tf_modules
    if _tf_modules is None:
        from textstream._tf import tf, tf_keras

        _tf_modules = (tf, tf_keras)
    return _tf_modules


# --- data -----------------------------------------------------------------------------------
def load_text(path, lowercase: bool = True) -> str:
    """The corpus as one string, lowercased like the original (``open(path).read().lower()``)."""
    text = Path(path).read_text(encoding="utf-8")
    return text.lower() if lowercase else text


def vectorize(text: str, maxlen: int = MAXLEN, step: int = STEP):
    """``(x, y, chars)`` exactly as the original builds them.

    ``sentences = [text[i:i+maxlen] for i in range(0, len(text) - maxlen, step)]``,
    ``next_chars = [text[i+maxlen] ...]``, ``chars = sorted(set(text))``;
    ``x``: bool ``(len(sentences), maxlen, len(chars))``, ``y``: bool
    ``(len(sentences), len(chars))``, both one-hot.
    """
    chars = sorted(set(text))
    char_indices = {c: i for i, c in enumerate(chars)}
    starts = np.arange(0, len(text) - maxlen, step, dtype=np.int64)
    n = len(starts)
    x = np.zeros((n, maxlen, len(chars)), dtype=bool)
    y = np.zeros((n, len(chars)), dtype=bool)
    if n == 0:
        return x, y, chars
    if len(chars) <= 256:
        ids = np.frombuffer(bytes(char_indices[c] for c in text), dtype=np.uint8)
    else:
        ids = np.fromiter((char_indices[c] for c in text), dtype=np.int32, count=len(text))
    offsets = np.arange(maxlen, dtype=np.int64)
    for lo in range(0, n, _VECTORIZE_CHUNK):
        s = starts[lo:lo + _VECTORIZE_CHUNK]
        rows = np.arange(lo, lo + len(s))
        x[rows[:, None], offsets[None, :], ids[s[:, None] + offsets[None, :]]] = True
        y[rows, ids[s + maxlen]] = True
    return x, y, chars


# --- model ----------------------------------------------------------------------------------
def build_model(n_chars: int, units: int = 128, lr: float = 0.01, maxlen: int = MAXLEN):
    """``Sequential([LSTM(units), Dense(n_chars, softmax)])``, RMSprop(lr), categorical cross-entropy."""
    tf, tf_keras = _tf()
    layers = tf_keras.layers
    model = tf_keras.Sequential([
        layers.LSTM(units, input_shape=(maxlen, n_chars)),
        layers.Dense(n_chars, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer=tf_keras.optimizers.RMSprop(learning_rate=lr))
    return model


class _Meter:
    """A Keras callback: counts batches and windows, times the steady state, stops on a budget.

    A batch's time is the interval between consecutive ``on_train_batch_end``
    calls (everything the fit loop does per step); the first batch of each
    ``fit`` call is timed from its ``on_train_batch_begin`` instead. The first
    ``skip`` batches of the run (tracing and compiling) are not timed, like
    textstream's training loop, which skips its first two steps.
    """

    def __init__(self, n_windows: int, batch_size: int, max_steps: int | None, deadline: float | None,
                 skip: int = 2):
        _, tf_keras = _tf()
        meter = self

        class Callback(tf_keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                meter.begin(batch)

            def on_train_batch_end(self, batch, logs=None):
                meter.end(self.model, logs)

        self.callback = Callback()
        self.n_windows, self.batch_size = n_windows, batch_size
        self.max_steps, self.deadline, self.skip = max_steps, deadline, skip
        self.steps = self.windows = 0
        self.timed_s = 0.0
        self.timed_windows = 0
        self.loss = float("nan")
        self._batch_in_fit = 0
        self._t_prev = None
        self._t_begin = None
        self.done = False

    def new_fit(self) -> None:
        self._batch_in_fit = 0
        self._t_prev = None

    def begin(self, batch: int) -> None:
        if self._t_prev is None:
            self._t_begin = time.perf_counter()

    def end(self, model, logs) -> None:
        now = time.perf_counter()
        start = self._t_prev if self._t_prev is not None else self._t_begin
        self._t_prev = now
        size = min(self.batch_size, self.n_windows - self._batch_in_fit * self.batch_size)
        self._batch_in_fit += 1
        self.steps += 1
        self.windows += size
        if self.steps > self.skip:
            self.timed_s += now - start
            self.timed_windows += size
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
        if (self.max_steps is not None and self.steps >= self.max_steps) or \
                (self.deadline is not None and time.monotonic() >= self.deadline):
            self.done = True
            model.stop_training = True


def train(model, x, y, *, batch_size: int, steps: int | None = None, epochs: int | None = None,
          minutes: float | None = None, seed: int = 0) -> dict:
    """Train the original way: ``model.fit(x, y, batch_size, epochs=1)`` per outer iteration.

    The run ends after ``steps`` batches, or ``minutes`` of wall time, or
    ``epochs`` full passes (the first one given; default one epoch). Returns
    ``windows_per_s`` (steady state: the first two batches, which compile, are
    not timed), ``char_steps_per_s`` (``windows_per_s * maxlen``: LSTM steps
    computed per second, the figure textstream reports), ``steps``, ``windows``
    (windows trained on), ``wall_s`` (the whole run, compile included) and
    ``final_loss`` (Keras's running mean over the last epoch's batches).
    """
    tf, tf_keras = _tf()
    tf_keras.utils.set_random_seed(seed)
    n = len(x)
    if n == 0:
        raise ValueError("no training windows: the text is shorter than one window")
    if steps is None and minutes is None and epochs is None:
        epochs = 1
    deadline = time.monotonic() + minutes * 60 if (steps is None and minutes is not None) else None
    max_steps = steps
    max_epochs = epochs if (steps is None and minutes is None) else None
    meter = _Meter(n, batch_size, max_steps, deadline)
    t0 = time.perf_counter()
    epoch = 0
    while not meter.done and (max_epochs is None or epoch < max_epochs):
        meter.new_fit()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[meter.callback])
        epoch += 1
    wall = time.perf_counter() - t0
    wps = meter.timed_windows / meter.timed_s if meter.timed_s > 0 else meter.windows / wall
    maxlen = x.shape[1]
    return {"windows_per_s": wps, "char_steps_per_s": wps * maxlen, "steps": meter.steps,
            "windows": meter.windows, "epochs": epoch, "wall_s": wall, "final_loss": meter.loss}


# --- sampling and generation -------------------------------------------------------------------
def sample(preds, temperature: float = 1.0) -> int:
    """The original sampler: reweight the distribution by ``1 / temperature`` and draw one index."""
    preds = np.asarray(preds).astype("float64")
    preds = np.log(preds) / temperature
    exp_preds = np.exp(preds)
    preds = exp_preds / np.sum(exp_preds)
    probas = np.random.multinomial(1, preds, 1)
    return int(np.argmax(probas))


def generate(model, chars, prime: str, n: int, temperature: float, maxlen: int = MAXLEN):
    """``(text, chars_per_s)``: ``n`` characters after ``prime``, one ``model.predict`` per character.

    The original loop: one-hot the current ``maxlen``-character window, predict,
    sample, append, slide. A prime shorter than ``maxlen`` is right-aligned
    (zero vectors before it); characters outside ``chars`` raise ``ValueError``.
    ``chars_per_s`` leaves out the first character (its call builds the predict function).
    """
    char_indices = {c: i for i, c in enumerate(chars)}
    missing = sorted(set(prime) - char_indices.keys())
    if missing:
        raise ValueError(f"prime has characters outside the vocabulary: {missing}")
    generated_text = prime[-maxlen:]
    out = []
    t_first = None
    t0 = time.perf_counter()
    for i in range(n):
        sampled = np.zeros((1, maxlen, len(chars)))
        pad = maxlen - len(generated_text)
        for t, char in enumerate(generated_text):
            sampled[0, pad + t, char_indices[char]] = 1.0
        preds = model.predict(sampled, verbose=0)[0]
        next_index = sample(preds, temperature)
        next_char = chars[next_index]
        out.append(next_char)
        generated_text += next_char
        generated_text = generated_text[-maxlen:]
        if i == 0:
            t_first = time.perf_counter()
    t1 = time.perf_counter()
    if n > 1:
        rate = (n - 1) / (t1 - t_first)
    else:
        rate = n / (t1 - t0) if n else 0.0
    return "".join(out), rate


# --- weights from textstream -------------------------------------------------------------------
def copy_weights_from_textstream(seq_model, char_lstm, *, src_chars=None, dst_chars=None) -> None:
    """Give ``seq_model`` (from ``build_model``) the weights of a textstream ``CharLSTM``.

    The CharLSTM must be the seed shape: one LSTM layer over one-hot input and
    the ``next`` objective. Its logits head becomes the softmax Dense layer, so
    both models give the same distribution. If the two vocabularies order the
    same characters differently, pass ``src_chars`` (textstream's
    ``vocab.chars``) and ``dst_chars`` (this model's ``chars``) to reorder.
    """
    from textstream.model.network import head_weights, lstm_weights

    lstm = lstm_weights(char_lstm)
    if len(lstm) != 1:
        raise ValueError(f"the baseline has one LSTM layer; this CharLSTM has {len(lstm)}")
    kernel, recurrent, bias = lstm[0]["kernel"], lstm[0]["recurrent"], lstm[0]["bias"]
    head_k, head_b = head_weights(char_lstm)
    if src_chars is not None and dst_chars is not None and list(src_chars) != list(dst_chars):
        if sorted(src_chars) != sorted(dst_chars):
            raise ValueError("the two vocabularies hold different characters")
        where = {c: i for i, c in enumerate(src_chars)}
        order = np.array([where[c] for c in dst_chars])
        kernel, head_k, head_b = kernel[order], head_k[:, order], head_b[order]
    lstm_layer, dense = seq_model.layers
    want = [w.shape for w in lstm_layer.get_weights()] + [w.shape for w in dense.get_weights()]
    have = [kernel.shape, recurrent.shape, bias.shape, head_k.shape, head_b.shape]
    if [tuple(s) for s in want] != [tuple(s) for s in have]:
        raise ValueError(f"weight shapes differ: baseline {want}, textstream {have}")
    lstm_layer.set_weights([kernel, recurrent, bias])
    dense.set_weights([head_k, head_b])


# --- held-out loss ---------------------------------------------------------------------------
class NatsResult(float):
    """A float (mean nats per character) that also carries ``chars`` (scored) and ``unknown`` (skipped)."""

    chars: int
    unknown: int

    def __new__(cls, value: float, chars: int, unknown: int):
        obj = super().__new__(cls, value)
        obj.chars, obj.unknown = chars, unknown
        return obj


def evaluate_nats(model, chars, train_text: str, val_text: str, maxlen: int = MAXLEN,
                  batch_size: int = 1024) -> NatsResult:
    """Mean nats per character of ``model`` on every character of ``val_text``.

    Each character is predicted from the ``maxlen`` characters before it in
    ``train_text[-maxlen:] + val_text`` (zero vectors where there are fewer, and
    for context characters outside ``chars``). Target characters outside
    ``chars`` are left out of the average; the result's ``.unknown`` counts
    them and ``.chars`` counts those scored. Log-probabilities come from the
    Dense layer's logits (an exact log-softmax), not from the clipped softmax.
    """
    tf, _ = _tf()
    v = len(chars)
    char_indices = {c: i for i, c in enumerate(chars)}
    ctx = train_text[-maxlen:] if maxlen else ""
    stream = ctx + val_text
    ids = np.fromiter((char_indices.get(c, v) for c in stream), dtype=np.int64, count=len(stream))
    ids = np.concatenate([np.full(maxlen - len(ctx), v, dtype=np.int64), ids])  # pad to a full first window
    targets = ids[maxlen:]
    known = np.flatnonzero(targets != v)
    unknown = int(len(targets) - len(known))
    eye = np.eye(v + 1, v, dtype=np.float32)  # row v (padding / unknown) is all zeros
    lstm_layer, dense = model.layers
    kernel, bias = dense.kernel, dense.bias
    offsets = np.arange(maxlen)

    @tf.function(reduce_retracing=True)
    def nll(x, t):
        logits = tf.matmul(lstm_layer(x), kernel) + bias
        return -tf.gather(tf.nn.log_softmax(logits), t, batch_dims=1)

    total = 0.0
    for lo in range(0, len(known), batch_size):
        pos = known[lo:lo + batch_size]
        x = eye[ids[pos[:, None] + offsets[None, :]]]
        total += float(tf.reduce_sum(tf.cast(nll(x, targets[pos]), tf.float64)))
    n = len(known)
    return NatsResult(total / n if n else float("nan"), n, unknown)


# --- command line ------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the original Keras char-LSTM example (the seed baseline).")
    p.add_argument("corpus", type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, help="train for this many minutes")
    g.add_argument("--steps", type=int, help="train for this many batches")
    g.add_argument("--epochs", type=int, help="train for this many epochs (default: 1 when no length is given)")
    p.add_argument("--batch-size", type=int, default=128, help="default 128 as in the book; textstream's seed preset uses 1024")
    p.add_argument("--val-split", type=float, default=0.1, help="tail fraction held out (default 0.1; 0: none)")
    p.add_argument("--generate", type=int, metavar="N", help="print N characters sampled at temperature 0.5")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 <= args.val_split < 1.0:
        p.error("--val-split must be in [0, 1)")

    text = load_text(args.corpus)
    n_train = int(len(text) * (1 - args.val_split))
    train_text, val_text = text[:n_train], text[n_train:]
    t0 = time.perf_counter()
    x, y, chars = vectorize(train_text)
    t_vec = time.perf_counter() - t0
    print(f"corpus {args.corpus}: {len(text):,} chars ({len(train_text):,} train, {len(val_text):,} val), "
          f"{len(chars)} symbols; {len(x):,} windows vectorised in {t_vec:.1f} s "
          f"(x {x.nbytes / 2**20:,.0f} MiB, y {y.nbytes / 2**20:,.0f} MiB)", flush=True)

    model = build_model(len(chars))
    stats = train(model, x, y, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
                  minutes=args.minutes, seed=args.seed)
    rss_train = peak_rss_mb()
    print(f"trained {stats['steps']} steps of batch {args.batch_size} ({stats['epochs']} fit call(s)) "
          f"in {stats['wall_s']:.1f} s: {stats['windows_per_s']:,.0f} windows/s, "
          f"{stats['char_steps_per_s']:,.0f} char-steps/s (steady state); loss {stats['final_loss']:.4f}; "
          f"peak RSS {rss_train:,.0f} MiB", flush=True)

    val = None
    if val_text:
        del x, y  # the held-out pass does not need the training arrays
        t0 = time.perf_counter()
        val = evaluate_nats(model, chars, train_text, val_text)
        print(f"val: {val:.4f} nats/char, {val / math.log(2):.4f} bits/char over {val.chars:,} chars "
              f"({val.unknown} unknown skipped) in {time.perf_counter() - t0:.1f} s", flush=True)

    gen_rate = None
    if args.generate:
        np.random.seed(args.seed)
        start = np.random.randint(0, max(1, len(train_text) - MAXLEN))
        prime = train_text[start:start + MAXLEN]
        out, gen_rate = generate(model, chars, prime, args.generate, 0.5)
        print(f"--- temperature 0.5, prime {prime!r} ({gen_rate:.1f} chars/s)")
        print(out)
        print("---", flush=True)

    result = {
        "corpus": str(args.corpus), "minutes": stats["wall_s"] / 60, "steps": stats["steps"],
        "batch_size": args.batch_size, "windows_per_s": stats["windows_per_s"],
        "char_steps_per_s": stats["char_steps_per_s"],
        "val_nats_per_char": float(val) if val is not None else None,
        "val_bits_per_char": float(val) / math.log(2) if val is not None else None,
        "val_chars": val.chars if val is not None else 0, "val_unknown": val.unknown if val is not None else 0,
        "peak_rss_mb": peak_rss_mb(), "peak_rss_mb_train": rss_train,
        "train_chars_seen": stats["windows"], "final_loss": stats["final_loss"], "vectorize_s": t_vec,
        "generate_chars_per_s": gen_rate,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
