"""OpenAI completions requests checked: every field's type, range and size, before anything uses it. No HTTP here.

``parse_completion`` turns a request body (JSON already parsed by
``textstream.serve.jsonbody``) into a ``CompletionRequest`` or raises
``ApiError`` naming the parameter, with the status OpenAI would give (400 bad
value, 404 unknown model). The checks of the sampling parameters are shared
with chat completions (``textstream.serve.chat``): ``sampling_fields``.

Tokens are characters here: ``max_tokens`` counts generated characters (0 is
allowed with ``echo`` or ``return_state``: the prompt is only fed, scored or saved).
Beyond OpenAI's fields (as vLLM and llama.cpp take extra body fields):
``regex`` (completions and chat) constrains the generated text, as
``Generator.stream(regex=...)`` does; ``state`` continues a saved session and
``return_state`` returns each choice's (``textstream.serve.state``).
Sizes are capped by ``Limits``: a prompt at most ``max_prompt_chars``
characters, at most ``max_stops`` stop strings of at most ``max_stop_chars``
each (the whole body is capped first, at ``--max-body-bytes``).

    >>> req = parse_completion({"model": "m", "prompt": "The ", "max_tokens": 5, "seed": 1}, Limits(model="m"))
    >>> req.prompts, req.max_tokens, req.n
    (['The '], 5, 1)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from textstream.data.vocab import Vocab
from textstream.serve.errors import ApiError
from textstream.serve.state import decode_state

__all__ = ["Limits", "CompletionRequest", "parse_completion", "check_model", "encode_prompts", "sampling_fields",
           "reject_unknown", "integer", "boolean", "check_prompt_size", "SAMPLING", "NEUTRAL"]


@dataclass(frozen=True)
class Limits:
    """What the server accepts: its model's name and the caps on a request."""

    model: str = "textstream"
    max_tokens: int = 4096  # characters per completion, at most
    max_n: int = 16  # completions per prompt, at most
    max_prompt_chars: int = 262144  # characters in one prompt (or one chat's messages together), at most
    max_stops: int = 4
    max_stop_chars: int = 256  # characters in one stop string, at most
    default_max_tokens: int = 16  # OpenAI's default


@dataclass(frozen=True)
class CompletionRequest:
    """A checked completions (or chat) request: one completion per (prompt, i < n), seeds ``seed + index``."""

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
    logprobs: int | None = None  # alternatives per character (0-5) in OpenAI's completions logprobs; None: none
    regex: str | None = None  # the generated text is a prefix of a full match (textstream.generation.constraint)
    state: bytes | None = None  # a saved session to continue (textstream.serve.state), its prompt fed on top
    return_state: bool = False  # each choice also carries its state
    explicit: frozenset = frozenset()  # which of temperature and top_p the body gave (a state's are kept otherwise)

    @property
    def choices(self) -> int:
        """How many completions (streams) the request asks for."""
        return len(self.prompts) * self.n


# parameters OpenAI defines that this server does not implement: accepted only with their neutral value
NEUTRAL = {"best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
           "logit_bias": (None, {})}
MAX_LOGPROBS = 5  # OpenAI's cap on completions' logprobs
MAX_LOGPROB_CHARS = 1 << 16  # characters of an echoed prompt scored with logprobs, at most (the response's size)
MAX_REGEX_CHARS = 4096
SAMPLING = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options", "user",
            "regex"}
_KNOWN = SAMPLING | {"prompt", "echo", "suffix", "logprobs", "state", "return_state", *NEUTRAL}


def parse_completion(body: Any, limits: Limits) -> CompletionRequest:
    """The checked request of a completions body, or ``ApiError`` for the first problem found."""
    body = reject_unknown(body, _KNOWN)
    for name, neutral in {**NEUTRAL, "suffix": (None, "")}.items():
        if name in body and not any(_same(body[name], v) for v in neutral):
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    state = decode_state(body["state"]) if body.get("state") is not None else None
    req = CompletionRequest(prompts=_prompts(body, limits, optional=state is not None), echo=boolean(body, "echo"),
                            logprobs=integer(body, "logprobs", None, 0, MAX_LOGPROBS), state=state,
                            return_state=boolean(body, "return_state"), **sampling_fields(body, limits))
    if req.logprobs is not None and req.echo and max(map(len, req.prompts)) > MAX_LOGPROB_CHARS:
        raise ApiError(400, f"with echo and logprobs, a prompt may hold at most {MAX_LOGPROB_CHARS} characters "
                            f"(each is sent back with its logprobs)", param="logprobs", code="invalid_value")
    if req.logprobs is not None and req.regex is not None:
        raise ApiError(400, "regex and logprobs cannot be asked together (the constrained step does not record "
                            "log-probabilities)", param="regex", code="unsupported_parameter")
    return req


