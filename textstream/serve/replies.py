"""Answering a checked request: its streams admitted to the engine, their text sent as events or as one JSON.

``answer`` is shared by ``/v1/completions`` and ``/v1/chat/completions``;
what differs is the reply's shape (``CompletionReply``, ``ChatReply``). A
handler takes all the text waiting for its streams each time the engine
wakes it, and writes it: one server-sent event per update, or one JSON at the
end. Its ``finally`` cancels its streams: a client that goes away (aiohttp
cancels its handler) frees its slots at the engine's next turn.

Once a streamed response has begun, nothing can change its status: a
failure after that point (the engine failed, the server is shutting down, a
fault) ends the stream with one error event in OpenAI's format followed by
``data: [DONE]``, never with a second HTTP response inside the body
(``end_stream``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from aiohttp import web

from textstream.serve.chat import chat_chunk, chat_completion, delta
from textstream.serve.errors import ENGINE_FAILED, INTERNAL, SHUTTING_DOWN, ApiError
from textstream.serve.logprobs import join_logprobs, openai_logprobs
from textstream.serve.protocol import CompletionRequest
from textstream.serve.shapes import DONE, choice, completion, completion_id, now, sse, usage
from textstream.serve.stream import Stream

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

log = logging.getLogger("textstream.serve")

__all__ = ["CompletionReply", "ChatReply", "answer", "end_stream"]


class CompletionReply:
    """The response shapes of one completions request: its id, model, prompts' lengths and characters sent."""

    prefix = "cmpl-"

    def __init__(self, req: CompletionRequest, model: str, prompt_chars: list[int]):
        self.req, self.model, self.prompt_chars = req, model, prompt_chars
        self.id, self.created = completion_id(self.prefix), now()
        self.sent = 0  # completion characters so far
        self.streams: list[Stream] = []
        self.chars: list[str] = []  # the vocabulary's symbols (the tokens of logprobs)
        self._offsets: list[int] = []  # each choice's text_offset of its next character
        self._heads: dict[int, dict] = {}  # echoed prompts' logprobs not sent yet (streaming)

    def attach(self, streams: list[Stream], chars: list[str]) -> None:
        """The request's streams (their logprob records and saved states), and the vocabulary's symbols."""
        self.streams, self.chars = streams, chars
        self._offsets = [len(self.prompt_of(i)) if self.req.echo else 0 for i in range(len(streams))]
        if self.req.echo and self.req.logprobs is not None:
            self._heads = {i: None for i in range(len(streams))}

    def _logprobs(self, i: int, text: str) -> dict:
        """Choice ``i``'s ``logprobs`` of ``text``, its next characters (from the engine's records)."""
        lp = openai_logprobs(self.chars, self.streams[i].logprobs.take(len(text)), self._offsets[i])
        self._offsets[i] += len(text)
        return lp

    def _prompt_logprobs(self, i: int) -> dict:
        """Choice ``i``'s echoed prompt's ``logprobs``: the first null when it was fed from the start state."""
        s = self.streams[i]
        return openai_logprobs(self.chars, s.logprobs.prompt(), 0, first_null=s.spec.start is None)

    async def score(self, batch: list[tuple[int, str, str | None]]) -> dict[int, dict]:
        """The ``logprobs`` of each choice's new text in ``batch`` (shaped off the event loop); {} without. An
        echoed prompt's, before the first text of its choice, wait in ``_heads`` for ``events``."""
        if self.req.logprobs is None:
            return {}

        def shape() -> dict[int, dict]:
            for i, _, _ in batch:
                if i in self._heads and self._heads[i] is None:
                    self._heads[i] = self._prompt_logprobs(i)
            return {i: self._logprobs(i, text) for i, text, _ in batch}

        return await asyncio.to_thread(shape)

    def _state(self, i: int, finish: str | None) -> dict:
        """``{"state": ...}`` for choice ``i``'s last chunk (or whole choice) with ``return_state``; else {}."""
        return {"state": self.streams[i].state} if self.req.return_state and finish else {}

    def prompt_of(self, i: int) -> str:
        return self.req.prompts[i // self.req.n]

    def usage(self) -> dict:
        return usage(sum(self.prompt_chars) * self.req.n, self.sent)

    def whole(self, texts: list[str], finishes: list[str | None], logprobs: dict[int, dict]) -> dict:
        """The non-streaming response (``logprobs``: of each choice's whole text, from ``whole_logprobs``)."""
        self.sent = sum(map(len, texts))
        echo = self.prompt_of if self.req.echo else (lambda i: "")
        choices = [choice(i, echo(i) + t, f, logprobs.get(i), **self._state(i, f))
                   for i, (t, f) in enumerate(zip(texts, finishes))]
        return completion(self.id, self.created, self.model, choices, self.usage())

    async def whole_logprobs(self, texts: list[str]) -> dict[int, dict]:
        """Each choice's ``logprobs`` (the echoed prompt's first, with ``echo``); {} without logprobs."""
        if self.req.logprobs is None:
            return {}

        def all_of(i: int) -> dict:
            return join_logprobs(self._prompt_logprobs(i) if self.req.echo else None, self._logprobs(i, texts[i]))

        return await asyncio.to_thread(lambda: {i: all_of(i) for i in range(len(texts))})

    async def opening(self, choices: int) -> bytes:
        """What a stream sends before any generated text: the prompts, with ``echo`` (with ``logprobs`` they go
        just before their choice's first text instead, once the engine has scored them)."""
        if not self.req.echo or self.req.logprobs is not None:
            return b""
        return b"".join(sse(completion(self.id, self.created, self.model, [choice(i, self.prompt_of(i), None)],
                                       None)) for i in range(choices))

    def events(self, batch: list[tuple[int, str, str | None]], logprobs: dict[int, dict]) -> bytes:
        """The events of one update: choice ``i``'s new ``text`` (and its finish reason when it is the last)."""
        self.sent += sum(len(text) for _, text, _ in batch)
        out = []
        for i, text, finish in batch:
            head = self._heads.pop(i, None)
            if head is not None:
                out.append(sse(completion(self.id, self.created, self.model, [choice(i, self.prompt_of(i), None, head)],
                                          None)))
            out.append(sse(completion(self.id, self.created, self.model,
                                      [choice(i, text, finish, logprobs.get(i), **self._state(i, finish))], None)))
        return b"".join(out)

    def usage_chunk(self) -> dict:
        """The last chunk when ``stream_options.include_usage``: no choices, the usage."""
        return completion(self.id, self.created, self.model, [], self.usage())


class ChatReply(CompletionReply):
    """The response shapes of a chat completions request (``chat.completion`` and ``chat.completion.chunk``)."""

    prefix = "chatcmpl-"

    def whole(self, texts: list[str], finishes: list[str | None], logprobs: dict[int, dict]) -> dict:
        self.sent = sum(map(len, texts))
        return chat_completion(self.id, self.created, self.model, texts, finishes, self.usage())

    async def opening(self, choices: int) -> bytes:
        return sse(chat_chunk(self.id, self.created, self.model,
                              [delta(i, role=True, content="") for i in range(choices)]))

    def events(self, batch: list[tuple[int, str, str | None]], logprobs: dict[int, dict]) -> bytes:
        self.sent += sum(len(text) for _, text, _ in batch)
        out = []
        for i, text, finish in batch:
            if text:
                out.append(sse(chat_chunk(self.id, self.created, self.model, [delta(i, content=text)])))
            if finish:
                out.append(sse(chat_chunk(self.id, self.created, self.model, [delta(i, finish=finish)])))
        return b"".join(out)

    def usage_chunk(self) -> dict:
        return chat_chunk(self.id, self.created, self.model, [], self.usage())


async def answer(request: web.Request, server, req: CompletionRequest, reply: CompletionReply,
                 streams: list[Stream], event: asyncio.Event, t0: float) -> web.StreamResponse:
    """Send the text of ``streams`` (admitted for ``req``) as ``reply`` shapes it; streamed or whole (``t0``: the
    request's arrival, ``time.perf_counter()``, where its time to the first character counts from)."""
    metrics = server.metrics
    if req.stream:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        try:
            await resp.write(await reply.opening(len(streams)))
            first = True
            async for batch in _batches(streams, event):
                cut = _cut_short([f for _, _, f in batch])
                if cut is not None:
                    return await end_stream(resp, cut)
                data = reply.events(batch, await reply.score(batch))
                if first and reply.sent:
                    metrics.first_char(time.perf_counter() - t0)
                    first = False
                await resp.write(data)
                metrics.generated(sum(len(text) for _, text, _ in batch))
            tail = sse(reply.usage_chunk()) if req.include_usage else b""
            await resp.write(tail + DONE)
            await resp.write_eof()
        except ConnectionError:  # the client went away while we wrote: the caller's finally frees the streams,
            raise  # the middleware counts the request as 499 (as when aiohttp cancels the handler)
        except ApiError as e:
            return await end_stream(resp, e)
        except Exception as e:  # noqa: BLE001: a fault of ours after the stream began: one line, an error event
            log.error("internal error in a stream: %s: %s", type(e).__name__, e)
            log.debug("the traceback", exc_info=e)
            return await end_stream(resp, INTERNAL)
        return resp
    texts: list[list[str]] = [[] for _ in streams]
    finishes: list[str | None] = [None] * len(streams)
    first = True
    async for batch in _batches(streams, event):
        for i, text, finish in batch:
            if first and text:
                metrics.first_char(time.perf_counter() - t0)
                first = False
            texts[i].append(text)
            finishes[i] = finish
    cut = _cut_short(finishes)
    if cut is not None:
        raise cut
    whole = ["".join(t) for t in texts]
    body = reply.whole(whole, finishes, await reply.whole_logprobs(whole))
    metrics.generated(reply.sent)
    return web.json_response(body)


async def end_stream(resp: web.StreamResponse, error: ApiError) -> web.StreamResponse:
    """End a streamed response that has begun with ``error`` as one event, then ``[DONE]``."""
    try:
        await resp.write(sse(error.body()) + DONE)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):  # gone, or already ended: nothing more can be sent
        pass
    return resp


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
