"""``textstream generate``: the text on stdout, everything else on stderr.

A thin skin over ``textstream.generation.generator``: blocks (one per temperature and
stream), or with ``--follow`` the chunks of ``Generator.stream`` written and
flushed as they come. Short blocks come from one ``Generator.generate``
batch; one block, or blocks of more than ``STREAM_OVER`` characters in all,
are streamed one after another as they are produced (the same text: a batch
of B is B single streams), so a long request shows text at once and holds
no more than a chunk in memory. It runs on the numpy
step backend and does not import TensorFlow when the checkpoint has its step
weights file (``--backend``; see ``textstream.generation.backends``). Headers of several
blocks go to stderr; the chars/s status only when stderr is a terminal.
Ctrl-C ends quietly (exit 130); a reader of stdout that goes away (``| head``)
ends it quietly too (``cli.main`` handles ``BrokenPipeError``), while one of
stderr only silences the headers and the status (``console.Unbroken``).
``--regex`` is compiled against the run's vocabulary before the model loads
(``textstream.generation.constraint``), so a bad pattern is one line and exit 2.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from textstream.cli.console import console as rich_console
from textstream.cli.console import unbroken_output
from textstream.cli.options import positive_int
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.backends import BACKENDS
from textstream.generation.constraint import Constraint, compile_constraint
from textstream.generation.generator import Generator
from textstream.generation.sampling import check_request, random_seed
from textstream.model.run import CHECKPOINTS, existing_run

MAX_PRIME_FILE_BYTES = 1 << 24  # a --prime-file's size, at most (16 MiB)

HELP = "generate text from a trained run"
DESCRIPTION = "Generate text with a stateful single-step copy of the trained model."
DEFAULT_LENGTH = 400
STREAM_OVER = 100_000  # characters in all blocks together: above this, blocks are streamed one after another


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prime", metavar="TEXT", help="text to start from")
    g.add_argument("--prime-file", type=Path, metavar="FILE", help="start from this file's text")
    p.add_argument("-n", "--length", type=int, metavar="N",
                   help=f"characters to generate (default {DEFAULT_LENGTH}; with --follow, no limit)")
    p.add_argument("--temperature", default="1.0", metavar="T[,T...]",
                   help="sampling temperature(s); 0 is greedy; several give one block each")
    p.add_argument("--top-k", type=positive_int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--stop", action="append", metavar="STR", help="stop when this string is produced (repeatable)")
    p.add_argument("--regex", metavar="PATTERN",
                   help="constrain the generated text (the prime excluded) to a prefix of a full match of PATTERN "
                        "(Python re syntax); it ends where the model ends the match")
    p.add_argument("--seed", type=int)
    p.add_argument("--streams", type=positive_int, default=1, metavar="B", help="independent streams in one batch")
    p.add_argument("--follow", action="store_true", help="stream text as it is produced")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--unknown", choices=("error", "skip"), default="error",
                   help="prime characters outside the vocabulary: fail (default) or skip them")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (default): numpy, TensorFlow only to read a checkpoint that lacks its step weights "
                        "file; numpy: never TensorFlow; tf: the compiled TensorFlow step (every core, one stream too)")


def parse_temperatures(text: str) -> list[float]:
    """"0.2,0.5,1" -> [0.2, 0.5, 1.0] (their range is checked by ``sampling.check_request``)."""
    temps = []
    for part in str(text).split(","):
        try:
            temps.append(float(part))
        except ValueError:
            raise TextstreamError(f"--temperature: {part.strip()!r} is not a number") from None
    return temps


def read_prime_file(path: Path) -> str:
    """The file's text (UTF-8, at most ``MAX_PRIME_FILE_BYTES``); any problem is one line naming the file.

    Read in bounded pieces, so a device or a pipe that never ends (``/dev/zero``) is an error, not all memory.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PRIME_FILE_BYTES + 1)
        if len(data) > MAX_PRIME_FILE_BYTES:
            raise TextstreamError(f"{path}: more than {MAX_PRIME_FILE_BYTES:,} bytes, the most a prime file may hold")
    except FileNotFoundError:
        raise TextstreamError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TextstreamError(f"{path}: is a directory, not a prime file") from None
    except PermissionError:
        raise TextstreamError(f"{path}: permission denied") from None
    except OSError as e:
        raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextstreamError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text:
        raise TextstreamError(f"{path}: empty prime file")
    return text


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""``--stop`` values may spell newline, tab and CR as ``\n``, ``\t``, ``\r`` (``\\`` is a backslash)."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


