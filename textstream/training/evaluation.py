"""Held-out loss: nats and bits per character (and per token) over every character of a text.

Each character is predicted the way the model generates:

- ``sequence`` models carry their LSTM state forward through the text, so a
  character is predicted from all the text before it. To score in parallel,
  the text is cut into ``rows`` strips, one per batch row; each strip starts
  ``burn_in`` characters early (those are read, not scored), so every
  character has at least that much context, or all of it near the start.
- ``next`` models (the original objective) predict every character from the
  ``seq_len`` characters before it (fewer at the very start).

The text's first token is predicted from the context before it (the end of
the training split) when there is one, and is otherwise left out.

Figures per character are the total nats over the number of Unicode
characters scored, whatever the tokens: with byte tokens, the bytes that are
not UTF-8 continuation bytes. So a byte model and a character model of the
same text compare directly; per token (per id) is reported too.

Sources given to ``evaluate`` are read the way ``prepare`` reads them
(``textio``: streaming UTF-8 decoding, binary files refused, ``errors``,
the run's normalisation) and their ids go to an unnamed temporary file
(``SourceIds``) that the scoring reads piece by piece: memory stays bounded
whatever the size of the text, and the scores are those of the whole text.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from textstream._tf import tf
from textstream.config import check_prepare_options
from textstream.data.pipeline import TokenFile
from textstream.data.prepared import load_prepared
from textstream.data.sources import describe, resolve
from textstream.data.textio import normalised
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.fsutil import no_space
from textstream.generation.sampling import check_unknown
from textstream.model.checkpoint import load_model
from textstream.model.run import RunPaths

_COUNT_BLOCK = 1 << 20  # ids read at a time when counting the characters scored


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


def row_spans(first: int, last: int, rows: int, burn_in: int) -> list[tuple[int, int, int]]:
    """``(start, a, b)`` per row: the row reads ids from ``start`` and scores targets ``[a, b)``.

    The ``[a, b)`` cover ``[first, last)`` once, in order; ``start = max(0, a - 1 - burn_in)``.
    """
    n = last - first
    if n <= 0:
        return []
    per = -(-n // max(1, rows))
    return [(max(0, a - 1 - burn_in), a, min(a + per, last)) for a in range(first, last, per)]


class Score(NamedTuple):
    """What ``score`` measured: the sum of nats, the ids (tokens) scored and the characters they make."""

    nats: float
    tokens: int
    chars: int

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else math.nan

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan


def score(model, objective: str, seq_len: int, stream: IdStream, *, batch_size: int = 64,
          max_targets: int | None = None, burn_in: int | None = None, vocab: Vocab | None = None) -> Score:
    """``(sum of nats, tokens scored, characters scored)`` for the body of ``stream``.

    ``model`` is a ``CharLSTM``. ``max_targets`` caps the work (per-epoch
    validation), in tokens. ``burn_in`` (sequence models): tokens each strip
    reads before its first scored one; default ``DEFAULT_BURN_IN``. ``vocab``
    counts the characters (None: one per token).
    """
    first = max(len(stream.context), 1)  # first target position in the stream
    last = len(stream)
    if max_targets is not None:
        last = min(last, first + max_targets)
    if last <= first:
        return Score(0.0, 0, 0)
    if objective == "sequence":
        nats, n = _score_stateful(model, seq_len, stream, first, last, batch_size,
                                  DEFAULT_BURN_IN if burn_in is None else burn_in)
    else:
        nats, n = _score_windows(model, seq_len, stream, first, last, batch_size)
    return Score(nats, n, _count_chars(stream, first, last, vocab))


def _count_chars(stream: IdStream, first: int, last: int, vocab: Vocab | None) -> int:
    """The characters that the ids at ``[first, last)`` of ``stream`` make up."""
    if vocab is None or not vocab.is_bytes:
        return last - first
    return sum(vocab.count_chars(stream.read(a, min(a + _COUNT_BLOCK, last)))
               for a in range(first, last, _COUNT_BLOCK))


DEFAULT_BURN_IN = 512


def _score_stateful(model, seq_len, stream, first, last, rows, burn_in):
    @tf.function(reduce_retracing=True)
    def chunk(x, y, mask, states):
        logits, states = model(x, states=states, return_state=True, training=False)
        nats = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits) * mask
        return tf.reduce_sum(nats), states

    plan = row_spans(first, last, rows, burn_in)
    longest = max(b - s for s, _, b in plan)  # targets per row, burn-in included
    states = model.zero_states(len(plan))
    total = 0.0
    for k in range(0, longest - 1, seq_len):
        x = np.zeros((len(plan), seq_len), np.int32)
        y = np.zeros((len(plan), seq_len), np.int32)
        mask = np.zeros((len(plan), seq_len), np.float32)
        for r, (s, a, b) in enumerate(plan):
            lo = s + k  # inputs lo .. lo+T-1 predict targets lo+1 .. lo+T
            hi = min(lo + seq_len, b - 1)
            if hi <= lo:
                continue
            ids = stream.read(lo, hi + 1)
            x[r, :hi - lo] = ids[:-1]
            y[r, :hi - lo] = ids[1:]
            targets = np.arange(lo + 1, hi + 1)
            mask[r, :hi - lo] = targets >= a
        nats, states = chunk(x, y, mask, states)
        total += float(nats)
    return total, last - first


def _score_windows(model, seq_len, stream, first, last, batch_size):
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)],
                 reduce_retracing=True)
    def nats_next(x, y):
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)))

    total, count = 0.0, 0
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


def train_context(train, seq_len: int) -> np.ndarray:
    """The end of the training split, as context for the first validation characters."""
    n = max(seq_len, DEFAULT_BURN_IN)
    return train.read(max(0, len(train) - n), n).astype(np.int32)


def evaluate(run_dir: Path | str, sources: Sequence[str | Path] = (), *, checkpoint: str = "best",
             batch_size: int = 64, unknown: str = "error", errors: str | None = None) -> dict:
    """Nats and bits per character (and per token) of a trained run on held-out text.

    With no ``sources``, the run's validation split (with the end of the
    training split as context); otherwise the normalised text of the sources,
    read like ``prepare`` reads them: ``errors`` ("strict" or "replace"; default
    the run's own) for invalid UTF-8, ``unknown`` for characters outside the
    vocabulary ("error" lists them, "skip" drops them; a vocabulary with an
    out-of-vocabulary id maps them to it). Returns ``{"nats_per_char",
    "bits_per_char", "chars", "nats_per_token", "bits_per_token",
    "token_count", "tokens", "checkpoint"}``: ``tokens`` is what an id stands
    for (chars or bytes), ``token_count`` how many were scored.
    """
    check_unknown(unknown)
    if errors is not None:
        check_prepare_options(errors=errors)
    cfg, vocab, model = load_model(run_dir, checkpoint)
    if sources:
        with source_ids(resolve(list(sources)), vocab, errors=errors or cfg.errors, unknown=unknown) as ids:
            result = score(model, cfg.objective, cfg.seq_len, IdStream(ids), batch_size=batch_size, vocab=vocab)
    else:
        stream = run_validation(RunPaths(Path(run_dir)), vocab.dtype, cfg.seq_len)
        result = score(model, cfg.objective, cfg.seq_len, stream, batch_size=batch_size, vocab=vocab)
    if result.chars == 0:
        raise TextstreamError("nothing to evaluate: the text is too short")
    return {"nats_per_char": result.nats_per_char, "bits_per_char": result.nats_per_char / math.log(2),
            "chars": result.chars, "nats_per_token": result.nats_per_token,
            "bits_per_token": result.nats_per_token / math.log(2), "token_count": result.tokens,
            "tokens": vocab.tokens, "checkpoint": checkpoint}


def run_validation(paths: RunPaths, dtype: np.dtype, seq_len: int) -> IdStream:
    """The run's validation split, with the end of its training split as context."""
    record = paths.read_data()  # a damaged data.json is one line naming it
    if record is None:
        raise TextstreamError(f"{paths.data}: missing: cannot find the run's prepared corpus "
                              f"(pass a SOURCE to evaluate on)")
    prep = load_prepared(record.dir)
    val = TokenFile(prep.val_path, dtype)
    if len(val) == 0:
        raise TextstreamError(f"{paths.root}: the run has no validation split (trained with --val-fraction 0); "
                              f"pass a SOURCE to evaluate on")
    return IdStream(val, train_context(TokenFile(prep.train_path, dtype), seq_len))


class SourceIds:
    """Ids in an unnamed temporary file (in ``$TMPDIR``): appended piece by piece, read back by position.

    What ``IdStream`` needs of a body (``len``, ``read``), in bounded memory;
    the file goes when it is closed (or the process ends).
    """

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self._file = tempfile.TemporaryFile(prefix="textstream-eval-")
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as e:
            where = Path(tempfile.gettempdir())
            full = no_space(where, e, written=self._n * self.dtype.itemsize,
                            note="eval keeps the ids of its SOURCEs in a temporary file there; point TMPDIR at a "
                                 "directory with more room")
            raise full or e from None
        self._n += len(ids)

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` ids from position ``start`` (clipped at the end)."""
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self._file.fileno(), length * size, start * size), dtype=self.dtype)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SourceIds":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def source_ids(paths: Sequence[Path], vocab: Vocab, *, errors: str = "strict", unknown: str = "error",
               chunk_size: int = 1 << 22) -> SourceIds:
    """The ids of the text of ``paths`` (``textio.normalised``, as ``prepare`` reads), in a ``SourceIds``.

    Characters outside the vocabulary: with ``unknown="error"`` (and no
    out-of-vocabulary id to map them to) the sources are read to their end
    and one ``TextstreamError`` lists them all.
    """
    ids = SourceIds(vocab.dtype)
    lowercase = bool(vocab.options.get("lowercase"))
    outside: dict[Path, set[str]] = {}
    try:
        for path in paths:
            for _, text in normalised(path, chunk_size=chunk_size, errors=errors, lowercase=lowercase):
                if unknown == "error" and vocab.oov_id is None:
                    missing = vocab.unknown(text)
                    if missing:
                        outside.setdefault(path, set()).update(missing)
                    if outside:
                        continue  # only listing what else is missing now
                ids.append(vocab.encode(text, unknown=unknown, what=str(path)))
        if outside:
            chars = sorted(set().union(*outside.values()))
            shown = " ".join(repr(ch) for ch in chars[:20]) + (" ..." if len(chars) > 20 else "")
            raise TextstreamError(f"{describe(list(outside))}: {len(chars)} character(s) outside the vocabulary: "
                                  f"{shown} (pass --unknown skip to drop them)")
    except BaseException:
        ids.close()
        raise
    return ids
