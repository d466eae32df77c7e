"""The server: an ``Engine`` for a ``Generator``'s model behind aiohttp, its lifecycle (start, serve, drain).

``Server`` ties the parts together: the engine thread (``engine.py``), the
listener with its connection cap and deadlines (``connections.py``), the
routes and their middleware (``routes.py``), the metrics (``metrics.py``).
Its limits are checked when it is made (``limits.py``): a configuration that
cannot fit in memory is a ``TextstreamError``, before anything is allocated.

The engine runs in its own thread; after each of its calls it wakes, through
``loop.call_soon_threadsafe``, the handlers whose streams have new text.

    server = Server(Generator.load("runs/default"), ServeConfig(port=0))
    host, port = await server.start()
    ...
    await server.drain()          # stop accepting, let streams finish (grace), cancel the rest
"""
from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from textstream.errors import TextstreamError
from textstream.generation.generator import Generator
from textstream.generation.sampling import stream_seeds
from textstream.serve.listener import Listener
from textstream.serve.engine import CALL_S, Engine, EngineClosed, EngineFull
from textstream.serve.errors import ENGINE_FAILED, SHUTTING_DOWN, ApiError
from textstream.serve.limits import (
    DEFAULT_MAX_CONNECTIONS,
    check_api_key,
    check_memory,
    connection_bytes,
    stream_bytes,
)
from textstream.serve.metrics import Metrics
from textstream.serve.prefix import DEFAULT_MB, PrefixCache
from textstream.serve.protocol import CompletionRequest, Limits, encode_prompts
from textstream.serve.regexes import Patterns
from textstream.serve.state import continued, read_state
from textstream.serve.routes import Routes
from textstream.serve.shapes import now
from textstream.serve.stream import BUFFER_CHARS, Stream, StreamSpec

__all__ = ["ServeConfig", "Server", "serve"]


