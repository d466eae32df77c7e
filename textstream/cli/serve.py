"""``textstream serve``: an OpenAI-compatible HTTP server for a trained run (the ``serve`` extra).

A thin skin over ``textstream.serve``: checks the options, loads the run,
compiles the step model for every batch size, listens, and on SIGTERM or
Ctrl-C drains (no new requests; running streams get ``--grace`` seconds;
exit 0). Status lines go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from pathlib import Path

from textstream.cli.options import positive_int
from textstream.errors import TextstreamError
from textstream.generation.backends import BACKENDS
from textstream.generation.generator import Generator
from textstream.model.run import CHECKPOINTS, existing_run
from textstream.serve.limits import check_api_key, default_max_connections, reserve_fds

HELP = "serve a trained run over HTTP (OpenAI-compatible completions, continuous batching)"
DESCRIPTION = ("Serve a run over HTTP: POST /v1/completions and /v1/chat/completions (OpenAI's API, streaming "
               "or not; tokens are characters), GET /v1/models, GET /health, GET /metrics (Prometheus) and a "
               'playground page at GET /. Needs the serve extra: pip install "textstream[serve]".')
API_KEY_ENV = "TEXTSTREAM_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-streams", type=positive_int, default=256, metavar="N",
                   help="completions generated at once; beyond it requests get 429 (default 256)")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1/ (default: ${API_KEY_ENV}, else none)")
    p.add_argument("--model-name", metavar="NAME", help="the model id clients send (default: RUN_DIR's name)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--backend", choices=BACKENDS, default="tf",
                   help="step backend (default tf: the compiled XLA step, every core even for a few streams; "
                        "numpy: no TensorFlow)")
    p.add_argument("--max-tokens", type=positive_int, default=4096, metavar="N",
                   help="largest max_tokens (characters) a request may ask (default 4096)")
    p.add_argument("--max-n", type=positive_int, default=16, metavar="N", help="largest n (default 16)")
    p.add_argument("--max-prompt-chars", type=positive_int, default=262144, metavar="N",
                   help="longest prompt (or chat's messages together) in characters (default 262144)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, metavar="N",
                   help="largest request body (default 1048576)")
    p.add_argument("--max-connections", type=positive_int, default=None, metavar="N",
                   help="client connections open at once; past it a 503 (default 1024, fewer if ulimit -n is lower)")
    p.add_argument("--read-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a request's headers, then its body, must arrive within it; idle connections close after "
                        "it (default 10)")
    p.add_argument("--prefix-cache-mb", type=float, default=64.0, metavar="MB",
                   help="memory for the states after long prompts, so a prompt that repeats or extends one is not "
                        "fed again (default 64; 0: no cache)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long running streams may take to finish (default 10)")


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream serve``; returns the exit status."""
    if any(importlib.util.find_spec(name) is None for name in ("aiohttp", "prometheus_client")):
        raise TextstreamError('serve needs the serve extra: pip install "textstream[serve]"')
    if not 0 <= args.port <= 65535:
        raise TextstreamError(f"--port must be in [0, 65535] (got {args.port})")
    if not 0 <= args.grace < float("inf"):
        raise TextstreamError(f"--grace must be a number >= 0 (got {args.grace})")
    if not 0 <= args.prefix_cache_mb < float("inf"):
        raise TextstreamError(f"--prefix-cache-mb must be a number >= 0 (got {args.prefix_cache_mb})")
    if not 0 < args.read_timeout < float("inf"):
        raise TextstreamError(f"--read-timeout must be a number > 0 (got {args.read_timeout})")
    api_key = _api_key(args.api_key)
    max_connections = args.max_connections or default_max_connections()
    reserve_fds(max_connections)
    paths = existing_run(args.run_dir)
    name = args.model_name or paths.root.resolve().name

    from textstream.serve.app import ServeConfig, Server, serve
    from textstream.serve.protocol import Limits  # with app: aiohttp, imported only here

    config = ServeConfig(host=args.host, port=args.port, max_streams=args.max_streams, api_key=api_key,
                         limits=Limits(model=name, max_tokens=args.max_tokens, max_n=args.max_n,
                                       max_prompt_chars=args.max_prompt_chars),
                         max_body_bytes=args.max_body_bytes, max_connections=max_connections,
                         read_timeout_s=args.read_timeout, metrics=not args.no_metrics, grace_s=args.grace,
                         prefix_cache_mb=args.prefix_cache_mb)
    logging.basicConfig(format="textstream serve: %(levelname)s: %(message)s")  # faults, with their traceback
    _status(f"loading {paths.root} and compiling for up to {args.max_streams} streams")
    server = Server(Generator.load(paths.root, args.checkpoint, warm=False, backend=args.backend), config)
    server.warm()

    def ready(host: str, port: int) -> None:
        _status(f"serving model {name!r} on http://{_url_host(host)}:{port}/v1 (Ctrl-C or SIGTERM drains and stops)")

    try:
        asyncio.run(serve(server, on_ready=ready))
    except OSError as e:  # the address is taken or cannot be bound
        raise TextstreamError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    _status("stopped")
    return 0


def _api_key(given: str | None) -> str | None:
    """The key from ``--api-key``, else from ``$TEXTSTREAM_API_KEY``; an empty one (set but blank) is an error."""
    if given is not None:
        return check_api_key(given, "--api-key")
    env = os.environ.get(API_KEY_ENV)
    return None if env is None else check_api_key(env, f"${API_KEY_ENV}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _status(line: str) -> None:
    print(f"textstream serve: {line}", file=sys.stderr, flush=True)
