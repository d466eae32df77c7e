"""Generation benchmark: the numpy and the TensorFlow step backends, and the original per-character loop.

Models with RANDOM weights (speed does not depend on them; they are scaled so
the distributions are not flat), saved as run directories (config.json,
vocab.json, data.json with a validation split, checkpoints/last with its
step weights file) in a temporary directory and loaded as a user would:

* ``seed``: the original example's shape (1 x LSTM(128), ``next`` objective), lowercased vocabulary;
* ``default``: ``make_config("default")`` (1 x LSTM(384)), the corpus's vocabulary.

Measured, in the same run:

* per model and backend (``numpy``, ``tf``), in this process: ``load_ms``
  (``Generator.load``: TensorFlow restores the checkpoint and compiles the
  loop with XLA; numpy reads the step weights file), ``first_char_ms`` after
  it, ``single_chars_per_s`` (``Session.sample``, one stream, best of 3),
  ``stream_chars_per_s`` (``gen.stream``), ``batch64_chars_per_s`` (64 streams);
* for the seed model, the original loop on the same weights
  (``tools.baselines.seed.generate``: ``model.predict`` per character);
* cold start (default model, or ``--run``): ``textstream generate RUN --follow``
  spawned ``--cold-reps`` times per backend, alternating, timed from just
  before the spawn to the first byte on its stdout (median and min);
* ``python -X importtime`` of ``textstream generate`` on the numpy path: the
  sum of every module's own import time (min of 3);
* agreement (default model, or ``--run``), over ``--agree-chars`` characters at
  temperature 1: (a) per step: TensorFlow generates one stream; at each
  position numpy chooses from its own logits after the same history with the
  same noise; the fraction of equal choices; (b) free-running: 100 streams on
  each backend (seeds 0..99), how many are identical, and where the others
  first differ (after a difference the histories differ, so the texts do);
  (c) the same at temperature 0.

    python -m tools.bench.generate                          # both random models
    python -m tools.bench.generate --run runs/shk           # cold start and agreement on a trained run too

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
NIETZSCHE = Path("/work/shared/corpora/nietzsche.txt")
PRIME_LEN = 60
BACKENDS = ("numpy", "tf")


def corpus_text() -> tuple[str, str]:
    if NIETZSCHE.exists():
        return NIETZSCHE.read_text(encoding="utf-8"), str(NIETZSCHE)
    from textstream.data.sources import default_text

    return default_text(), "textstream default corpus"


def make_run(root: Path, preset: str, text: str, scale: float = 2.0, seed: int = 0):
    """A run directory with random weights for ``preset`` over ``text``'s characters: (run, cfg, vocab, model)."""
    from textstream._tf import tf
    from textstream.config import make_config
    from textstream.data.vocab import Vocab
    from textstream.model.checkpoint import save_step_weights, step_weights_of
    from textstream.model.network import build_model
    from textstream.model.run import RunPaths

    cfg = make_config(preset)
    body = text.lower() if cfg.lowercase else text
    vocab = Vocab(chars=sorted(set(body)), options={"lowercase": cfg.lowercase})
    model = build_model(cfg, vocab.size)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    run = RunPaths(root / preset)
    run.root.mkdir(parents=True)
    run.write_config(cfg)
    run.write_vocab(vocab)
    prepared = root / f"{preset}_prepared"  # a validation split, for the default prime
    prepared.mkdir()
    vocab.save(prepared / "vocab.json")
    vocab.encode(body[-len(body) // 20:]).astype(vocab.dtype).tofile(prepared / "val.bin")
    (prepared / "train.bin").write_bytes(b"")
    run.write_data(prepared, [])
    prefix = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run.checkpoints("last")), 1).save()
    save_step_weights(step_weights_of(model), prefix)
    return run.root, cfg, vocab, model


