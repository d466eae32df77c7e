"""Preparation benchmark: throughput and peak memory of ``textstream prepare`` on real text.

Builds (or reuses) a ``--size-mb`` real-text corpus with ``tools.dev.realtext``
in ``--cache-dir`` (default ``$TEXTSTREAM_CACHE/bench`` or
``~/.cache/textstream/bench``, shared with ``tools.bench.train``), then runs

    python -m textstream prepare CORPUS -o OUT

in a child process, twice: a cold run (hash + count + encode) and a second run
that must hit the cache (hash only). Reports the cold run's wall time, MB/s
(corpus bytes / wall time, interpreter start included), CPU time and peak RSS
(the child's own ``ru_maxrss`` from ``os.wait4``).

Targets: >= 50 MB/s and peak RSS <= 300 MB, at any corpus size.

    python -m tools.bench.prepare                 # 100 MB
    python -m tools.bench.prepare --size-mb 10

The last line of stdout is JSON with ``size_mb``, ``mb_per_s``, ``peak_rss_mb``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.dev.realtext import build_corpus

ROOT = Path(__file__).resolve().parents[2]
TARGET_MB_PER_S = 50.0
TARGET_RSS_MB = 300.0


def default_cache_dir() -> Path:
    base = os.environ.get("TEXTSTREAM_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "textstream") / "bench"


def run_child(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time, exit status, peak RSS (MiB) and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=100.0, help="corpus size in MB (default 100)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the real-text corpus is kept (default $TEXTSTREAM_CACHE/bench)")
    args = p.parse_args(argv)

    cache = args.cache_dir or default_cache_dir()
    t0 = time.perf_counter()
    corpus = build_corpus(cache / f"realtext-{args.size_mb:g}mb.txt", args.size_mb)
    size = corpus.stat().st_size
    print(f"corpus {corpus}: {size / 1e6:,.1f} MB (ready in {time.perf_counter() - t0:.1f} s)", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        env = dict(os.environ, TEXTSTREAM_CACHE=str(work / "cache"), PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-m", "textstream", "prepare", str(corpus), "-o", str(work / "out")]
        print("$ " + " ".join(cmd), flush=True)
        cold = run_child(cmd, env)
        if cold["rc"] != 0:
            print(cold["stderr"], file=sys.stderr)
            raise SystemExit(f"tools.bench.prepare: prepare failed with exit status {cold['rc']}")
        warm = run_child(cmd, env)
        if warm["rc"] != 0 or "cached" not in warm["stderr"]:
            print(warm["stderr"], file=sys.stderr)
            raise SystemExit("tools.bench.prepare: the second run did not hit the cache")
        out_bytes = sum(f.stat().st_size for f in (work / "out").iterdir())
        # what the same child spends starting up (interpreter, numpy, the CLI): no corpus can go faster
        startup = run_child([sys.executable, "-c", "import textstream.cli, textstream.data.preparation, rich.console"], env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb_per_s = size / 1e6 / cold["wall_s"]
    ok_speed, ok_rss = mb_per_s >= TARGET_MB_PER_S, cold["peak_rss_mb"] <= TARGET_RSS_MB
    print(f"  {cold['stderr'].strip()}")
    print(f"cold:  {cold['wall_s']:.2f} s = {mb_per_s:.1f} MB/s (target >= {TARGET_MB_PER_S:g}: "
          f"{'ok' if ok_speed else 'MISSED'}), peak RSS {cold['peak_rss_mb']:.0f} MiB "
          f"(target <= {TARGET_RSS_MB:g}: {'ok' if ok_rss else 'MISSED'}), {out_bytes / 1e6:,.1f} MB written")
    print(f"       {cold['cpu_s']:.2f} s of CPU (user + sys, all threads) = {size / 1e6 / cold['cpu_s']:.1f} MB per "
          f"CPU-second (less sensitive to other load on a shared machine)")
    net = size / 1e6 / max(cold["wall_s"] - startup["wall_s"], 1e-9)
    print(f"       start-up (imports) {startup['wall_s']:.2f} s; without it {net:.1f} MB/s")
    print(f"cache: {warm['wall_s']:.2f} s = {size / 1e6 / warm['wall_s']:.1f} MB/s, "
          f"peak RSS {warm['peak_rss_mb']:.0f} MiB")
    print(json.dumps({"size_mb": round(size / 1e6, 3), "wall_s": round(cold["wall_s"], 3),
                      "mb_per_s": round(mb_per_s, 1), "peak_rss_mb": round(cold["peak_rss_mb"], 1),
                      "cpu_s": round(cold["cpu_s"], 3), "startup_s": round(startup["wall_s"], 3),
                      "mb_per_s_after_startup": round(net, 1),
                      "cached_wall_s": round(warm["wall_s"], 3), "cached_peak_rss_mb": round(warm["peak_rss_mb"], 1),
                      "targets_met": ok_speed and ok_rss}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
