"""The drill's machinery: ``Drill`` (options, working directory, commands), ``Row`` (one check), ``@family``.

A family of cases is a function ``(drill) -> rows`` registered with
``@family(name)``; ``tests.faults.drill`` imports the family modules
(``kill``, ``damage``, ``files``), which registers them in ``FAMILIES``, in
the order they run by default.
"""
from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("the cat sat on a mat while the dog ran after a red ball and the bird sang in the old tree by the river "
         "as the sun went down over the hill; then a man came, asked why, and left? no: he stayed!").split()
PROBE = re.compile(r"cuInit|cuda|CUDA")  # TensorFlow probing for a GPU at import: not about the run
TRAIN = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "8", "--no-samples", "--seed", "7"]
# the commands run from here, not the checkout: ``python -m`` puts the current directory first on the path,
# which would shadow ``--textstream DIR`` with the checkout's own code (every path given them is absolute)
NEUTRAL = "/"


@dataclass
class Row:
    """One check: what was done (``case``, ``check``), whether it was right, and what happened."""

    family: str
    case: str
    check: str
    ok: bool
    outcome: str
    regression: str | None = None  # data lost or made worse: a silent restart, a step back, a worse "best", ...


@dataclass
class Call:
    """What one ``textstream`` command did."""

    rc: int
    out: str
    err: str
    traceback: str | None = None  # an exception that escaped the CLI (in-process runs)

    @property
    def lines(self) -> list[str]:
        """The lines on stderr, but TensorFlow's GPU probe at import (a machine without one)."""
        return [line for line in self.err.splitlines() if line.strip() and not PROBE.search(line)]

    def loud(self) -> str | None:
        """A traceback or a TensorFlow ERROR line, if the command printed one."""
        if self.traceback or "Traceback (most recent call last)" in self.err:
            return "traceback: " + ((self.traceback or self.err).strip().splitlines() or ["?"])[-1][:160]
        bad = [line for line in self.lines if line.startswith(("ERROR:", "E0000"))]
        return f"TensorFlow error line: {bad[0][:160]}" if bad else None


@dataclass
class Drill:
    """The drill's options, its working directory and the environment its commands run in."""

    args: argparse.Namespace
    work: Path
    corpus: Path
    env: dict = field(default_factory=dict)  # the environment of the textstream commands
    kills: int = 0

    def cli(self, argv: list[str], timeout: float = 600) -> Call:
        """Run ``textstream ARGV`` in its own process (the kill family; ``--isolated``)."""
        r = subprocess.run([sys.executable, "-m", "textstream", *map(str, argv)], capture_output=True, text=True,
                           env=self.env, timeout=timeout, cwd=NEUTRAL)
        return Call(r.returncode, r.stdout, r.stderr)

    def train_argv(self, run: Path, *, resume: bool, extra: list[str] = ()) -> list:
        """``train`` of the drill's corpus and settings into ``run`` (``--resume``: the run's own), then ``extra``."""
        if resume:
            return ["train", "-o", run, "--resume", *extra]
        return ["train", self.corpus, "-o", run, *TRAIN, *extra]


FAMILIES: dict[str, Callable[[Drill], list[Row]]] = {}


def family(name: str):
    """Register a case family: a function ``(drill) -> rows``, run when ``--families`` names it."""
    def register(fn):
        FAMILIES[name] = fn
        return fn
    return register


def write_corpus(path: Path, chars: int) -> Path:
    """A deterministic text of about ``chars`` characters: lines of words drawn by a fixed seed."""
    rng = random.Random(0)
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        lines.append(line)
        size += len(line) + 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def started_at(err: str) -> int | None:
    """The step a ``train`` process said it started from ("... from step 1,234"), None when it got no further."""
    match = re.search(r"from step ([\d,]+)", err)
    return int(match.group(1).replace(",", "")) if match else None


def last_step(run: Path) -> int | None:
    """The step of the run's "last" checkpoint on disk (read without TensorFlow), None when it has none."""
    from textstream.model.run import RunPaths

    found = RunPaths(run).series("last")
    return found.step if found.usable else None


def end_record(run: Path) -> dict | None:
    from textstream.model.run import RunPaths

    ends = RunPaths(run).read_metrics("end")
    return ends[-1] if ends else None