def reject_unknown(body: Any, known: set[str]) -> dict:
    """``body`` if it is a JSON object of ``known`` fields only, else ``ApiError`` naming the first other one."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_type")
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {_shown(unknown[0])}", param=unknown[0][:64],
                       code="unknown_parameter")
    return body


def sampling_fields(body: dict, limits: Limits, *, max_tokens: str = "max_tokens") -> dict:
    """The checked ``SAMPLING`` fields of ``body`` as ``CompletionRequest`` keywords (``max_tokens``: the field
    that holds the length, e.g. chat's ``max_completion_tokens``)."""
    check_model(body.get("model"), limits, required=False)
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options", code="invalid_type")
        extra = sorted(set(options) - {"include_usage"})
        if extra:
            raise ApiError(400, f"stream_options has an unknown field: {_shown(extra[0])}", param="stream_options",
                           code="unknown_parameter")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(400, "user must be a string", param="user", code="invalid_type")
    fewest = 0 if body.get("echo") is True or body.get("return_state") is True else 1  # 0: feed (score, save) only
    return dict(max_tokens=integer(body, max_tokens, limits.default_max_tokens, fewest, limits.max_tokens),
                temperature=_temperature(body), top_p=_top_p(body), stops=_stops(body, limits),
                seed=integer(body, "seed", None), n=integer(body, "n", 1, 1, limits.max_n),
                stream=boolean(body, "stream"),
                include_usage=boolean(options or {}, "include_usage", param="stream_options.include_usage"),
                regex=_regex(body), explicit=frozenset(k for k in ("temperature", "top_p") if body.get(k) is not None))


def _regex(body: dict) -> str | None:
    """The ``regex`` field: a pattern (compiled later, ``Server.constraint``), or None."""
    pattern = body.get("regex")
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise ApiError(400, f"regex must be a string (got {_value(pattern)})", param="regex", code="invalid_type")
    if not pattern or len(pattern) > MAX_REGEX_CHARS:
        raise ApiError(400, f"regex must hold 1 to {MAX_REGEX_CHARS} characters", param="regex", code="invalid_value")
    return pattern


def check_model(model: Any, limits: Limits, *, required: bool = True) -> None:
    """``ApiError`` unless ``model`` names the served model (absent is fine when not ``required``)."""
    if model is None and not required:
        return
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", param="model", code="invalid_type")
    if model != limits.model:
        raise ApiError(404, f"the model {_shown(model)} does not exist (this server serves {limits.model!r})",
                       param="model", code="model_not_found")


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut to 64 characters."""
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _same(value: Any, neutral: Any) -> bool:
    """``value`` is the neutral value ``neutral`` (numbers compare by value: 0 and 0.0 are the same)."""
    if neutral is None or isinstance(neutral, (dict, str)):
        return type(value) is type(neutral) and value == neutral
    return _is_number(value) and value == neutral


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def integer(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
    """The integer field ``name`` of ``body`` (``default`` when absent or null), checked against ``[lo, hi]``."""
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise ApiError(400, f"{name} must be an integer (got {_value(value)})", param=name, code="invalid_type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, f"{name} must be in [{lo}, {hi}] (got {value})", param=name, code="invalid_value")
    return int(value)


def boolean(body: dict, name: str, *, param: str | None = None) -> bool:
    """The boolean field ``name`` of ``body`` (False when absent or null)."""
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{param or name} must be a boolean (got {_value(value)})", param=param or name,
                       code="invalid_type")
    return value


def _value(value: Any) -> str:
    """A value for a message: short, and never the whole of a big one."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def _temperature(body: dict) -> float:
    t = body.get("temperature")
    if t is None:
        return 1.0
    if not _is_number(t):
        raise ApiError(400, f"temperature must be a number (got {_value(t)})", param="temperature",
                       code="invalid_type")
    if not math.isfinite(t) or not 0 <= t <= 100:
        raise ApiError(400, f"temperature must be in [0, 100] (got {t!r}); 0 means greedy",
                       param="temperature", code="invalid_value")
    return float(t)


def _top_p(body: dict) -> float | None:
    p = body.get("top_p")
    if p is None:
        return None
    if not _is_number(p):
        raise ApiError(400, f"top_p must be a number (got {_value(p)})", param="top_p", code="invalid_type")
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
    if any(len(s) > limits.max_stop_chars for s in stops):
        raise ApiError(400, f"a stop string is longer than {limits.max_stop_chars} characters", param="stop",
                       code="invalid_value")
    return tuple(stops)


def _prompts(body: dict, limits: Limits, optional: bool = False) -> list[str]:
    if optional and body.get("prompt") is None:  # a state continued as it is
        return [""]
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
    check_prompt_size(prompts, limits)
    return prompts


def check_prompt_size(prompts: list[str], limits: Limits, param: str = "prompt") -> None:
    """``ApiError`` (400, ``context_length_exceeded``) when a prompt is over ``max_prompt_chars``."""
    longest = max(map(len, prompts), default=0)
    if longest > limits.max_prompt_chars:
        raise ApiError(400, f"a prompt has {longest} characters, more than this server's limit of "
                            f"{limits.max_prompt_chars} (--max-prompt-chars)", param=param,
                       code="context_length_exceeded")


def encode_prompts(prompts: list[str], vocab: Vocab, param: str = "prompt") -> list[np.ndarray]:
    """The ids of each prompt, or ``ApiError`` listing the characters outside the vocabulary."""
    missing = sorted({ch for p in prompts for ch in vocab.unknown(vocab.normalize(p))})
    if missing and vocab.oov_id is None:
        shown = " ".join(repr(ch) for ch in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ApiError(400, f"{param} has {len(missing)} character(s) outside the model's vocabulary: {shown}",
                       param=param, code="invalid_value")
    return [vocab.encode(p) for p in prompts]
