"""The HTTP layer: aiohttp routes over an ``Engine``, OpenAI's JSON responses and server-sent events.

Routes: ``POST /v1/completions`` (streaming or not), ``GET /v1/models``,
``GET /v1/models/{model}``, ``GET /health``. Every refusal is an OpenAI error
object (``{"error": {"message", "type", "param", "code"}}``) with a 4xx
status (503 while shutting down); an unexpected fault is a 500 with the same
shape and no traceback (the traceback goes to the ``textstream.serve`` logger).

The engine runs in its own thread; after each of its calls it wakes, through
``loop.call_soon_threadsafe``, the handlers whose streams have new text. A
handler takes all the text waiting for its streams and writes it: one
server-sent event per choice, or one JSON at the end. A client that goes away
cancels its handler (aiohttp's ``handler_cancellation``), which cancels its
streams in the engine and frees their slots.

    server = Server(Generator.load("runs/default"), ServeConfig(port=0))
    host, port = await server.start()
    ...
    await server.drain()          # stop accepting, let streams finish (grace), cancel the rest
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from aiohttp import web

from textstream.generation.generator import Generator
from textstream.generation.sampling import stream_seeds
from textstream.serve.engine import CALL_S, Engine, EngineClosed, EngineFull
from textstream.serve.protocol import (
    ApiError,
    CompletionRequest,
    Limits,
    check_model,
    choice,
    completion,
    completion_id,
    encode_prompts,
    model_card,
    model_list,
    now,
    parse_completion,
    usage,
)
from textstream.serve.stream import BUFFER_CHARS, Stream, StreamSpec

log = logging.getLogger("textstream.serve")

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
SHUTTING_DOWN = ApiError(503, "the server is shutting down", type="server_error", code="server_shutting_down")
ENGINE_FAILED = ApiError(503, "the generation engine failed (see the server's log)", type="server_error",
                         code="engine_error")


@dataclass
class ServeConfig:
    """How the server listens and what it accepts (``limits``: the model's name and the caps on a request)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = 256
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 1 << 20
    grace_s: float = 10.0  # on shutdown: how long running streams may take to finish
    retry_after_s: int = 1
    buffer_chars: int = BUFFER_CHARS
    call_s: float = CALL_S


class Server:
    """The aiohttp application over an ``Engine`` for a ``Generator``'s model: start, serve, drain."""

    def __init__(self, generator: Generator, config: ServeConfig):
        self.generator = generator
        self.config = config
        self.engine = Engine(generator.backend, generator.vocab, max_streams=config.max_streams,
                             buffer_chars=config.buffer_chars, call_s=config.call_s, notify=self._notify)
        self.created = now()
        self.draining = False
        self._events: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    def warm(self) -> None:
        """Run the backend once for every batch size up to ``max_streams`` (compiles now, not mid-service).

        Also reads the validation text that empty prompts draw their prime from.
        """
        self.engine.warm()
        self.generator.default_prime(0)

    # --- lifecycle -------------------------------------------------------------------------------
    def application(self) -> web.Application:
        """The aiohttp application (routes, error middleware, body size limit)."""
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def start(self) -> tuple[str, int]:
        """Listen and start the engine thread; returns ``(host, port)`` (the real port when asked for 0).

        ``OSError`` when the address cannot be bound (nothing is left running).
        """
        self._loop = asyncio.get_running_loop()
        self._runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await self._site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.engine.start()
        host, port = self._runner.addresses[0][:2]
        return host, port

    async def drain(self, grace_s: float | None = None, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting, let running streams finish for ``grace_s`` (or until ``hurry``), cancel the rest, stop."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.draining = True
        self.engine.drain()
        if self._site is not None:
            await self._site.stop()  # the listening socket closes: new connections are refused
        deadline = time.monotonic() + grace_s
        while self.engine.streams and time.monotonic() < deadline and not (hurry and hurry.is_set()):
            await asyncio.sleep(0.05)
        self.engine.cancel_all()
        deadline = time.monotonic() + 2.0
        while (self.engine.streams or self._events) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # handlers write their last event
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)

    def _notify(self, streams: list[Stream]) -> None:
        """Engine thread: wake the handlers of ``streams`` on the event loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake, streams)
            except RuntimeError:  # the loop closed in between: nobody is listening any more
                pass

    def _wake(self, streams: list[Stream]) -> None:
        for s in streams:
            event = self._events.get(s.id)
            if event is not None:
                event.set()

    # --- middleware: authentication and errors -------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/v1/"):
                self._check_key(request)
            return await handler(request)
        except ApiError as e:
            return _error_response(e)
        except web.HTTPException as e:  # aiohttp's own: no route, wrong method, body too large
            return _error_response(_http_error(e))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001: a bug must not put a traceback in a response
            log.exception("error serving %s %s", request.method, request.path)
            return _error_response(ApiError(500, "internal server error", type="server_error",
                                            code="internal_error"))

    def _check_key(self, request: web.Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise ApiError(401, "no API key provided: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    # --- routes --------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: 200 while serving, 503 while draining or after an engine failure."""
        status = "failed" if self.engine.error else ("draining" if self.draining else "ok")
        stats = self.engine.stats
        body = {"status": status, "model": self.config.limits.model, "streams": self.engine.streams,
                "max_streams": self.engine.max_streams, "paused": stats.paused, "calls": stats.calls,
                "chars": stats.chars, "last_k": stats.last_k, "last_batch": stats.last_batch}
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        return web.json_response(model_list(self.config.limits.model, self.created))

    async def model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{model}``."""
        check_model(request.match_info["model"], self.config.limits)
        return web.json_response(model_card(self.config.limits.model, self.created))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``: checks, admits the streams, answers with SSE or one JSON."""
        if self.engine.error is not None:
            raise ENGINE_FAILED
        if self.draining:
            raise SHUTTING_DOWN
        req = parse_completion(await _json_body(request), self.config.limits)
        if req.choices > self.engine.max_streams:
            raise ApiError(400, f"{req.choices} completions asked at once; this server runs at most "
                                f"{self.engine.max_streams}", param="n" if req.n > 1 else "prompt",
                           code="invalid_value")
        specs, prompt_chars = self._specs(req)
        try:
            streams = self.engine.admit(specs)
        except EngineFull:
            raise ApiError(429, f"all {self.engine.max_streams} streams are busy: retry shortly", type="requests",
                           code="rate_limit_exceeded", headers={"Retry-After": str(self.config.retry_after_s)})
        except EngineClosed:
            raise (ENGINE_FAILED if self.engine.error is not None else SHUTTING_DOWN) from None
        event = asyncio.Event()
        for s in streams:
            self._events[s.id] = event
        try:
            reply = _Reply(req, self.config.limits.model, prompt_chars)
            if req.stream:
                return await self._stream(request, reply, streams, event)
            return await self._complete(reply, streams, event)
        finally:
            for s in streams:
                self._events.pop(s.id, None)
                self.engine.cancel(s)

    def _specs(self, req: CompletionRequest) -> tuple[list[StreamSpec], list[int]]:
        """One stream per choice (choice i: prompt i // n, seed ``seed + i``), and each prompt's length."""
        ids = encode_prompts(req.prompts, self.generator.vocab)
        seeds = stream_seeds(req.seed, req.choices)
        specs = []
        for i, seed in enumerate(seeds):
            prompt = ids[i // req.n]
            if not len(prompt):  # like Generator: an empty prompt is a random validation line (by seed)
                prompt = self.generator.encode(self.generator.default_prime(seed))
            specs.append(StreamSpec(prompt=prompt, seed=seed, temperature=req.temperature, top_p=req.top_p,
                                    max_chars=req.max_tokens, stops=req.stops))
        return specs, [len(p) for p in ids]

    async def _complete(self, reply: "_Reply", streams: list[Stream], event: asyncio.Event) -> web.Response:
        texts: list[list[str]] = [[] for _ in streams]
        finishes: list[str | None] = [None] * len(streams)
        async for i, text, finish in _updates(streams, event):
            texts[i].append(text)
            finishes[i] = finish
        cut = _cut_short(finishes)
        if cut is not None:
            raise cut
        return web.json_response(reply.whole(["".join(t) for t in texts], finishes))

    async def _stream(self, request: web.Request, reply: "_Reply", streams: list[Stream],
                      event: asyncio.Event) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        try:
            if reply.req.echo:
                await resp.write(b"".join(reply.event(i, reply.prompt_of(i), None, count=False)
                                            for i in range(len(streams))))
            async for batch in _batches(streams, event):
                cut = _cut_short([f for _, _, f in batch])
                if cut is not None:  # an error event (OpenAI's clients raise it), and no [DONE]
                    await resp.write(_sse(cut.body()))
                    return resp
                await resp.write(b"".join(reply.event(i, text, finish) for i, text, finish in batch))
            tail = _sse(reply.usage_chunk()) if reply.req.include_usage else b""
            await resp.write(tail + DONE)
            await resp.write_eof()
        except ConnectionError:  # the client went away while we wrote: the finally of the caller frees the streams
            pass
        return resp


class _Reply:
    """The response shapes of one request: its id, model, prompts' lengths and characters sent."""

    def __init__(self, req: CompletionRequest, model: str, prompt_chars: list[int]):
        self.req, self.model, self.prompt_chars = req, model, prompt_chars
        self.id, self.created = completion_id(), now()
        self.sent = 0  # completion characters so far

    def prompt_of(self, i: int) -> str:
        return self.req.prompts[i // self.req.n]

    def usage(self) -> dict:
        return usage(sum(self.prompt_chars) * self.req.n, self.sent)

    def whole(self, texts: list[str], finishes: list[str | None]) -> dict:
        """The non-streaming response."""
        self.sent = sum(map(len, texts))
        echo = self.prompt_of if self.req.echo else (lambda i: "")
        choices = [choice(i, echo(i) + t, f) for i, (t, f) in enumerate(zip(texts, finishes))]
        return completion(self.id, self.created, self.model, choices, self.usage())

    def event(self, i: int, text: str, finish: str | None, *, count: bool = True) -> bytes:
        """One server-sent event: choice ``i``'s new ``text`` (and its finish reason when it is the last)."""
        if count:
            self.sent += len(text)
        return _sse(completion(self.id, self.created, self.model, [choice(i, text, finish)], None))

    def usage_chunk(self) -> dict:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        return completion(self.id, self.created, self.model, [], self.usage())


async def _updates(streams: list[Stream], event: asyncio.Event) -> AsyncIterator[tuple[int, str, str | None]]:
    """``(choice index, new text, finish or None)`` as the engine produces them, until every stream is over."""
    async for batch in _batches(streams, event):
        for item in batch:
            yield item


async def _batches(streams: list[Stream], event: asyncio.Event) -> AsyncIterator[list[tuple[int, str, str | None]]]:
    """What every stream has produced since the last batch, each time the engine wakes ``event``."""
    live = set(range(len(streams)))
    while live:
        await event.wait()
        event.clear()
        batch = []
        for i in sorted(live):
            text, finish = streams[i].take()
            if text or finish:
                batch.append((i, text, finish))
            if finish:
                live.discard(i)
        if batch:
            yield batch


def _cut_short(finishes: list[str | None]) -> ApiError | None:
    """Why a stream of the request ended before its end: the engine failed or the server is shutting down."""
    if "error" in finishes:
        return ENGINE_FAILED
    if "cancelled" in finishes:  # the client's own cancellations never get here: its handler is gone
        return SHUTTING_DOWN
    return None


async def _json_body(request: web.Request):
    """The request body as JSON, or the OpenAI error for a body that is too large or not JSON."""
    raw = await request.read()  # aiohttp raises HTTPRequestEntityTooLarge past client_max_size
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "could not parse the JSON body of the request", code="invalid_json") from None


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _error_response(e: ApiError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _http_error(e: web.HTTPException) -> ApiError:
    """aiohttp's HTTP error as an OpenAI error (4xx stay 4xx)."""
    status = e.status if 400 <= e.status < 600 else 500
    message = {413: "the request body is too large"}.get(status, e.reason or "error")
    if status == 404:
        message = "no such endpoint"
    allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None  # 405 says which methods
    return ApiError(status, message, type="invalid_request_error" if status < 500 else "server_error",
                    code=_HTTP_CODES.get(status), headers=allow)


async def serve(server: Server, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain (a second signal cuts the grace period short)."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    host, port = await server.start()
    if on_ready is not None:
        on_ready(host, port)
    await stop.wait()
    await server.drain(hurry=hurry)
