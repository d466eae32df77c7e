"""``Vocab``: characters <-> integer ids, saved as ``vocab.json``. No TensorFlow here.

Ids follow the order of ``chars``: sorted by code point, as the original
example did, with the out-of-vocabulary id (if ``--max-vocab`` made one) last.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from textstream.errors import TextstreamError
from textstream.fsutil import atomic_write_text

FORMAT = "textstream-vocab/1"
OOV_CHAR = "\ufffd"  # what an out-of-vocabulary id decodes to


def dtype_for(size: int) -> np.dtype:
    """The narrowest unsigned little-endian dtype that holds ids < ``size``."""
    if size <= 1 << 8:
        return np.dtype("<u1")
    if size <= 1 << 16:
        return np.dtype("<u2")
    return np.dtype("<u4")


@dataclass
class Vocab:
    chars: list[str]
    counts: list[int] = field(default_factory=list)
    oov_id: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # train_chars, val_chars, fingerprint, ...

    def __post_init__(self) -> None:
        self._index = {ch: i for i, ch in enumerate(self.chars) if i != self.oov_id}

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
        """Characters of ``text`` (already normalised) that have no id of their own, sorted."""
        return sorted(set(text) - self._index.keys())

    def encode(self, text: str, *, unknown: str = "error", what: str = "text") -> np.ndarray:
        """Ids for ``text`` after normalisation.

        ``unknown``: "error" raises naming the characters (unless the vocab has an
        OOV id, which they then map to); "skip" drops them.
        """
        text = self.normalize(text)
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
        """The text of ``ids``, vectorised: one table lookup per id, no Python code per character."""
        ids = np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64)
        if self._code_points is None:  # a symbol longer than one character (not from prepare)
            return "".join(self.chars[int(i)] for i in ids)
        return self._code_points[ids].tobytes().decode("utf-32-le", errors="surrogatepass")

    def decoder(self) -> Callable[[np.ndarray], str]:
        """A decoder for one stream of ids that arrive in chunks: ``decoder(ids) -> text so far unreturned``.

        Every id is a whole character here, so it is ``decode``; token kinds
        whose characters span several ids hold back an incomplete one instead.
        """
        return self.decode

    @cached_property
    def _code_points(self) -> np.ndarray | None:
        """Id -> code point as little-endian uint32, or None when a symbol is not one character."""
        if any(len(ch) != 1 for ch in self.chars):
            return None
        return np.array([ord(ch) for ch in self.chars], dtype="<u4")

    # --- json -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "chars": self.chars, "counts": self.counts, "oov_id": self.oov_id,
                "dtype": self.dtype.str, "size": self.size, "options": self.options, **self.meta}

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
        problem = vocab_json_problem(d)
        if problem:
            raise TextstreamError(f"{path}: damaged vocab.json ({problem})")
        known = {"format", "chars", "counts", "oov_id", "dtype", "size", "options"}
        return cls(chars=list(d["chars"]), counts=list(d.get("counts", [])), oov_id=d.get("oov_id"),
                   options=dict(d.get("options", {})), meta={k: v for k, v in d.items() if k not in known})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def vocab_json_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a ``vocab.json`` object (types, sizes, ranges), or None."""
    chars = d.get("chars")
    if d.get("tokens", "chars") != "chars":
        return f"unknown tokens {d.get('tokens')!r}"
    if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and c for c in chars):
        return "\"chars\" is not a list of characters"
    counts = d.get("counts", [])
    if not isinstance(counts, list) or not all(_is_int(c) and c >= 0 for c in counts) or \
            len(counts) not in (0, len(chars)):
        return f"\"counts\" is not a list of {len(chars)} counts"
    oov = d.get("oov_id")
    if oov is not None and not (_is_int(oov) and 0 <= oov < len(chars)):
        return f"\"oov_id\" {oov!r} is not an id below {len(chars)}"
    if len({c for i, c in enumerate(chars) if i != oov}) != len(chars) - (oov is not None):
        return "\"chars\" lists a character twice"
    if "size" in d and d["size"] != len(chars):
        return f"\"size\" {d['size']!r} is not the {len(chars)} characters listed"
    if "dtype" in d and d["dtype"] != dtype_for(len(chars)).str:
        return f"\"dtype\" {d['dtype']!r} is not {dtype_for(len(chars)).str!r} for {len(chars)} symbols"
    if not isinstance(d.get("options", {}), dict):
        return "\"options\" is not an object"
    for key in ("train_chars", "val_chars"):
        if key in d and not (_is_int(d[key]) and d[key] >= 0):
            return f"\"{key}\" is not a count"
    return None
