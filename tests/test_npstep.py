"""The numpy step backend equals the TensorFlow one; the step weights file beside each checkpoint is never stale."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import TEXT, make_run
from textstream.model import stepweights
from textstream.generation.backends import load_backend
from textstream.model.checkpoint import latest_checkpoint, load_model, step_weights_of
from textstream.config import make_config
from textstream.errors import TextstreamError
from textstream.generation.generator import Generator
from textstream.model.network import build_model
from textstream.generation.step_np import NumpyStep, NumpyStreams
from textstream.model.run import RunPaths
from textstream.generation.step_tf import TFStep

PRIME = "it was the "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))"


def scaled_model(cfg, vocab_size, scale=3.0, seed=0):
    model = build_model(cfg, vocab_size)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    return model


def prefix_of(run, which="last"):
    return latest_checkpoint(RunPaths(run), which)


@pytest.fixture(scope="module")
def pair(tiny_run):
    """The numpy and TensorFlow generators of the session's tiny run (loading on TensorFlow writes the step file)."""
    tf_gen = Generator.load(tiny_run, backend="tf")
    return Generator.load(tiny_run, backend="numpy"), tf_gen


# --- the same numbers and the same text ------------------------------------------------------------
@pytest.mark.parametrize("layers, embedding, units", [(1, 0, 16), (2, 0, 8), (1, 6, 16), (2, 5, 24), (3, 0, 12)])
def test_numpy_logits_equal_tensorflow_logits(layers, embedding, units):
    model = scaled_model(make_config("tiny", layers=layers, embedding=embedding, units=units), 13)
    ids = np.random.default_rng(1).integers(0, 13, (3, 40))
    want = TFStep.from_model(model).logits(ids)
    got = NumpyStep(step_weights_of(model)).logits(ids)
    assert got.shape == want.shape == (3, 40, 13) and got.dtype == np.float32
    assert np.abs(want).max() > 2  # far from flat: the check has teeth
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_greedy_and_seeded_text_equal_tensorflow(pair):
    numpy_gen, tf_gen = pair
    assert isinstance(numpy_gen.backend, NumpyStep) and isinstance(tf_gen.backend, TFStep)
    primes = [PRIME, "the ", "", "wisdom"]
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": [0.0, 0.5, 1.0, 1.5]},
                   {"temperature": 0.8, "top_k": 4}, {"temperature": 1.2, "top_p": 0.7},
                   {"temperature": 0.9, "top_k": 3, "top_p": 0.5}):
        got = numpy_gen.generate(primes, 600, seed=[3, 3, 4, 5], **kwargs)
        assert got == tf_gen.generate(primes, 600, seed=[3, 3, 4, 5], **kwargs), kwargs
    assert len(set(numpy_gen.generate(primes, 100, seed=1))) == 4
    text = "".join(numpy_gen.stream(PRIME, temperature=0.7, seed=8, n=2500, stop="\x00"))
    assert text == "".join(tf_gen.stream(PRIME, temperature=0.7, seed=8, n=2500, stop="\x00"))


def test_sessions_and_row_states_move_between_backends(pair):
    numpy_gen, tf_gen = pair
    a, b = numpy_gen.session(PRIME, seed=9, temperature=0.8), tf_gen.session(PRIME, seed=9, temperature=0.8)
    assert a.sample(40) == b.sample(40)
    a.feed(" wisdom")
    b.feed(" wisdom")
    assert a.sample(1500) == b.sample(1500)
    moved = tf_gen.session("the ", seed=1, temperature=0.8)
    moved.set_state(a.state)  # a numpy stream's state continues on TensorFlow
    np.testing.assert_allclose(moved.state["h"], a.state["h"])
    assert moved.sample(200) == a.sample(200)


def test_feeds_of_different_lengths_leave_finished_streams_alone(pair):
    numpy_gen, _ = pair
    primes = ["it was the age of wisdom, it was", "the ", "", "t"]
    ids = [numpy_gen.encode(p) for p in primes]
    batch = numpy_gen.backend.streams([1, 2, 3, 4], [0.5] * 4)
    batch.advance(0, ids)
    for i, p in enumerate(ids):
        single = numpy_gen.backend.streams([i + 1], [0.5])
        single.advance(0, [p])
        np.testing.assert_array_equal(single.row_state(0)["h"], batch.row_state(i)["h"])
    assert isinstance(batch, NumpyStreams) and batch.advance(0).shape == (4, 0)


