"""Regex-constrained generation: a pattern's automaton mapped onto a model's vocabulary. No TensorFlow here.

``compile_constraint(pattern, vocab)`` reads the pattern with ``interegular``
(regex -> finite automaton over characters) and maps that automaton onto the
vocabulary once: a ``Constraint`` is a token DFA, ``next[s, v]`` the state
after id ``v`` from state ``s`` (-1 where ``v`` may not come next) and
``accepting[s]`` whether the text so far is a full match. Every state left
can still reach a full match with ids of this vocabulary, so a stream that
follows ``next`` is always a prefix of a match and never gets stuck.

Byte vocabularies constrain the decoded text: the automaton is walked over
the UTF-8 decoding, and the bytes of an unfinished character lead to
intermediate states (never accepting) from which only the bytes that can
complete an allowed character go on; invalid UTF-8 is never allowed. The
out-of-vocabulary id of a character vocabulary is never allowed.

How a backend samples under a constraint (``sampling_np.constrained_scores``,
``sampling_tf.constrained_scores``): the ids ``next`` forbids get logit
``-inf``, and one more candidate, id ``V`` ("end"), gets the log of the
model's probability mass on the forbidden ids where the state is accepting
(``-inf`` elsewhere): when the text is a full match, the mass on characters
that would leave the pattern becomes the probability of ending. The
Gumbel-max draw then runs over these ``V + 1`` scores with the usual noise
(id ``V``'s noise is the hash at character id ``V``), temperature, top-k and
top-p, so a seed gives the same text on every backend.

Syntax is Python's ``re`` as ``interegular`` reads it, matched against the
whole generated text (as ``re.fullmatch``): ``^``/``\\A`` at the start and
``$``/``\\Z`` at the end are accepted (they say nothing more); other anchors,
lookarounds, backreferences and the ``x`` flag are not supported. ``\\d``,
``\\w``, ``\\s`` are their ASCII sets.

    >>> from textstream.data.vocab import Vocab
    >>> vocab = Vocab(chars=list(" enosy"))
    >>> c = compile_constraint("(yes|no)", vocab)
    >>> [bool(c.accepting[c.walk(vocab.encode(t))]) for t in ("ye", "yes")], c.walk(vocab.encode("yo"))
    ([False, True], -1)
"""
from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError

CACHE_SIZE = 32  # compiled constraints kept per vocabulary (``Constraints``)
MAX_STATES = 200_000  # token DFA states at most: a larger pattern is an error, not a stall

__all__ = ["Constraint", "Constraints", "compile_constraint", "split_ended"]


