"""``textstream eval``: bits per character of a run on held-out text (its validation split or SOURCEs)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from textstream.cli.options import positive_int
from textstream.model.run import CHECKPOINTS

HELP = "bits per character on held-out text"
DESCRIPTION = "Evaluate a run on its validation split (default) or on SOURCEs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("sources", nargs="*", metavar="SOURCE")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    # defaults: the library's (``evaluate.evaluate``)
    parser.add_argument("--checkpoint", choices=CHECKPOINTS)
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--unknown", choices=("error", "skip"),
                        help="SOURCE characters outside the vocabulary: error (default, lists them) or skip "
                             "(drop them); a vocabulary with an out-of-vocabulary id maps them to it")
    parser.add_argument("--errors", choices=("strict", "replace"),
                        help="invalid UTF-8 in a SOURCE: fail with the byte offset (strict) or read it as U+FFFD "
                             "(replace); default: the run's own setting")


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream eval``; returns the exit status."""
    from textstream.training.evaluation import evaluate

    given = {k: getattr(args, k) for k in ("checkpoint", "batch_size", "unknown", "errors")
             if getattr(args, k) is not None}
    result = evaluate(args.run_dir, args.sources, **given)
    if args.json:
        print(json.dumps(result))
    else:
        per_token = ""
        if result["tokens"] == "bytes":
            per_token = (f"; {result['bits_per_token']:.4f} bits/byte ({result['nats_per_token']:.4f} nats/byte) "
                         f"over {result['token_count']:,} bytes")
        print(f"{result['bits_per_char']:.4f} bits/char  ({result['nats_per_char']:.4f} nats/char) "
              f"over {result['chars']:,} characters{per_token}")
    return 0
