#!/usr/bin/env python3
"""Quality benchmark: held-out nats/char after a time budget of training, with baselines from the same run.

    python -m tools.bench.quality [--corpus tinyshakespeare[,nietzsche,...]] [--minutes 5[,30]]
                                  [--preset default[,...]] [--baseline nanogpt[,seed]] [--dev]
                                  [--cpus 0] [--sample N] [-- extra train options]

For every corpus x budget (the matrix), each preset trains with
``textstream train CORPUS --preset P --time-budget M --val-fraction 0.1`` in a
child process (nanoGPT's split: the first 90% of the file for training, the
last 10% for validation; the validation text is never trained on), and
``textstream eval --json`` scores its best checkpoint on the whole
validation split. Then, right after it on the same split and budget:

- ``nanogpt``: nanoGPT's CPU character configuration
  (``tools.baselines.nanogpt``: nanoGPT's own ``model.py``, 4 layers x 4
  heads x 128, block 64, batch 12, AdamW 1e-3, cosine over the budget), in
  a child process run by ``--torch-python`` (default ``$NANOGPT_PYTHON``,
  else ``/work/venv-torch/bin/python``; see that module's docstring for the
  setup), scored on every validation character; the ratio
  textstream/nanoGPT of validation nats/char is printed (below 1:
  textstream is better).
- ``seed`` (a bare ``--baseline`` means the same): the original example's
  method (``tools.baselines.seed``), measured the same way (every
  validation character, 60 characters of context).

``--dev`` tunes without looking at the validation text: it writes the
training part of each corpus (its first 90%) to a temporary file and runs
everything on that, so the held-out 10% is the tail of the training text.

Timing: other load slows every method (nanoGPT's spinning OpenMP threads far
more), so before each timed run the tool waits until the 1-minute load
average is below ``--quiet`` (default 1.2; polled every 30 s, at most
``--wait`` minutes, then it goes on and the figure records the load).
``--cpus 0`` runs every method on the CPUs listed (``taskset -c``): one CPU
simulates a slower machine, for textstream's budget rule as for nanoGPT.

``--corpus``: file paths or registry names; a name resolves to
``shared/corpora/NAME.txt`` beside the repository (or beside the worktrees'
folder) when that file exists, else to the name itself (textstream
downloads it once; the baselines need a file).

Output: one line per run as it ends, then a markdown table (one row per
corpus x budget x method: nats/char, chars/s, characters seen, load before
and after, ratio to nanoGPT), and last a JSON line ``{"cells": [...],
"machine": {...}}``; each cell has ``corpus``, ``minutes``, ``runs`` (one
per preset and baseline: ``method``, ``val_nats_per_char``,
``val_bits_per_char``, ``chars_per_s``, ``train_chars_seen``, ``loadavg``
[before, after], ``model``, and ``ratio`` to nanoGPT's figure of the cell).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = [ROOT.parent / "shared" / "corpora", ROOT.parent.parent / "shared" / "corpora"]
TORCH_PYTHON = Path("/work/venv-torch/bin/python")
VAL_FRACTION = 0.1


def resolve_corpus(name: str) -> str:
    """A path that exists, else ``shared/corpora/NAME.txt`` when there is one, else the name (a registry name)."""
    if Path(name).exists():
        return str(Path(name).resolve())
    for folder in SHARED:
        if (folder / f"{name}.txt").exists():
            return str(folder / f"{name}.txt")
    return name


def dev_corpus(path: str, folder: Path) -> str:
    """A file holding the training part of ``path`` (all but its last ``VAL_FRACTION``): its tail is the dev split."""
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    head = text[:len(text) - math.floor(len(text) * VAL_FRACTION)]
    out = folder / f"dev-{Path(path).name}"
    out.write_text(head, encoding="utf-8")
    return str(out)


def wait_for_quiet(threshold: float, max_minutes: float, log) -> float:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_minutes``); returns it."""
    deadline = time.monotonic() + max_minutes * 60
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() < deadline:
        log(f"load average {load:.2f} >= {threshold:g}: waiting")
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


