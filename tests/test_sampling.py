"""In-graph sampling: noise is a pure function of (seed, position, id); the filters keep what they promise."""
import math

import numpy as np
import pytest

from textstream.errors import TextstreamError
from textstream.generation.sampling import SampleConfig, find_stop, held_back, seed_u32
from textstream.generation.sampling_tf import choose, gumbel, gumbel_noise, top_k_filter, top_p_filter, uniform, unit


def tf():
    from textstream._tf import tf

    return tf


def u32(values):
    return tf().constant(np.asarray(values, np.uint32))


def compiled(fn):
    return tf().function(fn, jit_compile=True)


def test_noise_depends_only_on_seed_position_and_id():
    seeds, pos = [5, 9, 5, 5], [0, 0, 7, 0]
    together = compiled(lambda s, p: uniform(s, p, 11))(u32(seeds), u32(pos)).numpy()
    alone = [uniform(u32([s]), u32([p]), 11).numpy()[0] for s, p in zip(seeds, pos)]
    np.testing.assert_array_equal(together, np.stack(alone))  # batch neighbours and XLA change nothing
    np.testing.assert_array_equal(together[0], together[3])
    assert not np.allclose(together[0], together[1]) and not np.allclose(together[0], together[2])
    # a prefix of the vocabulary sees the same noise as the whole
    np.testing.assert_array_equal(uniform(u32([5]), u32([0]), 4).numpy()[0], together[0, :4])
    assert 0.0 < together.min() and together.max() < 1.0


def test_extreme_bits_stay_inside_the_open_interval():
    u = unit(u32([0, 1, 0xFFFFFFFF, 0xFFFFFE00, 0x80000000])).numpy()
    assert (u > 0).all() and (u < 1).all()
    assert np.isfinite(compiled(lambda x: gumbel(unit(x)))(u32([0, 0xFFFFFFFF])).numpy()).all()
    assert np.isfinite(gumbel(unit(u32([0, 0xFFFFFFFF]))).numpy()).all()


def test_uniform_is_uniform_and_gumbel_is_finite():
    n = 4000
    u = uniform(u32(np.arange(n)), u32(np.full(n, 3)), 16).numpy().ravel()
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / len(u)
    assert np.abs(hist - 0.1).max() < 0.01
    g = gumbel_noise(u32(np.arange(n)), u32(np.zeros(n)), 16).numpy()
    assert np.isfinite(g).all()
    assert abs(g.mean() - 0.5772) < 0.02  # Euler-Mascheroni: the Gumbel mean


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_gumbel_max_draws_from_the_tempered_softmax(temperature):
    logits = np.log(np.array([0.05, 0.5, 0.2, 0.15, 0.1], np.float32))
    n = 20000
    draw = compiled(lambda s, p: choose(tf().constant(np.tile(logits, (n, 1))),
                                        tf().fill([n], np.float32(temperature)), gumbel_noise(s, p, 5)))
    ids = draw(u32(np.arange(n) // 4), u32(np.arange(n) % 4)).numpy()  # 5000 seeds x 4 positions
    want = np.exp(logits / temperature)
    want /= want.sum()
    got = np.bincount(ids, minlength=5) / n
    assert np.abs(got - want).max() < 4 * math.sqrt(0.25 / n)


def test_temperature_zero_is_argmax_and_extreme_temperatures_are_safe():
    logits = tf().constant([[1.0, 3.0, 2.0, -50.0], [0.0, 0.0, 7.0, 1.0]])
    noise = gumbel_noise(u32([1, 2]), u32([0, 0]), 4)
    assert choose(logits, tf().constant([0.0, 0.0]), noise).numpy().tolist() == [1, 2]
    for t in (1e-30, 1e-45, 1e-8):  # logits / T would overflow without the shift: never NaN, always argmax
        assert choose(logits, tf().constant([t, t]), noise).numpy().tolist() == [1, 2]
    hot = choose(logits, tf().constant([1e30, 1e30]), noise).numpy()
    assert ((0 <= hot) & (hot < 4)).all()


def test_per_stream_temperature_in_one_batch():
    logits = tf().constant(np.tile(np.log([0.1, 0.6, 0.3]).astype(np.float32), (4, 1)))
    noise = gumbel_noise(u32([3] * 4), u32([0] * 4), 3)
    temps = [0.0, 0.5, 1.0, 1.2]
    together = choose(logits, tf().constant(temps), noise).numpy()
    for i, t in enumerate(temps):
        assert together[i] == choose(logits[i:i + 1], tf().constant([t]), noise[i:i + 1]).numpy()[0]


def test_top_k_keeps_exactly_the_k_largest():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 20)).astype(np.float32)
    k = rng.integers(1, 21, 64).astype(np.int32)
    kept = np.isfinite(top_k_filter(tf().constant(logits), tf().constant(k)).numpy())
    for row, kk, keep in zip(logits, k, kept):
        assert set(np.flatnonzero(keep)) == set(np.argsort(-row)[:kk])
    # sampling with top-k never leaves that set
    n = 3000
    ids = choose(tf().constant(np.tile(logits[0], (n, 1))), tf().fill([n], 5.0), gumbel_noise(
        u32(np.arange(n)), u32(np.zeros(n)), 20), top_k=tf().fill([n], 3)).numpy()
    assert set(ids) == set(np.argsort(-logits[0])[:3])