def test_caller_owned_rows_advance_as_streams_do(pair):
    """``advance_rows`` (continuous batching): any rows, each with its own top-p, as if each were its own batch."""
    from types import SimpleNamespace

    backend = pair[0].backend
    prime = pair[0].encode(PRIME)
    singles = []
    for seed, temperature, top_p in ((1, 0.8, 0.7), (2, 1.0, None), (3, 0.0, None)):
        s = backend.streams([seed], [temperature], top_p=top_p)
        s.advance(0, [prime])
        singles.append((s, s.advance(300)[0]))
    rows = SimpleNamespace(h=np.zeros((backend.layers, 3, backend.units), np.float32), c=None,
                           seeds=np.concatenate([s.seeds for s, _ in singles]), positions=np.zeros(3, np.uint32),
                           temperature=np.array([0.8, 1.0, 0.0], np.float32),
                           top_p=np.array([0.7, 1.0, 1.0], np.float32))
    rows.c = np.zeros_like(rows.h)
    ids = np.concatenate([backend.advance_rows(rows, 0, [prime] * 3), backend.advance_rows(rows, 120),
                          backend.advance_rows(rows, 180)], axis=1)
    for i, (s, want) in enumerate(singles):
        np.testing.assert_array_equal(ids[i], want)
        np.testing.assert_array_equal(rows.h[:, i], s.h[:, 0])
    assert list(rows.positions) == [300] * 3


