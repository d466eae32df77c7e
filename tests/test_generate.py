"""The step model equals the full model; seeded text is reproducible however it is cut or batched; CLI."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEXT, make_run
from textstream.cli import main
from textstream.config import make_config
from textstream.errors import TextstreamError
from textstream.generation.generator import Generator
from textstream.generation.step_np import NumpyStep
from textstream.generation.step_tf import KMAX, PMAX, TFStep
from textstream.model.network import build_model
from textstream.model.checkpoint import load_model
from textstream.data.vocab import OOV_CHAR, Vocab

PRIME = "it was the "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", params=["numpy", "tf"])
def gen(request, tiny_run, tiny_gen):
    """The tiny run's generator on each backend: numpy (what ``auto`` gives) and the compiled TensorFlow step."""
    if request.param == "numpy":
        assert isinstance(tiny_gen.backend, NumpyStep)
        return tiny_gen
    return Generator.load(tiny_run, backend="tf")


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def scaled_model(cfg, vocab_size, scale=3.0, seed=0):
    model = build_model(cfg, vocab_size)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    return model


def full_logits(model, ids):
    """The training model on the whole sequence: logits predicting each next character, (T, V)."""
    from textstream._tf import tf

    return model(tf.constant(np.asarray(ids, np.int32)[None]))[0].numpy()


# --- the step model -------------------------------------------------------------------------
@pytest.mark.parametrize("layers, embedding, units", [(1, 0, 16), (2, 0, 8), (1, 6, 16), (2, 5, 24)])
def test_step_model_equals_the_sequence_model(layers, embedding, units):
    cfg = make_config("tiny", layers=layers, embedding=embedding, units=units)
    model = scaled_model(cfg, 13)
    ids = np.random.default_rng(1).integers(0, 13, (3, 40))
    from textstream._tf import tf

    want = log_softmax(model(tf.constant(ids, tf.int32)).numpy())
    got = log_softmax(TFStep.from_model(model).logits(ids))
    assert np.abs(want).max() > 2  # the distributions are far from flat: the check has teeth
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("layers, embedding", [(1, 0), (2, 4)])
def test_next_model_first_prediction_equals_the_whole_window(layers, embedding):
    from textstream._tf import tf

    cfg = make_config("tiny", objective="next", seq_len=60, layers=layers, embedding=embedding, units=16)
    model = scaled_model(cfg, 11)
    windows = np.random.default_rng(2).integers(0, 11, (2, 60))
    want = log_softmax(model(tf.constant(windows, tf.int32)).numpy())  # last_only: (2, V)
    got = log_softmax(TFStep.from_model(model).logits(windows)[:, -1])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("backend, atol", [("tf", 1e-5), ("numpy", 1e-4)])
def test_loaded_generator_has_the_checkpoint_weights_and_feeds_long_primes(tmp_path, backend, atol):
    """(numpy's float32 rounding differs from XLA's: over 500 steps of this random model it grows to ~1e-5.)"""
    run = make_run(tmp_path, layers=2, units=8)
    _, vocab, model = load_model(run)
    gen = Generator.load(run, warm=False, backend="auto" if backend == "numpy" else backend)
    assert isinstance(gen.backend, NumpyStep if backend == "numpy" else TFStep)
    prime = (TEXT * 6)[:PMAX * 2 + 17]  # three feed calls
    ids = vocab.encode(prime)
    np.testing.assert_allclose(log_softmax(gen.backend.logits(ids[None])[0]), log_softmax(full_logits(model, ids)),
                               atol=atol)
    # greedy text after a long prime: each character is the full model's argmax on everything before it
    text = gen.generate([prime], 30, temperature=0.0)[0]
    seq = vocab.encode(prime + text)
    expected = full_logits(model, seq[:-1]).argmax(-1)[len(ids) - 1:]
    assert vocab.decode(expected) == text


# --- sampling through the generator -------------------------------------------------------------
def test_greedy_is_the_argmax_of_the_full_model(tiny_run, gen):
    _, vocab, model = load_model(tiny_run)
    a, b = gen.generate([PRIME, "the "], 80, temperature=[0.0, 0.0])
    for prime, text in ((PRIME, a), ("the ", b)):
        seq = vocab.encode(prime + text)
        assert vocab.decode(full_logits(model, seq[:-1]).argmax(-1)[len(prime) - 1:]) == text
    assert a == "".join(gen.stream(PRIME, temperature=0.0, n=80))


