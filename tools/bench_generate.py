"""Generation benchmark: textstream's compiled step model against the original per-character loop.

For two models with RANDOM weights (no training: speed does not depend on
the weights; they are scaled so the distributions are not flat):

* ``seed``: the original example's shape (1 x LSTM(128), one-hot input, the
  ``next`` objective), ``make_config("seed")``, vocabulary of the lowercased corpus;
* ``default``: ``make_config("default")`` (2 x LSTM(256)), vocabulary of the corpus as is.

The corpus is /work/shared/corpora/nietzsche.txt when present, else
textstream's embedded default corpus. Each model is saved as a run directory
(config.json, vocab.json, checkpoints/last) in a temporary directory and
loaded back with ``Generator.load``, as a user would. Measured per model:

* ``load_ms``: ``Generator.load`` (restores the checkpoint and compiles the
  single-stream loop with XLA);
* ``first_char_ms``: from ``load`` returning to the first chunk of
  ``gen.stream(prime)`` (a 60-character prime fed in the same call);
* ``single_chars_per_s``: ``Session.sample`` for ``--chars`` characters, one stream (best of 3;
  ``*_per_cpu_s``: characters per CPU-second of this process, all threads: what the work costs);
* ``stream_chars_per_s``: the same through ``gen.stream`` (adaptive chunking);
* ``batch64_chars_per_s``: aggregate of ``gen.generate`` on 64 streams
  (the 64-stream compile, ``compile64_ms``, is measured separately, not in the rate);
* for the seed model, the original loop on the SAME weights: the CharLSTM's
  weights copied into ``Sequential([LSTM(128), Dense(V, softmax)])`` and
  ``tools/seed_baseline.generate`` run (one-hot the 60-char window and
  ``model.predict`` per character, ``np.log(p) / T`` multinomial), timed over
  ``--seed-chars`` characters.

    python tools/bench_generate.py                 # both models
    python tools/bench_generate.py --models seed --chars 100000

The last line of stdout is JSON: ``single_chars_per_s``, ``batch64_chars_per_s``,
``first_char_ms`` and ``speedup_vs_seed`` (all for the seed model), plus one
dict per model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "tools"
NIETZSCHE = Path("/work/shared/corpora/nietzsche.txt")
PRIME_LEN = 60


def corpus_text() -> tuple[str, str]:
    if NIETZSCHE.exists():
        return NIETZSCHE.read_text(encoding="utf-8"), str(NIETZSCHE)
    sys.path.insert(0, str(ROOT))
    from textstream.corpus import default_text

    return default_text(), "textstream default corpus"


def make_run(root: Path, preset: str, text: str, scale: float = 2.0, seed: int = 0):
    """A run directory with random weights for ``preset`` over ``text``'s characters: (run, cfg, vocab, model)."""
    from textstream._tf import tf
    from textstream.config import make_config
    from textstream.model import build_model
    from textstream.vocab import Vocab

    cfg = make_config(preset)
    vocab = Vocab(chars=sorted(set(text.lower() if cfg.lowercase else text)), options={"lowercase": cfg.lowercase})
    model = build_model(cfg, vocab.size)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    run = root / preset
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    vocab.save(run / "vocab.json")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run / "checkpoints" / "last"), 1).save()
    return run, cfg, vocab, model


def bench_model(preset: str, text: str, tmp: Path, chars: int, batch_chars: int, seed_chars: int) -> dict:
    from textstream.generate import Generator

    run, cfg, vocab, model = make_run(tmp, preset, text)
    body = text.lower() if cfg.lowercase else text
    start = len(body) // 2
    prime = body[start:start + PRIME_LEN]
    res: dict = {"preset": preset, "layers": cfg.layers, "units": cfg.units, "vocab": vocab.size,
                 "weights": "random"}

    t0 = time.perf_counter()
    gen = Generator.load(run)
    t1 = time.perf_counter()
    first = next(iter(gen.stream(prime, seed=1, temperature=1.0)))
    t2 = time.perf_counter()
    res["load_ms"] = (t1 - t0) * 1e3
    res["first_char_ms"] = (t2 - t1) * 1e3
    res["first_chunk_chars"] = len(first)

    s = gen.session(prime, seed=2)
    s.sample(2000)  # warm
    res["single_chars_per_s"], res["single_chars_per_cpu_s"] = best_rate(lambda: len(s.sample(chars)))

    t0 = time.perf_counter()
    n = 0
    for chunk in gen.stream(prime, seed=3, n=chars):
        n += len(chunk)
    res["stream_chars_per_s"] = n / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    gen.warm(64)
    res["compile64_ms"] = (time.perf_counter() - t0) * 1e3
    res["batch64_chars_per_s"], res["batch64_chars_per_cpu_s"] = best_rate(
        lambda: sum(map(len, gen.generate([prime] * 64, batch_chars, seed=0))))

    if preset == "seed":
        res.update(original_loop(model, vocab, prime, seed_chars))
        res["speedup_vs_seed"] = res["single_chars_per_s"] / res["seed_loop_chars_per_s"]
    return res


