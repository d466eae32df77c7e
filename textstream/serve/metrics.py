"""The server's Prometheus metrics (``GET /metrics``), written with ``prometheus_client``. No HTTP library here.

Every name starts with ``textstream_``; counters end in ``_total``, units
are in the names. One ``CollectorRegistry`` per ``Server`` (several servers
in one process keep apart). The text is Prometheus's format 0.0.4, or
OpenMetrics when the scraper's ``Accept`` header asks for it (as Prometheus
itself does):

* ``textstream_requests_total{route, code}`` and
  ``textstream_request_duration_seconds{route}`` (histogram): every request,
  by its route's pattern (``/v1/completions``; ``other`` for no route) and
  HTTP status;
* ``textstream_errors_total{type}``: error responses by OpenAI error type;
  ``textstream_rejected_requests_total{reason}``: refusals for capacity
  (``busy``: every stream busy, 429; ``connections``: past
  ``--max-connections``; ``descriptors``: out of file descriptors;
  ``draining``; ``engine``: the engine failed);
* ``textstream_streams_active``, ``textstream_streams_waiting`` (admitted,
  prompt still being fed), ``textstream_streams_paused`` (their reader is
  behind), ``textstream_streams_max``, ``textstream_connections_open``;
* ``textstream_generated_chars_total``: characters sent in completions,
  exactly the sum of the ``usage.completion_tokens`` the responses report;
  ``textstream_prompt_chars_total``: prompt characters fed to the model;
* ``textstream_prompt_cache_chars_total``: prompt characters served from the
  prefix-state cache instead (not fed), ``textstream_prompt_cache_hits_total``
  and ``textstream_prompt_cache_misses_total`` (lookups of long prompts),
  ``textstream_prompt_cache_bytes`` (its size now; at most ``--prefix-cache-mb``);
* ``textstream_time_to_first_char_seconds`` (histogram): from a request's
  arrival to its first generated character;
* ``textstream_batch_streams`` (histogram): streams stepped together per
  engine call; ``textstream_engine_calls_total``;
* ``textstream_model_info{model, layers, units, vocab_size, backend}``.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """The counters, gauges and histograms of one server, in their own registry; ``exposition()`` writes them."""

    def __init__(self, *, model: str, layers: int, units: int, vocab_size: int, backend: str, max_streams: int,
                 streams: Callable[[], float], waiting: Callable[[], float], paused: Callable[[], float],
                 connections: Callable[[], float], prefix_bytes: Callable[[], float] = lambda: 0):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("textstream_requests", "HTTP requests answered, by route pattern and status code",
                                ["route", "code"], registry=r)
        self.duration = Histogram("textstream_request_duration_seconds", "Time from a request's arrival to the end "
                                  "of its response, by route pattern", ["route"], buckets=DURATION_BUCKETS,
                                  registry=r)
        self.errors = Counter("textstream_errors", "Error responses, by OpenAI error type", ["type"], registry=r)
        self.rejected = Counter("textstream_rejected_requests", "Requests refused for capacity (busy: 429, "
                                "connections, descriptors, draining, engine)", ["reason"], registry=r)
        self.generated_chars = Counter("textstream_generated_chars", "Completion characters sent (the sum of the "
                                       "responses' usage.completion_tokens)", registry=r)
        self.prompt_chars = Counter("textstream_prompt_chars", "Prompt characters fed to the model", registry=r)
        self.first_char_seconds = Histogram("textstream_time_to_first_char_seconds", "Time from a request's "
                                            "arrival to its first generated character", buckets=LATENCY_BUCKETS,
                                            registry=r)
        self.batch = Histogram("textstream_batch_streams", "Streams stepped together in one engine call",
                               buckets=BATCH_BUCKETS, registry=r)
        self.calls = Counter("textstream_engine_calls", "Generating calls of the engine", registry=r)
        self.cache_chars = Counter("textstream_prompt_cache_chars", "Prompt characters served from the prefix-state "
                                   "cache (not fed)", registry=r)
        self.cache_hits = Counter("textstream_prompt_cache_hits", "Long prompts that began with a cached one",
                                  registry=r)
        self.cache_misses = Counter("textstream_prompt_cache_misses", "Long prompts that began with no cached one",
                                    registry=r)
        for name, doc, fn in (("textstream_streams_active", "Streams admitted and not yet finished", streams),
                              ("textstream_streams_waiting", "Streams admitted whose prompt is still being fed",
                               waiting),
                              ("textstream_streams_paused", "Streams sitting out because their reader is behind",
                               paused),
                              ("textstream_connections_open", "Client connections open", connections),
                              ("textstream_prompt_cache_bytes", "Bytes the prefix-state cache holds", prefix_bytes)):
            Gauge(name, doc, registry=r).set_function(fn)
        Gauge("textstream_streams_max", "Streams generated at once at most (--max-streams)",
              registry=r).set(max_streams)
        Info("textstream_model", "The model served", registry=r).info(
            {"model": model, "layers": str(layers), "units": str(units), "vocab_size": str(vocab_size),
             "backend": backend})

    # --- what the server reports -----------------------------------------------------------------------
    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.duration.labels(route).observe(seconds)

    def error(self, type_: str) -> None:
        self.errors.labels(type_).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def generated(self, chars: int) -> None:
        if chars:
            self.generated_chars.inc(chars)

    def first_char(self, seconds: float) -> None:
        self.first_char_seconds.observe(seconds)

    def engine_call(self, batch: int, k: int, fed: int) -> None:
        """The engine thread, after each backend call: ``batch`` streams, ``k`` generated each, ``fed`` prompt ids."""
        if fed:
            self.prompt_chars.inc(fed)
        if k:
            self.calls.inc()
            self.batch.observe(batch)

    def prefix(self, chars: int) -> None:
        """The engine thread, after a lookup in the prefix cache: ``chars`` prompt ids served from it (0: a miss)."""
        if chars:
            self.cache_hits.inc()
            self.cache_chars.inc(chars)
        else:
            self.cache_misses.inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every metric as ``(body, content type)``, in the format the ``Accept`` header asks: Prometheus text
        (version 0.0.4 by default) or OpenMetrics, chosen as ``prometheus_client``'s own handlers choose."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
