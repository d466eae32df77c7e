"""Serving benchmark: `textstream serve` under 1, 16, 64 and 256 concurrent streaming clients.

The model is the default 5-minute model of the embedded corpus, trained once
with ``textstream train --time-budget 5 -o RUN`` (skipped when ``--run``
already holds a checkpoint; on a machine shared with other work the 5
minutes buy fewer training steps, which changes the text but not the cost of
a step: the benchmark measures throughput, not quality).

The server runs in a child process (``textstream serve RUN --port 0``); the
clients are aiohttp coroutines in this process, each asking for ``--chars``
characters with ``stream: true`` (seed = client index, temperature 1). Per
round: aggregate chars/s (all characters over the round's wall time),
per-client chars/s (median and slowest), time to first character p50/p99
(from sending the request to the first non-empty text), errors (a non-200,
an exception, a missing ``[DONE]`` or a short text), the server's peak RSS.

The baseline, in the same run: in-process ``Generator.generate`` on 64
streams of ``--chars`` characters (the same prompt), measured in ``--pairs``
alternating pairs with a 64-client round (on a shared machine the load drifts
less within a pair); the ratio is the median of the pairs' ratios. Also per
round: the server's calls, characters per stream per call, and characters
per CPU-second of the server process (a cost figure less sensitive to other
load than chars/s). Targets: ratio >= 0.7, p99 time to first character
<= 100 ms at 64 clients, no errors at 256.

    python -m tools.bench.serve --run runs/bench-default
    python -m tools.bench.serve --run runs/bench-default --clients 64 --chars 500

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The "
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           TF_CPP_MIN_LOG_LEVEL="2")


def ensure_run(run: Path, minutes: float) -> None:
    """Train the default model of the embedded corpus into ``run`` unless it already has a checkpoint."""
    if (run / "checkpoints").exists():
        print(f"reusing {run}", file=sys.stderr)
        return
    print(f"training {run} for {minutes:g} minutes (once; reused with --run)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "textstream", "train", "--time-budget", str(minutes), "-o", str(run),
                    "--no-samples"], check=True, env=ENV)


class Baseline:
    """In-process ``Generator.generate`` on 64 streams of ``chars`` characters (the same prompt as the clients)."""

    def __init__(self, run: Path, chars: int):
        from textstream.generation.generator import Generator

        self.gen = Generator.load(run, warm=64)
        self.chars = chars
        self.calls = 0

    def measure(self) -> tuple[float, float]:
        """``(characters per wall second, per CPU second of this process)`` of one batch."""
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(map(len, self.gen.generate([PROMPT] * 64, self.chars, seed=64 * self.calls)))
        self.calls += 1
        return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def start_server(run: Path, max_streams: int, chars: int) -> tuple[subprocess.Popen, str]:
    """The server child process and its base URL (once it says it listens)."""
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "serve", str(run), "--port", "0",
                             "--max-streams", str(max_streams), "--max-tokens", str(max(chars, 4096)),
                             "--model-name", "bench"], stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stderr:
        m = re.search(r"on (http://\S+)/v1 ", line)
        if m:
            return proc, m.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def proc_status(pid: int) -> dict:
    """The process's peak resident set size (MB) and CPU seconds so far (all threads)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), float("nan"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return {"peak_rss_mb": rss, "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return json.load(r)


async def client(session, url: str, seed: int, chars: int) -> dict:
    """One streaming completion: start, first-character and end times, characters, error."""
    body = {"model": "bench", "prompt": PROMPT, "max_tokens": chars, "seed": seed, "stream": True}
    res = {"start": time.perf_counter(), "first": None, "end": None, "chars": 0, "error": None}
    try:
        async with session.post(url + "/v1/completions", json=body) as r:
            if r.status != 200:
                res["error"] = f"HTTP {r.status}: {(await r.text())[:200]}"
                return res
            done = False
            async for line in r.content:
                if line.startswith(b"data: {"):
                    text = json.loads(line[6:])["choices"][0]["text"]
                    if text and res["first"] is None:
                        res["first"] = time.perf_counter()
                    res["chars"] += len(text)
                elif line.startswith(b"data: [DONE]"):
                    done = True
            if not done or res["chars"] != chars:
                res["error"] = f"{res['chars']} characters, [DONE] {'seen' if done else 'missing'}"
    except Exception as e:  # noqa: BLE001: every failure is counted, none stops the round
        res["error"] = repr(e)
    res["end"] = time.perf_counter()
    return res


async def round_of(url: str, clients: int, chars: int, seed0: int) -> list[dict]:
    conn = aiohttp.TCPConnector(limit=0)  # no cap on connections: every client has its own
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        return await asyncio.gather(*(client(session, url, seed0 + i, chars) for i in range(clients)))


