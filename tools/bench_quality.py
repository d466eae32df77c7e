#!/usr/bin/env python3
"""Quality benchmark: held-out nats/char after a time budget of training, with a baseline from the same run.

    python tools/bench_quality.py [--corpus tinyshakespeare] [--minutes 5] [--preset default]
                                  [--baseline {seed,nanogpt}] [--sample N] [-- extra train options]

Trains ``textstream train CORPUS --time-budget M --val-fraction 0.1`` in a
child process (nanoGPT's split: the first 90% of the file for training, the
last 10% for validation; the validation text is never trained on), then
scores the best checkpoint with ``textstream eval --json`` on the whole
validation split.

``--baseline nanogpt`` then trains nanoGPT's CPU character configuration
(``tools/nanogpt_baseline.py``: nanoGPT's own ``model.py``, 4 layers x 4 heads
x 128, block 64, batch 12, AdamW 1e-3, cosine over the budget) for the same
minutes on the same split, right after textstream, in a child process run by
``--torch-python`` (default ``$NANOGPT_PYTHON``, else ``/work/venv-torch/bin/python``;
see that tool's docstring for the setup), scores it on every validation
character and prints both, both training speeds and the ratio
textstream/nanoGPT of validation nats/char (below 1: textstream is better).
``--baseline seed`` (a bare ``--baseline`` means the same) runs the original
example's method (``tools/seed_baseline.py``) with the same budget and split,
measured the same way (every validation character, 60 characters of context).

``--corpus``: a file path, or a registry name, which resolves to
``shared/corpora/NAME.txt`` beside the repository (or beside the worktrees'
folder) when that file exists, else to the name itself (textstream downloads
it once; the nanoGPT baseline needs a file).
Last line: JSON with ``corpus``, ``minutes``, ``preset``, ``val_nats_per_char``,
``val_bits_per_char``, ``train_chars_seen``, ``chars_per_s``, ``loadavg`` (the
1-minute load average before and after textstream's run: other load on the
machine slows both, nanoGPT's spinning OpenMP threads far more) and, when
asked, ``baseline`` and, for nanoGPT, ``ratio``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = [ROOT.parent / "shared" / "corpora", ROOT.parent.parent / "shared" / "corpora"]
TORCH_PYTHON = Path("/work/venv-torch/bin/python")


def resolve_corpus(name: str) -> str:
    """A path that exists, else ``shared/corpora/NAME.txt`` when there is one, else the name (a registry name)."""
    if Path(name).exists():
        return str(Path(name).resolve())
    for folder in SHARED:
        if (folder / f"{name}.txt").exists():
            return str(folder / f"{name}.txt")
    return name


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return out


def last_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def seed_baseline(args, corpus: str, report: dict) -> None:
    """The original example's method, same budget and split."""
    cmd = [sys.executable, str(ROOT / "tools" / "seed_baseline.py"), corpus, "--minutes", str(args.minutes),
           "--batch-size", "1024", "--val-split", "0.1"] + (["--generate", str(args.sample)] if args.sample else [])
    out = run(cmd).stdout
    base = json.loads(out.strip().splitlines()[-1])
    report["baseline"] = {"method": "seed"} | {k: base[k] for k in ("val_nats_per_char", "val_bits_per_char",
                                                                     "train_chars_seen", "peak_rss_mb")}
    print(f"original method: {base['val_nats_per_char']:.4f} nats/char after {args.minutes:g} min")
    if args.sample:
        print("--- original method, sample at temperature 0.5 ---\n" + out.split("\n{")[0][-args.sample - 200:])


