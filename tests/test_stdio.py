"""Closed or broken standard streams (issue 33, class 4), checked on real processes started with them closed.

One mechanism at the CLI's entry (``console.standard_streams``): a closed
(or wrongly opened) descriptor 0, 1 or 2 is pointed at /dev/null before
anything opens a file, so no file lands on it; a closed stderr only
silences progress; a closed stdout is one line and exit 2 for the commands
whose product it is (generate, eval, corpora, cache info), and changes
nothing else (train trains, export exports).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_run
from textstream.generation.generator import Generator
from textstream.model.run import RunPaths

ROOT = Path(__file__).resolve().parents[1]
PRIME = "it was the "
CLOSED = "standard output is closed"


def textstream(redirections: str, *argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``textstream ARGV`` exec'd by a shell with ``redirections`` (``>&-``, ``2>&-``, ``1</dev/null``, ...)."""
    script = f'exec "$@" {redirections}'
    streams = {}
    if ">&-" not in redirections.replace("2>&-", "") and "1<" not in redirections:
        streams["stdout"] = subprocess.PIPE
    if "2>&-" not in redirections:
        streams["stderr"] = subprocess.PIPE
    return subprocess.run(["bash", "-c", script, "textstream", sys.executable, "-m", "textstream", *map(str, argv)],
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout, text=True,
                          **streams)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("stdio"), val_text="it was the age of wisdom\n" * 8)
    Generator.load(run, warm=False)  # its step weights file: generate runs on numpy, without TensorFlow
    return run


@pytest.fixture(scope="module")
def text(run):
    return Generator.load(run, backend="numpy", warm=False).generate([PRIME], 30, seed=2)[0] + "\n"


@pytest.mark.parametrize("redirections", [">&-", "1</dev/null", ">&- <&-"])
def test_generate_with_stdout_closed_is_one_line_and_exit_2(run, redirections):
    r = textstream(redirections, "generate", run, "--prime", PRIME, "-n", "30", "--seed", "2")
    assert r.returncode == 2
    assert r.stderr.startswith(f"textstream: {CLOSED}") and r.stderr.count("\n") == 1


def test_generate_with_both_closed_says_it_in_its_status(run):
    assert textstream(">&- 2>&-", "generate", run, "--prime", PRIME, "-n", "30").returncode == 2


@pytest.mark.parametrize("redirections", ["2>&-", "<&-", "2>/dev/full"])
def test_generate_with_stderr_or_stdin_closed_writes_its_text(run, text, redirections):
    r = textstream(redirections, "generate", run, "--prime", PRIME, "-n", "30", "--seed", "2",
                   "--temperature", "1")
    assert r.returncode == 0 and r.stdout == text


@pytest.mark.parametrize("argv", [["eval", "RUN"], ["corpora"], ["cache"], ["cache", "info"]])
def test_every_command_whose_product_is_stdout_refuses_a_closed_one(run, tmp_path, argv):
    argv = [run if a == "RUN" else a for a in argv]
    r = textstream(">&-", *argv, env={"TEXTSTREAM_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and r.stderr.startswith(f"textstream: {CLOSED}"), r.stderr


@pytest.mark.parametrize("argv", [["generate", "RUN", "-n", "50"], ["generate", "RUN", "--follow", "-n", "5000"],
                                  ["eval", "RUN"]])
def test_a_product_on_stdout_that_cannot_be_written_is_one_line(run, argv):
    r = textstream(">/dev/full", *[run if a == "RUN" else a for a in argv])
    assert r.returncode == 2
    assert r.stderr == "textstream: standard output: cannot write (No space left on device)\n"


def test_eval_with_stderr_closed_prints_its_result(run):
    r = textstream("2>&-", "eval", run)
    assert r.returncode == 0 and "bits/char" in r.stdout


def test_export_with_stdout_closed_writes_its_file(run, tmp_path):
    out = tmp_path / "k"
    r = textstream(">&-", "export", run, "-o", out, "--format", "keras")
    assert r.returncode == 0 and (out / "model.keras").is_file()


@pytest.mark.parametrize("redirections", [">&- 2>&-"])  # 2>&- alone: the drill's hostile family
def test_train_with_its_streams_closed_trains_to_the_end(tmp_path, redirections):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on a mat while the dog ran after a red ball.\n" * 40)
    run = tmp_path / "run"
    r = textstream(redirections, "train", corpus, "-o", run, "--preset", "tiny", "--seq-len", "16",
                   "--batch-size", "8", "--steps", "12", env={"TEXTSTREAM_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0
    paths = RunPaths(run)
    assert paths.series("last").step == 12 and paths.read_metrics("end")[-1]["step"] == 12
    # nothing opened later landed on descriptor 2: the run's files hold what textstream wrote, no log text
    assert (run / ".lock").read_text().strip().isdigit()
    json.loads((run / "config.json").read_text())
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())


def test_the_streams_check_is_the_first_thing_main_does(tmp_path):
    """In one process: fd 2 closed before ``main``; the first file opened after it is not descriptor 2."""
    code = ("import os, sys\n"
            "os.close(2)\n"
            "sys.stderr = None\n"
            "from textstream.cli import main\n"
            "rc = main(['cache', 'info'])\n"
            "fd = os.open(os.devnull, os.O_RDONLY)\n"
            "print(rc, fd, os.readlink('/proc/self/fd/2'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TEXTSTREAM_CACHE": str(tmp_path / "c")})
    rc, fd, target = r.stdout.splitlines()[-1].split()
    assert rc == "0" and int(fd) > 2 and target == os.devnull
