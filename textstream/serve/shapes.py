"""OpenAI's completions response shapes: a completion, a streamed chunk, usage, the model list. No HTTP here.

Tokens are characters: ``usage`` counts characters.

    >>> usage(4, 5)
    {'prompt_tokens': 4, 'completion_tokens': 5, 'total_tokens': 9}
"""
from __future__ import annotations

import json
import time
import uuid

OBJECT = "text_completion"
OWNER = "textstream"

__all__ = ["completion_id", "now", "usage", "choice", "completion", "model_card", "model_list", "sse", "DONE"]

DONE = b"data: [DONE]\n\n"


def completion_id(prefix: str = "cmpl-") -> str:
    """A fresh id, ``prefix`` and 24 hex digits."""
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    """Unix seconds, the ``created`` field."""
    return int(time.time())


def usage(prompt_chars: int, completion_chars: int) -> dict:
    """OpenAI's ``usage`` in characters."""
    return {"prompt_tokens": prompt_chars, "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars}


def choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None, **extra) -> dict:
    """One entry of ``choices`` (``extra``: fields beyond OpenAI's, e.g. ``state``)."""
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason, **extra}


def completion(cid: str, created: int, model: str, choices: list[dict], usage_: dict | None) -> dict:
    """A completion (the whole response, or one streamed chunk with ``usage_`` None)."""
    body = {"id": cid, "object": OBJECT, "created": created, "model": model, "system_fingerprint": None,
            "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def model_card(model: str, created: int) -> dict:
    """One entry of ``GET /v1/models``."""
    return {"id": model, "object": "model", "created": created, "owned_by": OWNER}


def model_list(model: str, created: int) -> dict:
    """``GET /v1/models``: the one model this server serves."""
    return {"object": "list", "data": [model_card(model, created)]}


def sse(obj: dict) -> bytes:
    """One server-sent event holding ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"
