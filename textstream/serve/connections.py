"""One client connection: its guard (connection cap, head deadline), its refusal, its HTTP handler (aiohttp).

``Guard`` wraps each accepted connection's aiohttp ``RequestHandler`` and
enforces what aiohttp leaves open:

* **a cap on open connections**: a connection past ``max_connections`` gets
  no handler but a ``Refusal``: it reads the request's head (briefly), answers
  ``GET /health`` with the health JSON and anything else with a 503 OpenAI
  error (``code: too_many_connections``, ``Retry-After``), and closes;
* **a head deadline** (``read_timeout_s``): a connection with no request in
  progress (just opened, idle between requests, or still sending a request's
  line and headers) is closed after ``read_timeout_s``; the body has its own
  deadline, applied where it is read (``textstream.serve.routes``). The
  middleware tells the guard when a request starts and ends (``started`` /
  ``ended``), which stops the deadline while a request (a long stream) runs;
* **malformed HTTP** (a bad request line, oversized headers, a broken chunked
  body) is answered by ``Handler`` in OpenAI's error format (400, 431) and
  logged on one debug line, never as a traceback.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from textstream.serve.errors import ApiError, error_body, http_error

log = logging.getLogger("textstream.serve")

REFUSAL_S = 1.0  # how long a refused connection may take to send its request's head

__all__ = ["Guard", "Refusal", "Handler", "error_response"]


class Guard(asyncio.Protocol):
    """One connection: its aiohttp handler (or a refusal past the cap) and its head deadline."""

    def __init__(self, listener):
        self.listener = listener  # a textstream.serve.listener.Listener
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.busy = 0  # requests in progress
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        self.transport = transport
        if len(listener.open) >= listener.max_connections:
            self.inner = Refusal(listener, "connections")
            self.inner.connection_made(transport)
            return
        listener.open[transport] = self
        self.inner = listener.handler()
        self.inner.connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.open.pop(self.transport, None)
        self._disarm()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # --- the head deadline -------------------------------------------------------------------------------
    def started(self) -> None:
        """A request's head has arrived and its handler runs: no deadline while it is in progress."""
        self.busy += 1
        self._disarm()

    def ended(self) -> None:
        """A request is answered: the next one's head must arrive within the deadline."""
        self.busy = max(0, self.busy - 1)
        if not self.busy and self.transport is not None and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.listener.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self.busy and self.transport is not None:
            log.debug("closing a connection that sent no complete request head in %gs", self.listener.read_timeout_s)
            self.transport.close()


class Refusal(asyncio.Protocol):
    """A connection refused (``reason``: "connections" past the cap, "descriptors" when the process has none
    left): read its request's head (briefly), answer ``/health`` or a 503, close; ``on_close`` when gone."""

    def __init__(self, listener, reason: str, on_close: Callable[[], None] | None = None):
        self.listener, self.reason, self.on_close = listener, reason, on_close
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_S, self.answer)

    def data_received(self, data: bytes) -> None:
        self.head += data[:8192]
        if b"\r\n\r\n" in self.head or b"\n\n" in self.head or len(self.head) >= 8192:
            self.answer()

    def eof_received(self) -> bool:
        self.answer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.on_close is not None:
            self.on_close()

    def answer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is None or self.transport.is_closing():
            return
        headers: dict[str, str] = {}
        if self.head.startswith((b"GET /health ", b"GET /health?")):
            status, body = self.listener.health()
        else:
            status, headers = 503, {"Retry-After": "1"}
            if self.reason == "connections":
                message = (f"the server has {self.listener.max_connections} connections open, its limit "
                           f"(--max-connections): retry shortly")
            else:
                message = "the server is out of file descriptors (ulimit -n): retry shortly"
            body = error_body(message, type="server_error", code=f"too_many_{self.reason}")
            self.listener.refused(self.reason)
        self.transport.write(_raw_response(status, body, headers))
        self.transport.close()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


class Handler(RequestHandler):
    """aiohttp's request handler whose own refusals (malformed HTTP, oversized headers) are OpenAI errors."""

    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response has begun: nothing more can be said on this connection
            raise ConnectionError("the response had started")
        if isinstance(exc, ConnectionError):  # the client went away (e.g. as its stream's headers were written)
            raise exc
        if isinstance(exc, LineTooLong):
            status = 431
        if status >= 500:
            log.error("internal error in the HTTP layer: %s: %s", type(exc).__name__, exc)
            error = http_error(status)
        else:
            log.debug("refused a malformed HTTP request: %s", message or exc)
            error = http_error(status, _detail(message or (exc and str(exc)) or ""))
        resp = web.json_response(error.body(), status=error.status, headers=error.headers)
        resp.force_close()
        return resp


def _detail(message: str) -> str:
    """aiohttp's description of a malformed request, on one short line."""
    line = " ".join(str(message).split())
    return line if len(line) <= 200 else line[:200] + "..."


def _raw_response(status: int, body: dict, headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}.get(status, "Error")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def error_response(e: ApiError) -> web.Response:
    """The aiohttp response of an ``ApiError`` (closing the connection when the error asks it)."""
    resp = web.json_response(e.body(), status=e.status, headers=e.headers)
    if e.close:
        resp.force_close()
    return resp

