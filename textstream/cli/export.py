"""``textstream export``: a run as a SavedModel, a LiteRT file or a Keras file, usable without textstream."""
from __future__ import annotations

import argparse
from pathlib import Path

from textstream.export import FORMATS, QUANTIZE, export_run
from textstream.model.run import CHECKPOINTS

HELP = "write a run as a SavedModel, LiteRT (TFLite) or Keras file"
DESCRIPTION = ("Export a trained run as a standard artefact that runs without textstream: a TensorFlow "
               "SavedModel directory (signatures initial_state, step, generate, vocabulary), a LiteRT "
               "(.tflite) file (initial_state, step, vocabulary), or a directory with a .keras file of the "
               "training model and vocab.json. OUT is written whole or not at all.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="where to write (a directory for savedmodel and keras, a file for litert)")
    p.add_argument("--format", choices=FORMATS, default="savedmodel", help="default: savedmodel")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help="default: best")
    p.add_argument("--quantize", choices=QUANTIZE,
                   help="litert only: float16 (half the size) or dynamic (int8 weights, a quarter)")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an earlier export (never anything else)")


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream export``; returns the exit status (every check runs before TensorFlow loads)."""
    done = export_run(args.run_dir, args.output, format=args.format, checkpoint=args.checkpoint,
                      quantize=args.quantize, force=args.force)
    kind = done.format + (f" ({done.quantize})" if done.quantize else "")
    print(f"{done.path}: {kind}, {done.size / 1e6:.2f} MB, from {done.checkpoint}")
    return 0
