"""``textstream generate``: the text on stdout, everything else on stderr.

A thin skin over ``textstream.generate``: blocks (one per temperature and
stream) from ``Generator.generate``, or with ``--follow`` the chunks of
``Generator.stream`` written and flushed as they come. Headers of several
blocks go to stderr; the chars/s status only when stderr is a terminal.
Ctrl-C ends quietly (exit 130); a reader that goes away (``| head``) ends it
quietly too (``cli.main`` handles ``BrokenPipeError``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from textstream.cli.options import positive_int
from textstream.errors import TextstreamError
from textstream.run import CHECKPOINTS

HELP = "generate text from a trained run"
DESCRIPTION = "Generate text with a stateful single-step copy of the trained model."
DEFAULT_LENGTH = 400


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
    p.add_argument("--seed", type=int)
    p.add_argument("--streams", type=positive_int, default=1, metavar="B", help="independent streams in one batch")
    p.add_argument("--follow", action="store_true", help="stream text as it is produced")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--unknown", choices=("error", "skip"), default="error",
                   help="prime characters outside the vocabulary: fail (default) or skip them")


def parse_temperatures(text: str) -> list[float]:
    """"0.2,0.5,1" -> [0.2, 0.5, 1.0]; each must be a finite number >= 0."""
    temps = []
    for part in str(text).split(","):
        try:
            t = float(part)
        except ValueError:
            raise TextstreamError(f"--temperature: {part.strip()!r} is not a number") from None
        if not (t >= 0 and t != float("inf")):
            raise TextstreamError(f"--temperature must be >= 0 and finite (got {part.strip()}); 0 is greedy")
        temps.append(t)
    return temps


def read_prime_file(path: Path) -> str:
    """The file's text (UTF-8); any problem is one line naming the file."""
    try:
        data = Path(path).read_bytes()
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
    import re

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


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream generate``; returns the exit status."""
    from textstream.run import existing_run
    from textstream.sampling import SampleConfig
    from textstream.vocab import Vocab

    # everything a user can get wrong is checked before TensorFlow loads
    temps = parse_temperatures(args.temperature)
    for t in temps:
        SampleConfig(temperature=t, top_k=args.top_k, top_p=args.top_p).check()
    n = args.length
    if n is not None and n < 0:
        raise TextstreamError(f"-n must be >= 0 (got {n})")
    streams = args.streams
    if args.follow and (len(temps) > 1 or streams > 1):
        raise TextstreamError("--follow streams one text: give one temperature and --streams 1")
    stops = [unescape(s) for s in (args.stop or [])]
    if any(not s for s in stops):
        raise TextstreamError("--stop must not be empty")
    paths = existing_run(args.run_dir)
    vocab = Vocab.load(paths.vocab)
    if args.prime_file is not None:
        prime, what = read_prime_file(args.prime_file), str(args.prime_file)
    else:
        prime, what = args.prime or "", "--prime"
    if prime:
        vocab.encode(prime, unknown=args.unknown, what=what)  # raises listing the unknown characters

    from textstream.generate import Generator, _random_seed

    status = sys.stderr.isatty()
    from textstream.cli.console import console as _console

    console = _console() if status else None
    seed = args.seed if args.seed is not None else _random_seed()
    batch = 1 if args.follow else len(temps) * streams
    gen = Generator.load(paths.root, args.checkpoint, warm=batch)  # compiled before the clock starts
    if not prime or not len(gen.encode(prime, unknown=args.unknown)):
        prime = gen.default_prime(seed)
        if console:
            console.print(f"[dim]prime (a random validation line): {prime!r}[/dim]", soft_wrap=True)
    out = _Out()
    t0 = time.perf_counter()
    count = 0
    try:
        if args.follow:
            for chunk in gen.stream(prime, temperature=temps[0], top_k=args.top_k, top_p=args.top_p, seed=seed,
                                    n=n, stop=stops or None, unknown=args.unknown):
                out.write(chunk)
                count += len(chunk)
            if sys.stdout.isatty():
                out.write("\n")
        else:
            n = DEFAULT_LENGTH if n is None else n
            blocks = [(t, j) for t in temps for j in range(streams)]
            texts = gen.generate([prime] * len(blocks), n, temperature=[t for t, _ in blocks],
                                 top_k=args.top_k, top_p=args.top_p, seed=[seed + j for _, j in blocks],
                                 stop=stops or None, unknown=args.unknown)
            for (t, j), text in zip(blocks, texts):
                if len(blocks) > 1:
                    label = f"--- temperature {t:g}" + (f", stream {j + 1}/{streams}" if streams > 1 else "")
                    sys.stdout.flush()
                    print(label, file=sys.stderr, flush=True)
                out.write(text + "\n")
                count += len(text)
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            out.write("\n")
        return 130
    if console:
        dt = time.perf_counter() - t0
        console.print(f"[dim]{count:,} characters in {dt:.2f} s ({count / max(dt, 1e-9):,.0f} chars/s)[/dim]",
                      soft_wrap=True)
    return 0