class _Out:
    """Text to stdout as UTF-8 bytes, flushed on every write (whole characters only)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.buffer = getattr(self.stream, "buffer", None)
        self.stream.flush()

    def write(self, text: str) -> None:
        if self.buffer is not None:
            self.buffer.write(text.encode("utf-8"))
            self.buffer.flush()
        else:
            self.stream.write(text)
            self.stream.flush()


@dataclass
class _Request:
    """The command's options, checked and ready for the library."""

    temperatures: list[float]
    stops: list[str]
    prime: str
    seed: int
    regex: Constraint | None = None


def _checked_options(args: argparse.Namespace) -> tuple[list[float], list[str]]:
    """``(temperatures, stop strings)`` after the library's own checks of every option (no TensorFlow)."""
    temps = parse_temperatures(args.temperature)
    stops = check_request(temps, args.top_k, args.top_p, n=args.length,
                          stop=[unescape(s) for s in args.stop or []], unknown=args.unknown)
    if args.follow and (len(temps) > 1 or args.streams > 1):
        raise TextstreamError("--follow streams one text: give one temperature and --streams 1")
    return temps, stops


def _prime_text(args: argparse.Namespace, vocab: Vocab) -> str:
    """The prime given (``--prime`` or ``--prime-file``; "" for none), checked against the vocabulary."""
    if args.prime_file is not None:
        prime, what = read_prime_file(args.prime_file), str(args.prime_file)
    else:
        prime, what = args.prime or "", "--prime"
    if prime:
        vocab.encode(prime, unknown=args.unknown, what=what)  # raises listing the unknown characters
    return prime


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream generate``; returns the exit status."""
    with unbroken_output("stderr"):  # headers and status: their reader going away does not stop the text
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    temps, stops = _checked_options(args)  # everything a user can get wrong is checked before TensorFlow loads
    paths = existing_run(args.run_dir)
    vocab = paths.read_vocab()
    prime = _prime_text(args, vocab)
    regex = compile_constraint(args.regex, vocab) if args.regex is not None else None
    req = _Request(temps, stops, prime, args.seed if args.seed is not None else random_seed(), regex)
    console = rich_console() if sys.stderr.isatty() else None
    batch = 1 if args.follow else len(req.temperatures) * args.streams
    gen = Generator.load(paths.root, args.checkpoint, warm=batch, backend=args.backend)  # compiled before the clock
    if not req.prime or not len(gen.encode(req.prime, unknown=args.unknown)):
        req.prime = gen.default_prime(req.seed)
        if console:
            console.print(f"[dim]prime (a random validation line): {req.prime!r}[/dim]", soft_wrap=True)
    out = _Out()
    t0 = time.perf_counter()
    try:
        count = (_follow if args.follow else _blocks)(gen, req, args, out)
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            out.write("\n")
        return 130
    if console:
        dt = time.perf_counter() - t0
        console.print(f"[dim]{count:,} characters in {dt:.2f} s ({count / max(dt, 1e-9):,.0f} chars/s)[/dim]",
                      soft_wrap=True)
    return 0


def _follow(gen: Generator, req: _Request, args: argparse.Namespace, out: _Out) -> int:
    """``--follow``: one stream's chunks written as they come; returns the characters written."""
    count = 0
    for chunk in gen.stream(req.prime, temperature=req.temperatures[0], top_k=args.top_k, top_p=args.top_p,
                            seed=req.seed, n=args.length, stop=req.stops, unknown=args.unknown, regex=req.regex):
        out.write(chunk)
        count += len(chunk)
    if sys.stdout.isatty():
        out.write("\n")
    return count


def _blocks(gen: Generator, req: _Request, args: argparse.Namespace, out: _Out) -> int:
    """One block per temperature and stream (see the module docstring); returns the characters written."""
    n = DEFAULT_LENGTH if args.length is None else args.length
    blocks = [(t, j) for t in req.temperatures for j in range(args.streams)]
    options = dict(top_k=args.top_k, top_p=args.top_p, stop=req.stops, unknown=args.unknown, regex=req.regex)
    if len(blocks) == 1 or n * len(blocks) > STREAM_OVER:
        count = 0
        for t, j in blocks:
            _label(blocks, t, j, args.streams)
            for chunk in gen.stream(req.prime, temperature=t, seed=req.seed + j, n=n, **options):
                out.write(chunk)
                count += len(chunk)
            out.write("\n")
        return count
    texts = gen.generate([req.prime] * len(blocks), n, temperature=[t for t, _ in blocks],
                         seed=[req.seed + j for _, j in blocks], **options)
    for (t, j), text in zip(blocks, texts):
        _label(blocks, t, j, args.streams)
        out.write(text + "\n")
    return sum(map(len, texts))


def _label(blocks: list, t: float, j: int, streams: int) -> None:
    """The header of a block on stderr, when there are several."""
    if len(blocks) > 1:
        label = f"--- temperature {t:g}" + (f", stream {j + 1}/{streams}" if streams > 1 else "")
        sys.stdout.flush()
        print(label, file=sys.stderr, flush=True)
