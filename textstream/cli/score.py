"""``textstream score``: how surprising a run finds files (or stdin), per file or per line; rows on stdout.

A thin skin over ``Generator.score`` (one text per file, read in pieces:
constant memory whatever its size) and ``Generator.score_many`` (``--lines``:
each line on its own, ``LINES_PER_BATCH`` lines read and scored at a time).
Files are read as ``prepare`` and ``eval`` read them (``textio.normalised``:
UTF-8, binary files refused, CRLF -> LF, the run's lowercasing). The figures
are per Unicode character, from the model's start state, as ``eval`` scores.
Throughput goes to stderr; bad input is one line naming the file, exit 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator

from textstream.data.textio import normalised
from textstream.errors import TextstreamError
from textstream.generation.backends import BACKENDS
from textstream.generation.generator import Generator
from textstream.model.run import CHECKPOINTS

HELP = "bits per character of files or stdin (or of each line) under a trained run"
DESCRIPTION = ("Score text with a trained run: bits and nats per character and the characters scored, per FILE "
               "(stdin when none or -), or per line with --lines.")
READ_BYTES = 1 << 20  # bytes read at a time
LINES_PER_BATCH = 1024  # lines read, scored (in batches of score_many's rows) and printed at a time
STDIN = "-"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("files", nargs="*", metavar="FILE", help="text files (stdin when none, or -)")
    p.add_argument("--lines", action="store_true", help="score each line on its own: one row per line")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): numpy, TensorFlow only to read a checkpoint that lacks its step weights "
                        "file; numpy: never TensorFlow; tf: the compiled TensorFlow step")
    p.add_argument("--unknown", choices=("error", "skip"), default="error",
                   help="characters outside the vocabulary: fail naming them (default) or skip them; a vocabulary "
                        "with an out-of-vocabulary id maps them to it")
    p.add_argument("--errors", choices=("strict", "replace"),
                   help="invalid UTF-8: fail with the byte offset (strict) or read it as U+FFFD (replace); "
                        "default: the run's own setting")


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream score``; returns the exit status."""
    names = [str(f) for f in args.files] or [STDIN]
    for name in names:
        _check_file(name)
    gen = Generator.load(args.run_dir, args.checkpoint, warm=False, backend=args.backend)
    errors = args.errors or getattr(gen.config, "errors", "strict")
    t0, chars = time.perf_counter(), 0
    for name in names:
        text = _chunks(gen, name, errors, args.unknown)
        if args.lines:
            for rows in _line_batches(text):
                scores = gen.score_many([line for _, line in rows], unknown=args.unknown, what=name)
                for (number, line), score in zip(rows, scores):
                    _print_row(args.json, score, name, number, line)
                    chars += score.chars
                sys.stdout.flush()
        else:
            score = gen.score(text, unknown=args.unknown, what=name)
            _print_row(args.json, score, name)
            chars += score.chars
    elapsed = time.perf_counter() - t0
    print(f"scored {chars:,} characters in {elapsed:.2f} s: {chars / max(elapsed, 1e-9):,.0f} chars/s",
          file=sys.stderr)
    return 0


def _check_file(name: str) -> None:
    """A missing file or a directory is one line before the model loads."""
    if name == STDIN:
        return
    path = Path(name)
    if path.is_dir():
        raise TextstreamError(f"{name}: is a directory (score reads text files: name the files in it)")
    if not path.exists():
        raise TextstreamError(f"{name}: no such file")


def _chunks(gen: Generator, name: str, errors: str, unknown: str) -> Iterator[str]:
    """The normalised text of file ``name`` (stdin for ``-``) in pieces; bad input is one line naming it."""
    path = Path("/dev/stdin") if name == STDIN else Path(name)
    vocab, name = gen.vocab, "stdin" if name == STDIN else name
    try:
        for _, text in normalised(path, chunk_size=READ_BYTES, errors=errors,
                                  lowercase=bool(vocab.options.get("lowercase"))):
            if unknown == "error" and vocab.oov_id is None:
                missing = vocab.unknown(text)
                if missing:
                    shown = " ".join(repr(ch) for ch in missing[:20]) + (" ..." if len(missing) > 20 else "")
                    raise TextstreamError(f"{name}: {len(missing)} character(s) outside the vocabulary: {shown} "
                                          f"(pass --unknown skip to drop them)")
            yield text
    except TextstreamError as e:
        message = str(e)
        if message.startswith(f"{path}:"):
            message = name + message[len(str(path)):]
        raise TextstreamError(message) from None
    except IsADirectoryError:
        raise TextstreamError(f"{name}: is a directory (score reads text files: name the files in it)") from None
    except OSError as e:
        raise TextstreamError(f"{name}: cannot read ({e.strerror or e})") from None


def _line_batches(chunks: Iterator[str]) -> Iterator[list[tuple[int, str]]]:
    """``(line number, line without its newline)`` in lists of ``LINES_PER_BATCH``; a last line without a newline too."""
    batch: list[tuple[int, str]] = []
    number, carry = 0, ""
    for chunk in chunks:
        lines = (carry + chunk).split("\n")
        carry = lines.pop()
        for line in lines:
            number += 1
            batch.append((number, line))
            if len(batch) >= LINES_PER_BATCH:
                yield batch
                batch = []
    if carry:
        batch.append((number + 1, carry))
    if batch:
        yield batch


def _print_row(as_json: bool, score, name: str, line: int | None = None, text: str | None = None) -> None:
    bits, nats = score.bits_per_char, score.nats_per_char
    if as_json:
        row = {"file": name, "bits_per_char": None if math.isnan(bits) else bits,
               "nats_per_char": None if math.isnan(nats) else nats, "chars": score.chars}
        if line is not None:
            row.update(line=line, text=text)
        print(json.dumps(row, ensure_ascii=False))
    elif line is None:
        print(f"{bits:.4f} bits/char  {nats:.4f} nats/char  {score.chars:,} chars  {name}")
    else:
        print(f"{bits:.4f}\t{nats:.4f}\t{score.chars}\t{name}:{line}\t{text}")
