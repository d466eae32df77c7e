"""Per-character log-probabilities of a completion, in OpenAI's completions format (``logprobs``). No HTTP here.

The numbers come from the engine's batched step itself: a stream that asks
for ``logprobs`` is advanced with ``StepBackend.advance_rows_logprobs``,
which returns, beside each sampled id, the natural log of its probability
under the model's own distribution (before temperature and top-p) and the
``top`` likeliest ids there, from the very step that chose it; an echoed
prompt is fed with ``StepBackend.score_rows_top`` (its logprobs are what
``Generator.score`` gives for the same text). Nothing is run twice, and the
cost does not grow with the text before.

``Records`` is the buffer between the engine thread (``add``, ``add_prompt``)
and the reader (``take``: the records of the next characters it sends;
``prompt``: the echoed prompt's). ``openai_logprobs`` shapes records as
OpenAI does, ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}``, one token per character; with ``echo`` the first
character of a prompt fed from the start state has a null logprob (nothing
precedes it). Character vocabularies only: a byte-level model's tokens are
not characters (the server refuses ``logprobs`` for one).

    >>> r = Records()
    >>> r.add(np.array([0, 1]), np.array([-0.5, -1.0]), np.zeros((2, 0), np.int32), np.zeros((2, 0)))
    >>> openai_logprobs(["a", "b"], r.take(2), 0)["token_logprobs"]
    [-0.5, -1.0]
"""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["Records", "openai_logprobs", "join_logprobs"]


class Records:
    """Each character's ``(id, logprob, top ids, top logprobs)``, written by the engine, taken by the reader."""

    def __init__(self):
        self._lock = threading.Lock()
        self._parts: list[tuple[np.ndarray, ...]] = []  # generated, not taken yet, in order
        self._prompt: list[tuple[np.ndarray, ...]] = []

    def add(self, ids, chosen, top_ids, top_lp) -> None:
        """Generated ids (k,) with their logprobs (k,) and alternatives (k, top) (engine thread, before the text)."""
        with self._lock:
            self._parts.append(tuple(np.asarray(a) for a in (ids, chosen, top_ids, top_lp)))

    def add_prompt(self, ids, chosen, top_ids, top_lp) -> None:
        """Prompt ids as they are fed and scored (engine thread)."""
        with self._lock:
            self._prompt.append(tuple(np.asarray(a) for a in (ids, chosen, top_ids, top_lp)))

    def prompt(self) -> tuple[np.ndarray, ...]:
        """The prompt's records, all of them (complete once the prompt has been fed)."""
        with self._lock:
            return _joined(self._prompt)

    def take(self, n: int) -> tuple[np.ndarray, ...]:
        """The records of the next ``n`` generated characters (those the reader now sends)."""
        with self._lock:
            got, have = [], 0
            while have < n and self._parts:
                part = self._parts[0]
                need = n - have
                if len(part[0]) <= need:
                    got.append(self._parts.pop(0))
                else:
                    got.append(tuple(a[:need] for a in part))
                    self._parts[0] = tuple(a[need:] for a in part)
                have += len(got[-1][0])
            return _joined(got)


def _joined(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros((0, 0), np.int32), np.zeros((0, 0))
    return tuple(np.concatenate(column) for column in zip(*parts))


def openai_logprobs(chars, records: tuple[np.ndarray, ...], offset: int, *, first_null: bool = False) -> dict:
    """OpenAI's ``logprobs`` object of ``records`` (``chars``: the vocabulary's symbols), the first character at
    ``text_offset`` ``offset``; ``first_null``: the first one has no logprob and no alternatives (nothing
    precedes it)."""
    ids, chosen, top_ids, top_lp = records
    tokens = [chars[i] for i in ids.tolist()]
    values = [round(v, 6) for v in chosen.astype(np.float64).tolist()]
    tops = [{chars[j]: round(v, 6) for j, v in zip(row_ids, row_lp)}
            for row_ids, row_lp in zip(top_ids.tolist(), top_lp.astype(np.float64).tolist())]
    if first_null and tokens:
        values[0], tops[0] = None, None
    offsets = (offset + np.arange(len(tokens))).tolist()
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def join_logprobs(head: dict | None, tail: dict) -> dict:
    """Two ``logprobs`` objects one after the other (``head`` None: ``tail``)."""
    return tail if head is None else {k: head[k] + tail[k] for k in tail}