def best_rate(work, repeats: int = 3) -> tuple[float, float]:
    """Best of ``repeats``: (characters per wall second, characters per CPU second of this process).

    CPU time counts every thread, so with B=64 (XLA spreads the work over
    the cores when they are free) the second figure is below the first.
    """
    wall = cpu = 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = work()
        wall = max(wall, n / (time.perf_counter() - t0))
        cpu = max(cpu, n / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def original_loop(model, vocab, prime: str, n: int) -> dict:
    """The original per-character loop on the same weights, via tools/seed_baseline.py."""
    sys.path.insert(0, str(TOOLS))
    import seed_baseline

    seq = seed_baseline.build_model(vocab.size)
    seed_baseline.copy_weights_from_textstream(seq, model, src_chars=vocab.chars, dst_chars=sorted(vocab.chars))
    np.random.seed(0)
    _, rate = seed_baseline.generate(seq, sorted(vocab.chars), prime, n, 1.0)
    return {"seed_loop_chars_per_s": rate, "seed_loop_chars": n, "seed_loop": "tools/seed_baseline.generate"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="seed,default", help="comma-separated presets (default: seed,default)")
    p.add_argument("--chars", type=int, default=100_000, help="characters per single-stream measurement")
    p.add_argument("--batch-chars", type=int, default=2048, help="characters per stream in the 64-stream batch")
    p.add_argument("--seed-chars", type=int, default=60, help="characters for the original loop (~13 chars/s)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    text, source = corpus_text()
    print(f"corpus: {source} ({len(text):,} chars); weights: random (generation speed does not depend on them)",
          flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} on {os.cpu_count()} CPUs (other work on the machine lowers the wall-clock rates)",
          flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        for preset in args.models.split(","):
            r = bench_model(preset, text, Path(tmp), args.chars, args.batch_chars, args.seed_chars)
            results[preset] = r
            print(f"[{preset}] {r['layers']}x{r['units']} LSTM, V={r['vocab']}: load {r['load_ms']:.0f} ms "
                  f"(incl. XLA compile), first char {r['first_char_ms']:.1f} ms after load; "
                  f"single stream {r['single_chars_per_s']:,.0f} chars/s (stream() {r['stream_chars_per_s']:,.0f}); "
                  f"64 streams {r['batch64_chars_per_s']:,.0f} chars/s (compile {r['compile64_ms']:.0f} ms); "
                  f"per CPU-second: single {r['single_chars_per_cpu_s']:,.0f}, 64 streams {r['batch64_chars_per_cpu_s']:,.0f}",
                  flush=True)
            if "seed_loop_chars_per_s" in r:
                print(f"[{preset}] original loop (model.predict per char, same weights): "
                      f"{r['seed_loop_chars_per_s']:.1f} chars/s over {r['seed_loop_chars']} chars; "
                      f"speedup {r['speedup_vs_seed']:,.0f}x", flush=True)
    head = results.get("seed") or next(iter(results.values()))
    summary = {"single_chars_per_s": head["single_chars_per_s"], "batch64_chars_per_s": head["batch64_chars_per_s"],
               "first_char_ms": head["first_char_ms"], "load_ms": head["load_ms"],
               "speedup_vs_seed": head.get("speedup_vs_seed"), "corpus": source, "load_average": load[0],
               "models": results}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
