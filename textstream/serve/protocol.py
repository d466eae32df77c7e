"""The OpenAI completions protocol: request checks and response shapes. No TensorFlow, no HTTP library here.

``parse_completion`` turns a request body (already parsed JSON) into a
``CompletionRequest`` or raises ``ApiError`` naming the parameter, with the
status OpenAI would give (400 bad value, 404 unknown model); the HTTP layer
(``textstream.serve.app``) sends ``ApiError.body()`` as the response. The
other functions build the JSON objects OpenAI's clients expect: a
completion, a streamed chunk, the model list, an error.

Tokens are characters here: ``max_tokens`` counts generated characters and
``usage`` counts characters.

    >>> req = parse_completion({"model": "m", "prompt": "The ", "max_tokens": 5, "seed": 1}, Limits(model="m"))
    >>> req.prompts, req.max_tokens, req.n
    (['The '], 5, 1)
"""
from __future__ import annotations

import math
import numbers
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from textstream.data.vocab import Vocab

OBJECT = "text_completion"
OWNER = "textstream"


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and OpenAI's error fields (``type``, ``param``, ``code``)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The JSON of an OpenAI error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What the server accepts: its model's name and the caps on a request."""

    model: str = "textstream"
    max_tokens: int = 4096  # characters per completion, at most
    max_n: int = 16  # completions per prompt, at most
    max_prompt_chars: int = 65536
    max_stops: int = 4
    default_max_tokens: int = 16  # OpenAI's default


@dataclass(frozen=True)
class CompletionRequest:
    """A checked ``POST /v1/completions``: one completion per (prompt, i < n), seeds ``seed + index``."""

    prompts: list[str]
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    stops: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False

    @property
    def choices(self) -> int:
        """How many completions (streams) the request asks for."""
        return len(self.prompts) * self.n


# parameters OpenAI defines that this server does not implement: accepted only with their neutral value
_NEUTRAL = {"logprobs": (None, 0), "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
            "logit_bias": (None, {}), "suffix": (None, "")}
_KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
          "echo", "user", *_NEUTRAL}


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """The checked request of a completions body, or ``ApiError`` for the first problem found."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_type")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                       code="unknown_parameter")
    for name, neutral in _NEUTRAL.items():
        if name in body and not any(_same(body[name], v) for v in neutral):
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    check_model(body.get("model"), limits, required=False)
    n = _integer(body, "n", 1, 1, limits.max_n)
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options", code="invalid_type")
    include_usage = _boolean(options or {}, "include_usage", param="stream_options.include_usage")
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        raise ApiError(400, "user must be a string", param="user", code="invalid_type")
    return CompletionRequest(
        prompts=_prompts(body, limits), max_tokens=_integer(body, "max_tokens", limits.default_max_tokens, 1,
                                                              limits.max_tokens),
        temperature=_temperature(body), top_p=_top_p(body), stops=_stops(body, limits),
        seed=_integer(body, "seed", None), n=n, stream=stream, include_usage=include_usage,
        echo=_boolean(body, "echo"))


def check_model(model: Any, limits: Limits, *, required: bool = True) -> None:
    """``ApiError`` unless ``model`` names the served model (absent is fine when not ``required``)."""
    if model is None and not required:
        return
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model", code="invalid_type")
    if model != limits.model:
        raise ApiError(404, f"the model {model!r} does not exist (this server serves {limits.model!r})",
                       param="model", code="model_not_found")


def _same(value: Any, neutral: Any) -> bool:
    """``value`` is the neutral value ``neutral`` (numbers compare by value: 0 and 0.0 are the same)."""
    if neutral is None or isinstance(neutral, (dict, str)):
        return type(value) is type(neutral) and value == neutral
    return _is_number(value) and value == neutral


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _integer(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise ApiError(400, f"{name} must be an integer (got {value!r})", param=name, code="invalid_type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, f"{name} must be in [{lo}, {hi}] (got {value})", param=name, code="invalid_value")
    return int(value)


def _boolean(body: dict, name: str, *, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or name} must be a boolean (got {value!r})", param=param or name,
                       code="invalid_type")
    return value


def _temperature(body: dict) -> float:
    t = body.get("temperature")
    if t is None:
        return 1.0
    if not _is_number(t):
        raise ApiError(400, f"temperature must be a number (got {t!r})", param="temperature", code="invalid_type")
    if not math.isfinite(t) or t < 0:
        raise ApiError(400, f"temperature must be a finite number >= 0 (got {t!r}); 0 means greedy",
                       param="temperature", code="invalid_value")
    return float(t)


def _top_p(body: dict) -> float | None:
    p = body.get("top_p")
    if p is None:
        return None
    if not _is_number(p):
        raise ApiError(400, f"top_p must be a number (got {p!r})", param="top_p", code="invalid_type")
    if not 0.0 < p <= 1.0:
        raise ApiError(400, f"top_p must be in (0, 1] (got {p!r})", param="top_p", code="invalid_value")
    return None if p >= 1.0 else float(p)


def _stops(body: dict, limits: Limits) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > limits.max_stops or not all(stops):
        raise ApiError(400, f"stop must hold 1 to {limits.max_stops} non-empty strings", param="stop",
                       code="invalid_value")
    return tuple(stops)


def _prompts(body: dict, limits: Limits) -> list[str]:
    if "prompt" not in body or body["prompt"] is None:
        raise ApiError(400, "prompt is required (a string or a list of strings)", param="prompt",
                       code="missing_required_parameter")
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if isinstance(prompts, list) and prompts and (all(_is_int(x) for x in prompts) or all(
            isinstance(x, list) and all(_is_int(i) for i in x) for x in prompts)):
        raise ApiError(400, "prompts as token ids are not supported: send text", param="prompt",
                       code="unsupported_parameter")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "prompt must be a string or a non-empty list of strings", param="prompt",
                       code="invalid_type")
    if any(len(p) > limits.max_prompt_chars for p in prompts):
        raise ApiError(400, f"a prompt is longer than {limits.max_prompt_chars} characters", param="prompt",
                       code="context_length_exceeded")
    return prompts


def encode_prompts(prompts: list[str], vocab: Vocab) -> list[np.ndarray]:
    """The ids of each prompt, or ``ApiError`` listing the characters outside the vocabulary."""
    missing = sorted({ch for p in prompts for ch in vocab.unknown(vocab.normalize(p))})
    if missing and vocab.oov_id is None:
        shown = " ".join(repr(ch) for ch in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ApiError(400, f"prompt has {len(missing)} character(s) outside the model's vocabulary: {shown}",
                       param="prompt", code="invalid_value")
    return [vocab.encode(p) for p in prompts]


# --- responses -------------------------------------------------------------------------------------
def completion_id() -> str:
    """A fresh id, ``cmpl-`` and 24 hex digits."""
    return "cmpl-" + uuid.uuid4().hex[:24]


def now() -> int:
    """Unix seconds, the ``created`` field."""
    return int(time.time())


def usage(prompt_chars: int, completion_chars: int) -> dict:
    """OpenAI's ``usage`` in characters."""
    return {"prompt_tokens": prompt_chars, "completion_tokens": completion_chars,
            "total_tokens": prompt_chars + completion_chars}


def choice(index: int, text: str, finish_reason: str | None) -> dict:
    """One entry of ``choices``."""
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


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
