"""A session saved as bytes: ``Session.save()`` and ``Generator.restore(blob)``. No TensorFlow here.

An LSTM's whole context is its state, so a session saves to a few
kilobytes and continues exactly where it was saved, in this process or
another, on either backend:

    blob = s.save()                       # bytes
    twin = gen.restore(blob)              # the same model (a TextstreamError otherwise)
    assert twin.sample(100) == s.sample(100)

The blob (``VERSION`` 1), little-endian throughout::

    magic        16 bytes  b"textstream-state"
    version      uint16    1
    header size  uint32    N
    header       N bytes   UTF-8 JSON: {"layers", "units", "vocab_size", "tokens", "weights", "vocab",
                           "seed", "position", "temperature", "top_k", "top_p", "unknown", "pending", "held"}
    h, c         float32   layers x units each (the LSTM state, every layer)
    checksum     uint32    CRC-32 of every byte before it

``weights`` is ``weights_digest`` of the model's step weights (the same on
every backend for one checkpoint) and ``vocab`` ``vocab_digest`` of its
vocabulary: a blob restores only into the model it came from. ``seed`` is
the folded seed (``sampling.seed_u32``), ``position`` the characters
generated, ``temperature``/``top_k``/``top_p``/``unknown`` the session's
settings; ``pending`` (hex) the bytes of an unfinished UTF-8 character a
byte model has generated but not yet returned, ``held`` text owed to the
next ``sample``. Sizes: 1,378 bytes for the seed preset (1 x 128) and
3,426 bytes for the default preset (1 x 384): ``h`` and ``c`` are
``8 x layers x units`` bytes, the header about 330 (a few bytes more or
less with the digits of the seed and the settings).

``read`` checks in this order and says which: not a session state (no
magic), an unknown version, truncated (or trailing bytes), altered (the
checksum), a damaged header, another model (shape, vocabulary or weights),
and NaN or Inf in the state. A session in the middle of a regex match is not
saved (the match's automaton state is not part of the format).
"""
from __future__ import annotations

import codecs
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.sampling import SampleConfig, check_unknown
from textstream.model.stepweights import StepWeights

MAGIC = b"textstream-state"
VERSION = 1
_PREFIX = struct.Struct("<16sHI")  # magic, version, header size
_CRC = struct.Struct("<I")
MAX_HEADER = 1 << 16  # a header is a few hundred bytes
MAX_HELD = 1 << 12  # characters of text owed to the next sample, at most

__all__ = ["MAGIC", "VERSION", "SavedSession", "SessionSaving", "weights_digest", "vocab_digest", "write",
           "read"]


