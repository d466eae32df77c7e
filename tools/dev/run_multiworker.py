#!/usr/bin/env python3
"""Train with MultiWorkerMirroredStrategy on N local worker processes (127.0.0.1 only).

    python -m tools.dev.run_multiworker CORPUS -o RUN_DIR [--workers 2] [--steps 40] [--preset tiny]
                                        [--resume] [--timeout 300] [-- extra train options]

Picks free loopback ports, gives each worker its TF_CONFIG, runs a short
training in each, and reports per-worker step counts, final loss, a digest of
the final weights (equal on every worker when the replicas stayed in sync)
and the wall time. Workers are killed at --timeout and always cleaned up.
Last line: JSON with keys ``workers``, ``steps``, ``losses``, ``weights_equal``, ``wall_s``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def worker_main(args: argparse.Namespace) -> int:
    """Runs inside one worker process: train, then print the summary as JSON on stdout."""
    from textstream.config import make_config
    from textstream.errors import TextstreamError
    from textstream.model.run import RunPaths
    from textstream.training.loop import train

    try:
        if args.resume:
            cfg = RunPaths(Path(args.output)).read_config()
            cfg.steps = args.steps
        else:
            cfg = make_config(args.preset, steps=args.steps, samples=False, batch_size=args.batch_size)
        summary = train(cfg, [args.corpus], args.output, resume=args.resume, strategy="multiworker")
    except TextstreamError as e:
        print(f"worker: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict()))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)

    ports = free_ports(args.workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    scratch = tempfile.mkdtemp(prefix="textstream-mw-")
    procs = []
    t0 = time.monotonic()
    try:
        for i in range(args.workers):
            env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                   # one cache per worker, as on separate machines
                   "TEXTSTREAM_CACHE": os.environ.get("TEXTSTREAM_CACHE", scratch) + f"/worker{i}",
                   # this checkout's tools and textstream, from the caller's directory (relative paths, names)
                   "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            cmd = [sys.executable, "-m", "tools.dev.run_multiworker", "--worker", args.corpus, "-o", args.output,
                   "--steps", str(args.steps), "--preset", args.preset, "--batch-size", str(args.batch_size)] + \
                (["--resume"] if args.resume else [])
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for i, proc in enumerate(procs):
            left = max(1.0, args.timeout - (time.monotonic() - t0))
            try:
                out, err = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                print(f"worker {i}: timed out after {args.timeout:g} s", file=sys.stderr)
                return 1
            if proc.returncode != 0:
                print(f"worker {i}: exit {proc.returncode}\n{err[-3000:]}", file=sys.stderr)
                return 1
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - t0
    for i, r in enumerate(results):
        print(f"worker {i}: step {r['step']}, loss {r['loss']:.4f}, weights {r['weights_sha256'][:16]}")
    report = {"workers": args.workers, "steps": [r["step"] for r in results], "losses": [r["loss"] for r in results],
              "weights_equal": len({r["weights_sha256"] for r in results}) == 1, "wall_s": round(wall, 2)}
    print(f"wall time {wall:.1f} s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
