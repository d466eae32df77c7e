"""The ``damage`` family: one file of a trained run damaged, for every file textstream reads, every way.

Each damaged copy gets ``generate``, ``eval``, ``export``, ``train --resume``
and, where the error names a way on, that way; what each must do is in
``FILES`` (exit 2 with one line naming the file, or a documented recovery).
The commands run in worker processes that import textstream once, or each in
its own process (``--isolated``).
"""
from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tests.faults.harness import NEUTRAL, Call, Drill, Row, family, started_at

E, OK, NOTICE = "error", "ok", "notice"  # exit 2 naming the file; exit 0; exit 0 with a notice naming the file
READERS = ("generate", "eval", "export")
LAST_DAMAGED = dict(generate=OK, eval=OK, export=OK, resume=E, recover="--from best")
BEST_DAMAGED = dict(generate=E, eval=E, export=E, resume=NOTICE)
ALL_OK = dict(generate=OK, eval=OK, export=OK, resume=OK)
CACHE = dict(generate=OK, eval=E, export=OK, resume=NOTICE)
# file (relative to the case directory; ckpt-* matches the checkpoint) -> (kind, what each command must do)
FILES: dict[str, tuple[str, dict[str, str]]] = {
    "run/config.json": ("json", dict(generate=E, eval=E, export=E, resume=E)),
    "run/vocab.json": ("json", dict(generate=E, eval=E, export=E, resume=E)),
    "run/data.json": ("json", dict(generate=OK, eval=E, export=OK, resume=E, recover="sources")),
    "run/metrics.jsonl": ("json", ALL_OK),
    "run/checkpoints/last/checkpoint": ("text", LAST_DAMAGED),
    "run/checkpoints/last/ckpt-*.index": ("binary", LAST_DAMAGED),
    "run/checkpoints/last/ckpt-*.data-00000-of-00001": ("binary", LAST_DAMAGED),
    "run/checkpoints/last/ckpt-*.step.npz": ("binary", ALL_OK),
    "run/checkpoints/best/checkpoint": ("text", BEST_DAMAGED),
    "run/checkpoints/best/ckpt-*.index": ("binary", BEST_DAMAGED),
    "run/checkpoints/best/ckpt-*.data-00000-of-00001": ("binary", BEST_DAMAGED),
    "run/checkpoints/best/ckpt-*.step.npz": ("binary", ALL_OK),
    "prepared/vocab.json": ("json", CACHE),
    "prepared/train.bin": ("binary", CACHE),
    "prepared/val.bin": ("binary", CACHE),
}
DAMAGES = ("deleted", "emptied", "truncated", "garbage", "json-type", "fifo")
# a FIFO in place of a run's file: one line naming it from every command (textstream reads only regular files)
FIFO_IN_RUN = dict(generate=E, eval=E, export=E, resume=E)
HANG_S = 300  # a command still running after this (a FIFO read waits forever) is a failure, not a hung drill


def damage(path: Path, kind: str) -> None:
    """Damage ``path`` in the way named ``kind`` (``DAMAGES``)."""
    data = path.read_bytes() if kind != "fifo" else b""
    if kind == "deleted":
        path.unlink()
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(random.Random(len(data)).randbytes(200))
    elif kind == "fifo":  # a reader that opens it would wait for a writer forever
        path.unlink()
        os.mkfifo(path)
    else:  # valid JSON of the wrong type
        path.write_bytes(b"[1, 2, 3]\n")


@dataclass(frozen=True)
class Case:
    """One damaged copy of the base run: ``file`` (a ``FILES`` key) damaged as ``kind``."""

    file: str
    kind: str
    base: str  # the base case directory (run/ and prepared/)
    work: str
    isolated: bool
    env: dict


@family("damage")
def damage_family(drill: Drill) -> list[Row]:
    """Every file of ``--files`` damaged every way of ``--damages``; each command checked (see the module docstring)."""
    base = drill.work / "base"
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=drill.args.jobs, mp_context=ctx) as pool:
        setup = pool.submit(build_base, str(base), str(drill.corpus), drill.args.epochs).result()
        if setup:
            return [Row("damage", "base run", "trains", False, setup)]
        cases = [Case(f, k, str(base), str(drill.work / "cases"), drill.args.isolated, drill.env)
                 for f, (kind, _) in FILES.items() if any(fnmatch.fnmatch(f, p) for p in drill.args.files)
                 for k in drill.args.damages if k != "json-type" or kind == "json"]
        rows = []
        for got in pool.map(run_case, cases):
            rows += got
    return rows


def build_base(base: str, corpus: str, epochs: int) -> str | None:
    """Train the base run (a worker): ``epochs`` epochs, then a resume interrupted mid-epoch, so "last" is ahead.

    Returns a problem, or None. The prepared corpus is copied beside the run
    (``prepared/``) so that each case may damage its own.
    """
    from textstream.config import TrainConfig, make_config
    from textstream.errors import Interrupted
    from textstream.model.run import RunPaths
    from textstream.training.loop import train

    run = Path(base) / "run"
    try:
        train(make_config("tiny", seq_len=16, batch_size=8, samples=False, seed=7, epochs=epochs), [corpus], run)
        calls = iter(range(10**9))
        cfg = TrainConfig.load(run / "config.json").resumed({"epochs": epochs + 1})
        try:
            train(cfg, [], run, resume=True, should_stop=lambda: next(calls) >= 5)
        except Interrupted:
            pass
        paths = RunPaths(run)
        prepared = Path(base) / "prepared"
        shutil.copytree(paths.read_data().dir, prepared)
        paths.write_data(prepared, [corpus])
    except Exception:  # noqa: BLE001 - reported as the family's one failed row
        return traceback.format_exc().strip().splitlines()[-1]
    return None