def weights_digest(weights: StepWeights) -> str:
    """The sha256 (hex) of a model's step weights: every array's name, shape and float32 bytes, in a fixed order."""
    h = hashlib.sha256(b"textstream-weights/1")
    for name, array in sorted(weights.arrays().items()):
        a = np.ascontiguousarray(array, "<f4")
        h.update(f"{name}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def vocab_digest(vocab: Vocab) -> str:
    """The sha256 (hex) of what a vocabulary maps: its tokens kind, symbols, out-of-vocabulary id and options."""
    fields = {"tokens": vocab.tokens, "chars": vocab.chars, "oov_id": vocab.oov_id, "options": vocab.options}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


@dataclass
class SavedSession:
    """What a blob holds (see the module docstring): the state and settings of one session."""

    h: np.ndarray  # float32 (layers, units)
    c: np.ndarray
    seed: int  # folded (sampling.seed_u32)
    position: int
    temperature: float
    top_k: int | None
    top_p: float | None
    unknown: str = "error"
    pending: bytes = b""
    held: str = ""

    @property
    def settings(self) -> dict:
        """``temperature``, ``top_k``, ``top_p``."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}

    def streams(self, backend):
        """One stream on ``backend`` (a ``StepBackend``) in this state, with these settings."""
        streams = backend.streams([0], [self.temperature], self.top_k, self.top_p)
        streams.set_row_state(0, {"h": self.h, "c": self.c, "seed": np.array(self.seed, np.uint32),
                                  "position": np.array(self.position, np.uint32)})
        return streams


def _model_fields(backend, vocab: Vocab) -> dict:
    return {"layers": int(backend.layers), "units": int(backend.units), "vocab_size": int(backend.vocab_size),
            "tokens": vocab.tokens, "weights": backend.fingerprint, "vocab": vocab_digest(vocab)}


def write(saved: SavedSession, backend, vocab: Vocab) -> bytes:
    """The blob of ``saved`` for the model ``backend`` (a ``StepBackend``) with ``vocab``."""
    _check_finite(saved.h, saved.c)
    header = dict(_model_fields(backend, vocab), seed=int(saved.seed), position=int(saved.position),
                  temperature=float(saved.temperature), top_k=saved.top_k,
                  top_p=None if saved.top_p is None else float(saved.top_p), unknown=saved.unknown,
                  pending=saved.pending.hex(), held=saved.held)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    body = (_PREFIX.pack(MAGIC, VERSION, len(text)) + text + np.ascontiguousarray(saved.h, "<f4").tobytes()
            + np.ascontiguousarray(saved.c, "<f4").tobytes())
    return body + _CRC.pack(zlib.crc32(body))


def read(blob, backend, vocab: Vocab) -> SavedSession:
    """The session in ``blob``, checked against the model ``backend`` with ``vocab``; a ``TextstreamError`` saying
    what is wrong (see the module docstring) otherwise."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TextstreamError(f"session state: expected bytes (what Session.save returns), got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
        raise TextstreamError("session state: not a textstream session state (it does not start with "
                              f"{MAGIC.decode()!r})")
    if len(blob) < _PREFIX.size:
        raise TextstreamError(f"session state: truncated ({len(blob)} bytes, not even its header size)")
    _, version, size = _PREFIX.unpack_from(blob)
    if version != VERSION:
        raise TextstreamError(f"session state: format version {version}; this textstream reads version {VERSION} "
                              f"(saved by {'a newer' if version > VERSION else 'another'} textstream)")
    if size > MAX_HEADER:
        raise TextstreamError(f"session state: damaged (a header of {size:,} bytes)")
    start = _PREFIX.size + size
    if len(blob) < start + _CRC.size:
        raise TextstreamError(f"session state: truncated ({len(blob)} bytes; its header alone needs {start})")
    header = _header(blob[_PREFIX.size:start])
    want = start + 2 * 4 * header["layers"] * header["units"] + _CRC.size
    if len(blob) != want:
        what = "truncated" if len(blob) < want else "damaged (bytes after its end)"
        raise TextstreamError(f"session state: {what}: {len(blob)} bytes, its header says {want}")
    (crc,) = _CRC.unpack_from(blob, want - _CRC.size)
    if crc != zlib.crc32(blob[:want - _CRC.size]):
        raise TextstreamError("session state: altered or corrupted (its checksum does not match)")
    _check_model(header, _model_fields(backend, vocab))
    shape = (header["layers"], header["units"])
    state = np.frombuffer(blob, "<f4", count=2 * shape[0] * shape[1], offset=start).astype(np.float32)
    h, c = state.reshape(2, *shape)
    _check_finite(h, c)
    return SavedSession(h=h.copy(), c=c.copy(), **_settings(header, vocab))


def _header(raw: bytes) -> dict:
    """The JSON header, every field's type checked (the checksum is checked later; a damaged header is named)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise TextstreamError("session state: altered or corrupted (its header is not JSON)")
    ints = ("layers", "units", "vocab_size", "seed", "position")
    if not all(_is_int(header.get(k)) for k in ints) or not 1 <= header["layers"] <= 1024 \
            or not 1 <= header["units"] <= 1 << 16:
        raise TextstreamError("session state: altered or corrupted (its header's model shape is not valid)")
    return header


def _check_model(header: dict, mine: dict) -> None:
    """A ``TextstreamError`` when the blob's model is not this one, naming the first difference."""
    theirs = (header["layers"], header["units"], header["vocab_size"])
    ours = (mine["layers"], mine["units"], mine["vocab_size"])
    if theirs != ours:
        raise TextstreamError(f"session state: from another model ({theirs[0]} x {theirs[1]} LSTM over "
                              f"{theirs[2]} symbols; this one is {ours[0]} x {ours[1]} over {ours[2]})")
    if header.get("tokens") != mine["tokens"] or header.get("vocab") != mine["vocab"]:
        raise TextstreamError("session state: from another model (its vocabulary differs from this model's)")
    if header.get("weights") != mine["weights"]:
        raise TextstreamError("session state: from another model (same shape and vocabulary, different weights: "
                              "another run or another checkpoint)")


def _settings(header: dict, vocab: Vocab) -> dict:
    """The session fields of the header, each checked as a request would be."""
    seed, position = header["seed"], header["position"]
    if not (0 <= seed < 1 << 32 and 0 <= position < 1 << 32):
        raise TextstreamError("session state: damaged (seed or position out of range)")
    temperature, top_k, top_p = header.get("temperature"), header.get("top_k"), header.get("top_p")
    try:
        if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)):
            raise TextstreamError("temperature is not a number")
        if top_k is not None and not _is_int(top_k):
            raise TextstreamError("top_k is not an integer")
        SampleConfig(temperature=float(temperature), top_k=top_k, top_p=top_p).check()
        unknown = check_unknown(header.get("unknown"))
    except (TextstreamError, TypeError, ValueError) as e:
        raise TextstreamError(f"session state: damaged settings ({e})") from None
    held, pending = header.get("held", ""), _pending(header.get("pending", ""), vocab)
    if not isinstance(held, str) or len(held) > MAX_HELD:
        raise TextstreamError("session state: damaged (\"held\" is not a short text)")
    return {"seed": seed, "position": position, "temperature": float(temperature), "top_k": top_k,
            "top_p": None if top_p is None else float(top_p), "unknown": unknown, "pending": pending, "held": held}


