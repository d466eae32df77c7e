"""Scoring text: ``Generator.score`` and ``Generator.score_many``, the model's log-probability of given text.

``score(text)`` feeds the text from the model's start state (the zero
state: the first character is predicted from nothing before it) and returns
a ``Score``: ``logprobs[i]`` is the natural log of the probability of
character ``i`` given every character before it. The figures are those of
``textstream eval``'s sequence scoring of the same text: per Unicode
character, so for a byte-level model ``logprobs[i]`` is the sum over the
bytes of character ``i``. The text is normalised as the model's corpus was
(CRLF -> LF; lowercased if the corpus was), so ``chars`` counts the
normalised characters.

    score = gen.score("It was the best of times")
    score.bits_per_char, score.logprobs[:3]

Long text: pass an iterable of chunks (a file read in pieces): memory stays
constant whatever the text's length, and ``logprobs`` is None (only the
totals are kept). Many texts: ``score_many(texts)`` scores them as batches of
``ROWS`` rows (sorted by length, so little padding is computed) and returns
one ``Score`` per text, in order. A list passed to ``score`` is chunks of one
text, never a batch: that is ``score_many``'s job.

Both run the backend's ``score_rows``, the batched step that generation runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from textstream.data.vocab import is_char_start
from textstream.errors import TextstreamError
from textstream.generation.sampling import check_unknown

PIECE = 1 << 14  # ids scored per backend call for one long text
ROWS = 128  # texts per batch in score_many
_CARRY_MAX = 4096  # with lowercase, the tail of a chunk held back to the next one, at most

__all__ = ["Score", "Scoring", "PIECE", "ROWS"]


@dataclass(frozen=True)
class Score:
    """The model's log-probability of a text: ``nats`` in all over ``chars`` characters (``tokens`` ids).

    ``logprobs``: float64 (chars,), ln p of each character given all before it
    (the first from the start state); None when the text came in chunks.
    """

    chars: int
    nats: float
    tokens: int
    logprobs: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def nats_per_char(self) -> float:
        """Mean negative natural log-probability per character (NaN for no characters)."""
        return self.nats / self.chars if self.chars else math.nan

    @property
    def bits_per_char(self) -> float:
        """``nats_per_char / ln 2``."""
        return self.nats_per_char / math.log(2)


class Scoring:
    """``score`` and ``score_many`` (a mixin of ``textstream.generation.generator.Generator``)."""

    def score(self, text: str | Iterable[str], *, unknown: str = "error", what: str = "text") -> Score:
        """The model's log-probabilities of ``text`` (a string, or an iterable of string chunks), from its start state.

        A string: ``Score.logprobs`` holds every character's. Chunks (for
        example a file read in pieces): constant memory, ``logprobs`` None.
        ``unknown``: characters outside the vocabulary raise (listing them;
        ``what`` names the text) or, with "skip", are dropped.

            s = gen.score("The quick brown fox")
            assert abs(s.nats_per_char + s.logprobs.mean()) < 1e-9
            with open("notes.txt", encoding="utf-8") as f:
                print(gen.score(iter(lambda: f.read(1 << 16), "")).bits_per_char)
        """
        check_unknown(unknown)
        backend = self.backend
        h = np.zeros((backend.layers, 1, backend.units), np.float32)
        c = np.zeros_like(h)
        if isinstance(text, str):
            ids = self.encode(text, unknown=unknown, what=what) if text else np.zeros(0, np.int32)
            lp = np.concatenate([backend.score_rows(h, c, ids[None, a:a + PIECE])[0]
                                 for a in range(0, len(ids), PIECE)] or [np.zeros(0, np.float32)])
            per_char = self._per_char(ids, lp)
            return Score(len(per_char), 0.0 - float(per_char.sum()), len(ids), per_char)
        if isinstance(text, (bytes, bytearray)):
            raise TextstreamError(f"{what}: bytes, not text (decode them first)")
        chars = tokens = 0
        nats = 0.0
        for chunk in self._normalised_chunks(text, what):
            ids = self.encode(chunk, unknown=unknown, what=what)
            for a in range(0, len(ids), PIECE):
                piece = ids[a:a + PIECE]
                lp = backend.score_rows(h, c, piece[None])[0]
                nats -= float(lp.sum(dtype=np.float64))
                chars += self.vocab.count_chars(piece)
                tokens += len(piece)
        return Score(chars, nats, tokens)

    def score_many(self, texts: Sequence[str], *, unknown: str = "error", what: str = "text") -> list[Score]:
        """One ``Score`` per text (each from the start state, on its own), scored in batches of ``ROWS``.

        Equal to ``[gen.score(t) for t in texts]`` (up to the last bits of a batched product), and faster.

            scores = gen.score_many(["a line", "another line", "zzqx"])
            odd = max(range(3), key=lambda i: scores[i].nats_per_char)
        """
        check_unknown(unknown)
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TextstreamError(f"{what}: score_many takes a list of strings")
        encoded = [self.encode(t, unknown=unknown, what=what) if t else np.zeros(0, np.int32) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        out: list[Score | None] = [None] * len(texts)
        backend = self.backend
        for lo in range(0, len(order), ROWS):
            rows = order[lo:lo + ROWS]
            longest = len(encoded[rows[0]])
            ids = np.zeros((len(rows), longest), np.int32)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = encoded[i]
            h = np.zeros((backend.layers, len(rows), backend.units), np.float32)
            c = np.zeros_like(h)
            lp = backend.score_rows(h, c, ids) if longest else np.zeros((len(rows), 0), np.float32)
            for r, i in enumerate(rows):
                per_char = self._per_char(encoded[i], lp[r, :len(encoded[i])])
                out[i] = Score(len(per_char), 0.0 - float(per_char.sum()), len(encoded[i]), per_char)
        return out

    def _per_char(self, ids: np.ndarray, lp: np.ndarray) -> np.ndarray:
        """Per-token log-probabilities -> per character, float64 (a byte model's characters sum their bytes)."""
        lp = np.asarray(lp, np.float64)
        if not self.vocab.is_bytes or not len(ids):
            return lp
        return np.add.reduceat(lp, np.flatnonzero(is_char_start(ids)))

    def _normalised_chunks(self, chunks: Iterable[str], what: str) -> Iterable[str]:
        """``chunks`` cut so that normalising each equals normalising the whole (a CRLF or a word is never split)."""
        lowercase = bool(self.vocab.options.get("lowercase"))
        carry = ""
        for chunk in chunks:
            if not isinstance(chunk, str):
                raise TextstreamError(f"{what}: a chunk of type {type(chunk).__name__}, not str "
                                      f"(open the file in text mode, or decode the bytes)")
            text = carry + chunk
            cut = len(text) - 1 if text.endswith("\r") else len(text)
            if lowercase:  # str.lower depends on context within a word (Greek final sigma)
                lo = max(0, cut - _CARRY_MAX)
                i = max(text.rfind(" ", lo, cut), text.rfind("\n", lo, cut))
                cut = i + 1 if i >= 0 else (0 if lo == 0 else cut)
            text, carry = text[:cut], text[cut:]
            if text:
                yield text
        if carry:
            yield carry
