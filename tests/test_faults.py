"""Runs that start and stop badly: failed starts, kills before the first checkpoint, closed pipes, NaN losses.

A directory becomes a run with its first checkpoint: a start that fails
leaves nothing behind, a process killed before its first save leaves a
directory that starts again. The display never stops the run: a reader that
goes away stops the output, not the training. (Damaged files: test_damage.py.)
"""
import io
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from textstream.cli import generate as cli_generate, main
from textstream.config import TrainConfig, make_config
from textstream.errors import TextstreamError
from textstream.model.run import RunPaths
from textstream.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the cat sat on a mat while the dog ran after a red ball and the bird sang by the river".split()
TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "8"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 9)) + "." for _ in range(100)) + "\n", encoding="utf-8")
    return path


def env_for(tmp_path):
    return {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


# --- class 3: stuck run directories ------------------------------------------------------------------
def test_a_failed_start_leaves_nothing_behind(corpus, tmp_path, capsys):
    new = tmp_path / "a" / "b" / "run"
    assert main(["train", str(tmp_path / "missing.txt"), "-o", str(new), *TINY, "--steps", "3"]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # the run directory and the parents made for it
    mine = tmp_path / "mine"  # a directory the user made: kept, with what was in it, and only that
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["train", str(corpus), "-o", str(mine), *TINY, "--seq-len", "5000", "--steps", "3"]) == 2
    assert "corpus too short" in capsys.readouterr().err  # found after the lock made the directory's files
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_run_killed_before_its_first_checkpoint_starts_again(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(corpus), "-o", str(run), *TINY, "--steps", "2", "--no-samples"]) == 0
    capsys.readouterr()
    shutil.rmtree(run / "checkpoints")  # what a kill -9 before the first save leaves: files, a log, no checkpoint
    (run / "checkpoints" / "last").mkdir(parents=True)
    RunPaths(run).append_metrics({"kind": "train", "step": 999})
    assert main(["train", "-o", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume (no checkpoint yet" in err and "without --resume" in err and err.count("\n") == 1
    assert main(["train", str(corpus), "-o", str(run), *TINY, "--steps", "4", "--no-samples"]) == 0
    assert [r["step"] for r in RunPaths(run).read_metrics("train")][-1] == 4
    assert 999 not in [r["step"] for r in RunPaths(run).read_metrics()]  # the earlier attempt's log is gone
    assert main(["train", str(corpus), "-o", str(run), *TINY, "--steps", "4"]) == 2  # now it is a run
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_then_start_again(corpus, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "textstream", "train", str(corpus), "-o", str(run), *TINY, "--epochs", "500",
            "--no-samples"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env_for(tmp_path))
    deadline = time.monotonic() + 120
    while not RunPaths(run).read_metrics("train") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    assert (run / "config.json").exists() and not RunPaths(run).has_checkpoint()
    again = subprocess.run(argv[:-3] + ["--steps", "5", "--no-samples"], capture_output=True, text=True,
                           env=env_for(tmp_path), timeout=300)
    assert again.returncode == 0, again.stderr
    assert RunPaths(run).series("last").step == 5


def test_nan_names_the_real_last_checkpoint_or_says_there_is_none(corpus, tmp_path):
    fresh = tmp_path / "fresh"
    cfg = make_config("tiny", seq_len=16, batch_size=8, steps=200, samples=False)
    cfg.lr, cfg.clipnorm = 1e38, 0.0  # past the flag checks: the loss diverges at once
    with pytest.raises(TextstreamError, match="no checkpoint was saved before it") as e:
        train(cfg, [corpus], fresh)
    assert "\n" not in str(e.value) and not fresh.exists()  # a run that never saved is not a run
    run = tmp_path / "run"
    train(make_config("tiny", seq_len=16, batch_size=8, steps=3, samples=False), [corpus], run)
    prefix = RunPaths(run).series("last").prefix
    cfg = TrainConfig.load(run / "config.json")
    cfg.steps, cfg.lr, cfg.clipnorm = 200, 1e38, 0.0
    with pytest.raises(TextstreamError, match="the last good checkpoint") as e:
        train(cfg, [], run, resume=True)
    assert f"{prefix}, is kept" in str(e.value) and prefix.with_name(prefix.name + ".index").exists()
    assert RunPaths(run).series("last").prefix == prefix


# --- class 5: pipes ------------------------------------------------------------------------------------
def closed_pipe() -> io.TextIOWrapper:
    """A text stream whose reader is gone (``| head`` that exited): every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    return io.TextIOWrapper(os.fdopen(w, "wb", buffering=0), encoding="utf-8", line_buffering=True)


def test_train_does_not_depend_on_its_output_streams(corpus, tmp_path, monkeypatch):
    """stdout and stderr gone (``train | head -c 100``, ``train 2>&1 >/dev/null | head -n 1``): trains to the end."""
    run = tmp_path / "run"
    out, err = closed_pipe(), closed_pipe()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    rc = main(["train", str(corpus), "-o", str(run), *TINY, "--epochs", "2"])
    monkeypatch.undo()
    assert rc == 0
    end = RunPaths(run).read_metrics("end")[-1]
    assert end["step"] == RunPaths(run).series("last").step > 0
    for stream in (out, err):  # the descriptors now lead to /dev/null: nothing fails at exit either
        stream.write("x" * 10000)
        stream.flush()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["stdout", "stderr"])
def test_train_into_a_pipe_closed_early(corpus, tmp_path, which):
    """The real thing: the reader of stdout (samples) or stderr (progress) exits after its first bytes."""
    run = tmp_path / "run"
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, which: subprocess.PIPE}
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "train", str(corpus), "-o", str(run), *TINY,
                             "--epochs", "3"], env=env_for(tmp_path), **streams)
    pipe = getattr(proc, which)
    assert pipe.read(1)  # like head -c 1
    pipe.close()
    assert proc.wait(timeout=300) == 0
    assert RunPaths(run).read_metrics("end")[-1]["step"] == RunPaths(run).series("last").step


def test_long_blocks_are_streamed_with_the_same_text(tiny_run, tiny_gen, capsys, monkeypatch):
    argv = ["generate", str(tiny_run), "--prime", "it was ", "-n", "300", "--seed", "2", "--temperature", "0.5,1"]
    assert main(argv) == 0
    batched = capsys.readouterr()
    monkeypatch.setattr(cli_generate, "STREAM_OVER", 0)  # every block streamed, one after another
    assert main(argv) == 0
    assert capsys.readouterr() == batched
    want = tiny_gen.generate(["it was "] * 2, 300, temperature=[0.5, 1.0], seed=[2, 2])
    assert batched.out == "".join(t + "\n" for t in want)


def test_a_huge_generate_starts_at_once_and_ends_quietly_when_the_reader_goes(tiny_run, tiny_gen):
    """``generate -n 1000000000`` (no --follow) streams its one block: text comes at once, ``| head`` ends it.

    (``tiny_gen`` has written the step weights file the numpy backend reads.)
    """
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "generate", str(tiny_run), "-n", "1000000000",
                             "--seed", "1", "--backend", "numpy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)  # a generous bound: no text at all is the failure
        assert ready, "no text from generate -n 1000000000"
        assert len(proc.stdout.read(100)) == 100
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.stderr.close()


def test_generate_with_a_closed_stderr_still_writes_every_block(tiny_run, tiny_gen, capsys, monkeypatch):
    """``generate ... 2>&1 >file | head -c 5``: the headers' reader is gone, the text is whole."""
    monkeypatch.setattr(sys, "stderr", closed_pipe())
    assert main(["generate", str(tiny_run), "--prime", "it was ", "-n", "80", "--seed", "2",
                 "--temperature", "0.5,1"]) == 0
    want = tiny_gen.generate(["it was "] * 2, 80, temperature=[0.5, 1.0], seed=[2, 2])
    assert capsys.readouterr().out == "".join(t + "\n" for t in want)


def test_cli_error_line_survives_a_closed_stderr(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", closed_pipe())
    assert main(["eval", str(tmp_path / "nowhere")]) == 2  # the status still says what happened


@pytest.mark.slow
def test_the_drill_kills_and_damages_without_a_failure(tmp_path):
    """``python -m tests.faults.drill``, scaled down: its table, and a last JSON line with no failure."""
    r = subprocess.run([sys.executable, "-m", "tests.faults.drill", "--kills", "3", "--kill-epochs", "8",
                        "--files", "run/checkpoints/last/*,run/*.json", "--damages", "garbage", "--epochs", "3"],
                       capture_output=True, text=True, env=env_for(tmp_path), cwd=ROOT, timeout=900)
    lines = r.stdout.splitlines()
    counts = json.loads(lines[-1])
    assert r.returncode == 0 and counts["failed"] == 0 and counts["regressions"] == 0, r.stdout
    assert counts["kills"] == 3 and counts["families"]["kill"]["cases"] >= 5
    checks = [line.split()[4] for line in lines if " run/checkpoints/last/checkpoint: garbage " in line]
    assert checks == ["generate", "eval", "export", "resume", "recover"]
