"""The step backend interface: what ``Generator`` and the server need from a single-step model. No TensorFlow.

A backend advances B streams of a trained model one character at a time.
``Generator`` and ``Session`` (``textstream.generation.generator``) and the
server's engine talk only to these small interfaces, never to tensors:

* ``StepBackend``: the model (``layers``, ``units``, ``vocab_size``), makes
  ``streams(...)`` and scores sequences with ``logits`` (the equivalence check);
* ``StreamBatch``: B streams' state wherever the backend keeps it:
  ``advance`` (feed, then generate), ``copy``, and one stream's state as numpy
  (``row_state`` / ``set_row_state``);
* ``RowBatch``: B streams' state as numpy arrays that the caller owns, for a
  caller that keeps many streams and steps a different subset of them in
  every call (the continuous-batching server, ``textstream.serve``), with
  ``StepBackend.advance_rows``.

Log-probabilities come from the same batched step: ``StreamBatch.advance_logprobs``
samples and returns the model's log-probabilities of each chosen id (and the
likeliest alternatives) from the very step that chose it, and
``StepBackend.score_rows`` feeds given ids and returns the log-probability of
each (scoring, ``textstream.generation.scoring``); the server's engine gets the
same from its rows with ``advance_rows_logprobs`` and ``score_rows_top``, and
a ``RowBatch`` may carry a regex ``constraint`` with each row's place in it. ``StepBackend.fingerprint``
names the weights (the same on every backend for one checkpoint: what a saved
session, ``textstream.generation.state``, is checked against).

A backend must follow the sampling rules of ``textstream.generation.sampling``
(the noise hash of seed, position and character), so that every backend
gives the same text for the same seed, up to the last bits of its logits.
The two implementations are ``step_np`` (numpy) and ``step_tf`` (TensorFlow);
``textstream.generation.backends`` chooses between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np


class StreamBatch(Protocol):
    """The state of B streams (model state, seeds, positions, sampling settings) on a backend."""

    batch: int  # B

    def advance(self, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed stream i the ids ``feed[i]`` (any length; its position stays), then generate ``k`` >= 0 ids each.

        Returns the generated ids, int (B, k). Each generated id moves its
        stream's position by one. ``advance(0, feed)`` only feeds.
        """
        ...

    def advance_logprobs(self, k: int, top: int = 0,
                         feed: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
        """``advance(k, feed)`` (never under a constraint) that also returns each step's log-probabilities.

        Returns ``(ids, chosen, top_ids, top_logprobs)``: int32 (B, k); float32
        (B, k), the natural log of each generated id's probability under the
        model's own distribution (before temperature, top-k or top-p), taken
        from the step that chose it; int32 and float32 (B, k, ``top``), the
        ``top`` likeliest ids there, best first.
        """
        ...

    def constrain(self, constraint) -> None:
        """Generate under ``constraint`` (``textstream.generation.constraint.Constraint``; None: freely) from now on.

        Every stream starts a match. Under a constraint, ``advance`` pads a
        stream whose match has ended with -1 and leaves it as it is (state,
        position) until ``constrain`` is called again. ``copy`` copies it.
        """
        ...

    def copy(self) -> "StreamBatch":
        """An independent copy: advancing one leaves the other as it was."""
        ...

    def row_state(self, row: int) -> dict[str, np.ndarray]:
        """Stream ``row``'s state: ``h``, ``c`` float32 (layers, units); ``seed`` (folded by
        ``sampling.seed_u32``), ``position`` uint32 scalars."""
        ...

    def set_row_state(self, row: int, state: Mapping[str, np.ndarray]) -> None:
        """Put stream ``row`` in ``state`` (the keys and shapes of ``row_state``, already checked)."""
        ...


@dataclass
class RowBatch:
    """B streams' state as numpy arrays owned by the caller, advanced in place by ``StepBackend.advance_rows``.

    ``h``, ``c``: float32 (layers, B, units); ``seeds`` (folded by
    ``sampling.seed_u32``) and ``positions``: uint32 (B,); ``temperature``:
    float32 (B,); ``top_p``: float32 (B,), where a row with ``top_p >= 1`` is
    sampled exactly as without top-p (so rows with and without it share a call).
    ``constraint``: a ``textstream.generation.constraint.Constraint`` every row
    generates under (None: freely), with ``match`` int32 (B,), each row's state
    in it (0: a match begins; -1: it has ended, the row stays as it is), updated in place.
    """

    h: np.ndarray
    c: np.ndarray
    seeds: np.ndarray
    positions: np.ndarray
    temperature: np.ndarray
    top_p: np.ndarray
    constraint: object = None
    match: np.ndarray | None = None

    @property
    def batch(self) -> int:
        """B, the number of rows."""
        return int(self.seeds.shape[0])


class StepBackend(Protocol):
    """A single-step model: the weights of a trained ``CharLSTM``, ready to advance streams."""

    layers: int
    units: int
    vocab_size: int
    fingerprint: str  # a hex digest of the weights (``state.weights_digest``), the same on every backend

    def streams(self, seeds: Sequence[int], temperatures: Sequence[float], top_k: int | None = None,
                top_p: float | None = None) -> StreamBatch:
        """B = ``len(seeds)`` streams in the zero state at position 0, stream i with ``seeds[i]`` and
        ``temperatures[i]`` (already checked by ``sampling.check_request``)."""
        ...

    def advance_rows(self, rows: RowBatch, k: int, feed: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Feed row i the ids ``feed[i]`` (any length), then generate ``k`` >= 0 ids per row: int (B, k).

        Updates ``rows.h``, ``rows.c`` and ``rows.positions`` in place. Row i's
        ids depend only on row i (its state, seed, position and settings), never
        on the other rows or on B, so any subset of streams can share a call.
        Under ``rows.constraint`` a row whose match ends pads with -1 (as ``StreamBatch.advance``).
        """
        ...

    def advance_rows_logprobs(self, rows: RowBatch, k: int, top: int,
                              feed: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
        """``advance_rows`` (never under a constraint) returning ``(ids, chosen, top_ids, top_logprobs)`` as
        ``StreamBatch.advance_logprobs`` does: the log-probabilities from the step that chose each id."""
        ...

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits after each position of ``ids`` (B, T) fed one at a time from the zero state: float (B, T, V)."""
        ...

    def head_logits(self, h_top: np.ndarray) -> np.ndarray:
        """The logits after top-layer states ``h_top`` float32 (B, units), as the sampling step computes them: (B, V)."""
        ...

    def score_rows(self, h: np.ndarray, c: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Feed row b the ids ``ids[b]`` (int (B, T)) from state ``h``, ``c`` (float32 (layers, B, units), updated
        in place); returns float32 (B, T): the natural log of the probability of ``ids[b, t]`` given the row's
        state before it (the first from the state given)."""
        ...

    def score_rows_top(self, h: np.ndarray, c: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, ...]:
        """``score_rows`` that also returns the ``top`` likeliest ids at each position and their log-probabilities:
        ``(logprobs (B, T), top_ids int32 (B, T, top), top_logprobs float32 (B, T, top))``, best first."""
        ...
