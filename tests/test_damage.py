"""A damaged or hand-edited run directory: one line naming the file and exit 2, or a documented recovery.

Every file textstream reads back (the run's JSON files and metrics, each
checkpoint series' state, index, data and step weights files, the prepared
corpus in the cache) is damaged in a copy of one trained run whose "last"
checkpoint is ahead of "best"; ``generate``, ``eval``, ``train --resume``
(and ``export`` where it must refuse) then never print a traceback, never
restart silently and never leave "best" worse. ``tools/fault_drill.py`` runs
the whole cross-product of files and kinds of damage.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from textstream.training.checkpoints import recorded_best
from textstream.cli import main
from textstream.config import TrainConfig, make_config
from textstream.errors import Interrupted, TextstreamError
from textstream.model.run import RunPaths
from textstream.model.series import inspect_series
from textstream.training.loop import train
from textstream.data.vocab import Vocab, vocab_json_problem

WORDS = "the cat sat on a mat while the dog ran after a red ball and the bird sang by the river".split()
CFG = dict(seq_len=16, batch_size=8, samples=False, seed=3)


def write_corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 9)) + "." for _ in range(120)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained run (2 epochs), then resumed and interrupted mid-epoch: "last" is ahead of "best"."""
    root = tmp_path_factory.mktemp("damage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEXTSTREAM_CACHE", str(root / "cache"))
        corpus = write_corpus(root / "corpus.txt")
        run = root / "run"
        train(make_config("tiny", epochs=2, **CFG), [corpus], run)
        calls = iter(range(10**6))
        with pytest.raises(Interrupted):
            train(TrainConfig.load(run / "config.json").resumed({"epochs": 3}), [], run, resume=True,
                  should_stop=lambda: next(calls) >= 3)
        paths = RunPaths(run)
        shutil.copytree(paths.read_data().dir, root / "prepared")  # a cache of the run's own, to damage
        paths.write_data(root / "prepared", [corpus])
    last, best = paths.series("last"), paths.series("best")
    assert last.step > best.step
    return root


