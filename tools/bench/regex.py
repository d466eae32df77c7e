"""Regex-constrained generation against unconstrained generation: chars/s, same run, same model, same streams.

A model of the ``default`` preset (1 x LSTM(384)) with RANDOM weights over the
corpus's characters (``tools.bench.generate.make_run``: speed does not depend
on the weights), loaded as a user would, on each backend (``numpy``, ``tf``).
Per backend, in this process, best of ``--reps`` (each constrained measurement
alternates with its unconstrained baseline, so load on the machine hits both):

* ``single``: one stream (``Session.sample``): unconstrained, then
  ``any`` = ``(?s).*`` (every character allowed, never ends: the cost of the
  mask alone), ``fixed`` = ``[a-z ,.;']{N}`` (N+1 DFA states; most characters
  forbidden; ends after exactly N), and ``short`` = ``[a-z ]+\\.`` (matches of
  a few dozen characters, a new match per call: the per-match overhead too);
* ``batch64``: 64 streams (``Generator.generate``), unconstrained, ``any`` and ``fixed``;
* ``compile_ms``: compiling each pattern for the vocabulary (``compile_constraint``).

Each constrained rate is reported beside the unconstrained one of the same
backend and batch, with their ratio; the target is ratio >= 0.5 everywhere.

    python -m tools.bench.regex                       # both backends
    python -m tools.bench.regex --backends numpy --chars 5000

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.generate import corpus_text, make_run

ANY = r"(?s).*"
SHORT = r"[a-z ]+\."
TARGET = 0.5


def fixed(n: int) -> str:
    return "[a-z ,.;']{%d}" % n


def paired(free, constrained, reps: int) -> dict:
    """Best chars/s of ``constrained`` and of ``free`` (each returns the characters it made), alternating.

    Per wall second and per CPU second of this process (the latter moves less
    when other work shares the machine).
    """
    wall, cpu = [0.0, 0.0], [0.0, 0.0]
    for _ in range(reps):
        for i, work in enumerate((free, constrained)):
            t0, c0 = time.perf_counter(), time.process_time()
            n = work()
            wall[i] = max(wall[i], n / (time.perf_counter() - t0))
            cpu[i] = max(cpu[i], n / max(time.process_time() - c0, 1e-9))
    return {"chars_per_s": wall[1], "free_chars_per_s": wall[0], "ratio": wall[1] / wall[0],
            "chars_per_cpu_s": cpu[1], "free_chars_per_cpu_s": cpu[0], "cpu_ratio": cpu[1] / cpu[0]}


def bench_backend(run: Path, backend: str, prime: str, chars: int, batch_chars: int, reps: int) -> dict:
    """The rates of one backend: ``{case: {"free", "constrained", "ratio"}}`` plus compile times."""
    from textstream.generation.constraint import compile_constraint
    from textstream.generation.generator import Generator

    gen = Generator.load(run, backend=backend)
    res: dict = {"compile_ms": {}}
    for pattern in (ANY, SHORT, fixed(chars), fixed(batch_chars)):
        t0 = time.perf_counter()
        compile_constraint(pattern, gen.vocab)
        res["compile_ms"][pattern] = (time.perf_counter() - t0) * 1e3
        gen.constraints(pattern)  # into the generator's cache: the rates below do not compile

    s = gen.session(prime, seed=2)
    s.sample(200)
    for pattern in (ANY, fixed(chars), SHORT):  # warm: compiled loops for each table size
        s.sample(200, regex=pattern)
    def constrained(pattern: str):
        return lambda: len(s.sample(chars, regex=pattern))  # a new match each time

    def short_matches():
        n = 0
        while n < chars // 4:
            n += len(s.sample(chars, regex=SHORT))
        return n

    single: dict = {}
    for name, work in (("any", constrained(ANY)), ("fixed", constrained(fixed(chars))), ("short", short_matches)):
        single[name] = paired(lambda: len(s.sample(chars)), work, reps)
    res["single"] = single

    primes = [prime] * 64
    gen.generate(primes, 50, seed=0)
    for pattern in (ANY, fixed(batch_chars)):
        gen.generate(primes, 50, seed=0, regex=pattern)
    batch: dict = {}
    for name, pattern in (("any", ANY), ("fixed", fixed(batch_chars))):
        batch[name] = paired(lambda: sum(map(len, gen.generate(primes, batch_chars, seed=0))),
                             lambda: sum(map(len, gen.generate(primes, batch_chars, seed=0, regex=pattern))), reps)
    res["batch64"] = batch
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="numpy,tf", help="comma-separated: numpy, tf (default both)")
    p.add_argument("--chars", type=int, default=2000, help="characters per single-stream measurement (and N)")
    p.add_argument("--batch-chars", type=int, default=500, help="characters per stream in the 64-stream batch")
    p.add_argument("--reps", type=int, default=5, help="repetitions, alternating with the baseline; the best counts")
    args = p.parse_args(argv)

    text, source = corpus_text()
    load = os.getloadavg()
    print(f"corpus: {source}; model: default preset, random weights; load average {load[0]:.2f} on "
          f"{os.cpu_count()} CPUs (wall-clock figures are noisy; the ratios are within this run)", flush=True)
    results: dict = {"corpus": source, "load_average_start": load[0], "chars": args.chars,
                     "batch_chars": args.batch_chars, "patterns": {"any": ANY, "short": SHORT,
                                                                   "fixed": fixed(args.chars)}}
    with tempfile.TemporaryDirectory(prefix="bench_regex_") as tmp:
        run = make_run(Path(tmp), "default", text)[0]
        prime = text[len(text) // 2:len(text) // 2 + 60]
        for backend in args.backends.split(","):
            res = results[backend] = bench_backend(run, backend, prime, args.chars, args.batch_chars, args.reps)
            for group in ("single", "batch64"):
                line = "  |  ".join(f"{k}: {v['chars_per_s']:,.0f} vs {v['free_chars_per_s']:,.0f} ({v['ratio']:.2f}x; "
                                    f"per CPU s {v['cpu_ratio']:.2f}x)" for k, v in res[group].items())
                print(f"{backend:5} {group:7}  constrained vs unconstrained chars/s  {line}", flush=True)
    ratios = {f"{b}_{g}_{k}": results[b][g][k]["ratio"] for b in args.backends.split(",")
              for g in ("single", "batch64") for k in results[b][g]}
    results["load_average_end"] = os.getloadavg()[0]
    cpu = {k: results[k.split("_")[0]][k.split("_")[1]][k.split("_", 2)[2]]["cpu_ratio"] for k in ratios}
    summary = {"min_ratio": min(ratios.values()), "min_cpu_ratio": min(cpu.values()), "target_ratio": TARGET,
               "meets_target": min(ratios.values()) >= TARGET, "ratios": ratios, **results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
