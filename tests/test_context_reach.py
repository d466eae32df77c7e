"""tools.bench.context_reach: a run's validation loss by the context its state is carried from."""
from __future__ import annotations

import json

import pytest

from textstream.config import make_config
from textstream.training.evaluation import evaluate
from textstream.training.loop import train
from tools.bench import context_reach


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i % 37} of a short text, with {i * 7 % 11} words.\n" for i in range(400)))
    train(make_config("tiny", steps=300, units=32, samples=False, val_fraction=0.2), [corpus], tmp_path / "run")
    return tmp_path / "run"


def test_the_longest_context_is_evals_score_and_no_context_is_worse(run, capsys):
    assert context_reach.main([str(run), "--contexts", "0,16,64"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = {r["burn_in"]: r["nats_per_char"] for r in result["contexts"]}
    assert list(scores) == [0, 16, 64, 512]
    assert scores[512] == round(evaluate(run)["nats_per_char"], 4)  # carried as eval carries it
    assert scores[0] > scores[64]  # strips read from a zero state lose the first characters' context


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert context_reach.main([str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("context_reach: ") and "no such run directory" in err and err.count("\n") == 1
