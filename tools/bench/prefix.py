"""Prefix-state cache benchmark: time to the first character of a repeated 100 KB prompt, against the first request.

A server (in this process, its event loop in a thread) over a random-weight
model of ``--preset`` (default: the default preset, 1 x 384; generation
speed does not depend on the weights) on ``--backend`` (default tf, as
``textstream serve``). The prompt is ``--prompt-kb`` KB of the corpus
(nietzsche when it is there, else the embedded default corpus). Each request
streams 20 characters (seed 1); its time is from sending it to the first
non-empty text.

Same run, same server:

* first: the prompt, nothing cached (the baseline: the whole prompt is fed);
* repeat: the same prompt again, ``--repeats`` times (median): its state comes from the cache;
* extend: the prompt plus 1 KB more: only the new kilobyte is fed;

and, as a second baseline, a server with ``--prefix-cache-mb 0`` answering the
repeated prompt (median of ``--repeats``). Every repeated text is checked to be
the first request's text. Target: repeat <= 0.1 x first.

    python -m tools.bench.prefix
    python -m tools.bench.prefix --backend numpy --prompt-kb 100

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from tools.bench.generate import corpus_text, make_run

CHARS = 20  # characters each request streams


class InThread:
    """A ``Server`` on an ephemeral port, its event loop in a thread of its own."""

    def __init__(self, gen, cache_mb: float):
        from textstream.serve.app import ServeConfig, Server
        from textstream.serve.protocol import Limits

        self.server = Server(gen, ServeConfig(port=0, max_streams=2, max_connections=8, prefix_cache_mb=cache_mb,
                                              limits=Limits(model="bench")))
        self.server.warm()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _, port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(120)
        self.url = f"http://127.0.0.1:{port}/v1/completions"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.drain(grace_s=0), self.loop).result(120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(120)


async def first_char(url: str, prompt: str) -> tuple[float, str]:
    """Seconds from sending a streamed request to its first non-empty text, and its whole text."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": CHARS, "seed": 1, "stream": True}
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        first, text = None, []
        async with session.post(url, json=body) as r:
            assert r.status == 200, await r.text()
            async for line in r.content:
                if not line.startswith(b"data: {"):
                    continue
                piece = json.loads(line[6:])["choices"][0]["text"]
                if piece and first is None:
                    first = time.perf_counter() - t0
                text.append(piece)
    return first, "".join(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--backend", choices=("numpy", "tf"), default="tf")
    p.add_argument("--prompt-kb", type=float, default=100.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    from textstream.generation.generator import Generator

    text, source = corpus_text()
    with tempfile.TemporaryDirectory() as tmp:
        run, cfg, vocab, _ = make_run(Path(tmp), args.preset, text)
        gen = Generator.load(run, "last", backend=args.backend, warm=False)
        size = int(args.prompt_kb * 1024)
        prompt, more = text[:size], text[size:size + 1024]
        print(f"model: {args.preset} ({cfg.layers} x {cfg.units}, random weights), backend {args.backend}; prompt: "
              f"{len(prompt):,} characters of {source}", file=sys.stderr)
        on = InThread(gen, 64)
        try:
            first, want = asyncio.run(first_char(on.url, prompt))
            repeats = [asyncio.run(first_char(on.url, prompt)) for _ in range(args.repeats)]
            extend, _ = asyncio.run(first_char(on.url, prompt + more))
        finally:
            on.close()
        off = InThread(gen, 0)
        try:
            uncached = [asyncio.run(first_char(off.url, prompt)) for _ in range(max(1, args.repeats // 2))]
        finally:
            off.close()
    same = all(t == want for _, t in repeats + uncached)
    repeat = statistics.median(s for s, _ in repeats)
    off_s = statistics.median(s for s, _ in uncached)
    ratio = repeat / first
    print(f"time to the first character, {len(prompt):,}-character prompt ({args.backend}):")
    rows = [("first request (nothing cached, the baseline)", f"{first:.3f} s"),
            (f"the same prompt again (median of {args.repeats})",
             f"{repeat * 1000:.1f} ms = {ratio:.4f} x first (target <= 0.1)"),
            ("the prompt + 1 KB more", f"{extend * 1000:.1f} ms"),
            ("the same prompt again, --prefix-cache-mb 0", f"{off_s:.3f} s")]
    for label, value in rows:
        print(f"  {label + ':':<48}{value}")
    print(f"  texts identical to the first request's: {same}")
    print(json.dumps({"bench": "prefix", "preset": args.preset, "backend": args.backend, "prompt_chars": len(prompt),
                      "first_s": round(first, 4), "repeat_s": round(repeat, 5), "ratio": round(ratio, 5),
                      "extend_s": round(extend, 5), "uncached_repeat_s": round(off_s, 4), "same_text": same,
                      "target": 0.1, "ok": ratio <= 0.1 and same}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
