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

from textstream.errors import TextstreamError
from textstream.fsutil import atomic_write_text

FORMAT = "textstream-vocab/1"
OOV_CHAR = "\ufffd"  # what an out-of-vocabulary id (or an invalid byte sequence) decodes to
TOKENS = ("chars", "bytes")  # what an id stands for; vocab.json without "tokens" means chars
BYTE_IDS = 256
# What each byte id decodes to on its own: the ASCII character, or U+FFFD for a byte that is part of a
# longer sequence. ``"\n" in vocab.chars`` and ``vocab.chars.index("\n")`` hold for both kinds.
BYTE_SYMBOLS = [chr(i) for i in range(128)] + [OOV_CHAR] * 128
# The auto rule (``choose_tokens``): every character while there are at most AUTO_MAX_SYMBOLS (the byte
# vocabulary's size, so no choice costs more per id than bytes do); beyond that, the AUTO_MAX_SYMBOLS - 1
# most frequent and one out-of-vocabulary id when they cover AUTO_COVERAGE of the text (one id per
# character, almost nothing lost), else bytes (nothing lost, up to four ids per character).
AUTO_MAX_SYMBOLS = 256
AUTO_COVERAGE = 0.9999


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
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TextstreamError(f"{path}: no such file") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise TextstreamError(f"{path}: not valid JSON ({e})") from None
        except OSError as e:
            raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise TextstreamError(f"{path}: not a textstream vocab.json (expected format {FORMAT!r})")
        tokens = d.get("tokens", "chars")  # written before byte tokens: characters
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
    if d.get("tokens", "chars") == "bytes":
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


@dataclass(frozen=True)
class TokenChoice:
    """What a prepared corpus's ids stand for, as the ``auto`` rule (or the options) chose it.

    ``distinct``: distinct characters of the text; ``mapped``: how many of them
    share the out-of-vocabulary id, ``mapped_share`` their share of the text;
    ``bytes_per_char``: ids per character (1 for characters).
    """

    tokens: str
    requested: str  # chars, bytes or auto
    symbols: int
    distinct: int
    mapped: int
    mapped_share: float
    bytes_per_char: float
    top_coverage: float | None = None  # auto, many characters: the share the 255 most frequent cover

    @classmethod
    def of(cls, vocab: Vocab) -> "TokenChoice":
        meta, counts = vocab.meta, vocab.counts
        chars = int(meta.get("train_chars", 0)) + int(meta.get("val_chars", 0))
        ids = int(meta.get("train_tokens", meta.get("train_chars", 0))) + \
            int(meta.get("val_tokens", meta.get("val_chars", 0)))
        oov = vocab.oov_id
        distinct = int(meta.get("distinct_chars", vocab.size if oov is None else vocab.size - 1))
        mapped = max(0, distinct - (vocab.size - 1)) if oov is not None else 0
        share = counts[oov] / chars if oov is not None and chars and oov < len(counts) else 0.0
        return cls(tokens=vocab.tokens, requested=str(vocab.options.get("tokens", "chars")), symbols=vocab.size,
                   distinct=distinct, mapped=mapped, mapped_share=share, bytes_per_char=ids / chars if chars else 1.0,
                   top_coverage=meta.get("top_coverage"))

    def line(self) -> str:
        """One line for people: what was chosen and, with an out-of-vocabulary id, what it replaces."""
        how = "auto" if self.requested == "auto" else f"--tokens {self.requested}"
        if self.tokens == "bytes":
            why = ""
            if self.top_coverage is not None:
                why = (f" (the {AUTO_MAX_SYMBOLS - 1} most frequent cover {100 * self.top_coverage:.3f}% of the "
                       f"text, under {100 * AUTO_COVERAGE:g}%)")
            return (f"tokens: bytes ({how}): 256 byte ids for {self.distinct:,} distinct characters{why}, "
                    f"{self.bytes_per_char:.3f} bytes per character")
        if self.mapped:
            return (f"tokens: characters ({how}): the {self.symbols - 1:,} most frequent of {self.distinct:,} "
                    f"distinct characters; the other {self.mapped:,} ({100 * self.mapped_share:.4f}% of the text) "
                    f"map to the out-of-vocabulary id (U+FFFD)")
        return f"tokens: characters ({how}): {self.symbols:,} distinct characters"


