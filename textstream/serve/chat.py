"""Chat completions: a chat's messages made into one prompt by a plain rule, and chat's response shapes. No HTTP.

A character model has no chat template, so the rule is plain and fixed:

    prompt = "\\n".join(message.content for message in messages) + "\\n"

the messages' contents in order, each followed by a newline (the reply starts
on a line of its own); roles and names are checked but not written into the
prompt. A content is a string, or a list of ``{"type": "text", "text": ...}``
parts (joined without a separator). Everything else of the request (``n``,
``max_tokens`` or ``max_completion_tokens``, temperature, top_p, seed, stop,
stream and ``stream_options``) means what it means for ``/v1/completions``,
with the same limits; the joined prompt is what ``--max-prompt-chars`` caps.

    >>> chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    'Be brief.\\nHi\\n'
"""
from __future__ import annotations

from typing import Any

from textstream.serve.errors import ApiError
from textstream.serve.protocol import (
    SAMPLING,
    CompletionRequest,
    Limits,
    check_prompt_size,
    reject_unknown,
    sampling_fields,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
CHUNK = "chat.completion.chunk"
_NEUTRAL = {"frequency_penalty": (0,), "presence_penalty": (0,), "logprobs": (False,), "parallel_tool_calls": (True,),
            "logit_bias": ({},)}
_KNOWN = SAMPLING | {"messages", "max_completion_tokens", *_NEUTRAL}

__all__ = ["chat_prompt", "parse_chat", "chat_completion", "chat_chunk", "delta", "ROLES"]


def parse_chat(body: Any, limits: Limits) -> CompletionRequest:
    """The checked request of a chat completions body (its prompt made by ``chat_prompt``), or ``ApiError``."""
    body = reject_unknown(body, _KNOWN)
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and not any(type(value) is type(v) and value == v for v in neutral):
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens",
                       code="invalid_value")
    length = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    prompt = chat_prompt(body.get("messages"))
    check_prompt_size([prompt], limits, param="messages")
    return CompletionRequest(prompts=[prompt], **sampling_fields(body, limits, max_tokens=length))


def chat_prompt(messages: Any) -> str:
    """The prompt of a chat: each message's content followed by a newline; ``ApiError`` for a malformed message."""
    if messages is None:
        raise ApiError(400, "messages is required (a non-empty list of {role, content} objects)", param="messages",
                       code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages",
                       code="invalid_type")
    return "".join(_content(m, i) + "\n" for i, m in enumerate(messages))


def _content(message: Any, i: int) -> str:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with role and content", param=where, code="invalid_type")
    extra = sorted(set(message) - {"role", "content", "name"})
    if extra:
        raise ApiError(400, f"{where} has a field this server does not support: {extra[0][:64]!r}",
                       param=f"{where}.{extra[0][:64]}", code="unsupported_parameter")
    role = message.get("role")
    if role is None:
        raise ApiError(400, f"{where} has no role", param=f"{where}.role", code="missing_required_parameter")
    if role not in ROLES:
        raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role",
                       code="invalid_value")
    if message.get("name") is not None and not isinstance(message["name"], str):
        raise ApiError(400, f"{where}.name must be a string", param=f"{where}.name", code="invalid_type")
    if "content" not in message or message["content"] is None:
        raise ApiError(400, f"{where} has no content", param=f"{where}.content", code="missing_required_parameter")
    content = message["content"]
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        return "".join(_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
    raise ApiError(400, f"{where}.content must be a string or a non-empty list of text parts",
                   param=f"{where}.content", code="invalid_type")


def _part(part: Any, where: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) \
            or set(part) != {"type", "text"}:
        raise ApiError(400, f"{where} must be {{\"type\": \"text\", \"text\": \"...\"}}: this model reads text only",
                       param=where, code="invalid_type")
    return part["text"]


# --- responses -------------------------------------------------------------------------------------------
def chat_completion(cid: str, created: int, model: str, texts: list[str], finishes: list[str | None],
                    usage: dict) -> dict:
    """The whole ``chat.completion`` response: one choice per text, each an assistant message."""
    choices = [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None}, "logprobs": None,
                "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finishes))]
    return {"id": cid, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": choices, "usage": usage}


def chat_chunk(cid: str, created: int, model: str, choices: list[dict], usage: dict | None = None) -> dict:
    """One ``chat.completion.chunk`` (``choices``: from ``delta``; none with the usage at the end)."""
    body = {"id": cid, "object": CHUNK, "created": created, "model": model, "system_fingerprint": None,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def delta(index: int, *, content: str | None = None, role: bool = False, finish: str | None = None) -> dict:
    """One choice of a chunk: the assistant's role (first chunk), new content, or the finish reason (last)."""
    d: dict = {}
    if role:
        d["role"] = "assistant"
    if content is not None:
        d["content"] = content
    return {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}
