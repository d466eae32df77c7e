"""State over HTTP: ``"state"`` in a request continues a saved session, ``"return_state"`` saves each choice's.

The blob is the library's (``textstream.generation.state``: what
``Session.save`` writes and ``Generator.restore`` reads), base64 in JSON, so
a state moves freely between the library and the server:

    blob = base64.b64decode(choice["state"])
    session = gen.restore(blob)          # continues where the completion ended

``read_state`` checks a request's ``state`` (a string, base64, then the
library's checks: another model, truncated, altered, an unknown version) and
raises ``ApiError`` 400 naming ``state``. A continued stream starts from the
blob's LSTM state, folded seed and position (``StreamSpec.start``); its
prompt, if any, is fed on top, as ``Session.feed`` feeds (the position does
not move), so a completion of ``n`` characters with ``return_state``
followed by one of ``m`` from its state is exactly the completion of
``n + m`` characters of the same seed. A request's ``seed`` replaces the
blob's (choice ``i``: ``seed + i``), and its ``temperature`` and ``top_p``
the blob's when it gives them.

``end_state`` is the engine's side: the state right after the prompt and
exactly the text the choice returned. When the engine generated past that
text (a stop string cut it), the returned text is fed again from the state
saved right after the prompt (``Saving``), so the state never holds text the
client did not get. A regex match cut by ``max_tokens`` is saved as plain
state: continuing from it does not resume the match.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textstream.errors import TextstreamError
from textstream.generation.interface import RowBatch
from textstream.generation.sampling import seed_u32
from textstream.generation.state import SavedSession, read, write
from textstream.serve.errors import ApiError

MAX_STATE_CHARS = 1 << 20  # base64 characters of a state at most (a blob is a few kilobytes)

__all__ = ["read_state", "decode_state", "continued", "Saving", "end_state", "MAX_STATE_CHARS"]


def decode_state(value: Any) -> bytes:
    """The blob in a request's ``state`` field (a base64 string), or ``ApiError`` naming ``state``."""
    if not isinstance(value, str):
        raise ApiError(400, "state must be a string (the base64 \"state\" of an earlier choice)", param="state",
                       code="invalid_type")
    if len(value) > MAX_STATE_CHARS:
        raise ApiError(400, f"state is longer than {MAX_STATE_CHARS} characters: not a saved session",
                       param="state", code="invalid_value")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "state is not base64 (send the \"state\" of an earlier choice as it came)",
                       param="state", code="invalid_value") from None


def read_state(blob: bytes, backend, vocab) -> SavedSession:
    """The session saved in ``blob``, checked against the served model; ``ApiError`` 400 naming ``state``."""
    try:
        saved = read(blob, backend, vocab)
    except TextstreamError as e:
        raise ApiError(400, f"state: {str(e).removeprefix('session state: ')}", param="state",
                       code="invalid_value") from None
    if saved.top_k is not None:
        raise ApiError(400, f"state: saved with top_k {saved.top_k}, which this server does not apply (restore it "
                            f"with the library, or save it without top_k)", param="state", code="invalid_value")
    if saved.held:
        raise ApiError(400, "state: it holds text owed to the session's next sample (a byte model fed in the middle "
                            "of a character): sample once in the library before saving", param="state",
                       code="invalid_value")
    return saved


def continued(saved: SavedSession, seed: int | None, explicit: frozenset, temperature: float,
              top_p: float | None) -> dict:
    """``StreamSpec`` fields of one choice continuing ``saved``: the request's seed (when given) and its
    ``temperature`` / ``top_p`` when ``explicit`` names them, else the blob's."""
    start = saved if seed is None else dataclasses.replace(saved, seed=seed_u32(seed))
    return {"start": start, "seed": start.seed,
            "temperature": temperature if "temperature" in explicit else saved.temperature,
            "top_p": top_p if "top_p" in explicit else saved.top_p}


@dataclass
class Saving:
    """What the engine keeps of a stream that returns its state: the state after its prompt, and its ids."""

    after_prompt: tuple[np.ndarray, np.ndarray, int] | None = None  # (h, c, position), set once fed
    ids: list[np.ndarray] = field(default_factory=list)  # generated, in order

    @property
    def generated(self) -> int:
        return sum(map(len, self.ids))


def end_state(backend, vocab, stream, h: np.ndarray, c: np.ndarray, seed: int, position: int,
              temperature: float, top_p: float | None) -> str:
    """The base64 blob of ``stream``'s state after its prompt and the text it returned (engine thread).

    ``h``, ``c``: float32 (layers, units), the slot's state now; ``seed`` folded; ``position`` the slot's.
    """
    saving: Saving = stream.saving
    pending = stream.pending
    generated = np.concatenate(saving.ids) if saving.ids else np.zeros(0, np.int32)
    if vocab.is_bytes:
        returned = vocab.encode(vocab.decode(generated)[:stream.pushed]) if stream.pushed else generated[:0]
    else:
        returned = generated[:stream.pushed]
    if len(returned) + len(pending) != len(generated):  # generated past the text returned: feed that text again
        h0, c0, position = saving.after_prompt
        rows = RowBatch(h=h0[:, None].copy(), c=c0[:, None].copy(), seeds=np.array([seed], np.uint32),
                        positions=np.array([position], np.uint32), temperature=np.ones(1, np.float32),
                        top_p=np.ones(1, np.float32))
        if len(returned):
            backend.advance_rows(rows, 0, [np.asarray(returned, np.int32)])
        h, c, position, pending = rows.h[:, 0], rows.c[:, 0], position + len(returned), b""
    saved = SavedSession(h=np.array(h, np.float32), c=np.array(c, np.float32), seed=seed, position=position,
                         temperature=temperature, top_k=None, top_p=top_p, pending=pending)
    return base64.b64encode(write(saved, backend, vocab)).decode("ascii")
