"""Export benchmark: size, per-character latency and held-out bits/char of each exported artefact.

For a trained run directory, exports (``textstream.export.export_run``) the
SavedModel and the LiteRT file as float32, float16 and dynamic-range int8,
then scores the run's validation text (the first ``--chars`` characters; all
by default) with each, one character at a time from the zero state, in one
stream, carrying the state through the whole text:

* baseline: textstream's own step model (``TFStep.logits``, TensorFlow,
  XLA) on the same characters: the bits/char every artefact should match;
* each LiteRT file in a subprocess where TensorFlow cannot be imported (the
  ``ai-edge-litert`` interpreter, as on a device): bits/char, and the
  per-character latency of ``--latency-chars`` ``step`` signature calls
  (batch 1, Python overhead included);
* the SavedModel's ``step`` signature called per character from Python
  (``--latency-chars`` calls) and its ``generate`` signature (``n`` =
  ``--latency-chars`` in one call, the sampler in the graph): per character.

Latencies are the best of 3 timings (the machine may be shared).

    python -m tools.bench.export runs/shk
    python -m tools.bench.export runs/shk --chars 20000

The last line of stdout is JSON: per artefact ``bytes``, ``bits_per_char``,
``us_per_char``; ``ratio_litert_vs_savedmodel_step`` (latency) and each
quantised file's bits/char minus the float file's.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPEATS = 3

WORKER = """
import json, sys, time
REPEATS = %d
sys.modules["tensorflow"] = None  # the interpreter alone, as on a device
import numpy as np
from ai_edge_litert.interpreter import Interpreter

path, ids, calls = sys.argv[1], np.load(sys.argv[2]), int(sys.argv[3])
interpreter = Interpreter(model_path=path)
step = interpreter.get_signature_runner("step")
state = interpreter.get_signature_runner("initial_state")(batch=np.array(1, np.int32))
h, c, nats = state["h"], state["c"], 0.0
for t in range(len(ids) - 1):
    out = step(ids=ids[t:t + 1], h=h, c=c)
    h, c = out["h"], out["c"]
    z = out["logits"][0].astype(np.float64)
    m = z.max()
    nats += m + np.log(np.exp(z - m).sum()) - z[ids[t + 1]]
best = float("inf")
for _ in range(REPEATS):  # the step calls alone, best of REPEATS (the machine may be shared)
    t0 = time.perf_counter()
    for t in range(calls):
        out = step(ids=ids[t:t + 1], h=h, c=c)
        h, c = out["h"], out["c"]
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"nats": nats, "count": len(ids) - 1, "us_per_char": best / calls * 1e6}))
"""


def bits(nats: float, count: int) -> float:
    return nats / count / math.log(2)


def baseline_bits(run: Path, ids: np.ndarray) -> float:
    """Bits/char of textstream's step model over ``ids`` from the zero state."""
    from textstream.generation.step_tf import load

    _, _, step_model = load(run)
    z = step_model.logits(ids[None, :-1])[0].astype(np.float64)
    m = z.max(axis=-1)
    nats = m + np.log(np.exp(z - m[:, None]).sum(axis=-1)) - z[np.arange(len(z)), ids[1:]]
    return bits(float(nats.sum()), len(z))


def savedmodel_latency(path: Path, calls: int) -> dict:
    """Microseconds per character: the ``step`` signature per call from Python, and ``generate`` in one call."""
    from textstream._tf import tf

    model = tf.saved_model.load(str(path))
    state = model.signatures["initial_state"](batch=tf.constant(1))
    h, c = state["h"], state["c"]
    step = model.signatures["step"]
    for _ in range(20):  # warm up
        out = step(ids=tf.constant([1]), h=h, c=c)
    ids = [tf.constant([i % 7]) for i in range(calls)]
    step_s = generate_s = float("inf")
    args = dict(prime_ids=tf.constant([[1]]), temperature=tf.constant([1.0]), seed=tf.constant([0], tf.int64),
                position=tf.constant([0], tf.int64), h=state["h"], c=state["c"])
    model.signatures["generate"](n=tf.constant(10), **args)
    for _ in range(REPEATS):  # best of REPEATS (the machine may be shared)
        t0 = time.perf_counter()
        for x in ids:
            out = step(ids=x, h=h, c=c)
            h, c = out["h"], out["c"]
        step_s = min(step_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.signatures["generate"](n=tf.constant(calls), **args)
        generate_s = min(generate_s, time.perf_counter() - t0)
    return {"step_us_per_char": step_s / calls * 1e6, "generate_us_per_char": generate_s / calls * 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--chars", type=int, default=None, help="score this many validation characters (default: all)")
    p.add_argument("--latency-chars", type=int, default=2000, help="characters timed on the SavedModel")
    args = p.parse_args(argv)
    from textstream.data.prepared import load_prepared
    from textstream.export import export_run
    from textstream.model.run import RunPaths

    ids = load_prepared(RunPaths(args.run).prepared_dir()).ids("val").astype(np.int32)[:args.chars]
    summary: dict = {"chars": int(len(ids) - 1)}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "ids.npy", ids)
        summary["baseline_bits_per_char"] = baseline_bits(args.run, ids)
        print(f"textstream step model (TF, XLA): {summary['baseline_bits_per_char']:.4f} bits/char "
              f"over {len(ids) - 1:,} validation characters")
        t0 = time.perf_counter()
        done = export_run(args.run, tmp / "savedmodel")
        sm = {"bytes": done.size, "export_s": time.perf_counter() - t0, **savedmodel_latency(done.path,
                                                                                             args.latency_chars)}
        summary["savedmodel"] = sm
        print(f"savedmodel: {sm['bytes']:,} bytes; step {sm['step_us_per_char']:.0f} us/char (one call per "
              f"character), generate {sm['generate_us_per_char']:.0f} us/char (in-graph loop)")
        for quantize in (None, "float16", "dynamic"):
            name = f"litert_{quantize or 'float32'}"
            t0 = time.perf_counter()
            done = export_run(args.run, tmp / f"{name}.tflite", format="litert", quantize=quantize)
            export_s = time.perf_counter() - t0
            proc = subprocess.run([sys.executable, "-c", WORKER % REPEATS, str(done.path), str(tmp / "ids.npy"),
                                   str(args.latency_chars)], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            summary[name] = {"bytes": done.size, "export_s": export_s, "bits_per_char": bits(r["nats"], r["count"]),
                             "us_per_char": r["us_per_char"]}
            s = summary[name]
            print(f"{name}: {s['bytes']:,} bytes, {s['bits_per_char']:.4f} bits/char, {s['us_per_char']:.0f} "
                  f"us/char (ai-edge-litert, batch 1, Python loop)")
    base = summary["litert_float32"]
    summary["ratio_litert_vs_savedmodel_step"] = base["us_per_char"] / sm["step_us_per_char"]
    for q in ("float16", "dynamic"):
        summary[f"{q}_minus_float32_bits"] = summary[f"litert_{q}"]["bits_per_char"] - base["bits_per_char"]
    print(f"litert float32 per character vs the SavedModel's step signature: "
          f"{summary['ratio_litert_vs_savedmodel_step']:.2f}x the time")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
