"""Held-out loss: nats and bits per character over every character of a text.

Each character is predicted from as much preceding context as the training
objective uses: ``sequence`` models see the text cut into consecutive windows
of ``seq_len`` (the k-th target of a window sees k+1 characters, as in
training); ``next`` models predict every character from the ``seq_len``
characters before it. The text's first character is predicted from the
context before it (the end of the training split) when there is one, and is
otherwise left out of the count.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from textstream.errors import TextstreamError


class IdStream:
    """A virtual concatenation ``context + body`` read by position; body is an array or a TokenFile."""

    def __init__(self, body, context: np.ndarray | None = None):
        self.body = body
        self.context = np.asarray(context if context is not None else [], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.context) + len(self.body)

    def read(self, start: int, stop: int) -> np.ndarray:
        c = len(self.context)
        parts = []
        if start < c:
            parts.append(self.context[start:min(stop, c)])
        if stop > c:
            lo = max(start, c) - c
            body = self.body.read(lo, stop - c - lo) if hasattr(self.body, "read") else self.body[lo:stop - c]
            parts.append(np.asarray(body, dtype=np.int32))
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def score(model, objective: str, seq_len: int, stream: IdStream, *, batch_size: int = 64,
          max_targets: int | None = None) -> tuple[float, int]:
    """``(sum of nats, characters scored)`` for the body of ``stream``.

    ``model`` is a ``CharLSTM`` (or any callable on int32 ids of shape (B, T)
    returning logits). ``max_targets`` caps the work (per-epoch validation).
    """
    from textstream._tf import tf

    first = max(len(stream.context), 1)  # first target position in the stream
    last = len(stream)
    if max_targets is not None:
        last = min(last, first + max_targets)
    if last <= first:
        return 0.0, 0

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None], tf.float32)], reduce_retracing=True)
    def nats_seq(x, y, mask):
        logits = model(x, training=False)
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits) * mask)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)],
                 reduce_retracing=True)
    def nats_next(x, y):
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)))

    total, count = 0.0, 0
    if objective == "sequence":
        # windows of seq_len targets; inputs are the same slice shifted back by one
        block = batch_size * seq_len
        for a in range(first, last, block):
            b = min(a + block, last)
            ids = stream.read(a - 1, b)
            n = b - a
            rows = -(-n // seq_len)
            pad = rows * seq_len - n
            x = np.concatenate([ids[:-1], np.zeros(pad, np.int32)]).reshape(rows, seq_len)
            y = np.concatenate([ids[1:], np.zeros(pad, np.int32)]).reshape(rows, seq_len)
            mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(rows, seq_len)
            total += float(nats_seq(x, y, mask))
            count += n
    else:
        # every target from the seq_len characters before it (fewer at the very start)
        full = max(first, seq_len)
        for t in range(first, min(full, last)):  # the few targets with short context
            ids = stream.read(0, t + 1)
            total += float(nats_next(ids[None, :-1], ids[-1:]))
            count += 1
        starts = np.arange(full, last)
        offsets = np.arange(-seq_len, 0)
        for a in range(0, len(starts), batch_size * 4):
            t = starts[a:a + batch_size * 4]
            ids = stream.read(int(t[0]) - seq_len, int(t[-1]) + 1)
            local = t - (int(t[0]) - seq_len)
            x = ids[local[:, None] + offsets]
            total += float(nats_next(x, ids[local]))
            count += len(t)
    return total, count


def evaluate(run_dir: Path | str, sources: Sequence[str | Path] = (), *, checkpoint: str = "best",
             batch_size: int = 64, on_progress: Callable | None = None) -> dict:
    """Nats and bits per character of a trained run on held-out text.

    With no ``sources``, the run's validation split (with the end of the
    training split as context); otherwise the normalised text of the sources.
    Returns ``{"nats_per_char", "bits_per_char", "chars", "checkpoint"}``.
    """
    from textstream.run import load_model

    cfg, vocab, model = load_model(run_dir, checkpoint)
    if sources:
        from textstream.corpus import resolve

        text = "".join(Path(p).read_text(encoding="utf-8", errors="strict") for p in resolve(list(sources)))
        stream = IdStream(vocab.encode(text, what=", ".join(map(str, sources))))
    else:
        from textstream.pipeline import TokenFile
        from textstream.run import RunPaths
        from textstream.tokens import load_prepared

        paths = RunPaths(Path(run_dir))
        prepared = paths.prepared_dir()
        if prepared is None:
            raise TextstreamError(f"{paths.root}: no data.json: cannot find the run's prepared corpus")
        prep = load_prepared(prepared)
        val = TokenFile(prep.val_path, vocab.dtype)
        if len(val) == 0:
            raise TextstreamError(f"{run_dir}: the run has no validation split (trained with --val-fraction 0); "
                                  f"pass a SOURCE to evaluate on")
        train = TokenFile(prep.train_path, vocab.dtype)
        ctx = train.read(max(0, len(train) - cfg.seq_len), cfg.seq_len).astype(np.int32)
        stream = IdStream(val, ctx)
    nats, chars = score(model, cfg.objective, cfg.seq_len, stream, batch_size=batch_size)
    if chars == 0:
        raise TextstreamError("nothing to evaluate: the text is too short")
    return {"nats_per_char": nats / chars, "bits_per_char": nats / chars / math.log(2), "chars": chars,
            "checkpoint": checkpoint}