class Runner:
    """Runs the children: on ``cpus`` when given, each after waiting for a quiet machine."""

    def __init__(self, args):
        self.args = args
        self.prefix = ["taskset", "-c", args.cpus] if args.cpus else []

    def log(self, msg: str) -> None:
        print(f"[tools.bench.quality] {msg}", file=sys.stderr, flush=True)

    def timed(self, cmd: list[str]) -> tuple[subprocess.CompletedProcess, list[float]]:
        """Run a timed child after the machine is quiet; returns it and the load [before, after]."""
        before = wait_for_quiet(self.args.quiet, self.args.wait, self.log)
        out = self.run(cmd)
        return out, [round(before, 2), round(os.getloadavg()[0], 2)]

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        out = subprocess.run(self.prefix + cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"failed: {' '.join(cmd)}")
        return out


def last_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def textstream_run(runner: Runner, corpus: str, minutes: float, preset: str, run_dir: Path) -> dict:
    """``textstream train`` for the budget, then ``eval`` of its best checkpoint."""
    args, py = runner.args, sys.executable
    _, load = runner.timed([py, "-m", "textstream", "train", corpus, "-o", str(run_dir), "--preset", preset,
                            "--time-budget", str(minutes), "--val-fraction", str(VAL_FRACTION), "--no-samples",
                            *args.extra])
    result = json.loads(runner.run([py, "-m", "textstream", "eval", str(run_dir), "--json"]).stdout)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    end = [r for r in records if r["kind"] == "end"][-1]
    c = json.loads((run_dir / "config.json").read_text())
    model = (f"{c['layers']}x{c['units']} batch {c['batch_size']} dropout {c['dropout']} lr {c['lr']} "
             f"seq {c['seq_len']}")
    if c.get("dropout") and c.get("dropout_mask", "step") != "step":
        model += f" dropout mask {c['dropout_mask']}"
    if c.get("weight_dropout"):
        model += f" weight dropout {c['weight_dropout']}"
    if c.get("weight_decay"):
        model += f" weight decay {c['weight_decay']}"
    if c.get("schedule") == "cosine":  # where the schedule ends, as `train`'s header says it
        model += f" cosine to {c['min_lr_ratio']:g}x"
    if c.get("ema"):
        model += f" ema {c['ema']:g}"
    if c.get("carry_state"):
        model += " carry-state"
    if c.get("window_phases", "random") == "random" and c.get("objective") == "sequence":
        model += " random phases"
    if c.get("precision") == "bfloat16":
        model += " bf16"
    run = {"method": preset, "val_nats_per_char": round(result["nats_per_char"], 4),
           "val_bits_per_char": round(result["bits_per_char"], 4), "val_chars": result["chars"],
           "train_chars_seen": end["train_chars_seen"], "steps": end["step"],
           "chars_per_s": round(end["char_steps_per_s"] or 0), "loadavg": load, "model": model,
           "probe_chars_per_s": c.get("probe_chars_per_s"), "precision": c.get("precision", "float32"),
           "bfloat16_speedup": c.get("bfloat16_speedup")}
    if args.sample:
        run["sample"] = runner.run([py, "-m", "textstream", "generate", str(run_dir), "-n", str(args.sample),
                                    "--temperature", "0.5", "--seed", "0"]).stdout
    return run