def best_rate(work, repeats: int = 3) -> tuple[float, float]:
    """Best of ``repeats``: (characters per wall second, characters per CPU second of this process, all threads)."""
    wall = cpu = 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = work()
        wall = max(wall, n / (time.perf_counter() - t0))
        cpu = max(cpu, n / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def bench_backend(run: Path, backend: str, prime: str, chars: int, batch_chars: int) -> dict:
    """In-process figures of one backend on one run directory."""
    from textstream.generation.generator import Generator

    res: dict = {}
    t0 = time.perf_counter()
    gen = Generator.load(run, backend=backend)
    t1 = time.perf_counter()
    first = next(iter(gen.stream(prime, seed=1, temperature=1.0)))
    res["load_ms"], res["first_char_ms"] = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
    res["first_chunk_chars"] = len(first)
    s = gen.session(prime, seed=2)
    s.sample(2000)  # warm
    res["single_chars_per_s"], res["single_chars_per_cpu_s"] = best_rate(lambda: len(s.sample(chars)))
    t0 = time.perf_counter()
    n = sum(len(chunk) for chunk in gen.stream(prime, seed=3, n=chars))
    res["stream_chars_per_s"] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    gen.warm(64)
    res["compile64_ms"] = (time.perf_counter() - t0) * 1e3
    res["batch64_chars_per_s"], res["batch64_chars_per_cpu_s"] = best_rate(
        lambda: sum(map(len, gen.generate([prime] * 64, batch_chars, seed=0))))
    return res


def original_loop(model, vocab, prime: str, n: int) -> dict:
    """The original per-character loop on the same weights, via ``tools.baselines.seed``."""
    from tools.baselines import seed

    seq = seed.build_model(vocab.size)
    seed.copy_weights_from_textstream(seq, model, src_chars=vocab.chars, dst_chars=sorted(vocab.chars))
    np.random.seed(0)
    _, rate = seed.generate(seq, sorted(vocab.chars), prime, n, 1.0)
    return {"seed_loop_chars_per_s": rate, "seed_loop_chars": n, "seed_loop": "tools.baselines.seed.generate"}


# --- cold start ------------------------------------------------------------------------------------
def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def first_byte_s(run: Path, backend: str) -> float:
    """Seconds from just before spawning ``textstream generate RUN --follow`` to the first byte on its stdout."""
    cmd = [sys.executable, "-m", "textstream", "generate", str(run), "--follow", "--seed", "1", "--backend", backend]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        byte = os.read(proc.stdout.fileno(), 1)
        elapsed = time.perf_counter() - t0
    finally:
        proc.kill()
        _, err = proc.communicate()
    if not byte:
        raise RuntimeError(f"{' '.join(cmd)} wrote nothing: {err.decode(errors='replace')[-500:]}")
    return elapsed


def cold_start(run: Path, reps: int) -> dict:
    """Median and min of ``first_byte_s`` per backend, the backends alternating (one warm-up spawn each first)."""
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for b in BACKENDS:
        first_byte_s(run, b)  # the page cache warm for both
    for _ in range(reps):
        for b in BACKENDS:
            times[b].append(first_byte_s(run, b))
    out = {b: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t} for b, t in times.items()}
    out["ratio_median"] = out["tf"]["median_s"] / out["numpy"]["median_s"]
    return out


def import_time(run: Path, reps: int = 3) -> dict:
    """``-X importtime`` of ``generate RUN -n 1`` on the numpy path: the modules' own times summed, min of ``reps``."""
    best = None
    for _ in range(reps):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "textstream", "generate", str(run), "-n", "1",
                               "--seed", "1", "--backend", "numpy"], capture_output=True, text=True, env=_env())
        own, heavy = {}, []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "self [us]" not in line:
                self_us, _, name = line[len("import time:"):].split("|")
                own[name.strip()] = own.get(name.strip(), 0) + int(self_us)
        heavy = [m for m in own if m.split(".")[0] in ("tensorflow", "tf_keras", "keras")]
        total = sum(own.values()) / 1e3
        if best is None or total < best["total_ms"]:
            top = sorted(own.items(), key=lambda kv: -kv[1])[:6]
            best = {"total_ms": total, "modules": len(own), "tensorflow_modules": len(heavy),
                    "largest_own_ms": {k: v / 1e3 for k, v in top}}
    return best


