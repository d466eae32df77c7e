"""The HTTP routes and the middleware every request goes through (aiohttp).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /v1/models/{model}``, ``GET /health``,
``GET /metrics`` (unless ``--no-metrics``), and the playground page at ``GET /``
(its files under ``/page/``).

The middleware, in order: tells the listener a request is in progress (no
head deadline while it runs), checks the request's headers (the API key on
every route but ``/health`` and the page), runs the route, and turns every
refusal into OpenAI's error format: an ``ApiError`` as it is, aiohttp's own
(no route, wrong method) mapped to the same shape, and anything unexpected
into a 500 with one log line (the traceback only at debug level). A streamed
response that has begun ends itself with an error event
(``textstream.serve.replies``); should anything else fail once a response
has begun, the connection is closed rather than a second response written
into the body. Each request is counted in the metrics by its route pattern,
never by its raw path.

A body is read with a deadline (``--read-timeout``) and a size cap
(``--max-body-bytes``), then parsed by ``textstream.serve.jsonbody`` and
checked by ``textstream.serve.protocol`` / ``textstream.serve.chat`` before
anything uses it.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from importlib import resources

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from textstream.serve.chat import parse_chat
from textstream.serve.connections import error_response
from textstream.serve.errors import INTERNAL, ApiError, http_error
from textstream.serve.jsonbody import parse_json
from textstream.serve.protocol import check_model, parse_completion
from textstream.serve.replies import ChatReply, CompletionReply, answer
from textstream.serve.shapes import model_card, model_list

log = logging.getLogger("textstream.serve")

PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

__all__ = ["Routes"]


class Routes:
    """The route handlers and the middleware of one ``Server`` (``server``: its engine, config, metrics)."""

    def __init__(self, server):
        self.server = server
        self.config = server.config
        self._page = _page_files() if self.config.page else {}

    def add_to(self, app: web.Application) -> None:
        """Register every route on ``app``."""
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.config.metrics:
            app.router.add_get("/metrics", self.metrics)
        if self.config.page:
            app.router.add_get("/", self.page)
            app.router.add_get("/page/{name}", self.page)

    # --- the middleware -------------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        server, t0 = self.server, time.perf_counter()
        guard = server.listener.guard(request.transport) if server.listener is not None else None
        if guard is not None:
            guard.started()
        route, status = _route(request), 499  # 499: the client went away before an answer
        try:
            try:
                self._check_headers(request)
                resp = await handler(request)
                status = resp.status
                return resp
            except ApiError as e:
                error = e
            except web.HTTPException as e:  # aiohttp's own: no route, wrong method
                error = http_error(e.status, allow=e.headers.get("Allow"))
            except (asyncio.CancelledError, ConnectionError):
                raise
            except Exception as e:  # noqa: BLE001: a fault of ours: one line in the log, a 500 to the client
                log.error("internal error serving %s %s: %s: %s", request.method, route, type(e).__name__,
                          _one_line(e))
                log.debug("the traceback", exc_info=e)
                error = INTERNAL
            status = error.status
            server.metrics.error(error.type)
            if request.writer is not None and request.writer.output_size > 0:
                # a response has begun (streams end themselves with an error event): never a second one
                raise ConnectionError("the response had begun")
            return error_response(error)
        finally:
            server.metrics.request(route, status, time.perf_counter() - t0)
            if guard is not None:
                guard.ended()

    def _check_headers(self, request: web.Request) -> None:
        key = self.config.api_key
        if key is None or request.path == "/health" or request.path == "/" or request.path.startswith("/page/"):
            return
        given = request.headers.getall("Authorization", [])
        if len(given) > 1:
            raise ApiError(400, "the Authorization header is given more than once", param="Authorization",
                           code="invalid_header")
        if not given:
            raise ApiError(401, "no API key provided: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
        scheme, _, token = given[0].partition(" ")
        token_bytes = token.strip().encode("utf-8", "surrogateescape")  # undecodable bytes compare as bytes
        if scheme.lower() != "bearer" or not hmac.compare_digest(token_bytes, key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    # --- routes -------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: 200 while serving, 503 while draining or after an engine failure."""
        status, body = self.server.health()
        return web.json_response(body, status=status)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        return web.json_response(model_list(self.config.limits.model, self.server.created))

    async def model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{model}``."""
        check_model(request.match_info["model"], self.config.limits)
        return web.json_response(model_card(self.config.limits.model, self.server.created))

    async def metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the Prometheus text exposition."""
        body, content_type = self.server.metrics.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def page(self, request: web.Request) -> web.Response:
        """``GET /`` and ``GET /page/{name}``: the playground's files, from the package."""
        name = request.match_info.get("name", "index.html")
        if name not in self._page:
            raise http_error(404)
        data, kind = self._page[name]
        return web.Response(body=data, content_type=kind, charset="utf-8",
                            headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``: checks, admits the streams, answers with SSE or one JSON."""
        return await self._generate(request, parse_completion, CompletionReply, "prompt")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: the chat's messages made one prompt (``textstream.serve.chat``)."""
        return await self._generate(request, parse_chat, ChatReply, "messages")

    async def _generate(self, request: web.Request, parse, reply_type, param: str) -> web.StreamResponse:
        server, arrived = self.server, time.perf_counter()
        server.check_serving()
        req = parse(parse_json(await self._body(request)), self.config.limits)
        if req.logprobs is not None and server.generator.vocab.is_bytes:
            raise ApiError(400, "logprobs are given per character: this model's tokens are bytes",
                           param="logprobs", code="unsupported_parameter")
        constraint = await asyncio.to_thread(server.constraint, req) if req.regex is not None else None
        streams, prompt_chars = server.admit(req, param, constraint)
        event = asyncio.Event()
        server.listen(streams, event)
        try:
            reply = reply_type(req, self.config.limits.model, prompt_chars)
            reply.attach(streams, server.generator.vocab.chars)
            return await answer(request, server, req, reply, streams, event, arrived)
        finally:
            server.release(streams)

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, read within ``read_timeout_s`` and at most ``max_body_bytes``; else an ``ApiError``."""
        timeout, cap = self.config.read_timeout_s, self.config.max_body_bytes
        try:
            return await asyncio.wait_for(request.read(), timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the request body did not arrive within {timeout:g} s (--read-timeout)",
                           code="request_timeout", close=True) from None
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request body is larger than {cap} bytes (--max-body-bytes)",
                           code="request_too_large", close=True) from None
        except (HttpProcessingError, RequestPayloadError) as e:
            raise ApiError(400, f"the request body could not be read: {_one_line(e)}", code="invalid_body",
                           close=True) from None


def _route(request: web.Request) -> str:
    """The route pattern of ``request`` for the metrics (``other`` when no route matched)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:300] + "..."


def _page_files() -> dict[str, tuple[bytes, str]]:
    """The playground's files, read once from the package data (``textstream/serve/page/``)."""
    folder = resources.files("textstream.serve").joinpath("page")
    return {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in PAGE_FILES.items()}