def random_step(layers, units, vocab, seed=0):
    """A ``NumpyStep`` with random weights large enough that sampling is far from uniform."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    return NumpyStep(stepweights.StepWeights(
        embed=rng.normal(0, 1, (vocab, 4 * units)).astype(f32),
        recurrent=tuple(rng.normal(0, 0.3, (units, 4 * units)).astype(f32) for _ in range(layers)),
        kernel=tuple(rng.normal(0, 0.3, (units, 4 * units)).astype(f32) for _ in range(layers - 1)),
        bias=tuple(rng.normal(0, 0.3, 4 * units).astype(f32) for _ in range(layers - 1)),
        head_kernel=rng.normal(0, 1, (units, vocab)).astype(f32), head_bias=rng.normal(0, 1, vocab).astype(f32)))


@pytest.mark.parametrize("layers, units, vocab, batch", [(1, 384, 57, 64), (1, 32, 13, 33), (2, 128, 40, 50),
                                                          (3, 24, 13, 17)])
@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_p": 0.9}])
def test_many_streams_in_the_column_layout_equal_the_row_loop(monkeypatch, layers, units, vocab, batch, filters):
    """16 or more streams run transposed (and in parts, one per core): the same ids and states as the row loop."""
    from textstream.generation import parallel_np, step_np

    step = random_step(layers, units, vocab)
    rng = np.random.default_rng(1)
    feeds = [rng.integers(0, vocab, n) for n in rng.integers(0, 40, batch)]
    feeds[0] = rng.integers(0, vocab, 40)  # fed in segments of different row counts, the first as wide
    temps = np.linspace(0.0, 1.5, batch)
    wide = step.streams(list(range(batch)), temps, **filters)
    row = wide.copy()
    assert parallel_np.wide(batch, 40) and parallel_np.wide(batch, 200)
    got = np.concatenate([wide.advance(200, feeds), wide.advance(3), wide.advance(100)], axis=1)
    monkeypatch.setattr(step_np, "wide", lambda b, k: False)
    want = np.concatenate([row.advance(200, feeds), row.advance(3), row.advance(100)], axis=1)
    assert len(set(map(tuple, want))) > batch // 2  # the streams differ: the check has teeth
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(wide.h, row.h, rtol=0, atol=1e-6)  # (equal to the bit where OpenBLAS computes
    np.testing.assert_allclose(wide.c, row.c, rtol=0, atol=1e-6)  # both layouts' products alike)
    np.testing.assert_array_equal(wide.positions, row.positions)


@pytest.mark.parametrize("layers, units, vocab, batch", [(1, 384, 57, 64), (2, 128, 40, 50), (3, 24, 13, 17)])
def test_many_rows_score_in_the_column_layout_as_the_row_loop(monkeypatch, layers, units, vocab, batch):
    from textstream.generation import step_np

    step = random_step(layers, units, vocab, seed=2)
    ids = np.random.default_rng(3).integers(0, vocab, (batch, 700))  # more than one block of kept logits
    h = np.random.default_rng(4).normal(0, 0.5, (layers, batch, units)).astype(np.float32)
    states = [(h.copy(), np.zeros_like(h)) for _ in range(2)]
    got = step.score_rows_top(*states[0], ids, 3)
    monkeypatch.setattr(step_np, "wide", lambda b, k: False)
    want = step.score_rows_top(*states[1], ids, 3)
    assert np.ptp(want[0]) > 5  # far from uniform: the check has teeth
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)  # (equal to the bit where OpenBLAS computes both
    np.testing.assert_array_equal(got[1][:, :, 0], want[1][:, :, 0])  # layouts' products alike)
    np.testing.assert_allclose(states[0][0], states[1][0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("pattern", [r"[abdefghi ]{2,12}", r"(it|was) [abdehi]+( [abdehi]+)*"])
@pytest.mark.parametrize("filters", [{}, {"top_p": 0.8}])
def test_many_constrained_streams_in_the_column_layout_equal_the_row_loop(monkeypatch, pair, pattern, filters):
    """Under a regex too: the same ids (-1 after a match ends), states, positions and match states."""
    from textstream.generation import step_np

    gen = pair[0]
    constraint, prime = gen.constraints(pattern), gen.encode(PRIME)
    batch = 40
    runs = []
    for wide in (True, False):
        if not wide:
            monkeypatch.setattr(step_np, "wide", lambda b, k: False)
        s = gen.backend.streams(list(range(batch)), np.linspace(0.2, 1.5, batch), **filters)
        s.constrain(constraint)
        ids = np.concatenate([s.advance(20, [prime] * batch), s.advance(60)], axis=1)
        runs.append((ids, s))
    (got, a), (want, b) = runs
    assert (want == -1).any() and (want != -1).any()  # some matches end, some go on: the check has teeth
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(a.h, b.h, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.constraint_state, b.constraint_state)


@pytest.mark.parametrize("layers, units, vocab, batch", [(1, 384, 57, 64), (3, 24, 13, 17)])
def test_many_streams_record_logprobs_in_the_column_layout_as_the_row_loop(monkeypatch, layers, units, vocab,
                                                                           batch):
    from textstream.generation import step_np

    step = random_step(layers, units, vocab, seed=5)
    wide = step.streams(list(range(batch)), np.linspace(0.3, 1.2, batch), top_p=0.95)
    row = wide.copy()
    got = wide.advance_logprobs(300, 5)  # more than one noise block
    monkeypatch.setattr(step_np, "wide", lambda b, k: False)
    want = row.advance_logprobs(300, 5)
    assert np.ptp(want[1]) > 3  # the logprobs vary: the check has teeth
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[2][:, :, 0], want[2][:, :, 0])
    for g, w in zip(got[1::2], want[1::2]):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(wide.h, row.h, rtol=0, atol=1e-6)


def test_the_column_noise_is_the_row_noise_transposed():
    from textstream.generation import sampling_np

    seeds, positions = np.array([3, 0xFFFFFFFF, 9], np.uint32), np.array([0, 5, 0xFFFFFFFD], np.uint32)
    rows = sampling_np.gumbel_noise(seeds, positions, 6, 11)
    np.testing.assert_array_equal(sampling_np.gumbel_noise_columns(seeds, positions, 6, 11), rows.transpose(0, 2, 1))


def test_noise_and_filters_equal_the_graph_ops():
    from textstream._tf import tf
    from textstream.generation import sampling_np, sampling_tf

    seeds = np.array([0, 1, 0xFFFFFFFF, 12345], np.uint32)
    positions = np.array([0, 7, 0xFFFFFFFE, 99], np.uint32)  # wraps past 2**32 within the block
    block = sampling_np.gumbel_noise(seeds, positions, 5, 37)
    for t in range(5):
        want = sampling_tf.gumbel_noise(tf.constant(seeds), tf.constant(positions + np.uint32(t)), 37).numpy()
        np.testing.assert_allclose(block[t], want, rtol=1e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 37)).astype(np.float32)
    logits[0, :5] = logits[0, 5]  # ties at the k-th value
    temps = np.array([0.0, 0.5, 1.0, 2.0, 1.0, 0.3], np.float32)
    for k, p in ((3, None), (None, 0.6), (5, 0.9), (None, 0.01), (1, None)):
        got = sampling_np.choose(logits, temps, block[0, [0, 1, 2, 3, 0, 1]], k, p)
        want = sampling_tf.choose(tf.constant(logits), tf.constant(temps), tf.constant(block[0, [0, 1, 2, 3, 0, 1]]),
                                  None if k is None else tf.constant([k] * 6), None if p is None else
                                  tf.constant([p] * 6, tf.float32)).numpy()
        np.testing.assert_array_equal(got, want)
        kept_np = np.isfinite(sampling_np.top_k_filter(logits, k or 37))
        kept_tf = np.isfinite(sampling_tf.top_k_filter(tf.constant(logits), tf.constant([k or 37] * 6)).numpy())
        np.testing.assert_array_equal(kept_np, kept_tf)


# --- the step weights file -----------------------------------------------------------------------
def test_step_weights_are_written_at_every_save_and_old_ones_removed(tmp_path, monkeypatch):
    from textstream.training.loop import train

    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    run = tmp_path / "run"
    train(make_config("tiny", steps=6, seq_len=16, batch_size=8, samples=False), [corpus], run)
    for which in ("best", "last"):
        prefix = prefix_of(run, which)
        assert stepweights.is_current(prefix), which
        assert str(RunPaths(run).newest_checkpoint(which)) == prefix
        _, _, model = load_model(run, which)
        np.testing.assert_array_equal(stepweights.read(prefix).head_kernel, model.head.kernel.numpy())
    train(make_config("tiny", steps=12, seq_len=16, batch_size=8, samples=False), [corpus], run, resume=True)
    files = sorted(p.name for p in (run / "checkpoints" / "last").glob("*.step.npz"))
    assert files == [os.path.basename(prefix_of(run, "last")) + ".step.npz"]  # the step-6 file went with its checkpoint
    assert stepweights.is_current(prefix_of(run, "last"))


def test_first_load_writes_the_file_then_numpy_needs_no_tensorflow(tmp_path):
    run = make_run(tmp_path)  # saved without step weights, like a run from before they existed
    prefix = prefix_of(run)
    assert not stepweights.path_for(prefix).exists()
    with pytest.raises(TextstreamError) as e:
        Generator.load(run, backend="numpy")
    assert "no current step weights file" in str(e.value) and "\n" not in str(e.value)
    gen = Generator.load(run)  # auto: TensorFlow reads the checkpoint and writes the file
    assert isinstance(gen.backend, NumpyStep) and stepweights.is_current(prefix)
    meta = json.loads(str(np.load(stepweights.path_for(prefix))["meta"]))
    assert meta["format"] == "textstream-step/1" and meta["checkpoint"]["prefix"] == os.path.basename(prefix)
    assert Generator.load(run, backend="numpy").generate([PRIME], 50, seed=2) == gen.generate([PRIME], 50, seed=2)
    copy = shutil.copytree(run, tmp_path / "copied")  # new mtimes, new absolute path: still current
    assert stepweights.is_current(prefix_of(copy))


def test_a_stale_or_foreign_file_is_never_used(tmp_path):
    run = make_run(tmp_path, name="a", seed=0)
    other = make_run(tmp_path, name="b", seed=1)  # same shape, other weights
    Generator.load(run, warm=False)
    Generator.load(other, warm=False)
    shutil.copy(stepweights.path_for(prefix_of(other)), stepweights.path_for(prefix_of(run)))  # foreign
    assert stepweights.read(prefix_of(run)) is None
    with pytest.raises(TextstreamError):
        Generator.load(run, backend="numpy")
    _check_loads_the_checkpoint(run)

    # the checkpoint changes under the same name (another model saved as ckpt-1): the file is stale
    from textstream._tf import tf

    _, vocab, model = load_model(run)
    for w in model.weights:
        w.assign(w.numpy() * 0.5)
    old_file = stepweights.path_for(prefix_of(run)).read_bytes()  # current for the old weights
    shutil.rmtree(run / "checkpoints" / "last")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run / "checkpoints" / "last"), 1).save()
    assert os.path.basename(prefix_of(run)) == "ckpt-1"
    stepweights.path_for(prefix_of(run)).write_bytes(old_file)
    assert stepweights.read(prefix_of(run)) is None
    _check_loads_the_checkpoint(run)


def _check_loads_the_checkpoint(run):
    """auto loads the checkpoint's own weights (through TensorFlow) and leaves a current file."""
    _, vocab, model = load_model(run)
    gen = Generator.load(run, warm=False)
    ids = vocab.encode(PRIME)[None]
    np.testing.assert_allclose(gen.backend.logits(ids), TFStep.from_model(model).logits(ids), atol=1e-5)
    assert stepweights.is_current(prefix_of(run))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bad meta", "missing array", "directory"])