@dataclass(eq=False)
class Constraint:
    """A pattern mapped onto a vocabulary: the token DFA (state 0 is where a match begins).

    ``next``: int32 (N, V), the state after each id, -1 where it is not
    allowed; ``accepting``: bool (N,); ``bias``: float32 (N, V), 0 where
    allowed and ``-inf`` elsewhere (what the numpy backend adds to the logits);
    ``ends``: bool (N,), accepting with some id forbidden (where "end" can be
    chosen: elsewhere the forbidden mass is empty or ending is not allowed).
    """

    pattern: str
    next: np.ndarray
    accepting: np.ndarray
    bias: np.ndarray = field(init=False, repr=False)
    ends: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.bias = np.where(self.next >= 0, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        self.ends = self.accepting & (self.next < 0).any(axis=1)

    @property
    def states(self) -> int:
        return int(self.next.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.next.shape[1])

    def padded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(next, ends)`` with unreachable states added up to a power of two (>= 16): few compiled shapes."""
        pad = (1 << max(4, (self.states - 1).bit_length())) - self.states
        return np.pad(self.next, ((0, pad), (0, 0)), constant_values=-1), np.pad(self.ends, (0, pad))

    def walk(self, ids, state: int = 0) -> int:
        """The state after ``ids`` from ``state`` (-1 once an id is not allowed)."""
        for i in np.asarray(ids, np.int64):
            if state < 0:
                break
            state = int(self.next[state, i])
        return state


class Constraints:
    """Compiled constraints for one vocabulary, the most recent ``size`` kept (compiling is the slow part)."""

    def __init__(self, vocab: Vocab, size: int = CACHE_SIZE):
        self.vocab, self.size = vocab, size
        self._cache: OrderedDict[str, Constraint] = OrderedDict()

    def __call__(self, regex: "str | Constraint | None") -> Constraint | None:
        """``regex`` compiled for this vocabulary (None: no constraint; a ``Constraint``: checked and returned)."""
        if regex is None:
            return None
        if isinstance(regex, Constraint):
            if regex.vocab_size != self.vocab.size:
                raise TextstreamError(f"regex {regex.pattern!r} was compiled for a vocabulary of {regex.vocab_size} "
                                      f"ids; this model has {self.vocab.size}")
            return regex
        if regex in self._cache:
            self._cache.move_to_end(regex)
            return self._cache[regex]
        compiled = self._cache[regex] = compile_constraint(regex, self.vocab)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return compiled


def split_ended(ids: np.ndarray) -> tuple[np.ndarray, bool]:
    """One stream's ids from a constrained call: ``(the ids before the match ended, whether it ended)``.

    A backend pads a stream whose match has ended with -1.
    """
    ids = np.asarray(ids)
    stop = np.flatnonzero(ids < 0)
    return (ids[:stop[0]], True) if len(stop) else (ids, False)


# --- the pattern -> a character automaton (interegular) -------------------------------------------------
_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2})")


def _character_fsm(pattern):
    """interegular's FSM of ``pattern`` (read as ``re.fullmatch`` reads it); bad or unsupported syntax raises."""
    import interegular  # the automaton library (a core dependency); imported when a pattern is first compiled

    if not isinstance(pattern, str):
        raise TextstreamError(f"regex must be a string (got {type(pattern).__name__})")
    try:
        re.compile(pattern)
    except re.error as e:
        raise TextstreamError(f"regex {pattern!r} does not compile: {e}") from None
    body = _ESCAPE.sub(lambda m: m.group(1) + re.escape(chr(int(m.group(2)[1:], 16))), pattern)
    body = re.sub(r"^(\^|\\A)", "", body)  # the match spans the whole text: these anchors add nothing
    body = re.sub(r"(?<!\\)((?:\\\\)*)(\$|\\Z)$", r"\1", body)
    unsupported = f"regex {pattern!r} uses syntax that constrained generation does not support"
    try:
        parsed = interegular.parse_pattern(body)
        if parsed.prefix_postfix != (0, 0):
            raise TextstreamError(f"{unsupported} (lookahead or lookbehind)")
        return parsed.to_fsm()
    except TextstreamError:
        raise
    except interegular.Unsupported as e:
        raise TextstreamError(f"{unsupported} ({e}); anchors inside the pattern, lookarounds and "
                              f"backreferences are not supported") from None
    except interegular.InvalidSyntax as e:
        raise TextstreamError(f"{unsupported} ({str(e).strip() or 'interegular cannot read it'})") from None
    except Exception:  # anything else interegular's parser cannot take
        raise TextstreamError(f"{unsupported} (interegular cannot read it)") from None


class _Fsm:
    """The character automaton as arrays: ``trans[s, key]`` (-1: no match can follow), ``key(ch)``."""

    def __init__(self, fsm):
        from interegular.fsm import anything_else

        states = sorted(fsm.states, key=lambda s: (s != fsm.initial, s))
        self.index = {s: i for i, s in enumerate(states)}  # the initial state is 0
        self.finals = np.array([s in fsm.finals for s in states], bool)
        mapping = fsm.alphabet._symbol_mapping
        keys = 1 + max(list(mapping.values()) + [0])
        self.trans = np.full((len(states), keys + 1), -1, np.int32)  # column ``keys``: a character without a key
        for s, row in fsm.map.items():
            for key, target in row.items():
                self.trans[self.index[s], key] = self.index[target]
        self.none = keys
        self.other = mapping.get(anything_else, keys)  # the key of every character the pattern does not name
        self.named = {ch: k for ch, k in mapping.items() if ch is not anything_else}
        self.named_points = sorted(ord(ch) for ch in self.named if ord(ch) >= 0x80)

    def key(self, ch: str) -> int:
        return self.named.get(ch, self.other)

    def named_between(self, lo: int, hi: int) -> bool:
        """Whether the pattern names a character with a code point in ``lo..hi``."""
        i = bisect.bisect_left(self.named_points, lo)
        return i < len(self.named_points) and self.named_points[i] <= hi


# --- the character automaton -> a token DFA ---------------------------------------------------------------
def compile_constraint(pattern: str, vocab: Vocab) -> Constraint:
    """The ``Constraint`` of ``pattern`` for ``vocab``: every error is a ``TextstreamError`` naming the pattern.

    Errors: not a string; does not compile (``re``); unsupported syntax; can
    never match; no text of this vocabulary's characters matches.
    """
    fsm = _Fsm(_character_fsm(pattern))
    if not _live(fsm.trans[:, :-1], fsm.finals)[0]:
        raise TextstreamError(f"regex {pattern!r} can never match any text")
    table, accepting = (_byte_table if vocab.is_bytes else _char_table)(fsm, vocab)
    live = _live(table, accepting)
    if not live[0]:
        known = set(vocab.chars) - ({vocab.chars[vocab.oov_id]} if vocab.oov_id is not None else set())
        missing = [] if vocab.is_bytes else sorted(ch for ch in fsm.named if ch not in known)
        shown = " ".join(repr(ch) for ch in missing[:12]) + (" ..." if len(missing) > 12 else "")
        raise TextstreamError(f"regex {pattern!r}: no text the model's vocabulary can spell matches it"
                              + (f" (of the characters the pattern names, the vocabulary lacks {shown})" if missing else ""))
    return Constraint(pattern, *_prune(table, accepting, live))


def _char_table(fsm: _Fsm, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """A character vocabulary: one id is one character (or a symbol of several, walked in turn)."""
    keys = np.array([fsm.key(ch) if len(ch) == 1 else fsm.none for ch in vocab.chars], np.int64)
    if vocab.oov_id is not None:
        keys[vocab.oov_id] = fsm.none
    table = fsm.trans[:, keys]
    for i, symbol in enumerate(vocab.chars):
        if len(symbol) != 1 and i != vocab.oov_id:
            for s in range(len(table)):
                t = s
                for ch in symbol:
                    t = fsm.trans[t, fsm.key(ch)] if t >= 0 else -1
                table[s, i] = t
    return np.ascontiguousarray(table, np.int32), fsm.finals.copy()


def _utf8_next(lead: int) -> tuple[int, int, int, int]:
    """``(bytes still to come, payload bits of the lead byte, lowest, highest allowed second byte)``; r=0: invalid."""
    if lead < 0xC2 or lead > 0xF4:
        return 0, 0, 0, 0
    if lead < 0xE0:
        return 1, lead & 0x1F, 0x80, 0xBF
    if lead < 0xF0:
        return 2, lead & 0x0F, 0xA0 if lead == 0xE0 else 0x80, 0x9F if lead == 0xED else 0xBF
    return 3, lead & 0x07, 0x90 if lead == 0xF0 else 0x80, 0x8F if lead == 0xF4 else 0xBF


def _byte_table(fsm: _Fsm, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """A byte vocabulary: the automaton over the UTF-8 decoding, with intermediate states inside a character.

    States 0..S-1 are the character automaton's (between characters); an
    intermediate state is the character's state with the bytes of an
    unfinished character, merged with every other whose row is the same.
    """
    n_fsm = len(fsm.trans)
    rows: list[np.ndarray] = []  # the intermediate states' rows (state n_fsm + i)
    by_row: dict[bytes, int] = {}
    uniform: dict[tuple, int] = {}

    def intermediate(s: int, payload: int, r: int, lo: int, hi: int) -> int:
        """The state after a prefix with ``payload`` bits, ``r`` bytes to come, the next byte in ``lo..hi``."""
        first, last = payload << (6 * r), (payload << (6 * r)) | ((1 << (6 * r)) - 1)
        plain = not fsm.named_between(first, last)  # every completion is a character the pattern does not name
        if plain and (s, r, lo, hi) in uniform:
            return uniform[(s, r, lo, hi)]
        row = np.full(vocab.size, -1, np.int32)
        if plain and r == 1:
            row[lo:hi + 1] = fsm.trans[s, fsm.other]
        elif plain:  # every continuation leads to the same (plain) state
            row[lo:hi + 1] = intermediate(s, (payload << 6) | (lo & 0x3F), r - 1, 0x80, 0xBF)
        else:
            for b in range(lo, hi + 1):
                p = (payload << 6) | (b & 0x3F)
                row[b] = fsm.trans[s, fsm.key(chr(p))] if r == 1 else intermediate(s, p, r - 1, 0x80, 0xBF)
        if not (row >= 0).any():
            found = -1
        else:
            found = by_row.get(row.tobytes())
            if found is None:
                found = by_row[row.tobytes()] = n_fsm + len(rows)
                rows.append(row)
                if len(rows) > MAX_STATES:
                    raise TextstreamError("regex is too large to constrain generation with (over "
                                          f"{MAX_STATES:,} states)")
        if plain:
            uniform[(s, r, lo, hi)] = found
        return found

    top = np.full((n_fsm, vocab.size), -1, np.int32)
    for s in range(n_fsm):
        top[s, :0x80] = fsm.trans[s, [fsm.key(chr(b)) for b in range(0x80)]]
        for lead in range(0xC2, 0xF5):
            r, payload, lo, hi = _utf8_next(lead)
            top[s, lead] = intermediate(s, payload, r, lo, hi)
    table = np.concatenate([top] + ([np.stack(rows)] if rows else []), axis=0)
    accepting = np.concatenate([fsm.finals, np.zeros(len(rows), bool)])
    return table, accepting


# --- keep only the states on a way to a full match ----------------------------------------------------------
def _live(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Per state: whether an accepting state can be reached from it (``table[s, v]`` = next state or -1)."""
    src, _ = np.nonzero(table >= 0)
    dst = table[table >= 0]
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    starts = np.searchsorted(dst, np.arange(len(table) + 1))
    live = accepting.copy()
    todo = list(np.flatnonzero(live))
    while todo:
        t = todo.pop()
        for s in src[starts[t]:starts[t + 1]]:
            if not live[s]:
                live[s] = True
                todo.append(s)
    return live


def _prune(table: np.ndarray, accepting: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The table with every way to a dead state removed, keeping the states reachable from 0, numbered in order."""
    table = np.where((table >= 0) & live[np.maximum(table, 0)], table, -1).astype(np.int32)
    seen = np.zeros(len(table), bool)
    seen[0], todo = True, [0]
    while todo:
        for t in np.unique(table[todo.pop()]):
            if t >= 0 and not seen[t]:
                seen[t] = True
                todo.append(int(t))
    number = np.cumsum(seen) - 1
    kept = table[seen]
    return np.where(kept >= 0, number[np.maximum(kept, 0)], -1).astype(np.int32), accepting[seen].copy()