@pytest.mark.parametrize("p, kept", [(0.1, {0}), (0.5, {0}), (0.7, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}),
                                     (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(p, kept):
    probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    logits = np.log(probs)[[2, 0, 3, 1]]  # shuffled: ids 1, 3, 0, 2 hold 0.5, 0.3, 0.15, 0.05
    rank_to_id = {0: 1, 1: 3, 2: 0, 3: 2}
    keep = np.isfinite(top_p_filter(tf().constant(logits[None]), tf().constant([p], tf().float32)).numpy()[0])
    assert set(np.flatnonzero(keep)) == {rank_to_id[r] for r in kept}


def test_top_p_sampling_mass():
    logits = np.log(np.array([0.02, 0.4, 0.03, 0.25, 0.2, 0.1], np.float32))
    n = 8000
    ids = choose(tf().constant(np.tile(logits, (n, 1))), tf().ones([n]),
                 gumbel_noise(u32(np.arange(n)), u32(np.zeros(n)), 6), top_p=tf().fill([n], 0.8)).numpy()
    # nucleus for 0.8: 0.4 + 0.25 + 0.2 = 0.85; renormalised
    assert set(ids) == {1, 3, 4}
    got = np.bincount(ids, minlength=6)[[1, 3, 4]] / n
    np.testing.assert_allclose(got, np.array([0.4, 0.25, 0.2]) / 0.85, atol=0.03)


def test_stop_strings():
    assert find_stop("abc\n\ndef", ["\n\n"]) == 3
    assert find_stop("abcdef", ["de", "bc"]) == 1
    assert find_stop("abcdef", ["xy"]) is None
    assert find_stop("ab.cd.", ["."], start=3) == 5
    assert held_back("hello wor", ["world"]) == 3
    assert held_back("hello", ["world"]) == 0
    assert held_back("x\n", ["\n\n", "\nEND"]) == 1


def test_config_validation_and_seeds():
    SampleConfig(0.0, 1, 1.0).check()
    for bad in (SampleConfig(-1.0), SampleConfig(float("nan")), SampleConfig(1.0, top_k=0),
                SampleConfig(1.0, top_p=0.0), SampleConfig(1.0, top_p=1.5)):
        with pytest.raises(TextstreamError):
            bad.check()
    assert seed_u32(1) != seed_u32(2) and seed_u32(-1) == seed_u32(2**64 - 1)
    assert all(0 <= seed_u32(s) < 2**32 for s in (0, -5, 10**30))
