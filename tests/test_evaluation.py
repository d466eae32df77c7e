"""`eval` scores every held-out character, each from the context the objective uses."""
import json
import math

import numpy as np
import pytest

from textstream.cli import main
from textstream.config import make_config
from textstream.training.evaluation import IdStream, evaluate, row_spans, score
from textstream.training.loop import train

from test_training import write_text


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    return write_text(tmp_path / "corpus.txt", n_lines=120)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def hand_nats(model, objective, seq_len, ctx, body, rows=1, burn_in=0):
    """One model call per target character, with exactly the context the docs promise."""
    stream = np.concatenate([ctx, body]).astype(np.int32)
    first = max(len(ctx), 1)
    total, n = 0.0, 0
    if objective == "sequence":  # all the text since the start of the target's strip
        for start, a, b in row_spans(first, len(stream), rows, burn_in):
            for t in range(a, b):
                logits = model(stream[start:t][None]).numpy()[0, -1]
                total -= log_softmax(logits)[stream[t]]
                n += 1
        return total, n
    for t in range(first, len(stream)):
        x = stream[max(0, t - seq_len):t]
        logits = model(x[None]).numpy()[0]
        total -= log_softmax(logits)[stream[t]]
        n += 1
    return total, n


def test_strips_cover_the_text_once_with_burn_in():
    plan = row_spans(7, 100, 4, 10)
    assert [a for _, a, _ in plan][0] == 7 and plan[-1][2] == 100
    assert all(b == a2 for (_, _, b), (_, a2, _) in zip(plan, plan[1:]))
    assert all(s == max(0, a - 11) for s, a, _ in plan)
    assert row_spans(5, 5, 4, 10) == [] and len(row_spans(1, 3, 8, 0)) == 2


@pytest.mark.parametrize("objective", ["sequence", "next"])
def test_score_equals_a_hand_computation(objective):
    model = __import__("textstream.model.network", fromlist=["x"]).build_model(
        make_config("tiny", objective=objective, seq_len=5, layers=2), 9)
    rng = np.random.default_rng(0)
    ctx, body = rng.integers(0, 9, 5), rng.integers(0, 9, 23)
    # 3 rows of 8 targets: state carried across windows of 5, 4 characters of burn-in
    got = score(model, objective, 5, IdStream(body, ctx), batch_size=3, burn_in=4)
    want = hand_nats(model, objective, 5, ctx, body, rows=3, burn_in=4)
    assert got[1] == want[1] == 23
    assert got[0] == pytest.approx(want[0], rel=1e-5)
    no_ctx = score(model, objective, 5, IdStream(body), batch_size=2, burn_in=0)
    want = hand_nats(model, objective, 5, body[:0], body, rows=2, burn_in=0)
    assert no_ctx[1] == want[1] == 22 and no_ctx[0] == pytest.approx(want[0], rel=1e-5)


def test_eval_covers_the_validation_split(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config("tiny", steps=20, samples=False, val_fraction=0.1), [corpus], run)
    result = evaluate(run)
    val_chars = json.loads((run / "vocab.json").read_text())["val_chars"]
    assert result["chars"] == val_chars
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert main(["eval", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["nats_per_char"] == pytest.approx(result["nats_per_char"], rel=1e-6)
    assert set(printed) >= {"nats_per_char", "bits_per_char", "chars"}


def test_eval_on_a_source(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config("tiny", steps=5, samples=False), [corpus], run)
    other = write_text(tmp_path / "other.txt", n_lines=5, seed=3)
    result = evaluate(run, [other])
    assert result["chars"] == len(other.read_text()) - 1
    bad = tmp_path / "bad.txt"
    bad.write_text("ZZZ qqq", encoding="utf-8")
    assert main(["eval", str(run), str(bad)]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    assert main(["eval", str(tmp_path / "foreign")]) == 2
    err = capsys.readouterr().err
    assert "not a textstream run directory" in err and err.count("\n") == 1