# --- agreement --------------------------------------------------------------------------------------
def agreement(run: Path, chars: int, prime: str) -> dict:
    """How often the numpy backend chooses what TensorFlow chooses (see the module docstring)."""
    from textstream.generation.generator import Generator
    from textstream.generation.sampling import seed_u32
    from textstream.generation.sampling_np import choose, gumbel_noise

    tf_gen, np_gen = Generator.load(run, backend="tf"), Generator.load(run, backend="numpy")
    vocab = np_gen.vocab
    prime_ids = vocab.encode(prime)
    # (a) per step, on TensorFlow's history
    tf_ids = tf_gen.backend.streams([7], [1.0]).advance(chars, [prime_ids])[0]
    logits = np_gen.backend.logits(np.concatenate([prime_ids, tf_ids[:-1]])[None])[0, len(prime_ids) - 1:]
    noise = gumbel_noise(np.array([seed_u32(7)], np.uint32), np.zeros(1, np.uint32), chars, vocab.size)[:, 0]
    np_ids = choose(logits, np.ones(chars, np.float32), noise)
    differ = np.flatnonzero(np_ids != tf_ids)
    res = {"per_step_agreement": 1 - len(differ) / chars, "per_step_chars": chars,
           "per_step_differences": len(differ)}
    # (b, c) free-running streams
    streams, length = 100, max(1, chars // 100)
    for temperature in (1.0, 0.0):
        a = np_gen.generate([prime] * streams, length, temperature=temperature, seed=list(range(streams)))
        b = tf_gen.generate([prime] * streams, length, temperature=temperature, seed=list(range(streams)))
        firsts = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), None) for s, t in zip(a, b)]
        split = [f for f in firsts if f is not None]
        key = "t1" if temperature else "t0"
        res[f"free_{key}_identical_streams"] = streams - len(split)
        res[f"free_{key}_first_difference"] = sorted(split)
        res[f"free_{key}_chars_before_first_difference"] = sum(length if f is None else f for f in firsts)
    res["free_streams"], res["free_length"] = streams, length
    return res


