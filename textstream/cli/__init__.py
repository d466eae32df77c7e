"""The ``textstream`` command: argparse, rich output on stderr, errors -> one line + exit 2.

A thin skin: each command is a library call a program can make. TensorFlow is
imported only inside the commands that need it, so ``--help`` and ``prepare``
stay fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from textstream.cli.console import ProgressUI, console
from textstream.errors import Interrupted, TextstreamError

PROG = "textstream"


# --- argument parsing -----------------------------------------------------------------------
def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {s})")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (got {s})")
    return v


def _add_prepare_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus preparation")
    g.add_argument("--lowercase", action="store_true", default=None, help="lowercase the text")
    g.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="tail fraction of the text held out for validation (default 0.05; 0 allowed)")
    g.add_argument("--max-vocab", type=_positive_int, metavar="N",
                   help="keep the N-1 most frequent characters, map the rest to one out-of-vocabulary id")
    g.add_argument("--errors", choices=("strict", "replace"),
                   help="invalid UTF-8: fail with the byte offset (strict, default) or use U+FFFD (replace)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train character-level LSTM language models on any text and stream text from them.",
        epilog="SOURCE is a file, a directory (its text files, recursively), or a registry name "
               "(see `textstream corpora`). With no SOURCE, the embedded default corpus is used.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="encode sources into token files (vocab.json, train.bin, val.bin)",
                       description="Encode text into token files in two streaming passes (memory does not "
                                   "grow with the corpus).")
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output directory")
    _add_prepare_options(p)

    p = sub.add_parser("corpora", help="list the corpus registry and the embedded default corpus")

    p = sub.add_parser("train", help="train a model (streams windows from disk; samples after each epoch)",
                       description="Train a character-level LSTM. Prepares the sources first (cached).")
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("-o", "--output", type=Path, metavar="RUN_DIR",
                   help="run directory (default: runs/<preset>)")
    p.add_argument("--preset", default="default", help="seed (the original example), default, tiny")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    g = p.add_argument_group("model")
    g.add_argument("--layers", type=_positive_int)
    g.add_argument("--units", type=_positive_int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--embedding", type=int, metavar="N", help="learned embedding width (0: one-hot input)")
    g = p.add_argument_group("data")
    g.add_argument("--seq-len", type=_positive_int)
    g.add_argument("--stride", "--step", type=_positive_int,
                   help="characters between window starts for --objective next (--step: deprecated alias)")
    g.add_argument("--objective", choices=("sequence", "next"))
    g.add_argument("--batch-size", type=_positive_int)
    g.add_argument("--carry-state", action=argparse.BooleanOptionalAction, default=None,
                   help="carry the LSTM state from each window to the next one of its strip "
                        "(truncated backpropagation through time; sequence objective)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("adam", "rmsprop", "sgd"))
    g.add_argument("--lr", type=float)
    g.add_argument("--clipnorm", type=float, help="clip gradients to this global norm (0: off)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--schedule", choices=("constant", "cosine"))
    g.add_argument("--min-lr-ratio", type=float, metavar="R", help="cosine: decay to lr * R")
    g = p.add_argument_group("length (one of)").add_mutually_exclusive_group()
    g.add_argument("--epochs", type=_positive_int)
    g.add_argument("--steps", type=_positive_int)
    g.add_argument("--time-budget", type=float, metavar="MIN", help="train for this many minutes")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--sample-every", type=_positive_int, metavar="N", help="print samples every N epochs")
    g.add_argument("--no-samples", action="store_true", help="do not print samples")
    g.add_argument("--strategy", default="auto", choices=("auto", "one", "mirrored", "multiworker", "tpu"),
                   help="tf.distribute strategy (default auto: mirrored when several GPUs are visible)")
    _add_prepare_options(p)

    p = sub.add_parser("generate", help="generate text from a trained run",
                       description="Generate text with a stateful single-step copy of the trained model.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prime", metavar="TEXT", help="text to start from")
    g.add_argument("--prime-file", type=Path, metavar="FILE", help="start from this file's text")
    p.add_argument("-n", "--length", type=int, metavar="N",
                   help="characters to generate (default 400; with --follow, no limit)")
    p.add_argument("--temperature", default="1.0", metavar="T[,T...]",
                   help="sampling temperature(s); 0 is greedy; several give one block each")
    p.add_argument("--top-k", type=_positive_int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--stop", action="append", metavar="STR", help="stop when this string is produced (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--streams", type=_positive_int, default=1, metavar="B", help="independent streams in one batch")
    p.add_argument("--follow", action="store_true", help="stream text as it is produced")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--unknown", choices=("error", "skip"), default="error",
                   help="prime characters outside the vocabulary: fail (default) or skip them")

    p = sub.add_parser("eval", help="bits per character on held-out text",
                       description="Evaluate a run on its validation split (default) or on SOURCEs.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    return parser


def _version() -> str:
    from textstream import __version__

    return __version__


# --- commands ------------------------------------------------------------------------------
def _cmd_prepare(args: argparse.Namespace) -> int:
    from textstream.prepare import prepare

    ui = ProgressUI()
    try:
        prep = prepare(args.sources, args.output, lowercase=bool(args.lowercase),
                       val_fraction=0.05 if args.val_fraction is None else args.val_fraction,
                       max_vocab=args.max_vocab, errors=args.errors or "strict", on_progress=ui)
    finally:
        ui.close()
    state = "cached" if prep.cached else "wrote"
    console().print(f"{state} {prep.dir}: {prep.vocab.size} symbols, "
                     f"{prep.train_chars:,} train + {prep.val_chars:,} val characters")
    return 0


def _cmd_corpora(args: argparse.Namespace) -> int:
    from textstream import corpus

    for entry in corpus.registry().values():
        print(f"{entry.name:20} {entry.size / 1e6:8.1f} MB  {entry.licence:14} {entry.description}")
    print(f"{'(default)':20} {'':8}     {'PSF':14} {corpus.DEFAULT_DESCRIPTION}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from textstream.cli.train import run_train

    return run_train(args)


def _cmd_generate(args: argparse.Namespace) -> int:
    from textstream.cli.generate import run_generate

    return run_generate(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from textstream.evaluate import evaluate

    result = evaluate(args.run_dir, args.sources, checkpoint=args.checkpoint, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['bits_per_char']:.4f} bits/char  ({result['nats_per_char']:.4f} nats/char) "
              f"over {result['chars']:,} characters")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prepare": _cmd_prepare,
    "corpora": _cmd_corpora,
    "train": _cmd_train,
    "generate": _cmd_generate,
    "eval": _cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except Interrupted as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130
    except TextstreamError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, and keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