@pytest.fixture
def case(base, tmp_path, monkeypatch):
    """A copy of the base run (``tmp_path/run``, its corpus in ``tmp_path/prepared``)."""
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(base / "cache"))
    shutil.copytree(base / "run", tmp_path / "run")
    shutil.copytree(base / "prepared", tmp_path / "prepared")
    RunPaths(tmp_path / "run").write_data(tmp_path / "prepared", [base / "corpus.txt"])
    return tmp_path


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    writes = {"emptied": b"", "truncated": data[:len(data) // 2], "garbage": bytes(range(256))[::-3] * 3,
              "json-type": b"[1, 2, 3]\n"}
    if kind == "deleted":
        path.unlink()
    else:
        path.write_bytes(writes[kind])


ERROR, OK, NOTICE = "error", "ok", "notice"
LAST = dict(generate=OK, eval=OK, resume=ERROR)
BEST = dict(generate=ERROR, eval=ERROR, export=ERROR, resume=NOTICE)
CACHE = dict(generate=OK, eval=ERROR, resume=NOTICE)
# every file read back, one kind of damage each (the drill does them all), what each command must do
MATRIX = [
    ("run/config.json", "json-type", dict(generate=ERROR, eval=ERROR, export=ERROR, resume=ERROR)),
    ("run/vocab.json", "truncated", dict(generate=ERROR, eval=ERROR, export=ERROR, resume=ERROR)),
    ("run/data.json", "garbage", dict(generate=OK, eval=ERROR, resume=ERROR)),
    ("run/metrics.jsonl", "truncated", dict(generate=OK, eval=OK, resume=OK)),
    ("run/checkpoints/last/checkpoint", "garbage", LAST),
    ("run/checkpoints/last/ckpt-*.index", "deleted", LAST),
    ("run/checkpoints/last/ckpt-*.data-00000-of-00001", "emptied", LAST),
    ("run/checkpoints/last/ckpt-*.step.npz", "garbage", dict(generate=OK, eval=OK, resume=OK)),
    ("run/checkpoints/best/checkpoint", "deleted", BEST),
    ("run/checkpoints/best/ckpt-*.index", "truncated", BEST),
    ("run/checkpoints/best/ckpt-*.data-00000-of-00001", "garbage", BEST),
    ("run/checkpoints/best/ckpt-*.step.npz", "truncated", dict(generate=OK, eval=OK, resume=OK)),
    ("prepared/vocab.json", "json-type", CACHE),
    ("prepared/train.bin", "truncated", CACHE),
    ("prepared/val.bin", "emptied", CACHE),
]


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def command(name: str, case: Path, last_step: int) -> list[str]:
    run = str(case / "run")
    return {"generate": ["generate", run, "-n", "30", "--seed", "1"], "eval": ["eval", run],
            "export": ["export", run, "-o", str(case / "exported"), "--format", "keras"],
            "resume": ["train", "-o", run, "--resume", "--steps", str(last_step + 3)]}[name]


@pytest.mark.parametrize("pattern, kind, expect", MATRIX, ids=[f"{p}-{k}" for p, k, _ in MATRIX])
def test_a_damaged_file_is_one_line_naming_it_or_a_documented_recovery(case, capsys, pattern, kind, expect):
    paths = RunPaths(case / "run")
    last, best = paths.series("last"), paths.series("best")
    best_loss = recorded_best(best)
    (target,) = case.glob(pattern)
    damage(target, kind)
    damaged = files(case / "run" / "checkpoints")
    for name, wanted in expect.items():
        rc = main(command(name, case, last.step))
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert "Traceback" not in err and not any(x.startswith("ERROR:") for x in lines), (name, err)
        if wanted == ERROR:
            assert rc == 2, (name, err)
            assert lines[-1].startswith("textstream: ") and str(target) in lines[-1], (name, err)
            assert sum(x.startswith("textstream:") for x in lines) == 1
            if name != "resume":
                assert len(lines) == 1, (name, err)
        else:
            assert rc == 0, (name, err)
            assert out or name == "resume", name  # text, a score (train --no-samples prints on stderr)
            if wanted == NOTICE:
                assert str(target) in err, (name, err)
        if name == "resume":
            now = paths.series("last")
            if rc == 0:
                assert f"from step {last.step:,}" in err  # never a silent restart
                assert now.step == last.step + 3
            else:
                assert files(case / "run" / "checkpoints") == damaged  # a refused resume changes nothing
            held = recorded_best(paths.series("best"))
            assert held is None or held <= best_loss  # best never worsened


def test_a_damaged_last_says_how_to_continue_from_best_and_that_equals_an_uninterrupted_run(case, capsys, tmp_path):
    """``--from best`` (when "last" is damaged) trains again from "best": the weights equal a run that never stopped."""
    paths = RunPaths(case / "run")
    last, best = paths.series("last"), paths.series("best")
    (index,) = (case / "run" / "checkpoints" / "last").glob("*.index")
    index.unlink()
    assert main(["train", "-o", str(case / "run"), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert f"{index}: missing" in err and f"best checkpoint (step {best.step}) is intact" in err
    assert f"textstream train --resume --from best -o {case / 'run'}" in err
    assert main(["train", "-o", str(case / "run"), "--resume", "--from", "best", "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert f"from step {best.step:,}" in err and "moved last aside" in err
    assert (case / "run" / "checkpoints" / "last.damaged" / index.name.replace(".index", ".step.npz")).exists()
    straight = tmp_path / "straight"
    summary = train(make_config("tiny", epochs=3, **CFG), paths.read_data().sources, straight)
    end = paths.read_metrics("end")[-1]
    assert end["step"] == summary.step > last.step and end["weights_sha256"] == summary.weights_sha256


def test_from_best_is_refused_while_a_newer_last_is_intact(case, capsys):
    assert main(["train", "-o", str(case / "run"), "--resume", "--from", "best", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "the last checkpoint" in err and "is intact" in err and err.count("\n") == 1
    assert main(["train", "-o", str(case / "run"), "--from", "best"]) == 2
    assert "give it with --resume" in capsys.readouterr().err


def test_generate_never_falls_back_silently_from_a_damaged_best(case, capsys):
    state = case / "run" / "checkpoints" / "best" / "checkpoint"
    state.write_text('model_checkpoint_path: "ckpt-1"\n', encoding="utf-8")  # names a checkpoint that is not there
    assert main(["generate", str(case / "run"), "-n", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"textstream: {case / 'run' / 'checkpoints' / 'best' / 'ckpt-1.index'}: missing")
    assert "--checkpoint last reads it" in err
    assert main(["generate", str(case / "run"), "-n", "10", "--checkpoint", "last"]) == 0


def test_a_resume_never_replaces_best_with_a_worse_model_than_the_one_on_disk(case):
    """"best" on disk holds a lower loss than the run's own record (copied in, or from an earlier run): it stays."""
    from textstream._tf import tf
    from textstream.training.checkpoints import Checkpoints
    from textstream.training.update import build_state

    paths = RunPaths(case / "run")
    shutil.rmtree(paths.checkpoints("best"))
    state = build_state(TrainConfig.load(paths.config), paths.read_vocab().size, tf.distribute.get_strategy())
    state.best_val_nats.assign(0.001)  # better than any this run reaches
    Checkpoints(state, paths.checkpoint_root).save("best")
    held = paths.series("best").prefix
    train(TrainConfig.load(paths.config).resumed({"epochs": 4}), [], case / "run", resume=True)
    assert paths.series("best").prefix == held and recorded_best(paths.series("best")) == pytest.approx(0.001)


# --- the checks themselves, without TensorFlow ----------------------------------------------------------
def test_the_run_directory_checks_import_no_tensorflow():
    code = ("import sys; import textstream.model.series, textstream.model.run, textstream.training.runstart, textstream.cli.train; "
            "print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_the_state_file_is_read_strictly(tmp_path):
    d = tmp_path / "last"
    assert not inspect_series("last", d).saved  # never saved
    d.mkdir()
    (d / "ckpt-5.index").write_bytes(b"x")
    (d / "ckpt-5.data-00000-of-00001").write_bytes(b"x")
    assert "checkpoint: missing (the directory holds ckpt-5" in inspect_series("last", d).problem
    cases = {'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-5"\n': None,
             '[1, 2, 3]\n': "line 1 is not a checkpoint record",
             'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckp': "line 2 is not",
             'model_checkpoint_path: "/etc/ckpt-5"\n': "line 1 is not",
             '': "names 0 current checkpoints",
             'model_checkpoint_path: "ckpt-6"\n': "ckpt-6.index: missing"}
    for text, problem in cases.items():
        (d / "checkpoint").write_text(text, encoding="utf-8")
        found = inspect_series("last", d)
        assert found.problem is None if problem is None else problem in found.problem, (text, found)
    (d / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n', encoding="utf-8")
    assert inspect_series("last", d).usable and inspect_series("last", d).step == 5
    (d / "ckpt-5.data-00000-of-00001").write_bytes(b"")
    assert "ckpt-5.data-00000-of-00001: empty" in inspect_series("last", d).problem


def test_vocab_json_fields_are_checked():
    good = Vocab(chars=list("ab\n"), counts=[3, 2, 1]).to_dict()
    assert vocab_json_problem(good) is None
    bad = {"chars": "abc", "counts": [1, 2], "oov_id": 7, "size": 9, "dtype": "<u2", "options": [],
           "train_chars": -1}
    for key, value in bad.items():
        assert vocab_json_problem({**good, key: value}), key
    assert vocab_json_problem({**good, "chars": ["a", "a", "b"]}) == '"chars" lists a character twice'
    assert vocab_json_problem({**good, "chars": ["a", "\ufffd", "\ufffd"], "oov_id": 2}) is None  # U+FFFD and OOV
    byte = Vocab.of_bytes([0] * 256, meta={"train_tokens": 10}).to_dict()
    assert vocab_json_problem(byte) is None
    for key, value in {"oov_id": 3, "size": 255, "counts": [1], "train_tokens": "x", "tokens": "words"}.items():
        assert vocab_json_problem({**byte, key: value}), key


def test_data_json_is_checked_and_metrics_skip_damaged_lines(tmp_path):
    paths = RunPaths(tmp_path)
    for text in ('{"dir": 5}', '[1]', '{"dir": "x", "sources": "abc"}', '{"dir": "x"'):
        paths.data.write_text(text, encoding="utf-8")
        with pytest.raises(TextstreamError, match="data.json"):
            paths.read_data()
    paths.metrics.write_bytes(b'{"kind": "train", "step": 1}\n\xff\xfe[1, 2]\n{"kind": "tr')
    paths.end_metrics_line()
    paths.append_metrics({"kind": "train", "step": 2})
    assert [r["step"] for r in paths.read_metrics("train")] == [1, 2]
    assert json.loads(paths.metrics.read_bytes().splitlines()[-1]) == {"kind": "train", "step": 2}