@dataclass
class ServeConfig:
    """How the server listens and what it accepts (``limits``: the model's name and the caps on a request).

    ``read_timeout_s``: a request's line and headers must arrive within it
    (counted from the connection's start or the end of its last response), and
    then its body within it again; ``max_connections``: connections open at
    once (past it, a 503); ``metrics``: serve ``GET /metrics``; ``page``: serve
    the playground at ``GET /``; ``prefix_cache_mb``: the prefix-state cache's size (0: none).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_streams: int = 256
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 1 << 20
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_timeout_s: float = 10.0
    grace_s: float = 10.0  # on shutdown: how long running streams may take to finish
    retry_after_s: int = 1
    buffer_chars: int = BUFFER_CHARS
    call_s: float = CALL_S
    metrics: bool = True
    page: bool = True
    prefix_cache_mb: float = DEFAULT_MB


class Server:
    """An OpenAI-compatible HTTP server over an ``Engine`` for ``generator``'s model: start, serve, drain.

    Args:
        generator: the model to serve (its backend steps every stream; its
            validation text primes empty prompts).
        config: where to listen and what to accept (``ServeConfig``).

    Raises:
        TextstreamError: ``config.api_key`` is empty or whitespace (it would
            let everyone in) or cannot be sent in a header; or
            ``max_streams`` / ``max_connections`` need more memory than is
            available (the message names the flag and how many fit).
    """

    def __init__(self, generator: Generator, config: ServeConfig):
        self.generator = generator
        self.config = config
        check_api_key(config.api_key)
        backend = generator.backend
        if config.max_streams < 1 or config.max_connections < 1:
            raise TextstreamError("--max-streams and --max-connections must be at least 1")
        if not 0 <= config.prefix_cache_mb < float("inf"):
            raise TextstreamError(f"--prefix-cache-mb must be a number >= 0 (got {config.prefix_cache_mb})")
        cache = PrefixCache(int(config.prefix_cache_mb * (1 << 20)), layers=backend.layers, units=backend.units)
        check_memory(config.max_streams, stream_bytes(layers=backend.layers, units=backend.units,
                                                      vocab_size=backend.vocab_size, buffer_chars=config.buffer_chars,
                                                      max_tokens=config.limits.max_tokens),
                     config.max_connections, connection_bytes(config.max_body_bytes), fixed=cache.max_bytes)
        self.metrics = Metrics(model=config.limits.model, layers=backend.layers, units=backend.units,
                               vocab_size=backend.vocab_size, backend=type(backend).__name__,
                               max_streams=config.max_streams, streams=lambda: self.engine.streams,
                               waiting=lambda: self.engine.stats.waiting, paused=lambda: self.engine.stats.paused,
                               connections=lambda: len(self.listener.open) if self.listener else 0,
                               prefix_bytes=lambda: cache.bytes)
        self.engine = Engine(backend, generator.vocab, max_streams=config.max_streams,
                             buffer_chars=config.buffer_chars, call_s=config.call_s, notify=self._notify,
                             on_call=self.metrics.engine_call, prefix_cache=cache, on_prefix=self.metrics.prefix)
        self.patterns = Patterns(generator.vocab)
        self.created = now()
        self.draining = False
        self.listener: Listener | None = None
        self._events: dict[int, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def warm(self) -> None:
        """Run the backend once for every batch size up to ``max_streams`` (compiles now, not mid-service).

        Also reads the validation text that empty prompts draw their prime from.
        """
        self.engine.warm()
        self.generator.default_prime(0)

    # --- lifecycle -------------------------------------------------------------------------------
    def application(self) -> web.Application:
        """The aiohttp application: the routes, their middleware and the body size cap."""
        routes = Routes(self)
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[routes.middleware])
        routes.add_to(app)
        return app

    async def start(self) -> tuple[str, int]:
        """Listen and start the engine thread.

        Returns:
            ``(host, port)`` bound (the real port when ``config.port`` is 0).

        Raises:
            OSError: the address cannot be bound (nothing is left running).
        """
        self._loop = asyncio.get_running_loop()
        self._runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        self.listener = Listener(self._runner, max_connections=self.config.max_connections,
                                 read_timeout_s=self.config.read_timeout_s, health=self.health,
                                 on_refused=self.metrics.reject)
        try:
            host, port = await self.listener.start(self.config.host, self.config.port)
        except OSError:
            await self._runner.cleanup()
            raise
        self.engine.start()
        return host, port

    async def drain(self, grace_s: float | None = None, hurry: asyncio.Event | None = None) -> None:
        """Stop accepting, let running streams finish for ``grace_s`` (default ``config.grace_s``; or until
        ``hurry`` is set), cancel the rest (their clients get an error event), stop the engine."""
        grace_s = self.config.grace_s if grace_s is None else grace_s
        self.draining = True
        self.engine.drain()
        if self.listener is not None:
            self.listener.close()  # the listening socket closes: new connections are refused
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

    # --- what the routes ask of the server ---------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """``(status, body)`` of ``GET /health``: 200 while serving, 503 while draining or after an engine failure."""
        status = "failed" if self.engine.error else ("draining" if self.draining else "ok")
        stats = self.engine.stats
        body = {"status": status, "model": self.config.limits.model, "streams": self.engine.streams,
                "max_streams": self.engine.max_streams, "paused": stats.paused, "calls": stats.calls,
                "chars": stats.chars, "last_k": stats.last_k, "last_batch": stats.last_batch,
                "connections": len(self.listener.open) if self.listener else 0,
                "max_connections": self.config.max_connections}
        return (200 if status == "ok" else 503), body

    def check_serving(self) -> None:
        """``ApiError`` (503) when the engine has failed or the server is draining."""
        if self.engine.error is not None:
            self.metrics.reject("engine")
            raise ENGINE_FAILED
        if self.draining:
            self.metrics.reject("draining")
            raise SHUTTING_DOWN

    def admit(self, req: CompletionRequest, param: str = "prompt", constraint=None) -> tuple[list[Stream], list[int]]:
        """The engine's streams for ``req`` and each prompt's length; ``ApiError`` (400 / 429 / 503) if refused
        (``param``: the field a bad prompt is reported under, e.g. chat's ``messages``; ``constraint``: its
        compiled regex, ``constraint(req)``)."""
        max_streams = self.engine.max_streams
        if req.choices > max_streams:
            raise ApiError(400, f"{req.choices} completions asked at once; this server runs at most {max_streams}",
                           param="n" if req.n > 1 else "prompt", code="invalid_value")
        specs, prompt_chars = self._specs(req, param, constraint)
        try:
            return self.engine.admit(specs), prompt_chars
        except EngineFull:
            self.metrics.reject("busy")
            raise ApiError(429, f"all {max_streams} streams are busy: retry shortly", type="requests",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": str(self.config.retry_after_s)}) from None
        except EngineClosed:
            self.check_serving()
            raise SHUTTING_DOWN from None

    def listen(self, streams: list[Stream], event: asyncio.Event) -> None:
        """Wake ``event`` whenever one of ``streams`` has new text."""
        for s in streams:
            self._events[s.id] = event

    def release(self, streams: list[Stream]) -> None:
        """Stop listening to ``streams`` and cancel those still running (their slots are freed)."""
        for s in streams:
            self._events.pop(s.id, None)
            self.engine.cancel(s)

    def constraint(self, req: CompletionRequest):
        """The compiled ``regex`` of ``req`` (None without one), or ``ApiError`` naming ``regex`` (any thread;
        a new pattern compiles in a child process with a deadline, ``textstream.serve.regexes``)."""
        return None if req.regex is None else self.patterns(req.regex)

    def _specs(self, req: CompletionRequest, param: str, constraint=None) -> tuple[list[StreamSpec], list[int]]:
        """One stream per choice (choice i: prompt i // n, seed ``seed + i``), and each prompt's length."""
        gen = self.generator
        ids = encode_prompts(req.prompts, gen.vocab, param)
        saved = read_state(req.state, gen.backend, gen.vocab) if req.state is not None else None
        seeds = stream_seeds(req.seed, req.choices)
        specs = []
        for i, seed in enumerate(seeds):
            prompt = ids[i // req.n]
            given = dict(seed=seed, temperature=req.temperature, top_p=req.top_p) if saved is None else \
                continued(saved, None if req.seed is None else seed, req.explicit, req.temperature, req.top_p)
            if not len(prompt) and saved is None:  # like Generator: an empty prompt is a random validation line
                prompt = gen.encode(gen.default_prime(seed))
            specs.append(StreamSpec(prompt=prompt, max_chars=req.max_tokens, stops=req.stops, **given,
                                    return_state=req.return_state, constraint=constraint, logprobs=req.logprobs,
                                    score_prompt=req.echo and req.logprobs is not None and len(ids[i // req.n]) > 0))
        return specs, [len(p) for p in ids]

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


async def serve(server: Server, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain (a second signal cuts the grace period short).

    Args:
        server: the server to run (not started yet).
        on_ready: called with ``(host, port)`` once it listens.

    Raises:
        OSError: the address cannot be bound.
    """
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
