"""Data that changes under a run (issue 33, class 5): refused, or one line with the last good step saved.

* ``--resume`` on a corpus that is not the run's (the sha256 of its sources,
  the ``fingerprint`` in the run's vocab.json, differs) is refused whichever
  way the new text arrives, unless ``--allow-new-data`` (``setup.check_same_data``);
* a token file that changes during training (truncated, removed) stops the
  run in one line after saving the last good step (``Trainer.stop_if_data_changed``);
* an output directory that cannot be created is one line (``claims.make_directory``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from textstream.cli import main
from textstream.config import TrainConfig, make_config
from textstream.data.preparation import prepare
from textstream.errors import TextstreamError
from textstream.model.run import RunPaths
from textstream.training.loop import train

TEXT = "the cat sat on a mat while the dog ran after a red ball by the river.\n" * 40
CHANGED = "the dog sat on a mat while the cat ran after a red ball by the river.\n" * 40  # same characters
TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "8", "--no-samples"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def trained(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(corpus), "-o", str(run), *TINY, "--steps", "4"]) == 0
    capsys.readouterr()
    return run


def one_line(capsys, argv, *words) -> str:
    assert main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("textstream: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- a resume on another corpus ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["sources given again", "cache cleaned", "prepared directory replaced"])
def test_a_resume_on_a_changed_corpus_is_refused_and_changes_nothing(trained, corpus, tmp_path, capsys, how):
    corpus.write_text(CHANGED)
    paths = RunPaths(trained)
    argv = ["train", "-o", trained, "--resume", "--steps", "8"]
    if how == "sources given again":
        argv.insert(1, corpus)
    elif how == "cache cleaned":
        assert main(["cache", "clean", "--all"]) == 0
    else:  # the directory data.json names, now holding another preparation
        prepare([corpus], paths.read_data().dir)
    capsys.readouterr()
    line = one_line(capsys, argv, str(trained), "--allow-new-data", "not the one the run was trained on")
    assert "not be exact" in line
    assert paths.series("last").step == 4 and len(paths.read_metrics("end")) == 1


def test_allow_new_data_resumes_on_the_new_text_with_a_notice_and_makes_it_the_runs(trained, corpus, capsys):
    corpus.write_text(CHANGED)
    argv = ["train", str(corpus), "-o", str(trained), "--resume", "--steps", "8"]
    assert main([*argv, "--allow-new-data"]) == 0
    err = capsys.readouterr().err
    assert "--allow-new-data" in err and "not exact" in err and "from step 4" in err
    assert RunPaths(trained).series("last").step == 8
    assert main(["train", str(corpus), "-o", str(trained), "--resume", "--steps", "10"]) == 0  # now the run's own


def test_allow_new_data_is_a_resume_flag(corpus, tmp_path, capsys):
    one_line(capsys, ["train", corpus, "-o", tmp_path / "r", *TINY, "--steps", "2", "--allow-new-data"],
             "--allow-new-data", "--resume")
    assert not (tmp_path / "r").exists()


def test_a_resume_on_the_unchanged_corpus_is_exact_as_before(trained, corpus, capsys):
    assert main(["cache", "clean", "--all"]) == 0  # prepared again from the same bytes: the same fingerprint
    assert main(["train", "-o", str(trained), "--resume", "--steps", "6"]) == 0
    assert "from step 4" in capsys.readouterr().err


# --- a token file that changes during training ----------------------------------------------------------
@pytest.mark.parametrize("split, change", [("train", "truncated"), ("train", "removed"), ("val", "truncated"),
                                           ("train", "emptied")])
def test_a_token_file_changed_during_training_is_one_line_and_the_last_good_step_is_saved(corpus, tmp_path, split,
                                                                                         change):
    run = tmp_path / "run"
    calls = iter(range(10**6))

    def change_at_step_5():
        if next(calls) == 5:
            path = Path(RunPaths(run).read_data().dir) / f"{split}.bin"
            if change == "removed":
                path.unlink()
            else:
                size = 0 if change == "emptied" else path.stat().st_size // 3
                os.truncate(path, size)
        return False

    cfg = make_config("tiny", epochs=3, seq_len=16, batch_size=8, samples=False)
    with pytest.raises(TextstreamError) as e:
        train(cfg, [corpus], run, should_stop=change_at_step_5)
    message = str(e.value)
    assert "\n" not in message and f"{split}.bin: changed during training" in message
    last = RunPaths(run).series("last")
    assert last.usable and f"step {last.step} saved in {last.prefix}" in message
    assert last.step >= 5  # the steps taken before the change (val: the epoch's end) are not lost
    done = train(TrainConfig.load(run / "config.json"), [], run, resume=True)  # prepares the sources again
    assert done.step > last.step


def test_a_change_before_the_first_checkpoint_says_so(corpus, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def change_now():
        path = Path(RunPaths(run).read_data().dir) / "train.bin"
        os.truncate(path, 10)
        return False

    with pytest.raises(TextstreamError, match="train.bin: changed during training.*before its first checkpoint"):
        train(make_config("tiny", steps=20, seq_len=16, batch_size=8, samples=False), [corpus], run,
              should_stop=change_now)


# --- an output directory that cannot be created -------------------------------------------------------
@pytest.mark.parametrize("out", ["/proc/textstream-x", "/dev/null/x", "/proc/self/nope/x", "FILE/sub"])
def test_an_output_directory_that_cannot_be_created_is_one_line(corpus, tmp_path, capsys, out):
    if out.startswith("FILE"):
        out = str(corpus) + out[4:]
    one_line(capsys, ["train", corpus, "-o", out, *TINY, "--steps", "1"], out)
    one_line(capsys, ["prepare", corpus, "-o", out], out)
    assert not os.path.lexists(out)