def test_top_k_and_top_p_never_leave_their_support(tiny_run, gen):
    _, vocab, model = load_model(tiny_run)
    text = gen.generate([PRIME], 200, temperature=1.5, top_k=3, seed=4)[0]
    seq = vocab.encode(PRIME + text)
    logits = full_logits(model, seq[:-1])[len(PRIME) - 1:]
    top3 = np.argsort(-logits, axis=-1)[:, :3]
    assert all(c in row for c, row in zip(seq[len(PRIME):], top3))
    assert len(set(text)) > 3  # it did sample

    temperature, p = 0.8, 0.6
    text = gen.generate([PRIME], 200, temperature=temperature, top_p=p, seed=5)[0]
    seq = vocab.encode(PRIME + text)
    probs = np.exp(log_softmax(full_logits(model, seq[:-1])[len(PRIME) - 1:] / temperature))
    for c, row in zip(seq[len(PRIME):], probs):
        above = row[row > row[c]].sum()  # mass ranked above the chosen character
        assert above < p + 1e-5
    assert len(set(text)) > 2


def test_seeded_text_is_the_same_whatever_the_chunking(gen):
    whole = gen.session(PRIME, seed=11).sample(300)
    s = gen.session(PRIME, seed=11)
    pieces = "".join(s.sample(k) for k in (1, 7, 2, 90, 200))
    assert pieces == whole
    assert "".join(gen.stream(PRIME, seed=11, n=300)) == whole  # stream's adaptive K
    assert gen.generate([PRIME], 300, seed=11)[0] == whole
    assert gen.session(PRIME, seed=12).sample(300) != whole


def test_stream_chunks_start_small_and_from_model_matches_load(tiny_run, tiny_gen):
    from textstream.generation.generator import FIRST_K

    chunks = list(tiny_gen.stream(PRIME, seed=6, n=2000))
    assert len(chunks[0]) <= FIRST_K and len(chunks) > 1  # the first text comes after a short call
    _, vocab, model = load_model(tiny_run)
    in_memory = Generator.from_model(model, vocab)  # what training uses for its per-epoch samples
    assert in_memory.generate([PRIME] * 2, 200, temperature=[0.5, 1.0], seed=6) == \
        tiny_gen.generate([PRIME] * 2, 200, temperature=[0.5, 1.0], seed=6)
    assert "".join(chunks)[:200] == in_memory.generate([PRIME], 200, seed=6)[0]


def test_long_runs_cross_call_boundaries(gen):
    n = KMAX + 300
    s = gen.session(PRIME, seed=3, temperature=0.7)
    assert s.sample(n) == gen.generate([PRIME], n, seed=3, temperature=0.7)[0]


@pytest.mark.parametrize("b", [3, 5])
def test_a_batch_of_b_is_b_single_streams(gen, b):
    primes = ["it was ", "the ", "", "wisdom", "THE END"][:b]
    temps = [0.0, 0.5, 1.0, 1.2, 0.9][:b]
    seeds = [7, 7, 8, 9, 10][:b]
    batch = gen.generate(primes, 120, temperature=temps, seed=seeds, top_k=8)
    singles = [gen.generate([p], 120, temperature=t, seed=s, top_k=8)[0]
               for p, t, s in zip(primes, temps, seeds)]
    assert batch == singles
    assert len(set(batch)) == b


def test_stop_strings_truncate_exactly(gen):
    free = gen.generate([PRIME], 300, seed=21)[0]
    stop = free[150:153]
    cut = free.find(stop)
    assert gen.generate([PRIME], 300, seed=21, stop=stop)[0] == free[:cut]
    chunks = list(gen.stream(PRIME, seed=21, n=300, stop=[stop, "\x00never"]))
    assert "".join(chunks) == free[:cut]
    assert gen.generate([PRIME], 50, seed=21, stop="\x00never")[0] == free[:50]


def test_unknown_prime_characters(gen):
    with pytest.raises(TextstreamError) as e:
        gen.generate(["héllo wörld"], 5)
    assert "'é'" in str(e.value) and "'ö'" in str(e.value) and "2 character(s)" in str(e.value)
    skipped = gen.generate(["héllo wörld"], 40, seed=1, unknown="skip")
    assert skipped == gen.generate(["hllo wrld"], 40, seed=1)


def test_default_prime_is_a_validation_line_or_newline(tiny_gen, tmp_path):
    lines = {line + "\n" for line in TEXT.splitlines()}
    assert tiny_gen.default_prime(1) in lines
    assert tiny_gen.default_prime(1) == tiny_gen.default_prime(1)
    assert tiny_gen.generate([""], 30, seed=1) == tiny_gen.generate([tiny_gen.default_prime(1)], 30, seed=1)
    bare = Generator.load(make_run(tmp_path, units=8), warm=False)  # no data.json
    assert bare.default_prime(1) == "\n"


