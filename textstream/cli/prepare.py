"""``textstream prepare``: encode sources into token files, with progress bars on a terminal."""
from __future__ import annotations

import argparse
from pathlib import Path

from textstream.cli.console import ProgressUI, console
from textstream.cli.options import add_setting_arguments
from textstream.config import PREPARE, prepare_options
from textstream.data.tokens import TokenChoice

HELP = "encode sources into token files (vocab.json, train.bin, val.bin)"
DESCRIPTION = "Encode text into token files in two streaming passes (memory does not grow with the corpus)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", metavar="SOURCE")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                        help="output directory: missing, empty, or an earlier prepare's")
    parser.add_argument("--force", action="store_true",
                        help="write into a DIR that holds other files (never a run directory or an export)")
    add_setting_arguments(parser, groups=(PREPARE,))


def options_from_args(args: argparse.Namespace) -> dict:
    """The corpus-preparation options given on the command line, defaults filled in, checked."""
    return prepare_options(**{name: getattr(args, name) for name in prepare_options()})


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream prepare``; returns the exit status."""
    from textstream.data.preparation import prepare

    options = options_from_args(args)
    ui = ProgressUI()
    try:
        prep = prepare(args.sources, args.output, **options, on_progress=ui, force=args.force)
    finally:
        ui.close()
    state = "cached" if prep.cached else "wrote"
    ids = f" ({prep.train_tokens:,} + {prep.val_tokens:,} bytes)" if prep.vocab.is_bytes else ""
    out = console()
    out.print(f"{state} {prep.dir}: {prep.vocab.size} symbols, "
              f"{prep.train_chars:,} train + {prep.val_chars:,} val characters{ids}")
    out.print(TokenChoice.of(prep.vocab).line(), markup=False, highlight=False)
    return 0
