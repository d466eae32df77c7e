"""Fault drill: training killed at random moments, a run directory damaged file by file, and more.

Case families (``--families``, all by default; a new one is a function
``(drill) -> rows`` decorated with ``@family``, which may use ``Drill.cli``
and ``Drill.train_argv``):

* ``kill``: an uninterrupted reference run, then the same run started and
  killed with SIGKILL ``--kills`` times at random moments (``textstream train``
  when the directory holds no checkpoint, ``textstream train --resume`` once
  it does), then run to its end. Checked: every launch started at the last
  checkpoint on disk (never from step 0 when there is one, never a step
  back), the checkpoint on disk never went back, ``--resume`` on a directory
  without a checkpoint says so, and the final weights equal the reference
  run's (``weights_sha256`` of the ``end`` record of ``metrics.jsonl``).
* ``damage``: a trained run whose "last" checkpoint is ahead of "best"
  (interrupted mid-epoch), copied per case; one file damaged (``--damages``:
  deleted, emptied, truncated, garbage, wrong JSON type) for every file
  textstream reads (``--files``: the run's JSON files and metrics, each
  checkpoint series' state, index, data and step weights files, the
  prepared corpus in the cache); then ``generate``, ``eval``, ``export``,
  ``train --resume`` and, where the error names a way on, that way
  (``--from best``, the sources). Checked: exit 2 with one line naming the
  damaged file, or a documented recovery (exit 0; a notice naming the file
  for a put-aside "best" or a re-prepared corpus); never a traceback or a
  TensorFlow ERROR line; a refused resume changes nothing; a resume starts
  at the checkpoint it should (no silent restart) and never leaves "best"
  worse than it was.
* ``files``: ``tools/fault_cases_files.py`` (a full disk wherever textstream
  writes, temporaries of killed processes, ``eval`` on bad sources, links
  planted in a run directory), each of its cases a row.

The damage family's commands run in worker processes that import textstream
once (``--jobs``), or each in its own process (``--isolated``: slower, closest
to a user). ``--textstream DIR`` runs every family's commands from another
source tree (an older checkout, to compare; implies ``--isolated``) while the
drill's own checks use this one. Prints a table, then a JSON line: ``cases``
(rows), ``clean``, ``failed``, ``kills``, ``regressions`` (silent restarts,
steps gone back, "best" worsened or lost, final weights that differ, writes
through links, ...), and the same per family.

    python tools/fault_drill.py                                   # every family: a few minutes on 2 cores
    python tools/fault_drill.py --kills 25 --jobs 4 --isolated    # more, and closer to a user
    python tools/fault_drill.py --families damage --files 'run/checkpoints/last/*' --damages truncated,garbage
    python tools/fault_drill.py --textstream /tmp/old-checkout                # the same cases on older code
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the cat sat on a mat while the dog ran after a red ball and the bird sang in the old tree by the river "
         "as the sun went down over the hill; then a man came, asked why, and left? no: he stayed!").split()
PROBE = re.compile(r"cuInit|cuda|CUDA")  # TensorFlow probing for a GPU at import: not about the run
TRAIN = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "8", "--no-samples", "--seed", "7"]


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
                           env=self.env, timeout=timeout)
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


# --- kill -9 ---------------------------------------------------------------------------------------
@family("kill")
def kill_family(drill: Drill) -> list[Row]:
    """SIGKILL ``--kills`` times at random moments, resume each time, compare with an uninterrupted run."""
    reference = drill.work / "kill-reference"
    epochs = ["--epochs", str(drill.args.kill_epochs)]
    call = drill.cli(drill.train_argv(reference, resume=False, extra=epochs))
    want = end_record(reference)
    if call.rc != 0 or want is None:
        return [Row("kill", "reference run", "trains", False, f"exit {call.rc}: {(call.lines or ['?'])[-1]}")]
    steps_per_s = want["step"] / max(want["wall_s"], 1e-3)
    epoch_s = want["step"] / drill.args.kill_epochs / steps_per_s
    rng = random.Random(drill.args.seed)
    rows: list[Row] = []
    run, launches = drill.work / "kill-run", 0
    while launches < drill.args.kills + 20:
        launches += 1
        before = last_step(run)
        if before is None and run.exists():
            rows.append(nothing_to_resume(drill, run, launches))
        kill_after = None  # seconds after training starts; the first kill lands before the first checkpoint
        if drill.kills < drill.args.kills:
            left = (want["step"] - (before or 0)) / steps_per_s
            kill_after = rng.uniform(0, 0.9 * epoch_s) if drill.kills == 0 else rng.uniform(0, left)
        got, status = one_launch(drill, run, launches, before, kill_after, epochs)
        rows += got
        if status != "killed":  # finished, or failed: the same command would fail the same way
            break
    got = end_record(run) or {}
    same = got.get("weights_sha256") == want["weights_sha256"] and got.get("step") == want["step"]
    rows.append(Row("kill", f"after {drill.kills} kills, {launches} launches", "final weights == uninterrupted run's",
                    same, f"step {got.get('step')}, sha256 {str(got.get('weights_sha256'))[:12]} vs "
                          f"step {want['step']}, {want['weights_sha256'][:12]}",
                    None if same else "final weights differ from the uninterrupted run's"))
    return rows


def one_launch(drill: Drill, run: Path, n: int, before: int | None, kill_after: float | None,
               extra: list[str]) -> tuple[list[Row], str]:
    """Start ``train`` (``--resume`` once there is a checkpoint); SIGKILL it ``kill_after`` s into training.

    Training starts when the process says "from step N" (after TensorFlow's
    import, the corpus, the model and the restore). Returns the rows and
    what became of the launch: "killed", "finished" or "failed".
    """
    argv = drill.train_argv(run, resume=before is not None, extra=extra)
    with tempfile.NamedTemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "textstream", *map(str, argv)], stdout=subprocess.DEVNULL,
                                stderr=err, text=True, env=drill.env)
        killed = False
        if kill_after is not None:
            deadline = time.monotonic() + 300
            while proc.poll() is None and started_at(Path(err.name).read_text()) is None and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                killed = True
                drill.kills += 1
        proc.wait(timeout=600)
        err.seek(0)
        call = Call(proc.returncode, "", err.read())
    after = last_step(run)
    start = started_at(call.err)
    what = f"launch {n}: " + (f"killed {kill_after:.2f} s into training" if killed else "to the end")
    expected = before or 0
    problems, regression = [], None
    if start is not None and start != expected:
        problems.append(f"started at step {start}, the last checkpoint was {before}")
        regression = "a resume started elsewhere than the last checkpoint" if start < expected else None
    if before is not None and (after is None or after < before):
        problems.append(f"the last checkpoint went from step {before} to {after}")
        regression = "a checkpoint was lost"
    if not killed and (call.rc != 0 or "finished at step" not in call.err):
        problems.append(f"exit {call.rc}: {(call.lines or ['?'])[-1][:160]}")
    if call.loud():
        problems.append(call.loud())
    outcome = f"started at {start if start is not None else '-'}, checkpoint {before} -> {after}"
    return [Row("kill", what, "resumes at the last checkpoint", not problems, "; ".join(problems) or outcome,
                regression)], "killed" if killed else "finished" if call.rc == 0 else "failed"


def nothing_to_resume(drill: Drill, run: Path, n: int) -> Row:
    """``--resume`` on a directory that holds no checkpoint yet: one line saying so, exit 2, nothing changed."""
    call = drill.cli(drill.train_argv(run, resume=True))
    ok = call.rc == 2 and len(call.lines) == 1 and "nothing to resume" in call.err and not call.loud()
    return Row("kill", f"launch {n}: no checkpoint yet", "--resume says there is nothing to resume", ok,
               f"exit {call.rc}: {(call.lines or ['?'])[-1][:160]}")


# --- damaged files ---------------------------------------------------------------------------------
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
DAMAGES = ("deleted", "emptied", "truncated", "garbage", "json-type")


def damage(path: Path, kind: str) -> None:
    """Damage ``path`` in the way named ``kind`` (``DAMAGES``)."""
    data = path.read_bytes()
    if kind == "deleted":
        path.unlink()
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(random.Random(len(data)).randbytes(200))
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
    from textstream.training.checkpoints import recorded_best
    from textstream.model.run import RunPaths

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
    expect = FILES[case.file][1]
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
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - an escaped exception is what the drill looks for
            rc, tb = 1, traceback.format_exc()
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0), err.seek(0)
        return Call(rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), tb)


def isolated_call(argv: list, env: dict) -> Call:
    r = subprocess.run([sys.executable, "-m", "textstream", *map(str, argv)], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=600)
    return Call(r.returncode, r.stdout, r.stderr)


# --- files: full disk, stale temporaries, eval sources, links (tools/fault_cases_files.py) -----------
@family("files")
def files_family(drill: Drill) -> list[Row]:
    """``tools/fault_cases_files.py``'s cases (a full disk everywhere textstream writes, ...), as rows."""
    sys.path.insert(0, str(ROOT / "tools"))
    from fault_cases_files import file_cases

    got = file_cases(drill.work / "files", {"PYTHONPATH": drill.env["PYTHONPATH"]})
    return [Row("files", r["case"], r["check"], r["ok"], r["outcome"], r["regression"]) for r in got]