def test_a_damaged_file_falls_back_quietly_and_is_rewritten(tmp_path, damage):
    run = make_run(tmp_path)
    Generator.load(run, warm=False)
    path = stepweights.path_for(prefix_of(run))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        with np.load(path) as npz:
            arrays = dict(npz)
        if damage == "bad meta":
            arrays["meta"] = np.array("{not json")
        else:
            del arrays["head_bias"]
        np.savez(path, **arrays)
    assert stepweights.read(prefix_of(run)) is None
    with pytest.raises(TextstreamError):
        Generator.load(run, backend="numpy")
    gen = Generator.load(run, warm=False)
    assert isinstance(gen.backend, NumpyStep)
    if damage != "directory":  # a directory in the way is left alone (the file cannot be written)
        assert stepweights.is_current(prefix_of(run)) and zipfile.is_zipfile(path)


def test_an_unwritable_file_leaves_generation_working(tmp_path, monkeypatch):
    run = make_run(tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(stepweights, "write", refuse)
    gen = Generator.load(run, warm=False)
    assert isinstance(gen.backend, NumpyStep) and gen.generate([PRIME], 20, seed=1)[0]
    assert not stepweights.path_for(prefix_of(run)).exists()


def test_newest_checkpoint_agrees_with_tensorflow(tmp_path):
    run = make_run(tmp_path, checkpoint="last")
    paths = RunPaths(run)
    for which in ("best", "last"):  # no "best" series: both are "last"
        assert str(paths.newest_checkpoint(which)) == latest_checkpoint(paths, which)
    with pytest.raises(TextstreamError):
        paths.newest_checkpoint("newest")
    with pytest.raises(TextstreamError):
        load_backend(run, "newest")
    (run / "checkpoints" / "last" / "checkpoint").write_text("garbled", encoding="utf-8")
    assert paths.newest_checkpoint("last") is None  # TensorFlow decides


# --- the command line without TensorFlow -----------------------------------------------------------
def test_generate_on_the_numpy_path_does_not_import_tensorflow(tiny_run, pair, tmp_path):
    """Every option of ``generate``, the default prime included: same text as TensorFlow, TensorFlow never imported."""
    numpy_gen, tf_gen = pair
    prime_file = tmp_path / "prime.txt"
    prime_file.write_text(PRIME, encoding="utf-8")
    cases = [
        ["--prime", PRIME, "-n", "300", "--seed", "3"],
        ["-n", "100", "--seed", "4"],  # the default prime: a validation line
        ["--prime-file", str(prime_file), "-n", "80", "--seed", "1", "--temperature", "0,0.5,1.2", "--streams", "2"],
        ["--prime", "the wo", "--unknown", "skip", "--top-k", "5", "--top-p", "0.8", "--stop", r"\n", "-n", "200",
         "--seed", "5", "--checkpoint", "last"],
        ["--prime", PRIME, "--follow", "-n", "2000", "--seed", "6", "--temperature", "0.7", "--backend", "numpy"],
    ]
    code = ("import contextlib, io, json, sys\n"
            "from textstream.cli import main\n"
            "outs = []\n"
            f"for argv in {cases!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"        assert main(['generate', {str(tiny_run)!r}, *argv]) == 0, argv\n"
            "    outs.append(out.getvalue())\n"
            f"print(json.dumps({{'outs': outs, 'heavy': {HEAVY}}}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["heavy"] == []
    assert got["outs"][0] == tf_gen.generate([PRIME], 300, seed=3)[0] + "\n"
    assert got["outs"][1] == tf_gen.generate([""], 100, seed=4)[0] + "\n"
    blocks = tf_gen.generate([PRIME] * 6, 80, temperature=[0, 0, 0.5, 0.5, 1.2, 1.2], seed=[1, 2] * 3)
    assert got["outs"][2] == "".join(b + "\n" for b in blocks)
    assert got["outs"][3] == tf_gen.generate(["the wo"], 200, seed=5, top_k=5, top_p=0.8, stop="\n",
                                             unknown="skip")[0] + "\n"
    assert got["outs"][4] == tf_gen.session(PRIME, seed=6, temperature=0.7).sample(2000)


def test_numpy_backend_without_a_file_is_one_line_and_no_tensorflow(tmp_path):
    run = make_run(tmp_path)
    code = ("import sys\n"
            "from textstream.cli import main\n"
            f"assert main(['generate', {str(run)!r}, '--backend', 'numpy']) == 2\n"
            f"assert main(['generate', {str(run)!r}, '--backend', 'gpu']) == 2\n"
            f"assert not {HEAVY}\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("textstream: ") for line in lines), proc.stderr
    assert "no current step weights file" in lines[0] and "invalid choice: 'gpu'" in lines[1]
