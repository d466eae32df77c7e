"""The ``hostile`` family: what a hostile user tries, one class at a time, each command in its own process.

* weights: NaN in the step weights file (``--backend numpy`` names it, ``auto``
  rebuilds it, then numpy works), a deflated member claiming 40 GB, a FIFO in
  place of a run file (one line, never a hang), an edited ``config.json``
  (one line, never an OOM);
* destroy: ``export --force`` onto a run's file and onto a user's directory
  holding a ``model.keras``, ``prepare -o RUN --force``, ``cache clean --all``
  while a ``train`` uses its corpus;
* stdio: ``generate >&-`` (one line, exit 2), ``train 2>&-`` (trains);
* data: ``--resume`` after the corpus changed (refused), a token file
  truncated under a running ``train`` (one line, the last good step saved),
  ``-o /dev/null/x`` (one line);
* signals: ``generate --follow`` started with SIGINT ignored stops on SIGINT;
* limits (class 1): ``serve --api-key ""`` (refused, never an open server),
  ``serve --max-streams`` beyond memory (one line, nothing allocated),
  ``generate --prime-file /dev/zero`` and a stop string past its maximum
  (one line each, bounded memory).

Checked for every case: the exit status, one ``textstream:`` line naming what
it must, no traceback, and nothing destroyed (a snapshot of what must stay).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from tests.faults.harness import NEUTRAL, TRAIN, Call, Drill, Row, family, last_step

TIMEOUT = 120  # a hang guard per command (a FIFO read blocks forever)


def call(drill: Drill, argv: list, *, shell: str = "", timeout: float = TIMEOUT, sigint=None) -> Call:
    """``textstream ARGV`` in its own process (``shell``: redirections, ``>&-``); a hang is exit 124."""
    cmd = [sys.executable, "-m", "textstream", *map(str, argv)]
    if shell:
        cmd = ["bash", "-c", f'exec "$@" {shell}', "textstream", *cmd]
    streams = {"stdout": subprocess.DEVNULL if ">&-" in shell.replace("2>&-", "") else subprocess.PIPE,
               "stderr": subprocess.DEVNULL if "2>&-" in shell else subprocess.PIPE}
    pre = (lambda: signal.signal(signal.SIGINT, sigint)) if sigint is not None else None
    try:
        r = subprocess.run(cmd, env=drill.env, timeout=timeout, text=True, preexec_fn=pre, cwd=NEUTRAL, **streams)
    except subprocess.TimeoutExpired:
        return Call(124, "", f"hung for {timeout} s")
    return Call(r.returncode, r.stdout or "", r.stderr or "")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def judged(case: str, check: str, got: Call, *, rc: int = 2, names: str = "", kept: tuple | None = None) -> Row:
    """One row: exit ``rc``, one ``textstream:`` line naming ``names`` (for rc 2), no traceback, ``kept`` intact."""
    problems, regression = [], None
    if got.loud():
        problems.append(got.loud())
    if got.rc != rc:
        problems.append(f"exit {got.rc}, expected {rc}" + (f": {got.lines[-1][:120]}" if got.lines else ""))
    lines = [line for line in got.lines if line.startswith("textstream: ")]
    if rc == 2 and names and not (len(lines) == 1 and names in lines[0]):
        problems.append(f"not one line naming {names!r}: {(got.lines or [''])[-1][:140]}")
    if kept is not None and snapshot(kept[0]) != kept[1]:
        problems.append(f"{kept[0].name} changed")
        regression = f"{kept[0].name} destroyed"
    outcome = "; ".join(problems) or (lines[-1][:140] if lines else f"exit {got.rc}")
    return Row("hostile", case, check, not problems, outcome, regression)


@family("hostile")
def hostile_family(drill: Drill) -> list[Row]:
    """Every case of the module docstring, on copies of one trained run."""
    base = drill.work / "hostile-base"
    trained = call(drill, drill.train_argv(base, resume=False, extra=["--epochs", "2"]), timeout=600)
    if trained.rc != 0:
        return [Row("hostile", "base run", "trains", False, f"exit {trained.rc}: {(trained.lines or ['?'])[-1]}")]
    rows: list[Row] = []
    for group in (limits, weights, destroy, stdio, data, signals):
        rows += group(drill, base)
    return rows


def copy_of(drill: Drill, base: Path, name: str) -> Path:
    target = drill.work / "hostile" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target


def step_file(run: Path) -> Path:
    from textstream.model import stepweights
    from textstream.model.run import RunPaths

    return stepweights.path_for(RunPaths(run).series("last").prefix)


# --- class 1: the limits of what a command accepts -----------------------------------------------------
def limits(drill: Drill, base: Path) -> list[Row]:
    serve = ["serve", base, "--port", "0", "--backend", "numpy"]
    gen = ["generate", base, "--prime", "the ", "-n", "5"]
    return [judged('serve --api-key ""', "refused at start", call(drill, [*serve, "--api-key", ""], timeout=60),
                   names="--api-key"),
            judged("serve --max-streams 10**9", "one line, nothing allocated",
                   call(drill, [*serve, "--max-streams", str(10**9)], timeout=60), names="--max-streams"),
            judged("generate --prime-file /dev/zero", "one line, bounded memory",
                   call(drill, ["generate", base, "--prime-file", "/dev/zero", "-n", "5"]), names="/dev/zero"),
            judged("generate --stop of 2,000 characters", "one line", call(drill, [*gen, "--stop", "x" * 2000]),
                   names="stop string")]


# --- class 2: weights ----------------------------------------------------------------------------------
def generate(run: Path) -> list:
    """``generate`` of the checkpoint ``step_file`` is beside ("last")."""
    return ["generate", run, "--checkpoint", "last", "--prime", "the ", "-n", "20", "--seed", "1"]


def weights(drill: Drill, base: Path) -> list[Row]:
    rows = []
    run = copy_of(drill, base, "nan")
    path = step_file(run)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["embed"] = arrays["embed"].copy()
    arrays["embed"][0, 0] = np.nan
    np.savez(path, **arrays)
    gen = generate(run)
    rows.append(judged("step file holding NaN", "--backend numpy names the file", call(drill, [*gen, "--backend",
                                                                                             "numpy"]),
                       names=str(path)))
    rows.append(judged("step file holding NaN", "auto rebuilds it from the checkpoint", call(drill, gen), rc=0))
    rows.append(judged("step file holding NaN", "then --backend numpy works", call(drill, [*gen, "--backend",
                                                                                          "numpy"]), rc=0))
    run = copy_of(drill, base, "bomb")
    path = step_file(run)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (100_000,) * 2})
    members["embed.npy"] = header.getvalue() + bytes(4 << 20)
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b, compress_type=zipfile.ZIP_DEFLATED)
    rows.append(judged("step file claiming 40 GB, deflated", "refused before inflating",
                       call(drill, [*generate(run), "--backend", "numpy"]), names=str(path)))
    run = copy_of(drill, base, "fifo")
    (run / "vocab.json").unlink()
    os.mkfifo(run / "vocab.json")
    rows.append(judged("FIFO in place of vocab.json", "one line, no hang", call(drill, generate(run)),
                       names="vocab.json"))
    run = copy_of(drill, base, "units")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "units": 100_000}))
    rows.append(judged("config.json units 100,000", "one line, no OOM",
                       call(drill, [*generate(run), "--backend", "tf"]), names="config.json"))
    return rows


# --- class 3: commands that destroy files ------------------------------------------------------------------
def destroy(drill: Drill, base: Path) -> list[Row]:
    rows = []
    run = copy_of(drill, base, "export")
    before = (run, snapshot(run))
    rows.append(judged("export --force onto config.json", "refused, the run intact",
                       call(drill, ["export", run, "-o", run / "config.json", "--format", "litert", "--force"]),
                       names="config.json", kept=before))
    mine = drill.work / "hostile" / "mine"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "model.keras").write_text("mine")
    (mine / "thesis.tex").write_text("precious")
    rows.append(judged("export --force onto a directory with a model.keras", "refused, the directory intact",
                       call(drill, ["export", run, "-o", mine, "--format", "keras", "--force"]),
                       names=str(mine), kept=(mine, snapshot(mine))))
    other = drill.work / "hostile" / "other.txt"
    other.write_text("a quick brown fox jumps over the lazy dog again and again\n" * 20)
    rows.append(judged("prepare OTHER -o RUN --force", "refused, the run intact",
                       call(drill, ["prepare", other, "-o", run, "--force"]), names="run directory", kept=before))
    rows.append(cache_clean_during_train(drill, base))
    return rows


def cache_clean_during_train(drill: Drill, base: Path) -> Row:
    """``cache clean --all`` while a ``train`` runs on a corpus of the cache: the corpus stays, the train goes on."""
    from textstream.model.run import RunPaths

    run = drill.work / "hostile" / "busy"
    shutil.rmtree(run, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "textstream", *map(str, drill.train_argv(
        run, resume=False, extra=["--epochs", "400"]))], env=drill.env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, cwd=NEUTRAL)
    try:
        if not wait_for(lambda: last_step(run) is not None, proc):
            return Row("hostile", "cache clean --all during a train", "keeps its corpus", False, "no checkpoint")
        prepared = RunPaths(run).read_data().dir
        cleaned = call(drill, ["cache", "clean", "--all"])
        kept = (prepared / "train.bin").is_file()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    ok = kept and cleaned.rc == 0 and rc == 130
    return Row("hostile", "cache clean --all during a train", "keeps its corpus, the train goes on", ok,
               f"corpus {'kept' if kept else 'REMOVED'}, clean exit {cleaned.rc}, train exit {rc} on SIGINT",
               None if kept else "a running train's corpus removed")


def wait_for(condition, proc: subprocess.Popen, seconds: float = 300) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


# --- class 4: closed standard streams -------------------------------------------------------------------
def stdio(drill: Drill, base: Path) -> list[Row]:
    gen = ["generate", base, "--prime", "the ", "-n", "20"]
    rows = [judged("generate >&-", "one line, exit 2", call(drill, gen, shell=">&-"), names="standard output"),
            judged("generate 2>&-", "writes its text", call(drill, gen, shell="2>&-"), rc=0)]
    run = drill.work / "hostile" / "closed-stderr"
    shutil.rmtree(run, ignore_errors=True)
    got = call(drill, drill.train_argv(run, resume=False, extra=["--steps", "20"]), shell="2>&-", timeout=600)
    row = judged("train 2>&-", "trains to the end", got, rc=0)
    if row.ok and last_step(run) != 20:
        row.ok, row.outcome = False, f"the last checkpoint is {last_step(run)}, not 20"
    return rows + [row]


# --- class 5: data that changes under a run -------------------------------------------------------------
def data(drill: Drill, base: Path) -> list[Row]:
    rows = []
    run = copy_of(drill, base, "changed")
    text = drill.work / "hostile" / "changed.txt"
    text.write_text(drill.corpus.read_text().replace("cat", "dog"))
    rows.append(judged("--resume on a changed corpus", "refused, the run intact",
                       call(drill, ["train", text, "-o", run, "--resume", "--epochs", "3"]),
                       names="--allow-new-data", kept=(run, snapshot(run))))
    rows.append(truncated_during_training(drill))
    rows.append(judged("train -o /dev/null/x", "one line, exit 2",
                       call(drill, drill.train_argv(Path("/dev/null/x"), resume=False)), names="/dev/null/x"))
    return rows


def truncated_during_training(drill: Drill) -> Row:
    """``train.bin`` cut to a third under a running ``train``: one line naming it, and the step it names saved."""
    import re

    from textstream.model.run import RunPaths

    run = drill.work / "hostile" / "truncated"
    shutil.rmtree(run, ignore_errors=True)
    own = drill.work / "hostile" / "own.txt"  # a corpus of its own (its own prepared directory) to cut short
    own.write_text(drill.corpus.read_text() + "The end.\n")
    argv = ["train", own, "-o", run, *TRAIN, "--epochs", "400"]
    # TensorFlow's own log of the failed read (with the py_func's Python stack) is asked for by the drill's
    # TF_CPP_MIN_LOG_LEVEL=1; a user gets textstream's default (3): what is checked here is what a user sees
    env = {k: v for k, v in drill.env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.Popen([sys.executable, "-m", "textstream", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=NEUTRAL)
    try:
        if not wait_for(lambda: last_step(run) is not None, proc):
            return Row("hostile", "train.bin truncated during training", "one line, step saved", False,
                       "no checkpoint")
        path = RunPaths(run).read_data().dir / "train.bin"
        os.truncate(path, path.stat().st_size // 3)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    got = Call(proc.returncode, "", err or "")
    row = judged("train.bin truncated during training", "one line, the last good step saved", got,
                 names="train.bin: changed during training")
    said = re.search(r"step (\d+) saved in \S*ckpt-(\d+)", err or "")
    if row.ok and not (said and int(said.group(1)) == last_step(run)):
        row.ok, row.outcome = False, f"the checkpoint on disk is {last_step(run)}, the line says {said and said[0]}"
    return row


# --- class 6: signals -----------------------------------------------------------------------------------
def signals(drill: Drill, base: Path) -> list[Row]:
    """``generate --follow`` started with SIGINT ignored (``cmd &`` in a script): SIGINT still ends it (130)."""
    call(drill, ["generate", base, "-n", "1"])  # its step weights file, so the follow starts on numpy
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "generate", str(base), "--follow", "--seed", "2"],
                            env=drill.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=NEUTRAL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        started = len(proc.stdout.read(2000)) == 2000
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc, err = None, b""
    finally:
        proc.kill()
        proc.wait()
    ok = started and rc == 130 and not err
    return [Row("hostile", "generate --follow with SIGINT ignored", "SIGINT ends it, exit 130", ok,
                f"exit {rc}" if rc is not None else f"still running {TIMEOUT} s after SIGINT")]
