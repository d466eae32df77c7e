"""``textstream corpora``: the corpus registry and the embedded default corpus, one line each."""
from __future__ import annotations

import argparse

HELP = "list the corpus registry and the embedded default corpus"
DESCRIPTION = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream corpora``; returns the exit status."""
    from textstream.data import sources as corpus

    for entry in corpus.registry().values():
        print(f"{entry.name:20} {entry.size / 1e6:8.1f} MB  {entry.licence:14} {entry.description}")
    print(f"{'(default)':20} {'':8}     {'PSF':14} {corpus.DEFAULT_DESCRIPTION}")
    return 0
