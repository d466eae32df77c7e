"""``Vocab``: text <-> integer ids, saved as ``vocab.json``. No TensorFlow here.

Two kinds of tokens (``Vocab.tokens``):

* ``chars``: one id per character. Ids follow the order of ``chars``: sorted
  by code point, as the original example did, with the out-of-vocabulary id
  (if ``--max-vocab`` or the ``auto`` rule made one) last.
* ``bytes``: the ids are the UTF-8 bytes of the text, 0..255, whatever the
  script: any text encodes, and a character may span up to four ids.
  ``decoder()`` holds back an incomplete character between chunks, and turns
  an invalid sequence into U+FFFD.
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from textstream.claims import read_regular
from textstream.errors import TextstreamError
from textstream.fsutil import atomic_write_text

FORMAT = "textstream-vocab/1"
OOV_CHAR = "\ufffd"  # what an out-of-vocabulary id (or an invalid byte sequence) decodes to
TOKENS = ("chars", "bytes")  # what an id stands for
BYTE_IDS = 256
# What each byte id decodes to on its own: the ASCII character, or U+FFFD for a byte that is part of a
# longer sequence. ``"\n" in vocab.chars`` and ``vocab.chars.index("\n")`` hold for both kinds.
BYTE_SYMBOLS = [chr(i) for i in range(128)] + [OOV_CHAR] * 128


def dtype_for(size: int) -> np.dtype:
    """The narrowest unsigned little-endian dtype that holds ids < ``size``."""
    if size <= 1 << 8:
        return np.dtype("<u1")
    if size <= 1 << 16:
        return np.dtype("<u2")
    return np.dtype("<u4")


def is_char_start(ids: np.ndarray) -> np.ndarray:
    """For byte ids: True where a byte is not a UTF-8 continuation byte (0x80..0xBF), i.e. starts a character."""
    return (np.asarray(ids).astype(np.int64) & 0xC0) != 0x80


@dataclass
class Vocab:
    chars: list[str]
    counts: list[int] = field(default_factory=list)
    oov_id: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # train_chars, val_chars, fingerprint, ...
    tokens: str = "chars"

    def __post_init__(self) -> None:
        if self.tokens not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS} (got {self.tokens!r})")
        self._index = {ch: i for i, ch in enumerate(self.chars) if i != self.oov_id}

    @classmethod
    def of_bytes(cls, counts: list[int] | None = None, options: dict[str, Any] | None = None,
                 meta: dict[str, Any] | None = None) -> "Vocab":
        """The byte vocabulary: ids 0..255 are the UTF-8 bytes; ``counts`` per byte value."""
        return cls(chars=list(BYTE_SYMBOLS), counts=list(counts or []), oov_id=None, options=dict(options or {}),
                   meta=dict(meta or {}), tokens="bytes")

    @property
    def is_bytes(self) -> bool:
        return self.tokens == "bytes"

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        return dtype_for(self.size)

    def normalize(self, text: str) -> str:
        """Apply the options the corpus was prepared with (CRLF -> LF, lowercase)."""
        text = text.replace("\r\n", "\n")
        return text.lower() if self.options.get("lowercase") else text

    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` (already normalised) that have no id of their own, sorted (none for bytes)."""
        if self.is_bytes:
            return []
        return sorted(set(text) - self._index.keys())

    def encode(self, text: str, *, unknown: str = "error", what: str = "text") -> np.ndarray:
        """Ids for ``text`` after normalisation.

        ``unknown`` (characters): "error" raises naming the characters (unless
        the vocab has an OOV id, which they then map to); "skip" drops them.
        Every character has ids as bytes.
        """
        text = self.normalize(text)
        if self.is_bytes:
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise TextstreamError(f"{what} is not valid Unicode (a lone surrogate at character {e.start})") \
                    from None
            return np.frombuffer(data, dtype=np.uint8).astype(np.int32)
        missing = self.unknown(text)
        if missing:
            if unknown == "skip":
                drop = set(missing)
                text = "".join(ch for ch in text if ch not in drop)
            elif self.oov_id is None:
                shown = " ".join(repr(ch) for ch in missing[:20]) + (" ..." if len(missing) > 20 else "")
                raise TextstreamError(
                    f"{what} has {len(missing)} character(s) outside the vocabulary: {shown} "
                    f"(pass --unknown skip to drop them)")
        oov = -1 if self.oov_id is None else self.oov_id
        return np.fromiter((self._index.get(ch, oov) for ch in text), dtype=np.int32, count=len(text))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, vectorised (no Python code per character); invalid UTF-8 bytes become U+FFFD."""
        ids = np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64)
        if self.is_bytes:
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        if self._code_points is None:  # a symbol longer than one character (not from prepare)
            return "".join(self.chars[int(i)] for i in ids)
        return self._code_points[ids].tobytes().decode("utf-32-le", errors="surrogatepass")

    def decoder(self) -> Callable[[np.ndarray], str]:
        """A decoder for one stream of ids that arrive in chunks: ``decoder(ids) -> text so far unreturned``.

        Characters: every id is a whole character (a ``CharDecoder``). Bytes:
        a ``ByteDecoder``, which holds back the bytes of an incomplete character
        until the chunk that completes it (``copy.copy`` copies what it holds).
        Both have ``interrupt()``: other text is fed into the stream, so what is
        held back can no longer be completed.
        """
        return ByteDecoder() if self.is_bytes else CharDecoder(self.decode)

    def whole_chars(self, ids: np.ndarray) -> np.ndarray:
        """``ids`` without the pieces of characters cut at either end (bytes: a slice taken anywhere)."""
        ids = np.asarray(ids)
        if not self.is_bytes or not len(ids):
            return ids
        starts = np.flatnonzero(is_char_start(ids))
        if not len(starts):
            return ids[:0]
        last, lead = int(starts[-1]), int(ids[starts[-1]])
        need = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        return ids[starts[0]:last if len(ids) - last < need else len(ids)]

    def count_chars(self, ids: np.ndarray) -> int:
        """How many characters ``ids`` hold: one per id, or per byte that is not a UTF-8 continuation byte."""
        return int(np.count_nonzero(is_char_start(ids))) if self.is_bytes else len(ids)

    @cached_property
    def _code_points(self) -> np.ndarray | None:
        """Id -> code point as little-endian uint32, or None when a symbol is not one character."""
        if any(len(ch) != 1 for ch in self.chars):
            return None
        return np.array([ord(ch) for ch in self.chars], dtype="<u4")

    # --- json -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "tokens": self.tokens}
        if not self.is_bytes:  # bytes: id i is byte i
            d["chars"] = self.chars
        d.update({"counts": self.counts, "oov_id": self.oov_id, "dtype": self.dtype.str, "size": self.size,
                  "options": self.options, **self.meta})
        return d

    def save(self, path: Path) -> None:
        """Write ``path`` atomically (temporary, fsync, rename)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        """The vocabulary saved in ``path``, every field checked; damage is one line naming the file."""
        path = Path(path)
        try:
            d = json.loads(read_regular(path).decode("utf-8"))  # a FIFO in its place: one line, no wait
        except FileNotFoundError:
            raise TextstreamError(f"{path}: no such file") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise TextstreamError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise TextstreamError(f"{path}: not a textstream vocab.json (expected format {FORMAT!r})")
        tokens = d.get("tokens")
        if tokens is None:
            raise TextstreamError(f"{path}: not a vocab.json of this version of textstream (no \"tokens\")")
        if tokens not in TOKENS:
            raise TextstreamError(f"{path}: unknown tokens {tokens!r} (expected one of {', '.join(TOKENS)})")
        problem = vocab_json_problem(d)
        if problem:
            raise TextstreamError(f"{path}: damaged vocab.json ({problem})")
        known = {"format", "tokens", "chars", "counts", "oov_id", "dtype", "size", "options"}
        meta = {k: v for k, v in d.items() if k not in known}
        counts, options = list(d.get("counts", [])), dict(d.get("options", {}))
        if tokens == "bytes":
            return cls.of_bytes(counts, options, meta)
        return cls(chars=list(d["chars"]), counts=counts, oov_id=d.get("oov_id"), options=options, meta=meta)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def vocab_json_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a ``vocab.json`` object (types, sizes, ranges), or None.

    Byte vocabularies list no characters (id i is byte i): 256 ids, no OOV id.
    """
    if d.get("tokens") == "bytes":
        n = BYTE_IDS
        if d.get("oov_id") is not None:
            return "a byte vocabulary has no \"oov_id\""
    else:
        chars, oov = d.get("chars"), d.get("oov_id")
        if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and c for c in chars):
            return "\"chars\" is not a list of characters"
        n = len(chars)
        if oov is not None and not (_is_int(oov) and 0 <= oov < n):
            return f"\"oov_id\" {oov!r} is not an id below {n}"
        if len({c for i, c in enumerate(chars) if i != oov}) != n - (oov is not None):
            return "\"chars\" lists a character twice"
    counts = d.get("counts", [])
    if not isinstance(counts, list) or not all(_is_int(c) and c >= 0 for c in counts) or len(counts) not in (0, n):
        return f"\"counts\" is not a list of {n} counts"
    if "size" in d and d["size"] != n:
        return f"\"size\" {d['size']!r} is not the {n} symbols"
    if "dtype" in d and d["dtype"] != dtype_for(n).str:
        return f"\"dtype\" {d['dtype']!r} is not {dtype_for(n).str!r} for {n} symbols"
    if not isinstance(d.get("options", {}), dict):
        return "\"options\" is not an object"
    for key in ("train_chars", "val_chars", "train_tokens", "val_tokens", "distinct_chars"):
        if key in d and not (_is_int(d[key]) and d[key] >= 0):
            return f"\"{key}\" is not a count"
    return None


class CharDecoder:
    """A stream of character ids -> text (nothing is ever held back)."""

    def __init__(self, decode: Callable[[np.ndarray], str]):
        self._decode = decode

    def __call__(self, ids: np.ndarray) -> str:
        return self._decode(ids)

    def interrupt(self) -> str:
        return ""


class ByteDecoder:
    """UTF-8 bytes arriving in chunks -> text: an incomplete character waits for its next bytes.

    An invalid sequence (a lone continuation byte, a sequence cut short by
    another character, a byte that never occurs in UTF-8) becomes U+FFFD,
    never an exception.

        decode = ByteDecoder()
        decode(np.array([0xE2, 0x82])) + decode(np.array([0xAC]))   # '' + '€'
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, ids: np.ndarray) -> str:
        return self._decoder.decode(np.asarray(ids).astype(np.uint8).tobytes())

    def interrupt(self) -> str:
        """End the character held back, if any, as U+FFFD (text from elsewhere comes next); "" when none."""
        return self._decoder.decode(b"", final=True)

    @property
    def pending(self) -> bytes:
        """The bytes held back: the start of a character not yet complete."""
        return self._decoder.getstate()[0]

    def __copy__(self) -> "ByteDecoder":
        twin = ByteDecoder()
        twin._decoder.setstate(self._decoder.getstate())
        return twin