def run_case(case: Case) -> list[Row]:
    """Damage one copy of the base run and run every command on it (in a worker process)."""
    from textstream.model.run import RunPaths
    from textstream.training.checkpoints import recorded_best

    os.environ.update(case.env)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", case.file) + "-" + case.kind
    here = Path(case.work) / slug
    shutil.rmtree(here, ignore_errors=True)
    shutil.copytree(case.base, here, symlinks=True)
    run = here / "run"
    paths = RunPaths(run)
    sources = list(paths.read_data().sources)
    paths.write_data(here / "prepared", sources)  # the case's own copy of the prepared corpus
    before = State(paths.series("last").step, paths.series("best").step, recorded_best(paths.series("best")))
    target = sorted(here.glob(case.file))[0]
    name = str(target)
    damage(target, case.kind)
    step = before.best if "/best/" in case.file else before.last
    label = f"{case.file.replace('ckpt-*', f'ckpt-{step}')}: {case.kind}"
    expect = FIFO_IN_RUN if case.kind == "fifo" and case.file.startswith("run/") else FILES[case.file][1]
    rows = []
    for command in ("generate", "eval", "export", "resume", "recover"):
        if command not in expect:
            continue
        argv = case_argv(command, expect[command], run, here, before, sources)
        call = (isolated_call if case.isolated else in_process)(argv, case.env)
        problems, regression = judge(command, expect[command], call, name, paths, before)
        status = f"exit {call.rc}: {(call.lines or [''])[-1]}" if call.rc else "exit 0"
        outcome = ("; ".join(problems) or status).replace(f"{here}/", "")  # paths relative to the case
        rows.append(Row("damage", label, command, not problems, outcome[:220], regression))
        if command == "resume" and expect[command] == E and call.rc != 2:
            break  # the resume did something else: what follows would test another case
    return rows


@dataclass(frozen=True)
class State:
    """A run's checkpoints before the damage: the steps of "last" and "best", and the loss "best" holds."""

    last: int | None
    best: int | None
    best_loss: float | None


def case_argv(command: str, expected: str, run: Path, here: Path, before: State, sources: list[str]) -> list:
    """The command line of ``command`` on the case's run (``recover``: the way on that the error names)."""
    steps = ["--steps", str((before.last or 0) + 8)]
    if command == "generate":
        return ["generate", run, "-n", "40", "--seed", "1"]
    if command == "eval":
        return ["eval", run]
    if command == "export":
        return ["export", run, "-o", here / "exported", "--format", "keras"]
    if command == "resume":
        return ["train", "-o", run, "--resume", *steps]
    if expected == "--from best":
        return ["train", "-o", run, "--resume", "--from", "best", *steps]
    return ["train", *sources, "-o", run, "--resume", *steps]  # the sources given again


def judge(command: str, expected: str, call: Call, name: str, paths, before: State) -> tuple[list[str], str | None]:
    """What is wrong with ``call`` given what was ``expected`` of ``command``; and the regression, if one."""
    from textstream.training.checkpoints import recorded_best

    problems, regression = [], None
    if call.loud():
        problems.append(call.loud())
    if expected == E:
        last_line = call.lines[-1] if call.lines else ""
        if call.rc != 2:
            problems.append(f"exit {call.rc}, expected 2 naming {Path(name).name}")
        elif not last_line.startswith("textstream: ") or name not in last_line:
            problems.append(f"the error does not name the file: {last_line[:160]}")
        elif sum(line.startswith("textstream:") for line in call.lines) != 1 or \
                (command in READERS and len(call.lines) != 1):
            problems.append(f"{len(call.lines)} lines on stderr, expected one")
    elif call.rc != 0:
        problems.append(f"exit {call.rc}: {(call.lines or ['?'])[-1][:160]}")
    elif expected == NOTICE and name not in call.err:
        problems.append(f"exit 0 without a notice naming {Path(name).name}")
    if command in ("resume", "recover"):
        start = started_at(call.err)
        want = before.best if expected == "--from best" else before.last
        after_last, best = paths.series("last"), paths.series("best")
        if call.rc == 0 and start != want:
            problems.append(f"started at step {start}, expected {want}")
            regression = "silent restart" if start is not None and start < (want or 0) else None
        if call.rc != 0 and after_last.usable and after_last.step != before.last:
            problems.append(f"a refused resume moved the last checkpoint from {before.last} to {after_last.step}")
            regression = "a refused resume changed the run"
        held = recorded_best(best)
        if held is not None and before.best_loss is not None and held > before.best_loss + 1e-12:
            problems.append(f"best holds a worse model: {held:.6f} > {before.best_loss:.6f}")
            regression = "best worsened"
    return problems, regression


def in_process(argv: list, env: dict) -> Call:
    """``textstream ARGV`` in this worker: the CLI's ``main`` with descriptors 1 and 2 captured."""
    from textstream.cli import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        tb = None

        def hung(signum, frame):
            raise TimeoutError(f"still running after {HANG_S} s")

        signal.signal(signal.SIGALRM, hung)
        signal.alarm(HANG_S)
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - an escaped exception is what the drill looks for
            rc, tb = 1, traceback.format_exc()
        finally:
            signal.alarm(0)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0), err.seek(0)
        return Call(rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), tb)


def isolated_call(argv: list, env: dict) -> Call:
    try:
        r = subprocess.run([sys.executable, "-m", "textstream", *map(str, argv)], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=HANG_S, cwd=NEUTRAL)
    except subprocess.TimeoutExpired:
        return Call(1, "", "", f"still running after {HANG_S} s")
    return Call(r.returncode, r.stdout, r.stderr)

