"""Scoring benchmark: ``textstream score``'s memory against the text's size, and scoring's speed beside generation's.

Models with RANDOM weights (speed does not depend on them), saved as run
directories as ``tools.bench.generate`` saves them. Measured, in the same run:

* memory: ``textstream score RUN FILE`` (and ``--lines``) spawned on a
  ``--small-mb`` and a ``--big-mb`` file of the corpus's text, numpy backend,
  ``--memory-preset`` model; each child's peak RSS (its ``VmHWM``): the big
  file's over the small file's is the figure (constant memory: about 1);
* speed, in this process, ``--preset`` model, both backends:
  ``Generator.score`` of one long text (``--long-chars``), ``score_many`` of
  ``--lines`` lines of the corpus, and one stream of ``Session.sample`` (best
  of 3) beside them: the single-stream generation baseline.

    python -m tools.bench.score                              # 1 MB against 30 MB; the tiny and default presets
    python -m tools.bench.score --big-mb 8 --long-chars 50000

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.generate import best_rate, corpus_text, make_run

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("numpy", "tf")


def write_text(path: Path, body: str, megabytes: float) -> int:
    """``body`` repeated into ``path`` up to ``megabytes`` MB (whole lines); returns the bytes written."""
    want, written = int(megabytes * 1e6), 0
    data = body.encode("utf-8")
    with open(path, "wb") as f:
        while written < want:
            piece = data[:want - written]
            cut = piece.rfind(b"\n") + 1 if len(piece) < len(data) else len(piece)
            piece = piece[:cut or len(piece)]
            f.write(piece)
            written += len(piece)
    return written


_CHILD = """
import sys
from textstream.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
print(f"VmHWM {peak}", file=sys.stderr)
sys.exit(rc)
"""


def peak_rss_mb(run: Path, path: Path, *extra: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of ``textstream score RUN PATH EXTRA`` in a child process.

    The child reports its own ``VmHWM`` (the high-water mark of its memory,
    which starts anew at exec): ``wait4``'s ``ru_maxrss`` would include the
    RSS it had as a fork of this process, TensorFlow and all.
    """
    cmd = [sys.executable, "-c", _CHILD, "score", str(run), str(path), "--backend", "numpy", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0 or "VmHWM" not in err:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed: {err[-500:]}")
    peak_kb = int(err.rsplit("VmHWM ", 1)[1].split()[0])
    return peak_kb / 1024, elapsed


def memory(run: Path, body: str, tmp: Path, args) -> dict:
    """Peak RSS of whole-file and ``--lines`` scoring of the small and the big file."""
    sizes = {"small": args.small_mb, "big": args.big_mb}
    files = {name: tmp / f"{name}.txt" for name in sizes}
    out: dict = {"bytes": {name: write_text(files[name], body, mb) for name, mb in sizes.items()}}
    for mode, extra in (("file", ()), ("lines", ("--lines",))):
        figures = {name: peak_rss_mb(run, files[name], *extra) for name in sizes}
        out[mode] = {name: {"peak_rss_mb": rss, "seconds": s} for name, (rss, s) in figures.items()}
        out[mode]["ratio"] = figures["big"][0] / figures["small"][0]
        print(f"[memory {mode}] peak RSS {figures['small'][0]:.1f} MB for {args.small_mb:g} MB "
              f"({figures['small'][1]:.1f} s), {figures['big'][0]:.1f} MB for {args.big_mb:g} MB "
              f"({figures['big'][1]:.1f} s): {out[mode]['ratio']:.3f}x", flush=True)
    return out


def speed(run: Path, body: str, args) -> dict:
    """Per backend: scoring chars/s of one long text and of many lines, and single-stream generation chars/s."""
    from textstream.generation.generator import Generator

    long_text = (body * (args.long_chars // max(1, len(body)) + 1))[:args.long_chars]
    lines = [line for line in body.split("\n") if line][:args.lines]
    while len(lines) < args.lines:
        lines += lines[:args.lines - len(lines)]
    line_chars = sum(map(len, lines))
    out = {}
    for backend in BACKENDS:
        gen = Generator.load(run, backend=backend)
        gen.score(long_text[:600])  # compile / warm
        gen.score_many(lines[:200])
        r = out[backend] = {}
        r["long_chars_per_s"], _ = best_rate(lambda: gen.score(long_text).chars, args.repeats)
        r["lines_chars_per_s"], _ = best_rate(lambda: sum(s.chars for s in gen.score_many(lines)), args.repeats)
        s = gen.session(long_text[:60], seed=1)
        s.sample(2000)
        r["generate_single_chars_per_s"], _ = best_rate(lambda: len(s.sample(args.generate_chars)), 3)
        print(f"[speed {backend}] score one text of {len(long_text):,} chars: {r['long_chars_per_s']:,.0f} chars/s; "
              f"{len(lines):,} lines ({line_chars:,} chars): {r['lines_chars_per_s']:,.0f} chars/s; single-stream "
              f"generation: {r['generate_single_chars_per_s']:,.0f} chars/s", flush=True)
        r["long_over_generate"] = r["long_chars_per_s"] / r["generate_single_chars_per_s"]
        r["lines_over_generate"] = r["lines_chars_per_s"] / r["generate_single_chars_per_s"]
    out["line_count"], out["line_chars"], out["long_chars"] = len(lines), line_chars, len(long_text)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", help="model of the speed figures (default: default)")
    p.add_argument("--memory-preset", default="tiny", help="model of the memory figures (default: tiny, the fastest)")
    p.add_argument("--small-mb", type=float, default=1.0)
    p.add_argument("--big-mb", type=float, default=30.0)
    p.add_argument("--long-chars", type=int, default=100_000, help="characters of the one long text")
    p.add_argument("--lines", type=int, default=10_000, help="lines scored as a batch")
    p.add_argument("--generate-chars", type=int, default=20_000, help="characters per single-stream measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)

    text, source = corpus_text()
    load = os.getloadavg()[0]
    print(f"corpus: {source} ({len(text):,} chars); weights: random; load average {load:.2f} on {os.cpu_count()} "
          f"CPUs (shared: ratios within this run mean more than wall-clock figures)", flush=True)
    results: dict = {"corpus": source, "load_average_start": load}
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        tmp = Path(tmp)
        (tmp / "speed").mkdir()
        run, cfg, _, _ = make_run(tmp / "speed", args.preset, text)
        body = text.lower() if cfg.lowercase else text
        results["speed"] = speed(run, body, args)
        results["speed"]["model"] = f"{args.preset}: {cfg.layers}x{cfg.units}"
        if not args.skip_memory:
            (tmp / "memory").mkdir()
            run, cfg, _, _ = make_run(tmp / "memory", args.memory_preset, text)
            body = text.lower() if cfg.lowercase else text
            results["memory"] = memory(run, body, tmp, args)
            results["memory"]["model"] = f"{args.memory_preset}: {cfg.layers}x{cfg.units}"
    results["load_average_end"] = os.getloadavg()[0]
    summary = {"score_long_numpy_chars_per_s": results["speed"]["numpy"]["long_chars_per_s"],
               "score_lines_numpy_chars_per_s": results["speed"]["numpy"]["lines_chars_per_s"],
               "generate_single_numpy_chars_per_s": results["speed"]["numpy"]["generate_single_chars_per_s"]}
    if "memory" in results:
        summary.update(memory_ratio_file=results["memory"]["file"]["ratio"],
                       memory_ratio_lines=results["memory"]["lines"]["ratio"])
    print(json.dumps({**summary, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
