"""Training benchmark: textstream's ``--preset seed`` against the original example, in one run.

1. Throughput. The same model (1x LSTM(128) over one-hot input, next-character
   objective, RMSprop 0.01) trained for the same number of steps of the same
   batch (1024, the seed preset's) on the same corpus, each in its own child
   process:
   (a) ``python -m textstream train CORPUS -o RUN --preset seed --steps N --no-samples --val-fraction 0``
       (steady-state ``char_steps_per_s`` from the ``end`` record of ``RUN/metrics.jsonl``);
   (b) ``python -m tools.baselines.seed CORPUS --steps N --batch-size 1024 --val-split 0``
       (the original: in-memory one-hot arrays and ``model.fit``).
   Both rates leave out the first two steps (tracing and compiling). Reported:
   each rate and ``throughput_ratio`` = textstream / baseline (target >= 1.0).

2. Memory. Peak RSS of ``textstream train`` on a 10 MB and a ``--big-mb`` (default
   4096) real-text corpus built by ``tools.dev.realtext`` and cached in
   ``--cache-dir`` (default ``bench/`` in textstream's cache directory).
   Each corpus is first trained for one step in a throwaway run, which prepares
   it (textstream caches preparation by content), so the measured run's peak is
   training's, not preparation's; the preparing run's peak is reported too.
   Targets: the big corpus's peak within 1.15x of the 10 MB one, and under 1.5 GB.
   Both memory runs pass ``--max-vocab 128`` (``--rss-max-vocab``): the
   real-text corpora hold more distinct characters the bigger they are (163 in
   10 MB, 6,550 in 100 MB), and the one-hot seed model's batch, weights and
   gradients grow with the vocabulary, which would hide what this measures
   (whether memory grows with the corpus).

Every peak RSS is one child's own (``os.wait4``'s rusage of that child), never
this process's or a sum over children.

    python -m tools.bench.train                          # nietzsche, 60 steps, 10 MB and 4 GB corpora
    python -m tools.bench.train --steps 20 --big-mb 200  # a quicker check
    python -m tools.bench.train --no-rss --repeats 3     # throughput only, medians of 3 alternating runs

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.dev.realtext import build_corpus

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = Path("/work/shared/corpora/nietzsche.txt")
SEQ_LEN = 60  # the seed preset's window, as in the original
RSS_LIMIT_MB = 1500  # "under 1.5 GB", read conservatively (MiB, as ru_maxrss / 1024 gives)


def seed_batch_size() -> int:
    from textstream.config import PRESETS  # no TensorFlow behind this import

    return int(PRESETS["seed"]["batch_size"])


def default_cache_dir() -> Path:
    """``bench/`` in textstream's cache (``$TEXTSTREAM_CACHE``, ``$XDG_CACHE_HOME/textstream`` or ``~/.cache/textstream``)."""
    from textstream.data.sources import cache_dir  # no TensorFlow behind this import

    return cache_dir() / "bench"


class ChildFailed(RuntimeError):
    pass


def run_child(cmd: list[str], log_dir: Path, name: str, *, env: dict | None = None, preexec_fn=None) -> dict:
    """Run ``cmd`` to completion; its output goes to ``log_dir/name.{out,err}``.

    Returns ``rc``, ``wall_s``, ``peak_rss_mb`` (the child's own ru_maxrss, via
    ``os.wait4``) and ``stdout``. Raises ``ChildFailed`` with the stderr tail on a
    non-zero exit. ``env``: the child's whole environment (default: this one, with
    this checkout first on PYTHONPATH); ``preexec_fn``: run in the child before it execs.
    """
    if env is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env, preexec_fn=preexec_fn)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise ChildFailed(f"{name} exited with {proc.returncode}: {' '.join(cmd)}\n  " + "\n  ".join(tail))
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def last_json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def textstream_train(corpus: Path, run_dir: Path, steps: int, log_dir: Path, name: str,
                     extra: list[str] = ()) -> dict:
    """One ``textstream train --preset seed`` child; its ``end`` record, vocabulary size, wall time and peak RSS."""
    cmd = [sys.executable, "-m", "textstream", "train", str(corpus), "-o", str(run_dir), "--preset", "seed",
           "--steps", str(steps), "--no-samples", "--val-fraction", "0", *extra]
    child = run_child(cmd, log_dir, name)
    end = None
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("kind") == "end":
                    end = rec
    if end is None:
        raise ChildFailed(f"{name}: no end record in {metrics}")
    vocab = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))
    return {**child, "end": end, "vocab_size": len(vocab["chars"])}