def seed_run(runner: Runner, corpus: str, minutes: float) -> dict:
    """The original example's method, same budget and split."""
    args = runner.args
    cmd = [sys.executable, "-m", "tools.baselines.seed", corpus, "--minutes", str(minutes),
           "--batch-size", "1024", "--val-split", str(VAL_FRACTION)]
    out, load = runner.timed(cmd + (["--generate", str(args.sample)] if args.sample else []))
    base = last_json(out)
    run = {"method": "seed", "loadavg": load, "chars_per_s": round(base["char_steps_per_s"]),
           "model": "1x128 next-char RMSprop 0.01 batch 1024, lowercased"}
    run |= {k: base[k] for k in ("val_nats_per_char", "val_bits_per_char", "val_chars", "train_chars_seen",
                                 "peak_rss_mb")}
    if args.sample:
        run["sample"] = out.stdout.split("\n--- temperature 0.5", 1)[-1].split("\n", 1)[-1].split("\n---\n")[0]
    return run


def nanogpt_run(runner: Runner, corpus: str, minutes: float) -> dict:
    """nanoGPT's CPU configuration, same budget and split."""
    args = runner.args
    cmd = [str(args.torch_python), "-m", "tools.baselines.nanogpt", corpus,
           "--minutes", str(minutes), "--val-fraction", str(VAL_FRACTION)]
    cmd += (["--nanogpt-dir", str(args.nanogpt_dir)] if args.nanogpt_dir else [])
    cmd += (["--sample", str(args.sample)] if args.sample else [])
    cmd += (["--threads", str(args.nanogpt_threads)] if args.nanogpt_threads else [])
    out, load = runner.timed(cmd)
    base = last_json(out)
    keep = ("val_nats_per_char", "val_bits_per_char", "val_chars", "train_chars_seen", "iters", "chars_per_s",
            "kept_iter", "final_val_nats_per_char", "context_chars", "nanogpt_estimate", "params", "threads",
            "steps_by_threads", "torch", "nanogpt_model_sha256")
    run = {"method": "nanogpt", "loadavg": load, "model": "4x4x128 transformer, block 64, batch 12"}
    run |= {k: base[k] for k in keep}
    if args.sample:
        run["sample"] = out.stdout.split("--- nanoGPT sample at temperature 0.5 ---\n", 1)[-1].rsplit("\n{", 1)[0]
    return run


def cell(runner: Runner, name: str, corpus: str, minutes: float, tmp: Path) -> dict:
    """One corpus x budget: every preset, then every baseline; ratios to nanoGPT's figure."""
    args = runner.args
    runs = []
    for preset in args.presets:
        run_dir = (args.output / f"{Path(name).stem}-{minutes:g}-{preset}") if args.output else tmp / "run"
        runs.append(textstream_run(runner, corpus, minutes, preset, run_dir))
        report(name, minutes, runs[-1])
        if not args.output:
            subprocess.run(["rm", "-rf", str(run_dir)], check=False)
    for baseline in args.baselines:
        runs.append((nanogpt_run if baseline == "nanogpt" else seed_run)(runner, corpus, minutes))
        report(name, minutes, runs[-1])
    nano = [r for r in runs if r["method"] == "nanogpt"]
    if nano:
        for r in runs:
            r["ratio"] = round(r["val_nats_per_char"] / nano[0]["val_nats_per_char"], 4)
        lengths = {r["val_chars"] for r in runs if r["method"] != "seed"}
        if len(lengths) > 1:
            runner.log(f"warning: {name}: the methods scored different validation lengths {sorted(lengths)}")
    return {"corpus": name, "minutes": minutes, "dev": args.dev, "cpus": args.cpus, "runs": runs}


def report(name: str, minutes: float, run: dict) -> None:
    print(f"{name} {minutes:g} min {run['method']}: {run['val_nats_per_char']:.4f} nats/char "
          f"({run['val_bits_per_char']:.4f} bits/char), {run['chars_per_s']:,} chars/s, "
          f"{run['train_chars_seen']:,} characters seen, load {run['loadavg'][0]:g} -> {run['loadavg'][1]:g} "
          f"[{run['model']}]", flush=True)
    if run.get("sample"):
        print(f"--- {run['method']}, sample at temperature 0.5 ---\n{run['sample']}", flush=True)


