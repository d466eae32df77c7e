"""Probabilities and scoring: top() leaves the state and is the softmax of the logits; generation's logprobs ==
score == eval's sequence scoring; chunked == whole; batch == one by one; ``textstream score`` rows and errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_run
from test_state import byte_gens
from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.generation.generator import Generator
from textstream.generation.probabilities import log_softmax
from textstream.model.checkpoint import load_model
from textstream.training.evaluation import IdStream, score as eval_score

TOL = dict(rtol=1e-5, atol=1e-5)
TEXT = "It was the best of times, it was the worst of times,\nit was the age of wisdom"


@pytest.fixture(scope="module")
def calm_run(tmp_path_factory):
    """A random model whose state does not amplify rounding (tiny_run's larger weights are chaotic: two compiled
    programs that differ in their last bits drift apart there after ~200 characters)."""
    return make_run(tmp_path_factory.mktemp("calm"), scale=1.5)


@pytest.fixture(scope="module")
def gens(calm_run):
    return {"numpy": Generator.load(calm_run), "tf": Generator.load(calm_run, backend="tf")}


@pytest.fixture(scope="module")
def bytes_gens():
    return byte_gens(seed=4, scale=1.5)


# --- top ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_top_is_the_softmax_of_the_logits_and_leaves_the_state(gens, backend):
    gen = gens[backend]
    s = gen.session("It was the ", seed=7, temperature=0.3, top_k=2)
    twin = s.fork()
    best = s.top(5)
    full = s.top(10_000)
    assert len(full) == gen.vocab.size and best == full[:5]
    assert [lp for _, lp in full] == sorted((lp for _, lp in full), reverse=True)
    assert np.isclose(np.exp([lp for _, lp in full]).sum(), 1.0)
    ids = gen.encode("It was the ")
    want = log_softmax(gen.backend.logits(ids[None])[0, -1])
    assert np.allclose([lp for _, lp in full], [want[gen.vocab.chars.index(ch)] for ch, _ in full], **TOL)
    assert s.sample(60) == twin.sample(60)  # top() moved nothing
    assert s.top(0) == []
    with pytest.raises(TextstreamError, match="k must be"):
        s.top(-1)


def test_top_of_a_byte_model_is_exact_in_whole_characters(bytes_gens):
    gen = bytes_gens["numpy"]
    s = gen.session("Ab", seed=1)
    best = s.top(4)
    assert all(len(ch) == 1 for ch, _ in best)
    h0, c0 = (s.state[k][:, None] for k in ("h", "c"))
    backend = gen.backend
    # every one- and two-byte character, scored from the session's state in one batch
    chars = [chr(i) for i in range(128)] + [chr(i) for i in range(0x80, 0x800)]
    rows = [list(ch.encode()) + [0] * (2 - len(ch.encode())) for ch in chars]
    h, c = np.repeat(h0, len(rows), 1), np.repeat(c0, len(rows), 1)
    lp = backend.score_rows(h, c, np.array(rows))
    total = {ch: float(lp[i, 0] + (lp[i, 1] if len(ch.encode()) == 2 else 0.0)) for i, ch in enumerate(chars)}
    for ch, value in best:
        if ch in total:
            assert np.isclose(value, total[ch], **TOL)
    kth = best[-1][1]
    assert all(v <= kth + 1e-6 for ch, v in total.items() if ch not in dict(best))


# --- logprobs while sampling --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_sampled_logprobs_are_the_text_of_sample_and_its_score(gens, backend):
    gen = gens[backend]
    s = gen.session("It was ", seed=3, temperature=0.9, top_p=0.9)
    twin = s.fork()
    alternatives = s.top(3)
    records = s.sample_logprobs(300, top=3)
    text = "".join(r.char for r in records)
    assert text == twin.sample(300)
    assert [a for a, _ in records[0].top] == [a for a, _ in alternatives]
    assert all(len(r.top) == 3 and r.top[0][1] >= r.logprob - 1e-6 for r in records)
    scored = gen.score("It was " + text).logprobs[len("It was "):]
    assert np.allclose([r.logprob for r in records], scored, **TOL)
    assert "".join(r.char for r in s.stream_logprobs(700, top=1)) == twin.sample(700)


def test_byte_model_records_are_whole_characters_with_summed_logprobs(bytes_gens):
    gen = bytes_gens["numpy"]
    s = gen.session("It ", seed=9)
    twin = s.fork()
    records = []
    for n in (1, 2, 5, 300):  # cuts inside characters: their sums carry over
        records += s.sample_logprobs(n, top=2)
    text = "".join(r.char for r in records)
    assert text == twin.sample(308)
    clean = [r for r in records if r.char != "\ufffd"]
    assert any(len(r.char.encode()) > 1 for r in clean), "no multi-byte character sampled"
    if "\ufffd" not in text:
        assert np.allclose([r.logprob for r in records], gen.score("It " + text).logprobs[3:], **TOL)
    for r in records:
        for alt, _ in r.top:
            assert (isinstance(alt, str) and ord(alt) < 128) or (isinstance(alt, bytes) and alt[0] >= 0x80)


def test_logprobs_are_refused_inside_a_regex_match(tiny_gen):
    s = tiny_gen.session("It ", seed=1, regex="(was|is)")
    with pytest.raises(TextstreamError, match="regex match"):
        s.sample_logprobs(5)


# --- score --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_score_equals_eval_sequence_scoring(gens, calm_run, backend):
    gen = gens[backend]
    got = gen.score(TEXT)
    ids = gen.encode(TEXT)
    assert got.chars == len(TEXT) and got.tokens == len(ids) and got.logprobs.shape == (len(TEXT),)
    first = log_softmax(gen.backend.head_logits(np.zeros((1, gen.backend.units), np.float32)))[0, ids[0]]
    assert np.isclose(got.logprobs[0], first, **TOL)  # the first character from the start state
    cfg, _, model = load_model(calm_run, "best")
    ref = eval_score(model, "sequence", cfg.seq_len, IdStream(ids), batch_size=1, vocab=gen.vocab)
    assert ref.chars == len(TEXT) - 1
    assert np.isclose(-got.logprobs[1:].sum() / ref.chars, ref.nats_per_char, **TOL)
    assert np.isclose(got.bits_per_char, got.nats_per_char / np.log(2))
    assert np.isclose(got.nats_per_char, -got.logprobs.mean())


def test_numpy_and_tf_scores_agree(gens):
    a, b = gens["numpy"].score(TEXT * 3), gens["tf"].score(TEXT * 3)
    assert np.allclose(a.logprobs, b.logprobs, **TOL)


def test_byte_scores_sum_the_bytes_of_each_character(bytes_gens):
    text = "AÉté à Kigali: “Muraho” 😀 €5 and more"
    got = bytes_gens["tf"].score(text)
    ids = bytes_gens["tf"].encode(text)
    assert got.chars == len(text) and got.tokens == len(ids) == len(text.encode())
    backend = bytes_gens["tf"].backend
    h = np.zeros((backend.layers, 1, backend.units), np.float32)
    per_byte = backend.score_rows(h, np.zeros_like(h), ids[None])[0].astype(np.float64)
    ends = np.cumsum([len(ch.encode()) for ch in text])
    assert np.allclose(got.logprobs, np.diff(np.concatenate([[0.0], np.cumsum(per_byte)[ends - 1]])), **TOL)
    assert np.allclose(bytes_gens["numpy"].score(text).logprobs, got.logprobs, **TOL)


def test_byte_model_scores_equal_eval_through_the_keras_model():
    from textstream.config import make_config
    from textstream.data.vocab import Vocab
    from textstream.model.network import build_model

    model = build_model(make_config("tiny"), 256)
    rng = np.random.default_rng(2)
    for w in model.weights:
        w.assign(rng.normal(0.0, 3.0 / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    gen = Generator.from_model(model, Vocab.of_bytes())
    text = "Kigali “Muraho” € and 😀!"
    got, ids = gen.score(text), gen.encode(text)
    ref = eval_score(model, "sequence", 32, IdStream(ids), batch_size=1, vocab=gen.vocab)
    assert ref.chars == got.chars - 1  # eval leaves the first character out (no context before it)
    assert np.isclose(ref.nats, got.nats + got.logprobs[0], **TOL)


@pytest.mark.parametrize("chunks", [["It was the ", "best of times"], list("It was the best of times"),
                                    ["It was the best", "", " of times"]])
def test_chunks_score_as_the_whole_text_in_constant_memory(tiny_gen, chunks):
    whole = tiny_gen.score("".join(chunks))
    parts = tiny_gen.score(iter(chunks))
    assert parts.logprobs is None and (parts.chars, parts.tokens) == (whole.chars, whole.tokens)
    assert np.isclose(parts.nats, whole.nats, rtol=1e-9)


def test_a_crlf_split_between_chunks_normalises_as_the_whole(tiny_gen):
    whole = tiny_gen.score("It was\r\nthe best")
    assert whole.chars == len("It was\nthe best")
    assert np.isclose(tiny_gen.score(["It was\r", "\nthe best"]).nats, whole.nats, rtol=1e-9)


def test_score_many_equals_one_by_one_in_order(tiny_gen, gens):
    texts = ["It was", "", "the worst of times, it was the age", "w", TEXT, "it was"] * 30
    for gen in (tiny_gen, gens["tf"]):
        many = gen.score_many(texts)
        assert len(many) == len(texts)
        for t, m in zip(texts[:6], many[:6]):
            one = gen.score(t)
            assert m.chars == one.chars == len(t)
            assert np.allclose(m.logprobs, one.logprobs, **TOL)
    assert np.isnan(many[1].nats_per_char) and many[1].nats == 0.0


def test_bad_score_inputs(tiny_gen):
    with pytest.raises(TextstreamError, match="outside the vocabulary"):
        tiny_gen.score("It was ~")
    assert tiny_gen.score("It ~was", unknown="skip").chars == len("It was")
    with pytest.raises(TextstreamError, match="not str"):
        tiny_gen.score([b"It was"])
    with pytest.raises(TextstreamError, match="bytes, not text"):
        tiny_gen.score(b"It was")
    with pytest.raises(TextstreamError, match="list of strings"):
        tiny_gen.score_many(["It", 3])


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_rows_per_file_and_per_line(tiny_run, tiny_gen, tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("It was the best\nof times\n\nit was\n", encoding="utf-8")
    b.write_text("the worst", encoding="utf-8")
    assert main(["score", str(tiny_run), str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert len(rows) == 2 and rows[0].endswith(str(a)) and "chars/s" in err
    want = tiny_gen.score(a.read_text())
    assert f"{want.bits_per_char:.4f} bits/char" in rows[0] and f"{want.chars:,} chars" in rows[0]
    assert main(["score", str(tiny_run), str(a), "--lines", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["It was the best", "of times", "", "it was"]
    assert [r["line"] for r in rows] == [1, 2, 3, 4] and rows[2]["bits_per_char"] is None
    for r in rows:
        if r["chars"]:
            assert np.isclose(r["nats_per_char"], tiny_gen.score(r["text"]).nats_per_char, **TOL)
    assert main(["score", str(tiny_run), str(b), "--lines"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split("\t")[2:] == ["9", f"{b}:1", "the worst"]


@pytest.mark.parametrize("content, message", [
    (b"It was\xe9 the", "invalid UTF-8 at byte offset 6"),
    (b"It was\0", "binary file"),
    ("It was ~ the".encode(), "1 character(s) outside the vocabulary: '~'"),
])
def test_cli_bad_input_is_one_line_naming_the_file(tiny_run, tmp_path, capsys, content, message):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    assert main(["score", str(tiny_run), str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"textstream: {f}: ") and message in err and "\n" not in err


def test_cli_missing_files_and_directories(tiny_run, tmp_path, capsys):
    assert main(["score", str(tiny_run), str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"textstream: {tmp_path / 'nope.txt'}: no such file"
    assert main(["score", str(tiny_run), str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"textstream: {tmp_path}: is a directory")


def test_cli_reads_stdin(tiny_run, tiny_gen):
    proc = subprocess.run([sys.executable, "-m", "textstream", "score", str(tiny_run), "-", "--json"],
                          input="It was the best".encode(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["chars"] == 15 and np.isclose(row["nats_per_char"], tiny_gen.score("It was the best").nats_per_char)
    proc = subprocess.run([sys.executable, "-m", "textstream", "score", str(tiny_run)], input=b"It\xff",
                          capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.decode().startswith("textstream: stdin: invalid UTF-8")