# --- making a vocabulary from a character histogram ----------------------------------------------
def choose_tokens(counts: np.ndarray, tokens: str, max_vocab: int | None) -> tuple[str, int | None]:
    """``(kind, limit)``: "chars" with at most ``limit`` ids (None: every character), or ("bytes", None).

    ``counts``: how often each distinct character occurs (any order). An
    explicit ``tokens`` or ``max_vocab`` is followed; ``auto`` applies the rule
    of ``AUTO_MAX_SYMBOLS`` and ``AUTO_COVERAGE``, which bounds the model's
    cost per character: at most ``AUTO_MAX_SYMBOLS`` ids, and at most four
    ids per character.
    """
    if tokens == "bytes":
        return "bytes", None
    if tokens == "chars" or max_vocab is not None:
        return "chars", max_vocab
    if len(counts) <= AUTO_MAX_SYMBOLS:
        return "chars", None
    if top_coverage(counts) >= AUTO_COVERAGE:
        return "chars", AUTO_MAX_SYMBOLS
    return "bytes", None


def top_coverage(counts: np.ndarray) -> float:
    """The share of the text that its ``AUTO_MAX_SYMBOLS - 1`` most frequent characters make up."""
    counts = np.asarray(counts, np.int64)
    top = np.sort(counts)[::-1][:AUTO_MAX_SYMBOLS - 1]
    return int(top.sum()) / max(1, int(counts.sum()))


def byte_counts(counts: np.ndarray, present: np.ndarray) -> list[int]:
    """How often each byte value occurs in the UTF-8 of a text whose code point histogram is ``counts``."""
    out = np.zeros(BYTE_IDS, np.int64)
    ascii_ = present[present < 0x80]
    out[ascii_] += counts[ascii_]
    for cp in present[present >= 0x80].tolist():
        for b in chr(cp).encode("utf-8", "surrogatepass"):
            out[b] += counts[cp]
    return out.tolist()


def vocab_for(counts: np.ndarray, total: int, *, tokens: str, max_vocab: int | None, options: dict[str, Any],
              meta: dict[str, Any]) -> tuple[Vocab, np.ndarray | None]:
    """The vocabulary of a text with code point histogram ``counts`` (``total`` characters).

    Returns the ``Vocab`` (``meta`` gets ``distinct_chars``) and, for
    characters, the code points that keep an id of their own (ids in code
    point order, OOV last); None for bytes.
    """
    present = np.flatnonzero(counts)
    meta = {**meta, "distinct_chars": len(present)}
    kind, limit = choose_tokens(counts[present], tokens, max_vocab)
    if tokens == "auto" and max_vocab is None and len(present) > AUTO_MAX_SYMBOLS:
        meta["top_coverage"] = top_coverage(counts[present])  # what the rule looked at
    if kind == "bytes":
        return Vocab.of_bytes(byte_counts(counts, present), options, meta), None
    if limit is not None and len(present) > limit:
        order = np.lexsort((present, -counts[present]))  # most frequent first, ties by code point
        kept = np.sort(present[order[: limit - 1]])
        kept_counts = counts[kept]
        chars = [chr(c) for c in kept.tolist()] + [OOV_CHAR]
        cnts = kept_counts.tolist() + [int(total - kept_counts.sum())]
        return Vocab(chars=chars, counts=cnts, oov_id=len(kept), options=options, meta=meta), kept
    return Vocab(chars=[chr(c) for c in present.tolist()], counts=counts[present].tolist(), options=options,
                 meta=meta), present