def table(cells: list[dict]) -> str:
    """The matrix as a markdown table, one row per corpus x budget x method."""
    rows = ["| corpus | minutes | method | model | val nats/char | chars/s | characters seen | load | "
            "ratio to nanoGPT |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        for r in c["runs"]:
            ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
            rows.append(f"| {c['corpus']}{' (dev)' if c['dev'] else ''} | {c['minutes']:g} | {r['method']} | "
                        f"{r['model']} | {r['val_nats_per_char']:.4f} | {r['chars_per_s']:,} | "
                        f"{r['train_chars_seen']:,} | {r['loadavg'][0]:g} -> {r['loadavg'][1]:g} | {ratio} |")
    return "\n".join(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="tinyshakespeare", help="registry names or file paths, comma-separated")
    p.add_argument("--minutes", default="5", help="time budgets in minutes, comma-separated (default 5)")
    p.add_argument("--preset", default="default", help="textstream presets, comma-separated (default: default)")
    p.add_argument("--baseline", nargs="?", const="seed", default="",
                   help="baselines measured in the same run, comma-separated: nanogpt (nanoGPT's CPU "
                        "configuration), seed (the original example's method; a bare --baseline)")
    p.add_argument("--dev", action="store_true", help="run on the training part of each corpus only (tuning)")
    p.add_argument("--cpus", help="run every method on these CPUs (taskset -c), e.g. 0: a slower machine")
    p.add_argument("--quiet", type=float, default=1.2, help="wait for a load average below this (default 1.2)")
    p.add_argument("--wait", type=float, default=20.0, help="wait for quiet at most this many minutes (default 20)")
    p.add_argument("--torch-python", type=Path,
                   default=Path(os.environ.get("NANOGPT_PYTHON", TORCH_PYTHON if TORCH_PYTHON.exists()
                                               else sys.executable)),
                   help="the Python with torch that runs the nanoGPT baseline (default: $NANOGPT_PYTHON, "
                        "else /work/venv-torch/bin/python)")
    p.add_argument("--nanogpt-dir", type=Path, help="nanoGPT checkout (default: $NANOGPT_DIR, else /work/nanogpt)")
    p.add_argument("--nanogpt-threads", metavar="N", help="torch threads for nanoGPT: a number, or auto (the "
                   "default: one or all cores per step, whichever is faster now; see tools.baselines.nanogpt)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N characters at temperature 0.5")
    p.add_argument("-o", "--output", type=Path, help="folder to keep the run directories in (default: temporary)")
    p.add_argument("extra", nargs="*", help="extra `textstream train` options (after --)")
    args = p.parse_args(argv)
    args.corpora = [c for c in args.corpus.split(",") if c]
    args.budgets = [float(m) for m in args.minutes.split(",") if m]
    args.presets = [x for x in args.preset.split(",") if x]
    args.baselines = [b for b in args.baseline.split(",") if b]
    unknown = set(args.baselines) - {"nanogpt", "seed"}
    if unknown:
        p.error(f"--baseline: unknown {', '.join(sorted(unknown))} (nanogpt, seed)")
    for name in args.corpora:  # fail before the long runs
        if (args.baselines or args.dev) and not Path(resolve_corpus(name)).is_file():
            p.error(f"{name}: the baselines and --dev need a text file (a path, or a name in {SHARED[0]})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runner = Runner(args)
    cells = []
    with tempfile.TemporaryDirectory(prefix="textstream-quality-") as tmp:
        for name in args.corpora:
            corpus = resolve_corpus(name)
            if args.dev:
                corpus = dev_corpus(corpus, Path(tmp))
            for minutes in args.budgets:
                cells.append(cell(runner, name, corpus, minutes, Path(tmp)))
    print(table(cells))
    machine = {"cpus": os.cpu_count(), "affinity": args.cpus, "platform": platform.platform(),
               "processor": platform.processor() or platform.machine()}
    for c in cells:
        for r in c["runs"]:
            r.pop("sample", None)
    print(json.dumps({"cells": cells, "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
