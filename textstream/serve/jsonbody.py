"""A request body read as strict JSON: every way a body can be malformed is an ``ApiError`` (400), never a fault.

``parse_json`` accepts only what a client of OpenAI's API sends: UTF-8 (no
BOM, no UTF-16), one JSON value nested at most ``MAX_DEPTH`` deep, no
``NaN`` / ``Infinity`` literals, numbers that fit a 64-bit integer or a
finite double, no duplicate keys in an object, no unpaired surrogate
escapes (``"\\ud800"``) in a string. What comes out is plain ``dict`` /
``list`` / ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` that any later
check can walk without surprises.

    >>> parse_json(b'{"prompt": "The ", "max_tokens": 5}')
    {'prompt': 'The ', 'max_tokens': 5}
    >>> parse_json(b'{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    textstream.serve.errors.ApiError: the JSON body has the key 'a' twice in one object
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from textstream.serve.errors import ApiError

MAX_DEPTH = 32  # arrays and objects inside each other, at most (chat messages with content parts need 5)
MAX_INT = 2 ** 63 - 1  # integers outside [-2**63, 2**63 - 1] are refused (OpenAI's seed is an int64)

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def parse_json(raw: bytes) -> Any:
    """The JSON value of ``raw`` or ``ApiError`` (400, code ``invalid_json``) saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid(f"the request body is not UTF-8 (byte {e.start})") from None
    if text.startswith("\ufeff"):
        raise _invalid("the request body starts with a byte-order mark: send plain UTF-8")
    depth = _depth(raw)
    if depth > MAX_DEPTH:
        raise _invalid(f"the JSON body is nested {depth} levels deep (at most {MAX_DEPTH})")
    try:
        value = json.loads(text, parse_constant=_constant, parse_int=_int, parse_float=_float,
                           object_pairs_hook=_object)
    except ApiError:
        raise
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise _invalid(f"could not parse the JSON body of the request ({_reason(e)})") from None
    _check_strings(value)
    return value


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_json")


def _reason(e: Exception) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else "too deeply nested"


def _depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw`` (strings removed first: brackets in them do not count)."""
    bare = np.frombuffer(_STRING.sub(b"", raw), np.uint8)
    if not bare.size:
        return 0
    step = np.isin(bare, (0x5B, 0x7B)).astype(np.int64) - np.isin(bare, (0x5D, 0x7D))
    return int(np.cumsum(step).max(initial=0))


def _constant(name: str):
    raise _invalid(f"{name} is not a JSON number: send a finite number")


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > 19 or not -MAX_INT - 1 <= int(digits) <= MAX_INT:
        raise _invalid(f"the number {_short(digits)} is out of range (integers fit in 64 bits)")
    return int(digits)


def _float(text: str) -> float:
    if len(text) > 64:
        raise _invalid(f"the number {_short(text)} is too long")
    value = float(text)
    if not math.isfinite(value):
        raise _invalid(f"the number {_short(text)} is out of range (numbers are finite doubles)")
    return value


def _short(text: str) -> str:
    return text if len(text) <= 24 else text[:20] + "..."


def _object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _invalid(f"the JSON body has the key {_short(key)!r} twice in one object")
        out[key] = value
    return out


def _check_strings(value: Any) -> None:
    """``ApiError`` if a string or key holds an unpaired surrogate (an escape such as ``\\ud800`` alone)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            _encodable(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                _encodable(k)
                todo.append(item)
        elif isinstance(v, list):
            todo.extend(v)


def _encodable(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("a string in the JSON body holds an unpaired surrogate escape (\\ud800-\\udfff)") from None
