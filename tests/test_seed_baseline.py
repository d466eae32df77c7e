"""tools.baselines.seed: the original example's arrays, sampler, and weights shared with textstream."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tools.baselines import seed as sb

TEXT = ("the quick brown fox jumps over the lazy dog; what a dog, what a fox.\n" * 4
        + "sphinx of black quartz, judge my vow!\n" * 3)


def original_vectorize(text, maxlen, step):
    """Deep Learning with Python, listing 8.2, verbatim apart from np.bool -> bool."""
    sentences = []
    next_chars = []
    for i in range(0, len(text) - maxlen, step):
        sentences.append(text[i: i + maxlen])
        next_chars.append(text[i + maxlen])
    chars = sorted(list(set(text)))
    char_indices = dict((char, chars.index(char)) for char in chars)
    x = np.zeros((len(sentences), maxlen, len(chars)), dtype=bool)
    y = np.zeros((len(sentences), len(chars)), dtype=bool)
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t, char_indices[char]] = 1
        y[i, char_indices[next_chars[i]]] = 1
    return x, y, chars


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the original's log(0) for p = 0
def test_vectorize_matches_the_original_and_sampler_follows_temperature(monkeypatch):
    monkeypatch.setattr(sb, "_VECTORIZE_CHUNK", 7)  # several chunks, the last one partial
    for maxlen, step in [(60, 3), (5, 1), (11, 4)]:
        x, y, chars = sb.vectorize(TEXT, maxlen, step)
        ox, oy, ochars = original_vectorize(TEXT, maxlen, step)
        assert chars == ochars
        assert x.dtype == bool and y.dtype == bool
        assert x.shape == ox.shape and y.shape == oy.shape
        assert np.array_equal(x, ox) and np.array_equal(y, oy)
    x, y, chars = sb.vectorize("abc", 60, 3)  # shorter than a window: no windows
    assert x.shape == (0, 60, 3) and y.shape == (0, 3)

    p = np.array([0.7, 0.2, 0.1, 0.0])
    np.random.seed(0)
    draws = np.array([sb.sample(p, 1.0) for _ in range(4000)])
    assert set(draws) <= {0, 1, 2}  # a zero-probability symbol is never drawn
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.allclose(freq[:3], p[:3], atol=0.03)
    # temperature T reweights p_i to p_i^(1/T) / sum: low T sharpens, high T flattens
    np.random.seed(1)
    cold = np.bincount([sb.sample(p, 0.25) for _ in range(2000)], minlength=4) / 2000
    want = p[:3] ** 4 / np.sum(p[:3] ** 4)
    assert np.allclose(cold[:3], want, atol=0.03)
    assert isinstance(sb.sample(p, 1.0), int)


@pytest.mark.slow
def test_shared_weights_give_the_same_predictions_and_eval_is_exact():
    from textstream.config import make_config
    from textstream.model.network import build_model as build_textstream

    x, y, chars = sb.vectorize(TEXT, 12, 3)
    v = len(chars)
    cfg = make_config("seed", units=16, seq_len=12)
    ts = build_textstream(cfg, v)
    seq = sb.build_model(v, units=16, maxlen=12)
    sb.copy_weights_from_textstream(seq, ts)
    ids = x[:5].argmax(-1).astype(np.int32)
    logits = ts(ids).numpy()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert np.allclose(seq.predict(x[:5].astype(np.float32), verbose=0), probs, atol=1e-5)

    # a reversed vocabulary order is reordered back
    rev = sb.build_model(v, units=16, maxlen=12)
    sb.copy_weights_from_textstream(rev, ts, src_chars=chars, dst_chars=chars[::-1])
    assert np.allclose(rev.predict(x[:5, :, ::-1].astype(np.float32), verbose=0), probs[:, ::-1], atol=1e-5)

    # evaluate_nats == -log p(next) from predict, one window per character; "#" is unknown and skipped
    train_text, val_text = TEXT[:200], TEXT[200:240] + "#" + TEXT[240:260]
    res = sb.evaluate_nats(seq, chars, train_text, val_text, maxlen=12, batch_size=7)
    stream = train_text[-12:] + val_text
    idx = {c: i for i, c in enumerate(chars)}
    want = []
    for j in range(12, len(stream)):
        if stream[j] not in idx:
            continue
        w = np.zeros((1, 12, v), np.float32)
        for t, c in enumerate(stream[j - 12:j]):
            if c in idx:
                w[0, t, idx[c]] = 1
        want.append(-math.log(seq.predict(w, verbose=0)[0][idx[stream[j]]]))
    assert res.unknown == 1 and res.chars == len(val_text) - 1
    assert abs(float(res) - np.mean(want)) < 1e-4

    text, rate = sb.generate(seq, chars, "the quick", 5, 0.5, maxlen=12)
    assert len(text) == 5 and set(text) <= set(chars) and rate > 0


@pytest.mark.slow
def test_train_counts_steps_and_stops_on_budget():
    x, y, chars = sb.vectorize(TEXT, 12, 1)  # 378 windows: 6 batches of 64 per epoch, the last one partial
    assert len(x) == 378
    model = sb.build_model(len(chars), units=8, maxlen=12)
    stats = sb.train(model, x, y, batch_size=64, steps=7)  # crosses into a second fit call
    assert stats["steps"] == 7 and stats["epochs"] == 2
    assert stats["windows"] == len(x) + 64
    assert stats["windows_per_s"] > 0 and math.isclose(stats["char_steps_per_s"], stats["windows_per_s"] * 12)
    assert math.isfinite(stats["final_loss"])
    stats = sb.train(model, x, y, batch_size=128, epochs=2)
    assert stats["steps"] == 6 and stats["windows"] == 2 * len(x)
