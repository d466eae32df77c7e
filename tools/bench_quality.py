#!/usr/bin/env python3
"""Quality benchmark: held-out nats/char after a time budget of training.

    python tools/bench_quality.py [--corpus tinyshakespeare] [--minutes 5] [--preset default]
                                  [--baseline] [--sample N] [-- extra train options]

Trains ``textstream train CORPUS --time-budget M --val-fraction 0.1`` in a
child process (nanoGPT's split: the first 90% of the file for training, the
last 10% for validation; the validation text is never trained on), then
scores the best checkpoint with ``textstream eval --json`` on the whole
validation split. ``--baseline`` also runs the original example's method
(``tools/seed_baseline.py``) with the same budget and split, measured the
same way (every validation character, 60 characters of context).

A registry name resolves to ``../shared/corpora/NAME.txt`` when that file
exists (no download), else to the name itself (downloaded once).
Last line: JSON with ``corpus``, ``minutes``, ``preset``, ``val_nats_per_char``,
``val_bits_per_char``, ``train_chars_seen`` (and ``baseline`` when asked).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "corpora"


def resolve_corpus(name: str) -> str:
    local = SHARED / f"{name}.txt"
    return str(local) if local.exists() else name


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="tinyshakespeare")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--preset", default="default")
    p.add_argument("--baseline", action="store_true", help="also measure the original example's method")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N characters at temperature 0.5")
    p.add_argument("-o", "--output", type=Path, help="run directory to keep (default: a temporary one)")
    p.add_argument("extra", nargs="*", help="extra `textstream train` options (after --)")
    args = p.parse_args(argv)
    corpus = resolve_corpus(args.corpus)
    tmp = tempfile.TemporaryDirectory(prefix="textstream-quality-")
    run_dir = args.output or Path(tmp.name) / "run"
    py = sys.executable
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
    if args.baseline:
        cmd = [py, str(ROOT / "tools" / "seed_baseline.py"), corpus, "--minutes", str(args.minutes),
               "--batch-size", "1024", "--val-split", "0.1"] + (["--generate", str(args.sample)] if args.sample else [])
        out = run(cmd).stdout
        base = json.loads(out.strip().splitlines()[-1])
        report["baseline"] = {k: base[k] for k in ("val_nats_per_char", "val_bits_per_char", "train_chars_seen",
                                                   "peak_rss_mb")}
        print(f"original method: {base['val_nats_per_char']:.4f} nats/char after {args.minutes:g} min")
        if args.sample:
            print("--- original method, sample at temperature 0.5 ---\n" + out.split("\n{")[0][-args.sample - 200:])
    print(json.dumps(report))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
