"""Shared helpers of the server's tests (``tests/test_serve*.py``): a server in a thread, requests, raw sockets.

``ServerThread(gen, **config)`` runs a ``Server`` on an ephemeral port with
its event loop in a thread of its own; ``post`` sends JSON (or raw bytes) and
returns the status, headers and JSON body (asserting no traceback leaked);
``raw`` speaks HTTP over a socket for what ``urllib`` cannot send.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import openai

from textstream.serve.app import ServeConfig, Server
from textstream.serve.protocol import Limits

PRIME = "it was the "
KEY = "sekret"
MODEL = "tiny"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 60  # generous deadlines for conditions polled (never asserted as timings)
GOOD = {"model": MODEL, "prompt": PRIME, "max_tokens": 5}


class ServerThread:
    """A ``Server`` on an ephemeral port, its event loop in a thread of its own."""

    def __init__(self, gen, **config):
        limits = Limits(model=MODEL, max_tokens=config.pop("max_tokens", 20000), max_n=4,
                        **config.pop("limits", {}))
        self.server = Server(gen, ServeConfig(port=0, limits=limits, **config))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _, self.port = self.call(self.server.start())
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro, timeout=WAIT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, **kw)

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=WAIT_S) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def metrics(self) -> str:
        req = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.read().decode()

    def wait_until(self, predicate) -> None:
        deadline = time.monotonic() + WAIT_S
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.02)

    def close(self):
        if not self.server.draining:
            self.call(self.server.drain(grace_s=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)


class SlowBackend:
    """A backend whose every call takes at least ``delay`` seconds: a stream runs long enough to be caught running."""

    def __init__(self, backend, delay: float):
        self.backend, self.delay = backend, delay

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def advance_rows(self, rows, k, feed=None):
        time.sleep(self.delay)
        return self.backend.advance_rows(rows, k, feed)

    def advance_rows_logprobs(self, rows, k, top, feed=None):  # the engine's call for streams with logprobs
        time.sleep(self.delay)
        return self.backend.advance_rows_logprobs(rows, k, top, feed)


class BrokenBackend(SlowBackend):
    """A backend whose calls fail after the first ``good`` ones."""

    def __init__(self, backend, good: int):
        super().__init__(backend, 0.0)
        self.good = good

    def advance_rows(self, rows, k, feed=None):
        self.good -= 1
        if self.good < 0:
            raise RuntimeError("the device fell over")
        return self.backend.advance_rows(rows, k, feed)

    def advance_rows_logprobs(self, rows, k, top, feed=None):
        self.good -= 1
        if self.good < 0:
            raise RuntimeError("the device fell over")
        return self.backend.advance_rows_logprobs(rows, k, top, feed)


def expected(gen, prompt, n, **kw) -> str:
    """What the library streams for the same request: the server must send exactly this."""
    return "".join(gen.stream(prompt, n=n, **kw))


def post(url, body, *, key=KEY, raw=None, headers=None):
    """``(status, headers, JSON body)`` of a POST (``raw``: bytes sent as they are)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        assert "Traceback" not in text
        return e.code, dict(e.headers), json.loads(text)



def complete(srv, path="/v1/completions", **body) -> dict:
    """A (chat) completion's JSON, asserting a 200."""
    status, _, r = post(srv.url + path, {"model": MODEL, **body})
    assert status == 200, r
    return r


def stream_chunks(srv, **body) -> list[dict]:
    """The chunks of a streamed completion (the JSON of each ``data:`` event before ``[DONE]``)."""
    req = urllib.request.Request(srv.url + "/v1/completions", method="POST",
                                 data=json.dumps({"model": MODEL, "stream": True, **body}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        events = [line[6:] for line in r.read().decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]

def is_openai_error(body) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


def raw(port: int, data: bytes, *, timeout: float = WAIT_S) -> bytes:
    """Everything the server sends back on a fresh connection after ``data``, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    """Read until the peer closes (``socket.timeout`` if it never does within the socket's timeout)."""
    out = []
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        out.append(part)
    return b"".join(out)


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one raw HTTP/1.1 response (a chunked body is joined)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = [], body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out.append(rest[:n])
            rest = rest[n + 2:]
        body = b"".join(out)
    return status, headers, body


def request_bytes(path: str, body: bytes, *, method: str = "POST", key: str | None = KEY,
                  extra: bytes = b"") -> bytes:
    """One HTTP/1.1 request with ``Connection: close`` (``extra``: more raw header lines, each ending CRLF)."""
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + auth + extra + b"\r\n" + body


def run_engine(engine, specs, timeout: float = WAIT_S) -> tuple[list[str], list]:
    """Admit ``specs`` to a started ``Engine`` and read every stream to its end: ``(texts, streams)``."""
    streams = engine.admit(specs)
    texts = [""] * len(streams)
    deadline = time.monotonic() + timeout
    while True:
        finished = all(s.done for s in streams)  # read after: the last text is in the buffer by then
        for i, s in enumerate(streams):
            texts[i] += s.take()[0]
        if finished:
            return texts, streams
        assert time.monotonic() < deadline, "the streams did not finish"
        time.sleep(0.002)