def summarise(results: list[dict], clients: int) -> dict:
    ok = [r for r in results if r["error"] is None]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    ttfc = [1e3 * (r["first"] - r["start"]) for r in ok if r["first"] is not None]
    per = [r["chars"] / (r["end"] - r["start"]) for r in ok]
    return {"clients": clients, "aggregate_chars_per_s": sum(r["chars"] for r in results) / wall,
            "per_client_chars_per_s_median": float(np.median(per)) if per else 0.0,
            "per_client_chars_per_s_min": min(per) if per else 0.0,
            "ttfc_p50_ms": float(np.percentile(ttfc, 50)) if ttfc else None,
            "ttfc_p99_ms": float(np.percentile(ttfc, 99)) if ttfc else None,
            "errors": len(results) - len(ok), "first_error": next((r["error"] for r in results if r["error"]), None),
            "wall_s": wall}


def measure_round(url: str, proc: subprocess.Popen, clients: int, chars: int, seed0: int) -> dict:
    """One round of ``clients`` concurrent streams, with the server's calls, characters per call and CPU time."""
    before, cpu0 = health(url), proc_status(proc.pid)["cpu_s"]
    row = summarise(asyncio.run(round_of(url, clients, chars, seed0)), clients)
    after, status = health(url), proc_status(proc.pid)
    calls = after["calls"] - before["calls"]
    row.update(server_peak_rss_mb=status["peak_rss_mb"], server_calls=calls,
               chars_per_stream_per_call=(after["chars"] - before["chars"]) / max(1, calls) / clients,
               server_chars_per_cpu_s=clients * chars / max(status["cpu_s"] - cpu0, 1e-9))
    return row


def show(row: dict) -> None:
    print(f"{row['clients']:4d} clients: {row['aggregate_chars_per_s']:9,.0f} chars/s aggregate, "
          f"{row['per_client_chars_per_s_median']:8,.0f} per client (median; slowest "
          f"{row['per_client_chars_per_s_min']:,.0f}), first character p50 {row['ttfc_p50_ms']:.1f} ms "
          f"p99 {row['ttfc_p99_ms']:.1f} ms, {row['errors']} errors, "
          f"server peak RSS {row['server_peak_rss_mb']:.0f} MB, "
          f"{row['server_calls']} calls (~{row['chars_per_stream_per_call']:.0f} chars/stream/call), "
          f"server {row['server_chars_per_cpu_s']:,.0f} chars/CPU-s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-serve-default",
                   help="the run directory (trained here first when it has no checkpoint)")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget when the run must be trained")
    p.add_argument("--clients", default="1,16,64,256", help="concurrent clients per round")
    p.add_argument("--chars", type=int, default=2000, help="characters each client asks for")
    p.add_argument("--pairs", type=int, default=3,
                   help="alternating (baseline, 64 clients) pairs for the ratio (the machine may be shared)")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    ensure_run(args.run, args.minutes)
    load_before = os.getloadavg()
    base = Baseline(args.run, args.chars)
    proc, url = start_server(args.run, max(counts), args.chars)
    rounds, pairs = [], []
    try:
        asyncio.run(round_of(url, 4, 100, 10_000))  # a first request through every layer
        for i, c in enumerate(counts):
            rounds.append(measure_round(url, proc, c, args.chars, 1000 * i))
            show(rounds[-1])
        for j in range(args.pairs):  # the ratio from pairs measured back to back: load drifts less within a pair
            wall, cpu = base.measure()
            row = measure_round(url, proc, 64, args.chars, 100_000 + 1000 * j)
            pairs.append({"baseline_chars_per_s": wall, "baseline_chars_per_cpu_s": cpu, "served": row,
                          "ratio": row["aggregate_chars_per_s"] / wall})
            print(f"pair {j + 1}: in-process batch 64 {wall:,.0f} chars/s ({cpu:,.0f} per CPU-s) | "
                  f"served to 64 clients {row['aggregate_chars_per_s']:,.0f} chars/s "
                  f"(p99 first character {row['ttfc_p99_ms']:.1f} ms): {pairs[-1]['ratio']:.2f}x", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    ratio = float(np.median([q["ratio"] for q in pairs])) if pairs else None
    ttfc64 = [r["ttfc_p99_ms"] for r in rounds if r["clients"] == 64] + [q["served"]["ttfc_p99_ms"] for q in pairs]
    at = {r["clients"]: r for r in rounds}
    result = {"baseline_batch64_chars_per_s": float(np.median([q["baseline_chars_per_s"] for q in pairs]))
              if pairs else None, "rounds": rounds, "pairs": pairs, "ratio_64_vs_baseline": ratio,
              "ttfc_p99_ms_64_worst": max(ttfc64) if ttfc64 else None, "load_avg_before": load_before,
              "load_avg_after": os.getloadavg(), "cpus": os.cpu_count(), "chars_per_client": args.chars}
    if ratio is not None:
        result["target_ratio_0_7"] = ratio >= 0.7
        result["target_ttfc_p99_100ms"] = max(ttfc64) <= 100
        print(f"64 clients / in-process batch 64: {ratio:.2f}x (median of {len(pairs)} pairs)")
    if 256 in at:
        result["target_no_errors_256"] = at[256]["errors"] == 0
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
