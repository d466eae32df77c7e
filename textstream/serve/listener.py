"""The listening socket and its accept loop: running out of file descriptors handled, not logged per attempt.

``Listener`` replaces aiohttp's ``TCPSite`` (and asyncio's own accept loop,
whose retry after ``EMFILE`` logs a traceback per attempt and, once the
socket is closed, a traceback per pending retry). It accepts connections
itself (``loop.add_reader`` on a non-blocking socket) and hands each to a
``textstream.serve.connections.Guard`` around an aiohttp handler.

When ``accept`` fails for want of resources (``EMFILE``, ``ENFILE``,
``ENOBUFS``, ``ENOMEM``):

* one warning line per burst (errors less than ``BURST_GAP_S`` apart are one
  burst), never a traceback;
* accepting pauses and resumes after a back-off (0.05 s, doubling to 1 s,
  back to 0.05 s once a connection is accepted again);
* one descriptor kept in reserve is freed to accept one waiting connection,
  which gets a ``Refusal``: ``GET /health`` is answered, anything else gets a
  503 (``too_many_descriptors``) instead of waiting in the backlog; the
  reserve is taken again once that connection is closed.

Connections already open keep being served throughout.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from typing import Any, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from textstream.serve.connections import Guard, Handler, Refusal

log = logging.getLogger("textstream.serve")

BURST_GAP_S = 10.0  # accept errors closer than this are one burst (one log line)
BACKOFF_S = (0.05, 1.0)  # the first pause after an accept error, and the longest
ACCEPT_BATCH = 64  # connections accepted per wake-up at most (the loop's other work goes on between)
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

__all__ = ["Listener", "Health"]

Health = Callable[[], "tuple[int, dict]"]  # (status, body) of GET /health, for refused connections


class Listener:
    """A listening socket over an aiohttp runner: accept loop, connection cap, read deadlines (see the module).

    ``open`` maps each served connection's transport to its guard;
    ``health()`` answers ``/health`` on refused connections; ``on_refused(reason)``
    is called for each connection refused with a 503.
    """

    def __init__(self, runner: web.BaseRunner, *, max_connections: int, read_timeout_s: float, health: Health,
                 handler_options: dict[str, Any] | None = None, on_refused: Callable[[str], None] | None = None):
        self.runner = runner
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.health = health
        self.on_refused = on_refused or (lambda reason: None)
        self.handler_options = {"keepalive_timeout": read_timeout_s, "access_log": None, "lingering_time": 1.0,
                                **(handler_options or {})}
        self.open: dict[asyncio.BaseTransport, Guard] = {}
        self.refusals: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._reserve: int | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._backoff = BACKOFF_S[0]
        self._burst_last = 0.0
        self._burst_errors = 0
        self._pending: set[asyncio.Task] = set()

    async def start(self, host: str, port: int, backlog: int = 1024) -> tuple[str, int]:
        """Listen on ``host:port`` (0: a free port).

        Returns:
            ``(host, port)`` bound.

        Raises:
            OSError: the address cannot be resolved or bound.
        """
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, *_, address = infos[0]
        sock = socket.create_server(address[:2] if family == socket.AF_INET else address, family=family,
                                    backlog=backlog)
        sock.setblocking(False)
        self._sock = sock
        self._take_reserve()
        loop.add_reader(sock.fileno(), self._accept)
        bound = sock.getsockname()
        return bound[0], bound[1]

    def close(self) -> None:
        """Stop listening (new connections are refused by the OS); open connections go on."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def guard(self, transport: asyncio.BaseTransport | None) -> Guard | None:
        """The guard of a served connection (None once it is gone)."""
        return self.open.get(transport) if transport is not None else None

    def handler(self) -> RequestHandler:
        """A new aiohttp request handler for one connection."""
        return Handler(self.runner.server, loop=self._loop, **self.handler_options)

    def refused(self, reason: str) -> None:
        """A connection was refused with a 503 (``reason``: "connections" or "descriptors")."""
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.on_refused(reason)

    # --- the accept loop -----------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._sock is None:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                self._accept_failed(e)
                return
            self._accepted()
            self._serve(conn, lambda: Guard(self))

    def _serve(self, conn: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._loop.connect_accepted_socket(factory, sock=conn))
        self._pending.add(task)
        task.add_done_callback(lambda t: self._connected(t, conn))

    def _connected(self, task: asyncio.Task, conn: socket.socket) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.debug("a connection could not be set up: %s", task.exception())
            conn.close()

    def _accepted(self) -> None:
        self._backoff = BACKOFF_S[0]
        if self._burst_errors:
            log.info("accepting connections again after %d failed attempts", self._burst_errors)
            self._burst_errors = 0

    def _accept_failed(self, e: OSError) -> None:
        """Out of descriptors (or another accept error): one line per burst, a 503 for one client, a pause."""
        now = time.monotonic()
        if now - self._burst_last > BURST_GAP_S:
            log.warning("cannot accept connections (%s, %d open): pausing accepts (back-off up to %gs) and "
                        "answering with 503s; more such errors in this burst are not logged",
                        e.strerror or e, len(self.open), BACKOFF_S[1])
        self._burst_last = now
        self._burst_errors += 1
        if e.errno in OUT_OF_RESOURCES:
            self._refuse_one()
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(self._backoff, self._resume_accepting)
        self._backoff = min(BACKOFF_S[1], self._backoff * 2)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None:
            self._take_reserve()
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _refuse_one(self) -> None:
        """Free the reserve descriptor to accept one waiting connection and answer it with a ``Refusal``."""
        if self._reserve is None:
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _ = self._sock.accept()
        except OSError:
            self._take_reserve()
            return
        self._serve(conn, lambda: Refusal(self, "descriptors", on_close=self._take_reserve))

    def _take_reserve(self) -> None:
        if self._reserve is None and self._sock is not None:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY)
            except OSError:  # none free right now: the next resume tries again
                pass