def _pending(value, vocab: Vocab) -> bytes:
    """The held-back bytes: the start of one UTF-8 character, only for a byte model."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) > 3 or (raw and not vocab.is_bytes):
        raise TextstreamError("session state: damaged (\"pending\" is not the start of a character)")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    try:
        ok = decoder.decode(raw) == "" and decoder.getstate()[0] == raw
    except UnicodeDecodeError:
        ok = False
    if not ok:
        raise TextstreamError("session state: damaged (\"pending\" is not the start of a UTF-8 character)")
    return raw


def _check_finite(h: np.ndarray, c: np.ndarray) -> None:
    for name, a in (("h", h), ("c", c)):
        if not np.isfinite(a).all():
            raise TextstreamError(f"session state: {name} holds NaN or Inf (a damaged or foreign state)")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SessionSaving:
    """``Session.save`` (a mixin of ``textstream.generation.generator.Session``)."""

    def save(self) -> bytes:
        """This session as a small self-describing blob (see ``textstream.generation.state``).

        ``gen.restore(blob)`` continues exactly: ``gen.restore(s.save()).sample(n) == s.sample(n)``,
        in another process too, on either backend. A session in the middle of
        a regex match is not saved (a ``TextstreamError``; save before or after the match).

            blob = s.save()                    # bytes: ~3.4 KB for the default preset
            assert gen.restore(blob).sample(50) == s.sample(50)
        """
        if self.matching:
            raise TextstreamError("cannot save a session in the middle of a regex match (the match's automaton "
                                  "state is not saved): save before the match starts or after it ends")
        row = self._streams.row_state(0)
        pending = self._decoder.pending if self.generator.vocab.is_bytes else b""
        saved = SavedSession(h=row["h"], c=row["c"], seed=int(row["seed"]), position=int(row["position"]),
                             unknown=self.unknown, pending=pending, held=self._held, **self.settings)
        return write(saved, self.generator.backend, self.generator.vocab)

    def _resumed(self, saved: SavedSession):
        """This session with the decoder's held-back bytes and the owed text of ``saved``; returns it."""
        if saved.pending:
            self._decoder(np.frombuffer(saved.pending, np.uint8))
        self._held = saved.held
        return self
