"""The ``textstream`` command: argparse, one module per command, errors -> one line + exit 2.

A thin skin: each command is a library call a program can make. A command
lives in ``textstream/cli/<module>.py`` and exposes ``HELP`` (one line),
``DESCRIPTION`` (or None), ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules are TensorFlow-free at import (they import heavy things inside
``run``), so ``--help``, ``prepare`` and ``corpora`` stay fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import NoReturn, Sequence

from textstream.cli import cache, corpora, evaluate, export, generate, prepare, score, serve, train
from textstream.cli.console import Checked, StreamError, interruptible, standard_streams
from textstream.errors import Interrupted, TextstreamError

PROG = "textstream"
PRODUCT_ON_STDOUT = ("generate", "eval", "score", "corpora")  # a closed stdout is an error for these (and cache info)

# command name -> its module, in the order --help lists them
COMMANDS: dict[str, ModuleType] = {
    "prepare": prepare,
    "corpora": corpora,
    "train": train,
    "generate": generate,
    "eval": evaluate,
    "score": score,
    "export": export,
    "serve": serve,
    "cache": cache,
}


class UsageError(TextstreamError):
    """A command line that does not parse (unknown flag or command, bad number, missing argument)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``UsageError``) instead of usage + exit.

    ``--help`` and ``--version`` print and exit as usual.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The ``textstream`` parser: one subparser per command, filled by the command's ``add_arguments``."""
    parser = Parser(
        prog=PROG,
        description="Train character-level LSTM language models on any text and stream text from them.",
        epilog="SOURCE is a file, a directory (its text files, recursively), or a registry name "
               "(see `textstream corpora`). With no SOURCE, the embedded default corpus is used.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION))
    return parser


def _version() -> str:
    from textstream import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    First the standard streams (``console.standard_streams``: a closed one
    goes to /dev/null; a command whose product is stdout refuses a closed
    stdout in one line) and SIGINT (``console.interruptible``).
    """
    gone = standard_streams()  # before anything opens a file
    interruptible()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if not _product_on_stdout(args):
            return COMMANDS[args.command].run(args)
        if "stdout" in gone:
            raise TextstreamError(f"standard output is closed, and {args.command} writes its result there "
                                  f"(redirect it to a file, or to /dev/null to discard it)")
        stdout, sys.stdout = sys.stdout, Checked(sys.stdout, "standard output")  # a failed write: one line
        try:
            return COMMANDS[args.command].run(args)
        finally:
            sys.stdout = stdout
    except StreamError as e:
        _to_devnull(e.stream)  # what is still buffered goes nowhere at exit
        _say(f"{PROG}: {e}")
        return 2
    except Interrupted as e:
        _say(f"{PROG}: {e}")
        return 130
    except TextstreamError as e:
        _say(f"{PROG}: {e}")
        return 2
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, and keep Python from complaining at exit
        _to_devnull(sys.stdout)
        return 0
    except Exception as e:  # noqa: BLE001 - the last resort for a full disk; anything else stays a traceback
        full = _no_space(e)
        if full is None:
            raise
        print(f"{PROG}: {full}", file=sys.stderr)
        return 2


def _product_on_stdout(args: argparse.Namespace) -> bool:
    """Whether the command's product is what it writes on stdout (text, scores, listings), not a file it writes."""
    if args.command == "cache":
        return getattr(args, "action", None) in (None, "info")
    return args.command in PRODUCT_ON_STDOUT


def _no_space(e: Exception):
    """A write that failed for lack of room wherever it was (ENOSPC, EFBIG, EDQUOT): its one line, else None.

    The library names the file where it writes; this catches a write it
    missed: the file from the ``OSError``, or from the message of another
    library's error (TensorFlow's read ``PATH; No space left on device``).
    """
    import re

    from textstream.fsutil import no_space, no_space_errno

    n = no_space_errno(e)
    if n is None:
        return None
    path = getattr(e, "filename", None)
    if path is None:
        found = re.search(r"(\S+); " + re.escape(os.strerror(n)), str(e))
        path = found.group(1) if found else "a file"
    return no_space(path, e)


def _say(line: str) -> None:
    """The one line of an error on stderr; a stderr that is gone does not change the exit status."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _to_devnull(sys.stderr)


def _to_devnull(stream) -> None:
    """Point a stream whose reader is gone at /dev/null, so Python's flush at exit finds nothing to complain of."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