# --- the backend interface ------------------------------------------------------------------------
def test_stream_rows_copy_and_move_their_state(gen):
    backend = gen.backend
    primes = [gen.encode(p) for p in (PRIME, "the ", "wisdom")]
    batch = backend.streams([1, 2, 3], [0.7, 0.7, 0.7], top_k=8)  # 3 streams in a bucket of 4 rows
    batch.advance(5, primes)
    twin = batch.copy()
    twin.advance(7)
    state = batch.row_state(1)
    assert int(state["position"]) == 5 and int(twin.row_state(1)["position"]) == 12  # the copy is separate
    assert state["h"].shape == (backend.layers, backend.units) and state["h"].dtype == np.float32
    single = backend.streams([99], [0.7], top_k=8)
    single.set_row_state(0, state)
    np.testing.assert_array_equal(single.advance(50)[0], batch.advance(50)[1])


# --- sessions -----------------------------------------------------------------------------------
def test_fork_continues_identically_but_separately(gen):
    s = gen.session(PRIME, seed=5)
    s.sample(40)
    twin = s.fork()
    assert twin.sample(60) == s.sample(60)
    twin.feed(" wisdom")
    after_feed = twin.sample(60)
    assert s.sample(60) != after_feed  # feeding the twin did not touch the original
    again = s.fork()
    assert again.sample(30) == s.fork().sample(30)


def test_state_saves_and_restores(gen, tmp_path):
    s = gen.session(PRIME, seed=9, temperature=0.9)
    s.sample(50)
    np.savez(tmp_path / "state.npz", **s.state)
    want = s.sample(100)
    other = gen.session("the ", seed=1, temperature=0.9)
    other.set_state(np.load(tmp_path / "state.npz"))
    assert other.sample(100) == want
    assert int(other.state["position"]) == 150
    s.reset()
    assert int(s.state["position"]) == 0
    assert s.sample(150)[50:] == want
    with pytest.raises(TextstreamError):
        other.set_state({"h": np.zeros((3, 3)), "c": np.zeros((3, 3)), "seed": 1, "position": 0})


def test_feed_equals_a_longer_prime(gen):
    s = gen.session("it was", seed=2)
    s.feed(" the ")
    assert s.sample(80) == gen.session(PRIME, seed=2).sample(80)


# --- decoding and the checks shared with the CLI -------------------------------------------------
def test_vocab_decode_is_the_join_of_its_characters():
    chars = ["\n", " ", "a", "é", "€", "\U0001d518", "😀", "\U0010fffd", OOV_CHAR]  # 1- to 4-byte UTF-8
    vocab = Vocab(chars=chars, oov_id=len(chars) - 1)
    ids = np.random.default_rng(0).integers(0, len(chars), 500)
    for chunk in (ids, ids[:0], ids[:1], list(ids[:7]), (int(i) for i in ids[:9])):
        chunk = list(chunk)
        assert vocab.decode(np.asarray(chunk, np.int64)) == "".join(chars[i] for i in chunk)
    assert vocab.decode(vocab.encode("a€😀 z")) == "a€😀 " + OOV_CHAR  # 'z' is out of the vocabulary
    assert vocab.decoder()(np.array([6, 2], np.uint16)) == "😀a"


