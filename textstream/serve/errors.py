"""The server's refusals in OpenAI's error format: ``{"error": {"message", "type", "param", "code"}}``. No HTTP library.

Every refusal the server sends is an ``ApiError``: a 4xx for a client's
mistake (the message names the parameter, header or limit), 429 / 503 when the
server is busy or stopping, 500 for a fault of the server's own (one log line,
never a traceback in the response).
"""
from __future__ import annotations

__all__ = ["ApiError", "error_body", "SHUTTING_DOWN", "ENGINE_FAILED", "INTERNAL", "http_error"]


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and OpenAI's error fields (``type``, ``param``, ``code``).

    ``close``: the connection is closed after the response (the request's
    body was not read to its end: a timeout, a broken upload).
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.close = close

    def body(self) -> dict:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The JSON of an OpenAI error."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


SHUTTING_DOWN = ApiError(503, "the server is shutting down", type="server_error", code="server_shutting_down")
ENGINE_FAILED = ApiError(503, "the generation engine failed (see the server's log)", type="server_error",
                         code="engine_error")
INTERNAL = ApiError(500, "internal server error (see the server's log)", type="server_error", code="internal_error")

_HTTP = {  # status: (message, code) for the refusals of the HTTP layer itself
    400: ("malformed HTTP request", "bad_request"),
    404: ("no such endpoint", "not_found"),
    405: ("method not allowed on this endpoint", "method_not_allowed"),
    408: ("the request did not arrive in time", "request_timeout"),
    413: ("the request body is too large", "request_too_large"),
    414: ("the request line is too long", "uri_too_long"),
    431: ("a request header is too large", "headers_too_large"),
}


def http_error(status: int, detail: str | None = None, *, allow: str | None = None) -> ApiError:
    """The OpenAI error for an HTTP-level refusal (``status`` 4xx; anything else is a 500).

    ``detail`` is added to the message; ``allow`` is the ``Allow`` header of a 405.
    """
    if not 400 <= status < 500:
        return INTERNAL
    message, code = _HTTP.get(status, ("bad request", "bad_request"))
    if detail:
        message = f"{message}: {detail}"
    return ApiError(status, message, code=code, headers={"Allow": allow} if allow else None,
                    close=status in (400, 408, 413, 414, 431))
