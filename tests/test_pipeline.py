"""Windows are slices of the text shifted by one; order is a seeded function of the step."""
import numpy as np
import pytest

from textstream.errors import TextstreamError
from textstream.data.pipeline import CarriedWindows, TokenFile, Windows, dataset, permute, window_phase


@pytest.fixture
def token_file(tmp_path):
    ids = (np.arange(5003) * 7919 % 251).astype("<u1")  # distinct-enough bytes to identify offsets
    path = tmp_path / "train.bin"
    ids.tofile(path)
    return TokenFile(path, np.uint8), ids


@pytest.mark.parametrize("n", [1, 2, 3, 10, 97, 1000, 4099])
def test_permute_is_a_bijection(n):
    for key in (0, 1, 12345):
        p = permute(np.arange(n), n, key)
        assert sorted(p.tolist()) == list(range(n))


def test_permute_depends_on_key():
    assert not np.array_equal(permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2))


def test_permute_scales_without_materialising():
    n = 4_000_000_000  # a 4 GB corpus has about this many windows
    p = permute(np.arange(1024) + 3_000_000_000, n, 7)
    assert p.min() >= 0 and p.max() < n and len(set(p.tolist())) == 1024


@pytest.mark.parametrize("objective", ["sequence", "next"])
def test_windows_are_text_slices_shifted_by_one(token_file, objective):
    tokens, ids = token_file
    w = Windows(tokens, seq_len=13, objective=objective, stride=3, seed=5)
    for step in (0, 1, 17, 500):
        x, y = w.batch(step, 8)
        starts = w.starts(step * 8 + np.arange(8))
        for row, s in enumerate(starts):
            assert np.array_equal(x[row], ids[s:s + 13])
            if objective == "sequence":
                assert np.array_equal(y[row], ids[s + 1:s + 14])
            else:
                assert y[row] == ids[s + 13]
        assert x.dtype == np.int32 and y.dtype == np.int32


def test_next_objective_visits_every_window_once_per_epoch(token_file):
    tokens, _ = token_file
    w = Windows(tokens, seq_len=60, objective="next", stride=3, seed=1)
    assert w.count == (5003 - 61) // 3 + 1
    for epoch in (0, 1):
        starts = w.starts(epoch * w.count + np.arange(w.count))
        assert np.array_equal(np.sort(starts), np.arange(w.count) * 3)
    first, second = w.starts(np.arange(w.count)), w.starts(w.count + np.arange(w.count))
    assert not np.array_equal(first, second)  # reshuffled each epoch


def test_sequence_windows_tile_the_text_with_a_per_epoch_phase(token_file):
    tokens, _ = token_file
    w = Windows(tokens, seq_len=50, objective="sequence", seed=3)
    phases = set()
    for epoch in range(6):
        starts = np.sort(w.starts(epoch * w.count + np.arange(w.count)))
        phase = int(starts[0])
        phases.add(phase)
        assert np.array_equal(starts, np.arange(w.count) * 50 + phase)
        assert starts[-1] + 51 <= 5003
    assert len(phases) > 1


@pytest.mark.parametrize("period", [1, 2, 7, 16, 50])
def test_cycled_phases_use_every_offset_once_per_period_epochs(period):
    for seed in (0, 3):
        phases = [window_phase(seed, e, period) for e in range(3 * period)]
        for block in range(3):
            assert sorted(phases[block * period:(block + 1) * period]) == list(range(period))
    if period >= 7:  # and each block in its own order
        first = [window_phase(0, e, period) for e in range(period)]
        assert first != [window_phase(0, e, period) for e in range(period, 2 * period)]
        assert first != [window_phase(1, e, period) for e in range(period)]


def test_random_phases_are_the_ones_runs_drew_before_the_cycle():
    # seed 0, 16-character windows: what every run before the cycle trained on (8 distinct offsets in 16 epochs),
    # so a run whose config.json predates the cycle (window_phases: random) resumes on the same windows
    assert [window_phase(0, e, 16, "random") for e in range(16)] == [1, 1, 9, 8, 9, 10, 6, 6, 6, 7, 7, 15, 7, 10,
                                                                       14, 15]
    with pytest.raises(ValueError, match="phases must be one of"):
        window_phase(0, 0, 16, "shuffled")


def test_batches_are_deterministic_under_a_seed(token_file):
    tokens, _ = token_file
    a = Windows(tokens, 13, "sequence", seed=9).batch(42, 16)
    b = Windows(tokens, 13, "sequence", seed=9).batch(42, 16)
    c = Windows(tokens, 13, "sequence", seed=10).batch(42, 16)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_shards_split_the_global_batch(token_file):
    tokens, _ = token_file
    w = Windows(tokens, 13, "sequence", seed=2)
    full = w.batch(7, 12)
    parts = [w.batch(7, 12, shard=k, num_shards=3) for k in range(3)]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), full[0])
    assert np.array_equal(np.concatenate([p[1] for p in parts]), full[1])


