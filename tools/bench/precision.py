"""Training speed in float32 and with bfloat16 operands (``--precision``), side by side, in one run.

For the reference shape that sizes a time-budget run (``sizing.REFERENCE``)
and for each compute tier of the default preset, times the real training step
(``trainstep.training_speed``: random ids, dropout off) in float32 and with
bfloat16 operands, alternating, twice each, and reports each precision's
mean characters per second and their ratio, for every thread count asked for.
Also ``trainstep.bfloat16_speedup`` (what ``--precision auto`` decides by)
and the precision it picks here. Each figure is one process's measurement on
this machine at this moment; the ratio is what counts.

    python -m tools.bench.precision                  # 1 and 2 threads, 3 s per timing
    python -m tools.bench.precision --threads 1 --seconds 5

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="TensorFlow thread counts, comma-separated (default 1,2)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per timing (default 3)")
    ap.add_argument("--vocab", type=int, default=65, help="vocabulary size (default 65: tinyshakespeare's)")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for n in threads:  # one child process per thread count: TensorFlow's pools are fixed at first use
        out = subprocess.run([sys.executable, "-m", "tools.bench.precision", "--child", str(n), str(args.seconds),
                              str(args.vocab)], check=True, capture_output=True, text=True, cwd=ROOT).stdout
        for line in out.splitlines():
            row = json.loads(line)
            rows.append(row)
            print(f"{row['threads']} thread(s)  {row['shape']:<34} float32 {row['float32']:>8,.0f} chars/s  "
                  f"bfloat16 {row['bfloat16']:>8,.0f}  ratio {row['ratio']:.2f}"
                  if "shape" in row else
                  f"{row['threads']} thread(s)  bfloat16_speedup {row['bfloat16_speedup']:.2f}: "
                  f"--precision auto picks {row['auto']}", flush=True)
    print(json.dumps({"rows": rows}))
    return 0


def child(threads: int, seconds: float, vocab: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from textstream._tf import tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from textstream.sizing import COMPUTE_TIERS, REFERENCE, precision_for
    from textstream.training.update import bfloat16_speedup, training_speed

    speedup = bfloat16_speedup()
    print(json.dumps({"threads": threads, "bfloat16_speedup": round(speedup, 3), "auto": precision_for(speedup)}),
          flush=True)
    shapes = [("reference", REFERENCE)] + [
        (f"tier from {minimum / 1e6:g} M", {"layers": 1, "units": t["units"], "batch_size": t["batch_size"],
                                           "seq_len": t["seq_len"]})
        for minimum, t in COMPUTE_TIERS["default"]]
    for name, shape in shapes:
        speeds = {"float32": [], "bfloat16": []}
        for precision in ("float32", "bfloat16", "float32", "bfloat16"):
            speeds[precision].append(training_speed(vocab, seconds=seconds, precision=precision, **shape))
        f32, b16 = statistics.mean(speeds["float32"]), statistics.mean(speeds["bfloat16"])
        label = f"{name}: {shape['layers']}x{shape['units']} b{shape['batch_size']} seq {shape['seq_len']}"
        print(json.dumps({"threads": threads, "shape": label, "float32": round(f32), "bfloat16": round(b16),
                          "ratio": round(b16 / f32, 3)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
