"""Which tokens a text gets: the ``auto`` rule, and what it chose (``TokenChoice``). No TensorFlow here.

``vocab_for`` turns the character histogram of a corpus (``preparation``'s
first pass) into its ``Vocab``: every character, the most frequent ones and
an out-of-vocabulary id, or UTF-8 bytes (``choose_tokens``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from textstream.data.vocab import BYTE_IDS, OOV_CHAR, Vocab

# The auto rule (``choose_tokens``): every character while there are at most AUTO_MAX_SYMBOLS (the byte
# vocabulary's size, so no choice costs more per id than bytes do); beyond that, the AUTO_MAX_SYMBOLS - 1
# most frequent and one out-of-vocabulary id when they cover AUTO_COVERAGE of the text (one id per
# character, almost nothing lost), else bytes (nothing lost, up to four ids per character).
AUTO_MAX_SYMBOLS = 256
AUTO_COVERAGE = 0.9999


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