def test_dataset_yields_the_batches_of_its_steps(token_file):
    tokens, _ = token_file
    w = Windows(tokens, 13, "next", stride=3, seed=4)
    got = list(dataset(w, 8, 5, 9).as_numpy_iterator())
    assert len(got) == 4
    for i, (x, y) in enumerate(got):
        ex, ey = w.batch(5 + i, 8)
        assert x.dtype == np.int32 and np.array_equal(x, ex) and np.array_equal(y, ey)


def test_dataset_per_replica_batches_in_replica_order(token_file):
    tokens, _ = token_file
    w = Windows(tokens, 13, "sequence", seed=4)
    got = list(dataset(w, 8, 3, 5, replicas_per_pipeline=2).as_numpy_iterator())
    assert [x.shape for x, _ in got] == [(4, 13)] * 4
    assert np.array_equal(np.concatenate([got[0][0], got[1][0]]), w.batch(3, 8)[0])


def test_too_short_for_one_window(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(10, dtype=np.uint8).tofile(path)
    with pytest.raises(TextstreamError, match="shorter than one training window"):
        Windows(TokenFile(path, np.uint8), seq_len=60)


def test_truncated_token_file_is_reported(tmp_path):
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(TextstreamError, match="not a multiple"):
        TokenFile(path, np.uint16)


@pytest.fixture
def positions(tmp_path):
    """A token file whose id at position i is i: a window names its own offset."""
    ids = np.arange(5003, dtype="<u2")
    ids.tofile(tmp_path / "pos.bin")
    return TokenFile(tmp_path / "pos.bin", np.uint16), ids


def test_strips_carry_each_row_through_consecutive_windows(positions):
    tokens, ids = positions
    s = CarriedWindows(tokens, seq_len=10, batch_size=4, seed=3)
    assert s.strip == 5003 // 4 and s.steps_per_epoch == (s.strip - 10) // 10 and s.count == 4 * s.steps_per_epoch
    k = s.steps_per_epoch
    for epoch in (0, 1):
        first = [s.batch(epoch * k, 4)]
        x0, _, reset0 = first[0]
        assert reset0.tolist() == [1.0] * 4
        starts = x0[:, 0].tolist()  # every row starts inside a different strip, at the epoch's phase
        assert sorted((a - s.phase(epoch)) // s.strip for a in starts) == [0, 1, 2, 3]
        for step in range(epoch * k, (epoch + 1) * k):
            x, y, reset = s.batch(step, 4)
            j = step - epoch * k
            assert reset.tolist() == [1.0 if j == 0 else 0.0] * 4
            for row, a in enumerate(starts):  # the window right after the row's previous one
                assert np.array_equal(x[row], ids[a + 10 * j:a + 10 * j + 10])
                assert np.array_equal(y[row], ids[a + 10 * j + 1:a + 10 * j + 11])
    assert s.epoch_of(k, 4) == 1.0 and s.steps_for_epochs(2, 4) == 2 * k


@pytest.mark.parametrize("phases", ["cycle", "random"])
def test_windows_and_strips_shift_by_their_phases(positions, phases):
    tokens, _ = positions
    w = Windows(tokens, seq_len=13, objective="sequence", seed=5, phases=phases)
    s = CarriedWindows(tokens, seq_len=10, batch_size=4, seed=3, phases=phases)
    for epoch in range(30):
        assert int(np.sort(w.starts(epoch * w.count + np.arange(w.count)))[0]) == window_phase(5, epoch, 13, phases)
        x, _, _ = s.batch(epoch * s.steps_per_epoch, 4)  # ids are positions: a row's first id is where it starts
        assert sorted(int(a) % s.strip for a in x[:, 0]) == [window_phase(3, epoch, 10, phases)] * 4
    assert Windows(tokens, 13, "next", stride=3, phases=phases).phase(5) == 0  # overlapping windows: no phase


def test_strips_shards_and_dataset(token_file):
    tokens, _ = token_file
    s = CarriedWindows(tokens, seq_len=10, batch_size=4, seed=3)
    x, y, r = s.batch(7, 4)
    parts = [s.batch(7, 4, shard, 2) for shard in range(2)]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
    got = list(dataset(s, 4, 6, 8).as_numpy_iterator())
    assert len(got) == 2 and np.array_equal(got[1][0], x) and np.array_equal(got[1][2], r)


def test_strips_too_short(token_file):
    tokens, _ = token_file
    with pytest.raises(TextstreamError, match="too short to carry state.*--no-carry-state"):
        CarriedWindows(tokens, seq_len=100, batch_size=32)