# --- the report ------------------------------------------------------------------------------------
def print_table(rows: list[Row]) -> None:
    width = max((len(r.case) for r in rows), default=10)
    for r in rows:
        mark = "ok  " if r.ok else "FAIL"
        extra = f"  [REGRESSION: {r.regression}]" if r.regression else ""
        print(f"{mark} {r.family:<7} {r.case:<{width}}  {r.check:<38} {r.outcome}{extra}")


def summary(rows: list[Row], kills: int, seconds: float) -> dict:
    def counts(rs):
        return {"cases": len(rs), "clean": sum(r.ok for r in rs), "failed": sum(not r.ok for r in rs),
                "regressions": sum(r.regression is not None for r in rs)}

    return {**counts(rows), "kills": kills, "seconds": round(seconds, 1),
            "families": {f: counts([r for r in rows if r.family == f]) for f in sorted({r.family for r in rows})}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--kills", type=int, default=8, help="SIGKILLs in the kill family (default 8)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the damage family's base run (default 12)")
    p.add_argument("--kill-epochs", type=int, default=24, help="epochs of the kill family's runs (default 24)")
    p.add_argument("--corpus-chars", type=int, default=12_000, help="size of the generated corpus (default 12,000)")
    p.add_argument("--files", default="*", help="damage family: comma-separated globs over the FILES keys")
    p.add_argument("--damages", default=",".join(DAMAGES), help=f"damage family: of {', '.join(DAMAGES)}")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for the damage family (default 2)")
    p.add_argument("--isolated", action="store_true", help="each command in its own process (slower)")
    p.add_argument("--textstream", type=Path, metavar="DIR",
                   help="run the textstream commands from this source tree (implies --isolated)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = p.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    args.files = [f for f in args.files.split(",") if f]
    args.damages = [d for d in args.damages.split(",") if d]
    args.isolated = args.isolated or args.textstream is not None
    unknown = set(args.families) - set(FAMILIES) or set(args.damages) - set(DAMAGES)
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-drill-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TEXTSTREAM_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    os.environ.update({k: env[k] for k in ("TEXTSTREAM_CACHE", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")})
    sys.path.insert(0, str(ROOT))
    commands = str(args.textstream.resolve()) if args.textstream else env["PYTHONPATH"]
    drill = Drill(args, work, write_corpus(work / "corpus.txt", args.corpus_chars), {**env, "PYTHONPATH": commands})
    t0, rows = time.monotonic(), []
    try:
        for name in args.families:
            t = time.monotonic()
            got = FAMILIES[name](drill)
            print(f"# {name}: {len(got)} checks in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
            rows += got
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    print(json.dumps(summary(rows, drill.kills, time.monotonic() - t0)))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
