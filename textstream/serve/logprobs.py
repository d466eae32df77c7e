"""Per-character log-probabilities of a completion, in OpenAI's completions format (``logprobs``). No HTTP here.

``CharLogprobs`` follows one choice: given the text generated so far, it
returns the ``logprobs`` object of the new part, ``{"tokens",
"token_logprobs", "top_logprobs", "text_offset"}``, one token per character:
the natural log of the model's probability of each character given every
character before it (the model's own distribution, before temperature and
top-p), and its ``top`` likeliest characters with theirs. With ``echo`` the
prompt's characters come first, the first one's logprob null (nothing
precedes it), as OpenAI does.

The values come from the backend's ``logits`` over the choice's whole text
(prompt and generated characters, fed from the model's start state), padded
to a power of two so that a compiling backend compiles few shapes; each
update recomputes from the start, which is why ``logprobs`` requests are
capped at ``MAX_LOGPROB_CHARS`` characters (``textstream.serve.protocol``).
Character vocabularies only: a byte-level model's tokens are not characters.

    >>> softmax_log(np.array([[0.0, 0.0]], np.float32)).round(4).tolist()
    [[-0.6931, -0.6931]]
"""
from __future__ import annotations

import numpy as np

from textstream.data.vocab import Vocab
from textstream.generation.interface import StepBackend

__all__ = ["CharLogprobs", "softmax_log"]


def softmax_log(logits: np.ndarray) -> np.ndarray:
    """``log(softmax(logits))`` over the last axis, in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class CharLogprobs:
    """The ``logprobs`` of one choice's characters, update by update (see the module)."""

    def __init__(self, backend: StepBackend, vocab: Vocab, prompt_ids: np.ndarray, top: int, *,
                 echo: str | None = None):
        self.backend, self.vocab, self.top = backend, vocab, top
        self.ids = np.asarray(prompt_ids, np.int64)
        self.offset = 0  # characters of the choice's text before the next update
        self.echo = echo

    def prompt(self) -> dict:
        """The echoed prompt's ``logprobs`` (the first character's logprob null)."""
        ids = self.vocab.encode(self.echo)
        out = self._logprobs(ids, 0, len(ids), first_null=True)
        self.offset = len(self.echo)
        return out

    def extend(self, text: str) -> dict:
        """The ``logprobs`` of ``text``, the characters generated since the last call."""
        new = self.vocab.encode(text) if text else np.zeros(0, np.int64)
        start = len(self.ids)
        self.ids = np.concatenate([self.ids, new])
        out = self._logprobs(self.ids, start, len(self.ids))
        return out

    def _logprobs(self, ids: np.ndarray, start: int, end: int, first_null: bool = False) -> dict:
        tokens, chosen, tops, offsets = [], [], [], []
        if end > start:
            size = 1 << max(0, int(end - 1).bit_length())  # a power of two >= end (padding only follows)
            padded = np.zeros(size, np.int64)
            padded[:end] = ids[:end]
            logits = self.backend.logits(padded[None, :])[0]  # logits[t]: the next character after ids[t]
            for t in range(start, end):
                ch = self.vocab.decode(ids[t:t + 1])
                tokens.append(ch)
                offsets.append(self.offset)
                self.offset += len(ch)
                if t == 0:  # nothing before the first character of the text
                    chosen.append(None)
                    tops.append(None if first_null else {})
                    continue
                lp = softmax_log(logits[t - 1])
                chosen.append(round(float(lp[ids[t]]), 6))
                best = np.argsort(-lp, kind="stable")[:self.top] if self.top else []
                tops.append({self.vocab.decode(np.array([i])): round(float(lp[i]), 6) for i in best})
        return {"tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets}