def test_generation_modules_import_without_tensorflow(tiny_run):
    """``generate`` checks every option (and the prime) before TensorFlow loads."""
    code = ("import sys\n"
            "import textstream.generation.generator, textstream.generation.backends, textstream.generation.sampling, textstream.cli.generate\n"
            "from textstream.cli import main\n"
            f"for bad in (['--temperature', '-1'], ['-n', '-2'], ['--stop', ''], ['--prime', 'naïve']):\n"
            f"    assert main(['generate', {str(tiny_run)!r}, *bad]) == 2, bad\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
            "assert not loaded, loaded[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 4 and proc.stderr.count("textstream: ") == 4, proc.stderr


BAD_REQUESTS = [  # (library keyword arguments, the same values as CLI options)
    ({"temperature": -1.0}, ["--temperature", "-1"]),
    ({"temperature": float("nan")}, ["--temperature", "nan"]),
    ({"temperature": float("inf")}, ["--temperature", "inf"]),
    ({"top_p": 0.0}, ["--top-p", "0"]),
    ({"top_p": 1.5}, ["--top-p", "1.5"]),
    ({"n": -1}, ["-n", "-1"]),
    ({"stop": ""}, ["--stop", ""]),
    ({"stop": ["\n", ""]}, ["--stop", r"\n", "--stop", ""]),
]


@pytest.mark.parametrize("kwargs, argv", BAD_REQUESTS)
def test_library_and_cli_reject_the_same_values_with_the_same_line(tiny_gen, tiny_run, capsys, kwargs, argv):
    n = kwargs.pop("n", 10)
    with pytest.raises(TextstreamError) as gen_err:
        tiny_gen.generate([PRIME], n, **kwargs)
    with pytest.raises(TextstreamError) as stream_err:
        tiny_gen.stream(PRIME, n=n, **kwargs)  # raises at the call, not at the first chunk
    assert str(stream_err.value) == str(gen_err.value)
    assert main(["generate", str(tiny_run), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"textstream: {gen_err.value}\n"


def test_library_rejects_what_the_cli_parser_cannot_express(tiny_gen):
    bad = [lambda: tiny_gen.generate([PRIME], 5, top_k=0), lambda: tiny_gen.generate([PRIME], 5, top_k=2.5),
           lambda: tiny_gen.generate([PRIME], 5, unknown="ignore"), lambda: tiny_gen.session(PRIME, top_p=-1),
           lambda: tiny_gen.session(PRIME, temperature=-1), lambda: tiny_gen.session(PRIME).sample(-1),
           lambda: tiny_gen.generate([PRIME] * 2, 5, seed=[1, 2, 3]),
           lambda: tiny_gen.generate([PRIME] * 2, 5, temperature=[1.0]),
           lambda: tiny_gen.generate([], 5, top_k=0)]
    for call in bad:
        with pytest.raises(TextstreamError):
            call()


# --- the command line ---------------------------------------------------------------------------
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, tiny_run):
    cases = [
        ["generate", str(tmp_path / "missing")],
        ["generate", str(tmp_path)],  # exists but is not a run
        ["generate", str(tiny_run), "--prime-file", str(tmp_path / "nope.txt")],
        ["generate", str(tiny_run), "--prime", "naïve €"],
        ["generate", str(tiny_run), "--temperature", "0.5,x"],
        ["generate", str(tiny_run), "--top-p", "1.5"],
        ["generate", str(tiny_run), "--follow", "--temperature", "0.2,1"],
    ]
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    cases.append(["generate", str(tiny_run), "--prime-file", str(tmp_path / "bad.txt")])
    for argv in cases:
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("textstream: "), (argv, err)
    assert main(cases[3]) == 2
    assert "'ï' '€'" in capsys.readouterr().err
    assert main(cases[-1]) == 2
    assert "bad.txt: not UTF-8" in capsys.readouterr().err


def test_cli_blocks_per_temperature(tiny_run, tiny_gen, capsys, tmp_path):
    prime_file = tmp_path / "prime.txt"
    prime_file.write_text(PRIME, encoding="utf-8")
    assert main(["generate", str(tiny_run), "--prime-file", str(prime_file), "-n", "50", "--seed", "3",
                 "--temperature", "0.2,0.5,1.0,1.2"]) == 0
    out, err = capsys.readouterr()
    blocks = tiny_gen.generate([PRIME] * 4, 50, temperature=[0.2, 0.5, 1.0, 1.2], seed=[3] * 4)
    assert out == "".join(b + "\n" for b in blocks)
    assert err.count("--- temperature") == 4
    assert main(["generate", str(tiny_run), "--prime", "the wo", "--unknown", "skip", "--seed", "1", "-n", "30",
                 "--stop", r"\n"]) == 0
    out, _ = capsys.readouterr()
    assert out == tiny_gen.generate(["the wo"], 30, seed=1, stop="\n")[0] + "\n"


def _follow(run, *extra, sigint=signal.SIG_DFL):
    """``generate --follow`` in its own process, started with SIGINT's disposition ``sigint`` (inherited)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "textstream", "generate", str(run), "--follow", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def test_follow_into_a_pipe_closed_early_ends_quietly(tiny_run):
    proc = _follow(tiny_run, "--seed", "1")
    first = proc.stdout.read(200)
    proc.stdout.close()  # the reader goes away, like `| head -c 200`
    rc = proc.wait(timeout=120)  # unlimited --follow: without the stop this never returns (a hang guard, not a timing)
    err = proc.stderr.read()
    proc.stderr.close()
    assert len(first) == 200
    assert err == b"", err.decode()
    assert rc == 0


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["inherited default", "inherited ignored"])
def test_follow_stops_cleanly_on_ctrl_c(tiny_run, tiny_gen, sigint):
    """SIGINT ends ``--follow`` (exit 130), also when the process started with SIGINT ignored.

    A shell without job control starts a background job (``cmd &`` in a
    script, a CI runner's) with SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: ``--follow`` could never be stopped by a
    signal and this test hung. The CLI restores the handler at its entry
    (``console.interruptible``). The text read first proves the process is
    past its start, so the signal cannot come before the handler.
    """
    proc = _follow(tiny_run, "--seed", "4", "--prime", PRIME, sigint=sigint)
    got = proc.stdout.read(3000).decode("utf-8")
    proc.send_signal(signal.SIGINT)
    try:
        rest, err = proc.communicate(timeout=120)  # a hang guard, not a timing: without the handler it never ends
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == b"", err.decode()
    assert (got + rest.decode("utf-8")).startswith(tiny_gen.session(PRIME, seed=4).sample(3000))