def baseline_train(corpus: Path, steps: int, batch_size: int, log_dir: Path, name: str = "seed_baseline") -> dict:
    cmd = [sys.executable, "-m", "tools.baselines.seed", str(corpus), "--steps", str(steps),
           "--batch-size", str(batch_size), "--val-split", "0"]
    child = run_child(cmd, log_dir, name)
    return {**child, "result": last_json_line(child["stdout"])}


def real_corpus(cache_dir: Path, size_mb: float) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(build_corpus(cache_dir / f"realtext-{size_mb:g}mb.txt", size_mb))


def rss_for_corpus(corpus: Path, steps: int, work: Path, log_dir: Path, label: str, max_vocab: int) -> dict:
    extra = ["--max-vocab", str(max_vocab)] if max_vocab else []
    warm = textstream_train(corpus, work / f"warm-{label}", 1, log_dir, f"textstream-prepare-{label}", extra)
    run = textstream_train(corpus, work / f"run-{label}", steps, log_dir, f"textstream-{label}", extra)
    return {"prepare_peak_rss_mb": warm["peak_rss_mb"], "prepare_wall_s": warm["wall_s"],
            "peak_rss_mb": run["peak_rss_mb"], "wall_s": run["wall_s"], "vocab_size": run["vocab_size"],
            "char_steps_per_s": run["end"].get("char_steps_per_s")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Benchmark textstream's seed preset against the original example.")
    p.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS,
                   help=f"corpus for the throughput comparison (default {DEFAULT_CORPUS})")
    p.add_argument("--steps", type=int, default=60, help="training steps of each run (default 60)")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate textstream and baseline runs this many times; rates are medians (default 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the seed preset's (1024)")
    p.add_argument("--small-mb", type=float, default=10.0, help="size of the small RSS corpus (default 10)")
    p.add_argument("--big-mb", type=float, default=4096.0, help="size of the big RSS corpus (default 4096; 0 skips it)")
    p.add_argument("--rss-max-vocab", type=int, default=128, metavar="N",
                   help="--max-vocab for the memory runs, so both corpora have the same vocabulary "
                        "(default 128; 0: uncapped, and then the vocabulary grows with the corpus)")
    p.add_argument("--rss-steps", type=int, default=None, help="steps of the RSS runs (default: --steps)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the real-text corpora are kept")
    p.add_argument("--no-compare", action="store_true", help="skip the throughput comparison")
    p.add_argument("--no-rss", action="store_true", help="skip the 10 MB / big corpus memory runs")
    p.add_argument("--keep", action="store_true", help="keep the run directories and child logs")
    args = p.parse_args(argv)
    batch = args.batch_size or seed_batch_size()
    rss_steps = args.rss_steps or args.steps
    cache_dir = args.cache_dir or default_cache_dir()
    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    log_dir = work / "logs"
    log_dir.mkdir()
    result: dict = {"corpus": str(args.corpus), "steps": args.steps, "batch_size": batch}
    try:
        if not args.no_compare:
            print(f"throughput: {args.steps} steps of batch {batch} on {args.corpus}", flush=True)
            textstream_train(args.corpus, work / "warm", 1, log_dir, "textstream-prepare")
            ts_runs, base_runs = [], []
            for r in range(args.repeats):  # alternate, so slow spells on a shared machine hit both
                ts = textstream_train(args.corpus, work / f"run{r}", args.steps, log_dir, f"textstream{r}",
                                      ["--batch-size", str(batch)])
                ts_runs.append(ts)
                print(f"  textstream: {ts['end']['char_steps_per_s']:,.0f} char-steps/s "
                      f"({ts['end']['windows_per_s']:,.0f} windows/s), peak RSS {ts['peak_rss_mb']:,.0f} MiB, "
                      f"{ts['wall_s']:.0f} s wall", flush=True)
                base = baseline_train(args.corpus, args.steps, batch, log_dir, f"seed_baseline{r}")
                base_runs.append(base)
                b = base["result"]
                print(f"  baseline:   {b['char_steps_per_s']:,.0f} char-steps/s ({b['windows_per_s']:,.0f} windows/s), "
                      f"peak RSS {base['peak_rss_mb']:,.0f} MiB, {base['wall_s']:.0f} s wall", flush=True)
            ts_rate = statistics.median(t["end"]["char_steps_per_s"] for t in ts_runs)
            base_rate = statistics.median(b["result"]["char_steps_per_s"] for b in base_runs)
            ratio = ts_rate / base_rate
            print(f"  ratio textstream / baseline: {ratio:.2f}x (target >= 1.0)"
                  + (f", medians of {args.repeats}" if args.repeats > 1 else ""), flush=True)
            result.update({
                "throughput_ratio": ratio,
                "char_steps_per_s_textstream": ts_rate, "char_steps_per_s_seed": base_rate,
                "windows_per_s_textstream": ts_rate / SEQ_LEN, "windows_per_s_seed": base_rate / SEQ_LEN,
                "peak_rss_mb_seed": max(b["peak_rss_mb"] for b in base_runs),
                "peak_rss_mb_textstream": max(t["peak_rss_mb"] for t in ts_runs),
                "wall_s_textstream": statistics.median(t["wall_s"] for t in ts_runs),
                "wall_s_seed": statistics.median(b["wall_s"] for b in base_runs),
                "repeats": args.repeats,
            })
        if not args.no_rss:
            sizes = [("10mb", args.small_mb)] + ([("4gb", args.big_mb)] if args.big_mb > 0 else [])
            for label, size in sizes:
                print(f"memory: {size:g} MB real-text corpus ({rss_steps} steps, "
                      f"--max-vocab {args.rss_max_vocab or 'off'})", flush=True)
                t0 = time.monotonic()
                corpus = real_corpus(cache_dir, size)
                print(f"  corpus {corpus} ({corpus.stat().st_size / 1e6:,.1f} MB, "
                      f"{time.monotonic() - t0:.0f} s to build or find)", flush=True)
                r = rss_for_corpus(corpus, rss_steps, work, log_dir, label, args.rss_max_vocab)
                print(f"  prepare + 1 step: peak RSS {r['prepare_peak_rss_mb']:,.0f} MiB ({r['prepare_wall_s']:.0f} s); "
                      f"training: peak RSS {r['peak_rss_mb']:,.0f} MiB ({r['wall_s']:.0f} s), "
                      f"{r['vocab_size']} symbols", flush=True)
                result[f"peak_rss_mb_{label}"] = r["peak_rss_mb"]
                result[f"peak_rss_mb_prepare_{label}"] = r["prepare_peak_rss_mb"]
                result[f"corpus_mb_{label}"] = size
                result[f"vocab_size_{label}"] = r["vocab_size"]
            if "peak_rss_mb_4gb" in result:
                growth = result["peak_rss_mb_4gb"] / result["peak_rss_mb_10mb"]
                result["rss_growth_4gb_vs_10mb"] = growth
                print(f"  big / small peak RSS: {growth:.3f}x (target <= 1.15), "
                      f"big {result['peak_rss_mb_4gb']:,.0f} MiB (target < {RSS_LIMIT_MB})", flush=True)
    except ChildFailed as e:
        print(f"tools.bench.train: {e}\n  (logs kept in {log_dir})", file=sys.stderr)
        result["error"] = str(e).splitlines()[0]
        print(json.dumps(result))
        return 1
    targets = {}
    if "throughput_ratio" in result:
        targets["throughput_ratio>=1.0"] = result["throughput_ratio"] >= 1.0
    if "rss_growth_4gb_vs_10mb" in result:
        targets["rss_4gb<=1.15x_10mb"] = result["rss_growth_4gb_vs_10mb"] <= 1.15
        targets["rss_4gb<1.5GB"] = result["peak_rss_mb_4gb"] < RSS_LIMIT_MB
    result["targets_met"] = targets
    if args.keep:
        print(f"runs and logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
