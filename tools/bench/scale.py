"""Scale benchmark: training cost that does not grow with the corpus or its character set, in one run.

1. Input projection (``--inputs``): the default model (1x384, batch 32, 100-char
   windows, Adam) trained for ``--input-steps`` steps on random ids at
   vocabulary sizes 100, 1,000 and 9,000, layer 0's input computed three
   ways, each in its own child process: ``onehot`` (a V-wide one-hot times the
   V x 1536 kernel, as the Keras layer does), ``gather`` (the kernel's rows,
   the default without a GPU) and ``embedding`` (``--embedding 128``, a
   different model). Reported: steady chars/s (first two steps left out) and
   peak RSS of each.

2. Corpus size (``--scale``): the default command
   ``textstream train CORPUS -o RUN --steps N --no-samples`` (no ``--max-vocab``)
   on ``--small-mb`` (10) and ``--big-mb`` (1,000) MB of real text built by
   ``tools.dev.realtext`` (its character set grows with its size). Each corpus is
   prepared first, in its own child (the library call ``train`` makes, into the
   same cache), so that the measured run's peak RSS is training's; then
   ``--repeats`` rounds alternate the two. Reported: the token choice, steady
   characters of text per second of each (ids/s over ids per character) and
   their ratio (target >= 0.8), peak RSS of each (target: big within 1.15x of
   small, and under 1.5 GB), and the seconds of the end-of-run validation (the
   per-epoch one, ``val_seconds`` in metrics.jsonl).

3. Beyond RAM (``--beyond-ram``): the same default command, preparation
   included, on a ``--huge-mb`` (6,000) MB corpus, ``--ram-steps`` (200) steps,
   inside a cgroup-v1 memory group limited to ``--limit-gb`` (3) GB: the tool
   makes ``/sys/fs/cgroup/memory/textstream-bench-PID``, writes the limit to
   ``memory.limit_in_bytes``, and the child writes its own PID to
   ``cgroup.procs`` before it execs the command. The corpus is dropped from
   the page cache first (``posix_fadvise(DONTNEED)``), so that the group reads
   it from disk and its page cache counts against the limit, and the run uses
   a cache directory of its own, emptied first, so that it prepares. It
   reports the group's ``memory.max_usage_in_bytes`` (page cache included,
   which the kernel reclaims at the limit) for the preparation and the
   training separately (reset when the prepared ``vocab.json`` appears), the
   peaks of the group's anonymous memory and page cache (``memory.stat`` rss
   and cache, polled) and the child's own peak RSS. Without a writable cgroup
   it says so and runs nothing.

The machine's load average is printed before each measurement: ratios of
runs measured one after the other under the same load still mean something.
Corpora and caches live in ``--cache-dir`` (default ``bench-scale/`` in
textstream's cache); ``--clean`` deletes what this run created there.

    python -m tools.bench.scale                           # all three, default sizes
    python -m tools.bench.scale --no-inputs --no-beyond-ram --big-mb 100
    python -m tools.bench.scale --no-inputs --no-scale --huge-mb 6000 --limit-gb 3

The last line of stdout is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tools.bench.train import ChildFailed, run_child
from tools.dev.realtext import build_corpus

ROOT = Path(__file__).resolve().parents[2]
RSS_LIMIT_MB = 1500  # "under 1.5 GB", read conservatively (MiB)
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
VOCAB_SIZES = (100, 1000, 9000)
INPUT_MODES = ("onehot", "gather", "embedding")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f}) on {os.cpu_count()} CPUs"


def default_cache_dir() -> Path:
    from textstream.data.sources import cache_dir  # no TensorFlow behind this import

    return cache_dir() / "bench-scale"


def child_env(cache: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["TEXTSTREAM_CACHE"] = str(cache)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


# --- 1. input projection -------------------------------------------------------------------------
def input_child(mode: str, vocab_size: int, steps: int, embedding: int) -> None:
    """In a child process: train the default model on random ids; print one JSON line."""
    import resource

    import numpy as np

    from textstream._tf import tf
    from textstream.config import make_config
    from textstream.model.network import build_model
    from textstream.training.checkpoints import TrainState
    from textstream.training.update import make_optimizer, make_train_step

    cfg = make_config("default", embedding=embedding if mode == "embedding" else 0)
    model = build_model(cfg, vocab_size, input_mode="gather" if mode == "embedding" else mode)
    optimizer = make_optimizer(cfg)
    optimizer.build(model.trainable_variables)
    state = TrainState(model, optimizer, tf.Variable(0, dtype=tf.int64), tf.Variable(np.inf, dtype=tf.float64))
    train_step = make_train_step(cfg, state, tf.distribute.get_strategy())
    ids = np.random.default_rng(0).integers(0, vocab_size, (steps, cfg.batch_size, cfg.seq_len + 1), np.int32)
    batches = iter(tf.data.Dataset.from_tensor_slices((ids[:, :, :-1], ids[:, :, 1:])))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(train_step(batches, tf.constant(0.0))[0])
        times.append(time.perf_counter() - t0)
    steady = times[2:] or times
    print(json.dumps({"chars_per_s": cfg.batch_size * cfg.seq_len * len(steady) / sum(steady),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_inputs(args, log_dir: Path, result: dict) -> None:
    print(f"input projection: default model, {args.input_steps} steps per run, {args.repeats} round(s); {load()}",
          flush=True)
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):  # rounds alternate the modes, so a slow spell hits all of them
        for v in VOCAB_SIZES:
            for mode in INPUT_MODES:
                cmd = [sys.executable, "-m", "tools.bench.scale", "--input-child", mode, str(v),
                       str(args.input_steps), str(args.embedding)]
                child = run_child(cmd, log_dir, f"inputs-{mode}-{v}")
                runs.setdefault((mode, v), []).append(json.loads(child["stdout"].strip().splitlines()[-1]))
    table = {}
    for v in VOCAB_SIZES:
        row = {mode: {"chars_per_s": statistics.median(r["chars_per_s"] for r in runs[mode, v]),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[mode, v])} for mode in INPUT_MODES}
        table[str(v)] = row
        print(f"  V={v:>5}: " + "; ".join(f"{mode} {row[mode]['chars_per_s']:,.0f} chars/s "
                                          f"({row[mode]['peak_rss_mb']:,.0f} MiB)" for mode in INPUT_MODES), flush=True)
    result["inputs"] = {"embedding": args.embedding, "steps": args.input_steps, "by_vocab_size": table}


# --- 2. corpus size ------------------------------------------------------------------------------
def real_corpus(cache: Path, size_mb: float) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    return Path(build_corpus(cache / f"realtext-{size_mb:g}mb.txt", size_mb))


PREPARE = ("import sys, json\n"
           "from textstream.data.preparation import prepare\n"
           "from textstream.data.tokens import TokenChoice\n"
           "p = prepare([sys.argv[1]])\n"
           "print(json.dumps({'cached': p.cached, 'choice': TokenChoice.of(p.vocab).line(),\n"
           "                  'vocab_size': p.vocab.size, 'ids_per_char': p.train_tokens / p.train_chars}))")


def prepare_child(corpus: Path, env: dict, log_dir: Path, name: str) -> dict:
    """The preparation ``textstream train`` makes (same options, same cache), in a child."""
    child = run_child([sys.executable, "-c", PREPARE, str(corpus)], log_dir, name, env=env)
    return {**child, **json.loads(child["stdout"].strip().splitlines()[-1])}


def train_cmd(corpus: Path, run: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "textstream", "train", str(corpus), "-o", str(run), "--steps", str(steps),
            "--no-samples"]


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == kind]


def bench_scale(args, cache: Path, work: Path, log_dir: Path, result: dict) -> None:
    """Both corpora prepared, then ``--repeats`` rounds of one training run each (medians of the rates)."""
    env = child_env(cache)
    sizes = {"small": args.small_mb, "big": args.big_mb}
    corpora, out = {}, {}
    for label, size in sizes.items():
        t0 = time.monotonic()
        corpora[label] = corpus = real_corpus(cache, size)
        print(f"corpus size: {size:g} MB of real text ({corpus}, {time.monotonic() - t0:.0f} s to build or find)",
              flush=True)
        prep = prepare_child(corpus, env, log_dir, f"prepare-{label}")
        print(f"  prepare: {'cached' if prep['cached'] else 'prepared'} in {prep['wall_s']:.0f} s, peak RSS "
              f"{prep['peak_rss_mb']:,.0f} MiB; {prep['choice']}", flush=True)
        out[label] = {"corpus_mb": size, "choice": prep["choice"], "vocab_size": prep["vocab_size"],
                      "ids_per_char": prep["ids_per_char"], "prepare_s": prep["wall_s"],
                      "prepare_peak_rss_mb": prep["peak_rss_mb"], "runs": []}
    for r in range(args.repeats):  # alternate, so that a slow spell of a shared machine hits both
        for label, corpus in corpora.items():
            print(f"  train {label} ({sizes[label]:g} MB), {args.steps} steps, round {r + 1}; {load()}", flush=True)
            run = work / f"run-{label}-{r}"
            child = run_child(train_cmd(corpus, run, args.steps), log_dir, f"train-{label}-{r}", env=env)
            end, val = records(run, "end")[-1], records(run, "val")[-1]
            one = {"ids_per_s": end["char_steps_per_s"], "chars_per_s": end["char_steps_per_s"] /
                   out[label]["ids_per_char"], "peak_rss_mb": child["peak_rss_mb"], "wall_s": child["wall_s"],
                   "validation_s": val.get("val_seconds"), "val_tokens": val.get("val_tokens"),
                   "val_bits_per_char": val["val_bits_per_char"]}
            out[label]["runs"].append(one)
            print(f"    {one['chars_per_s']:,.0f} characters/s ({one['ids_per_s']:,.0f} ids/s), peak RSS "
                  f"{one['peak_rss_mb']:,.0f} MiB, validation {one['validation_s']:.1f} s "
                  f"({one['val_tokens']:,} ids), {one['wall_s']:.0f} s wall", flush=True)
    for o in (out["small"], out["big"]):
        runs = o["runs"]
        o.update(chars_per_s=statistics.median(x["chars_per_s"] for x in runs),
                 peak_rss_mb=max(x["peak_rss_mb"] for x in runs),
                 validation_s=statistics.median(x["validation_s"] for x in runs))
    small, big = out["small"], out["big"]
    out["chars_per_s_ratio"] = big["chars_per_s"] / small["chars_per_s"]
    out["rss_ratio"] = big["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"  big / small: {out['chars_per_s_ratio']:.2f}x characters/s (target >= 0.8), {out['rss_ratio']:.3f}x "
          f"peak RSS (target <= 1.15), big peak {big['peak_rss_mb']:,.0f} MiB (target < {RSS_LIMIT_MB}); "
          f"validation {small['validation_s']:.1f} s and {big['validation_s']:.1f} s", flush=True)
    result["scale"] = out


# --- 3. beyond RAM -------------------------------------------------------------------------------
class MemoryGroup:
    """A cgroup-v1 memory group with a limit; ``enter`` (in a child, before exec) moves the calling process in."""

    def __init__(self, limit_bytes: int):
        self.path = CGROUP_ROOT / f"textstream-bench-{os.getpid()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        self.limit = int((self.path / "memory.limit_in_bytes").read_text())

    @staticmethod
    def writable() -> str | None:
        """None when a group can be made here, else why not."""
        if not (CGROUP_ROOT / "cgroup.procs").exists():
            return f"no cgroup-v1 memory hierarchy at {CGROUP_ROOT}"
        if not os.access(CGROUP_ROOT, os.W_OK):
            return f"{CGROUP_ROOT} is not writable (run as root, or give this user a delegated group)"
        return None

    def enter(self) -> None:
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def read(self, name: str) -> int:
        return int((self.path / name).read_text().split()[0])

    def stat(self, key: str) -> int:
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, v = line.split()
            if k == key:
                return int(v)
        return 0

    def reset_max(self) -> None:
        (self.path / "memory.max_usage_in_bytes").write_text("0")

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError as e:
            print(f"  could not remove {self.path}: {e}", file=sys.stderr)


def watch(group: MemoryGroup, prepared_marker, stop: threading.Event, seen: dict) -> None:
    """Poll the group: its peak anonymous memory and page cache, and the end of the preparation.

    When the preparation ends, its peaks are kept (``prepare_*``) and the group's max usage is reset.
    """
    while not stop.wait(0.25):
        for key in ("rss", "cache"):
            seen[key] = max(seen.get(key, 0), group.stat(key))
        if "prepare_max_usage" not in seen and prepared_marker():
            seen.update(prepare_max_usage=group.read("memory.max_usage_in_bytes"), prepare_rss=seen["rss"],
                        prepare_cache=seen["cache"], prepared_at=time.monotonic(), rss=0, cache=0)
            group.reset_max()


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the cached pages of ``path`` (written back first), so that it is read from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_beyond_ram(args, cache: Path, work: Path, log_dir: Path, result: dict) -> None:
    why = MemoryGroup.writable()
    if why:
        print(f"beyond RAM: skipped: {why}", flush=True)
        result["beyond_ram"] = {"skipped": why}
        return
    t0 = time.monotonic()
    corpus = real_corpus(cache, args.huge_mb)
    print(f"beyond RAM: {args.huge_mb:g} MB corpus ({time.monotonic() - t0:.0f} s to build or find), "
          f"limit {args.limit_gb:g} GB; {load()}", flush=True)
    own_cache = cache / "beyond-ram"  # emptied: the run prepares the corpus itself
    shutil.rmtree(own_cache, ignore_errors=True)
    own_cache.mkdir(parents=True)
    drop_from_page_cache(corpus)
    group = MemoryGroup(int(args.limit_gb * 1e9))
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True, args=(
        group, lambda: any(own_cache.glob("prepared/*/vocab.json")), stop, seen))
    run = work / "run-huge"
    t0 = time.monotonic()
    watcher.start()
    try:
        child = run_child(train_cmd(corpus, run, args.ram_steps), log_dir, "train-huge", env=child_env(own_cache),
                          preexec_fn=group.enter)
        ok, error = True, None
    except ChildFailed as e:
        child, ok, error = {"wall_s": time.monotonic() - t0, "peak_rss_mb": None}, False, str(e)
    finally:
        stop.set()
        watcher.join()
    out = {"corpus_mb": args.huge_mb, "limit_bytes": group.limit, "steps": args.ram_steps, "ok": ok,
           "wall_s": child["wall_s"], "child_peak_rss_mb": child["peak_rss_mb"],
           "prepare_max_usage_mb": seen.get("prepare_max_usage", 0) / 2**20,
           "prepare_rss_max_mb": seen.get("prepare_rss", 0) / 2**20,
           "prepare_cache_max_mb": seen.get("prepare_cache", 0) / 2**20,
           "prepare_s": seen["prepared_at"] - t0 if "prepared_at" in seen else None,
           "train_max_usage_mb": group.read("memory.max_usage_in_bytes") / 2**20,
           "train_rss_max_mb": seen.get("rss", 0) / 2**20, "train_cache_max_mb": seen.get("cache", 0) / 2**20,
           "failcnt": group.read("memory.failcnt")}
    group.remove()
    if not args.keep:
        shutil.rmtree(own_cache, ignore_errors=True)
    if ok:
        end = records(run, "end")[-1]
        out.update(final_step=end["step"], chars_per_s=end["char_steps_per_s"])
    else:
        out["error"] = error.splitlines()[0]
    print(f"  {'succeeded' if ok else 'FAILED'} in {out['wall_s']:.0f} s (preparation {out['prepare_s'] or 0:.0f} s): "
          f"group max usage {out['prepare_max_usage_mb']:,.0f} MiB preparing, {out['train_max_usage_mb']:,.0f} MiB "
          f"training (page cache included; limit {group.limit / 2**20:,.0f} MiB); peaks preparing / training: "
          f"anonymous {out['prepare_rss_max_mb']:,.0f} / {out['train_rss_max_mb']:,.0f} MiB, page cache "
          f"{out['prepare_cache_max_mb']:,.0f} / {out['train_cache_max_mb']:,.0f} MiB; child peak RSS "
          f"{out['child_peak_rss_mb'] or 0:,.0f} MiB; limit hit {out['failcnt']:,} times", flush=True)
    if error:
        print(f"  {error}", flush=True)
    result["beyond_ram"] = out


# --- main ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps of each corpus-size run (default 40)")
    p.add_argument("--small-mb", type=float, default=10.0)
    p.add_argument("--big-mb", type=float, default=1000.0)
    p.add_argument("--huge-mb", type=float, default=6000.0)
    p.add_argument("--limit-gb", type=float, default=3.0, help="memory limit of the beyond-RAM run (default 3)")
    p.add_argument("--ram-steps", type=int, default=200, help="training steps of the beyond-RAM run (default 200)")
    p.add_argument("--input-steps", type=int, default=10, help="steps of each input-projection run (default 10)")
    p.add_argument("--embedding", type=int, default=128, help="embedding width compared (default 128)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the input and corpus-size runs (medians)")
    p.add_argument("--no-inputs", action="store_true")
    p.add_argument("--no-scale", action="store_true")
    p.add_argument("--no-beyond-ram", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=None, help="corpora and prepared caches (default: bench-scale/ "
                                                                 "in textstream's cache)")
    p.add_argument("--clean", action="store_true", help="delete the corpora and caches in --cache-dir at the end")
    p.add_argument("--keep", action="store_true", help="keep the run directories and child logs")
    p.add_argument("--input-child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.input_child:
        mode, v, steps, emb = args.input_child
        input_child(mode, int(v), int(steps), int(emb))
        return 0
    cache = args.cache_dir or default_cache_dir()
    work = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    log_dir = work / "logs"
    log_dir.mkdir()
    result: dict = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(f"tools.bench.scale: {load()}; corpora and caches in {cache}", flush=True)
    try:
        if not args.no_inputs:
            bench_inputs(args, log_dir, result)
        if not args.no_scale:
            bench_scale(args, cache, work, log_dir, result)
        if not args.no_beyond_ram:
            bench_beyond_ram(args, cache, work, log_dir, result)
    except ChildFailed as e:
        print(f"tools.bench.scale: {e}\n  (logs kept in {log_dir})", file=sys.stderr)
        result["error"] = str(e).splitlines()[0]
        print(json.dumps(result))
        return 1
    result["load_end"] = os.getloadavg()[0]
    targets = {}
    if "scale" in result:
        s = result["scale"]
        targets.update({"chars_per_s_big>=0.8x_small": s["chars_per_s_ratio"] >= 0.8,
                        "rss_big<=1.15x_small": s["rss_ratio"] <= 1.15,
                        "rss_big<1.5GB": s["big"]["peak_rss_mb"] < RSS_LIMIT_MB})
    if result.get("beyond_ram", {}).get("ok") is not None:
        targets["beyond_ram_succeeded"] = result["beyond_ram"]["ok"]
    result["targets_met"] = targets
    if args.keep:
        print(f"runs and logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if args.clean:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