def nanogpt_baseline(args, corpus: str, report: dict) -> None:
    """nanoGPT's CPU configuration, same budget and split, right after textstream."""
    if not Path(corpus).is_file():
        raise SystemExit(f"bench_quality: {corpus}: the nanoGPT baseline needs a text file (a path, or a name "
                         f"in {SHARED[0]})")
    cmd = [str(args.torch_python), str(ROOT / "tools" / "nanogpt_baseline.py"), corpus,
           "--minutes", str(args.minutes), "--val-fraction", "0.1"]
    cmd += (["--nanogpt-dir", str(args.nanogpt_dir)] if args.nanogpt_dir else [])
    cmd += (["--sample", str(args.sample)] if args.sample else [])
    cmd += (["--threads", str(args.nanogpt_threads)] if args.nanogpt_threads else [])
    out = run(cmd)
    base = last_json(out)
    keep = ("val_nats_per_char", "val_bits_per_char", "val_chars", "train_chars_seen", "iters", "chars_per_s",
            "context_chars", "nanogpt_estimate", "params", "threads", "steps_by_threads", "loadavg", "torch",
            "nanogpt_model_sha256")
    report["baseline"] = {"method": "nanogpt"} | {k: base[k] for k in keep}
    report["ratio"] = round(report["val_nats_per_char"] / base["val_nats_per_char"], 4)
    print(f"nanoGPT CPU config: {base['val_nats_per_char']:.4f} nats/char ({base['val_bits_per_char']:.4f} "
          f"bits/char) after {args.minutes:g} min, {base['train_chars_seen']:,} training characters, "
          f"{base['iters']:,} iterations")
    print(f"training speed: textstream {report['chars_per_s']:,} chars/s, nanoGPT {base['chars_per_s']:,} chars/s "
          f"(load average {report['loadavg'][0]:g} -> {base['loadavg'][1]:g})")
    print(f"ratio textstream/nanoGPT: {report['ratio']:.4f} (val nats/char; below 1: textstream is better)")
    if base["val_chars"] != report["val_chars"]:
        print(f"warning: the two scored different validation lengths ({report['val_chars']:,} vs "
              f"{base['val_chars']:,} characters)", file=sys.stderr)
    if args.sample:
        text = out.stdout.split("--- nanoGPT sample at temperature 0.5 ---\n", 1)[-1].rsplit("\n{", 1)[0]
        print("--- nanoGPT, sample at temperature 0.5 ---\n" + text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="tinyshakespeare", help="a registry name or a file path")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--preset", default="default")
    p.add_argument("--baseline", nargs="?", const="seed", choices=("seed", "nanogpt"),
                   help="also measure a baseline in the same run: seed (the original example's method; "
                        "the default for a bare --baseline) or nanogpt (nanoGPT's CPU configuration)")
    p.add_argument("--torch-python", type=Path,
                   default=Path(os.environ.get("NANOGPT_PYTHON", TORCH_PYTHON if TORCH_PYTHON.exists()
                                               else sys.executable)),
                   help="the Python with torch that runs the nanoGPT baseline (default: $NANOGPT_PYTHON, "
                        "else /work/venv-torch/bin/python)")
    p.add_argument("--nanogpt-dir", type=Path, help="nanoGPT checkout (default: $NANOGPT_DIR, else /work/nanogpt)")
    p.add_argument("--nanogpt-threads", metavar="N", help="torch threads for nanoGPT: a number, or auto (the "
                   "default: one or all cores per step, whichever is faster now; see tools/nanogpt_baseline.py)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N characters at temperature 0.5")
    p.add_argument("-o", "--output", type=Path, help="run directory to keep (default: a temporary one)")
    p.add_argument("extra", nargs="*", help="extra `textstream train` options (after --)")
    args = p.parse_args(argv)
    corpus = resolve_corpus(args.corpus)
    if args.baseline == "nanogpt" and not Path(corpus).is_file():  # fail before the long textstream run
        p.error(f"{args.corpus}: the nanoGPT baseline needs a text file (a path, or a name in {SHARED[0]})")
    tmp = tempfile.TemporaryDirectory(prefix="textstream-quality-")
    run_dir = args.output or Path(tmp.name) / "run"
    py = sys.executable
    load_start = os.getloadavg()[0]
    run([py, "-m", "textstream", "train", corpus, "-o", str(run_dir), "--preset", args.preset,
         "--time-budget", str(args.minutes), "--val-fraction", "0.1", "--no-samples", *args.extra])
    result = json.loads(run([py, "-m", "textstream", "eval", str(run_dir), "--json"]).stdout)
    end = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    end = [r for r in end if r["kind"] == "end"][-1]
    config = json.loads((run_dir / "config.json").read_text())
    report = {"corpus": args.corpus, "minutes": args.minutes, "preset": args.preset,
              "val_nats_per_char": round(result["nats_per_char"], 4),
              "val_bits_per_char": round(result["bits_per_char"], 4), "val_chars": result["chars"],
              "train_chars_seen": end["train_chars_seen"], "steps": end["step"],
              "chars_per_s": round(end["char_steps_per_s"] or 0),
              "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
              "model": (f"{config['layers']}x{config['units']} dropout {config['dropout']} seq {config['seq_len']} "
                        f"batch {config['batch_size']} lr {config['lr']} {config['schedule']}"
                        + (" carry-state" if config.get("carry_state") else ""))}
    print(f"textstream {args.preset}: {report['val_nats_per_char']:.4f} nats/char "
          f"({report['val_bits_per_char']:.4f} bits/char) after {args.minutes:g} min, "
          f"{report['train_chars_seen']:,} training characters")
    if args.sample:
        text = run([py, "-m", "textstream", "generate", str(run_dir), "-n", str(args.sample),
                    "--temperature", "0.5", "--seed", "0"]).stdout
        print("--- sample at temperature 0.5 ---\n" + text)
    if args.baseline == "seed":
        seed_baseline(args, corpus, report)
    elif args.baseline == "nanogpt":
        nanogpt_baseline(args, corpus, report)
    print(json.dumps(report))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