def bench_model(preset: str, text: str, tmp: Path, args) -> tuple[dict, Path, str]:
    """Both backends (and for ``seed`` the original loop) on a random ``preset`` model: (figures, run, prime)."""
    run, cfg, vocab, model = make_run(tmp, preset, text)
    body = text.lower() if cfg.lowercase else text
    prime = body[len(body) // 2:len(body) // 2 + PRIME_LEN]
    r = {"layers": cfg.layers, "units": cfg.units, "vocab": vocab.size, "weights": "random"}
    for backend in BACKENDS:
        r[backend] = b = bench_backend(run, backend, prime, args.chars, args.batch_chars)
        print(f"[{preset} {backend}] {cfg.layers}x{cfg.units} LSTM, V={vocab.size}: load {b['load_ms']:.0f} ms, "
              f"first char {b['first_char_ms']:.1f} ms after; single stream {b['single_chars_per_s']:,.0f} chars/s "
              f"(stream() {b['stream_chars_per_s']:,.0f}; per CPU-s {b['single_chars_per_cpu_s']:,.0f}); "
              f"64 streams {b['batch64_chars_per_s']:,.0f} chars/s", flush=True)
    r["single_numpy_over_tf"] = r["numpy"]["single_chars_per_s"] / r["tf"]["single_chars_per_s"]
    r["batch64_numpy_over_tf"] = r["numpy"]["batch64_chars_per_s"] / r["tf"]["batch64_chars_per_s"]
    r["batch64_numpy_over_tf_per_cpu_s"] = r["numpy"]["batch64_chars_per_cpu_s"] / r["tf"]["batch64_chars_per_cpu_s"]
    print(f"[{preset}] 64 streams, numpy over TensorFlow (the compiled tf.while_loop of the same size): "
          f"{r['batch64_numpy_over_tf']:.2f} per wall second, {r['batch64_numpy_over_tf_per_cpu_s']:.2f} per CPU "
          f"second", flush=True)
    if preset == "seed":
        r.update(original_loop(model, vocab, prime, args.seed_chars))
        r["speedup_vs_seed"] = r["numpy"]["single_chars_per_s"] / r["seed_loop_chars_per_s"]
        print(f"[{preset}] original loop (model.predict per char, same weights): {r['seed_loop_chars_per_s']:.1f} "
              f"chars/s; numpy single stream {r['speedup_vs_seed']:,.0f}x, "
              f"tf {r['tf']['single_chars_per_s'] / r['seed_loop_chars_per_s']:,.0f}x", flush=True)
    return r, run, prime


def bench_target(name: str, run: Path, prime: str, args) -> dict:
    """Cold start, import time, single-stream rates and agreement of both backends on one run directory."""
    from textstream.generation.generator import Generator

    cold = cold_start(run, args.cold_reps)
    print(f"[{name}] cold start to the first character ({args.cold_reps} each, `generate --follow`): numpy median "
          f"{cold['numpy']['median_s']:.2f} s (min {cold['numpy']['min_s']:.2f}), TensorFlow median "
          f"{cold['tf']['median_s']:.2f} s (min {cold['tf']['min_s']:.2f}): {cold['ratio_median']:.1f}x", flush=True)
    imports = import_time(run)
    print(f"[{name}] -X importtime, numpy path: {imports['total_ms']:.0f} ms over {imports['modules']} modules "
          f"({imports['tensorflow_modules']} TensorFlow)", flush=True)
    single = {}
    for backend in BACKENDS:
        s = Generator.load(run, backend=backend).session(prime, seed=2)
        s.sample(2000)
        single[backend] = best_rate(lambda: len(s.sample(args.chars)))
    print(f"[{name}] single stream: numpy {single['numpy'][0]:,.0f} chars/s ({single['numpy'][1]:,.0f} per CPU-s), "
          f"TensorFlow {single['tf'][0]:,.0f} ({single['tf'][1]:,.0f} per CPU-s)", flush=True)
    agree = agreement(run, args.agree_chars, prime)
    print(f"[{name}] agreement at T=1: {agree['per_step_agreement']:.5%} of {agree['per_step_chars']:,} steps "
          f"({agree['per_step_differences']} differ); free-running {agree['free_streams']} x {agree['free_length']}: "
          f"{agree['free_t1_identical_streams']} identical at T=1, {agree['free_t0_identical_streams']} at T=0",
          flush=True)
    return {"cold_start": cold, "imports": imports, "agreement": agree,
            "single_chars_per_s": {b: rate[0] for b, rate in single.items()},
            "single_chars_per_cpu_s": {b: rate[1] for b, rate in single.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="seed,default", help="comma-separated presets (default: seed,default)")
    p.add_argument("--chars", type=int, default=100_000, help="characters per single-stream measurement")
    p.add_argument("--batch-chars", type=int, default=2048, help="characters per stream in the 64-stream batch")
    p.add_argument("--seed-chars", type=int, default=60, help="characters for the original loop (~13 chars/s)")
    p.add_argument("--cold-reps", type=int, default=5, help="cold starts per backend")
    p.add_argument("--agree-chars", type=int, default=100_000, help="characters of the agreement measurement")
    p.add_argument("--run", type=Path, help="a trained run: cold start, speed and agreement on it as well")
    args = p.parse_args(argv)

    text, source = corpus_text()
    print(f"corpus: {source} ({len(text):,} chars); weights: random (generation speed does not depend on them)",
          flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} on {os.cpu_count()} CPUs, shared with other work: wall-clock figures are "
          f"noisy; ratios within this run mean more", flush=True)
    results: dict = {"corpus": source, "load_average_start": load[0]}
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        targets = {}
        for preset in args.models.split(","):
            results[preset], run, prime = bench_model(preset, text, Path(tmp), args)
            targets.setdefault("default", (run, prime))
            if preset == "default":
                targets["default"] = (run, prime)
        if args.run is not None:
            targets["trained"] = (args.run, _prime_of(args.run))
        for name, (run, prime) in targets.items():
            results[f"{name}_run"] = bench_target(name, run, prime, args)
    results["load_average_end"] = os.getloadavg()[0]
    target = results["default_run"]
    summary = {"cold_start_numpy_median_s": target["cold_start"]["numpy"]["median_s"],
               "cold_start_tf_median_s": target["cold_start"]["tf"]["median_s"],
               "single_numpy_chars_per_s": target["single_chars_per_s"]["numpy"],
               "single_tf_chars_per_s": target["single_chars_per_s"]["tf"],
               "importtime_numpy_ms": target["imports"]["total_ms"],
               "agreement_per_step": target["agreement"]["per_step_agreement"], **results}
    print(json.dumps(summary))
    return 0


def _prime_of(run: Path) -> str:
    """A 60-character prime from the middle of a trained run's validation text (a newline when there is none)."""
    from textstream.generation.generator import Generator

    gen = Generator.load(run, warm=False)
    return gen.default_prime(0)


if __name__ == "__main__":
    sys.exit(main())
