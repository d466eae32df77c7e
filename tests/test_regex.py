"""Regex-constrained generation: always a prefix of a full match, ends at one, the same on both backends.

The oracle is independent of the token DFA under test: ``re.fullmatch`` for
full matches, and interegular's character automaton walked character by
character (``islive``) for "a prefix of some full match".
"""
import re

import interegular
import numpy as np
import pytest

from conftest import make_run
from textstream.cli import main
from textstream.config import make_config
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation.constraint import Constraint, compile_constraint, split_ended
from textstream.generation.generator import Generator
from textstream.generation.step_np import NumpyStep
from textstream.model.checkpoint import step_weights_of
from textstream.model.network import build_model

TEXT = "the cat and a dog: yes, no. 0123456789-\nThe end; abcdefghijklmnopqrstuvwxyz!\n"
PATTERNS = [
    r"[0-9]{3}-[0-9]{4}",
    r"(yes|no)",
    r"[a-z ]+\.",
    r"(the|a) (cat|dog)s?( and (the|a) (cat|dog)s?)*",  # alternations and optional parts
    r"-?[0-9]+(\.[0-9]{1,2})?",
    r"(ab|a)(c|bcd)(e?)",  # alternatives sharing a prefix
    r"[a-z]*",  # matches the empty string
    r"x?",
]


def is_prefix(pattern: str, text: str) -> bool:
    """Whether ``text`` can still be completed to a full match (interegular's character automaton)."""
    fsm = interegular.parse_pattern(pattern).to_fsm()
    state = fsm.initial
    for ch in text:
        key = fsm.alphabet[ch]
        state = fsm.map.get(state, {}).get(key)
        if state is None:
            return False
    return fsm.islive(state)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("regex"), text=TEXT, val_text=TEXT)


@pytest.fixture(scope="module")
def gens(run):
    """The numpy and the TensorFlow generator of one run (loading on TensorFlow writes the step weights file)."""
    tf_gen = Generator.load(run, backend="tf")
    return Generator.load(run, backend="numpy"), tf_gen


@pytest.fixture(scope="module")
def byte_gens():
    """A byte model with random weights: (numpy, TensorFlow) generators."""
    model = build_model(make_config("tiny", units=16), 256)
    rng = np.random.default_rng(3)
    for w in model.weights:
        w.assign(rng.normal(0.0, 3.0 / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    vocab = Vocab.of_bytes()
    return Generator(NumpyStep(step_weights_of(model)), vocab), Generator.from_model(model, vocab)


# --- the invariant ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", PATTERNS)
def test_output_is_always_a_prefix_of_a_full_match_and_ends_at_one(gens, pattern):
    gen = gens[0]
    seeds = list(range(48))
    for n, temperature in ((4, 1.0), (60, 1.0), (60, 1.6), (60, 0.0)):
        texts = gen.generate(["the "] * len(seeds), n, temperature=temperature, seed=seeds, regex=pattern)
        for seed, text in zip(seeds, texts):
            assert is_prefix(pattern, text), (pattern, seed, text)
            if len(text) < n:  # ended before n: the model ended a full match
                assert re.fullmatch(pattern, text), (pattern, seed, text)
    # a batch of B is B single streams, under a constraint too
    for seed in seeds[:4]:
        streamed = "".join(gen.stream("the ", temperature=1.0, seed=seed, n=60, regex=pattern))
        assert streamed == gen.generate(["the "], 60, temperature=1.0, seed=seed, regex=pattern)[0]


@pytest.mark.parametrize("pattern", [r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"(the|a) (cat|dog)s?"])
def test_a_finite_pattern_ends_an_endless_stream_at_a_full_match(gens, pattern):
    gen = gens[0]
    for seed in range(20):
        text = "".join(gen.stream("a ", temperature=1.2, seed=seed, regex=pattern))  # n=None: no limit
        assert re.fullmatch(pattern, text), (seed, text)


def test_the_end_takes_the_mass_of_the_characters_that_would_leave_the_pattern():
    """Allowed characters keep the model's probabilities; "end" gets the forbidden mass, or nothing."""
    from textstream._tf import tf
    from textstream.generation import sampling_np, sampling_tf

    logits = np.random.default_rng(0).normal(0, 2, (3, 7)).astype(np.float32)
    allowed = np.array([[1, 0, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], bool)
    accepting = np.array([True, False, True])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    got_np = sampling_np.constrained_scores(logits, np.where(allowed, 0, -np.inf).astype(np.float32), accepting)
    got_tf = sampling_tf.constrained_scores(tf.constant(logits), tf.constant(allowed), tf.constant(accepting)).numpy()
    for got in (got_np, got_tf):
        p = np.exp(got - got.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(p[0, :7], np.where(allowed[0], probs[0], 0), atol=1e-6)  # accepting: kept
        np.testing.assert_allclose(p[0, 7], probs[0][~allowed[0]].sum(), atol=1e-6)  # ... the rest ends
        np.testing.assert_allclose(p[1, :7], np.where(allowed[1], probs[1], 0) / probs[1][allowed[1]].sum(),
                                   atol=1e-6)  # not accepting: renormalised over the allowed, never ends
        assert p[1, 7] == 0 and p[2, 7] == 0  # accepting, but nothing would leave the pattern
    np.testing.assert_allclose(got_np, got_tf, atol=1e-5)


def test_temperature_zero_is_greedy_among_the_allowed_and_top_k_applies(gens):
    gen = gens[0]
    pattern = r"(the|a) [a-z]+( [a-z]+)?"
    con = compile_constraint(pattern, gen.vocab)
    prime = gen.encode("and ")
    for seed in (0, 1):
        text = gen.generate(["and "], 30, temperature=0.0, seed=seed, regex=pattern)[0]
        assert text == gen.generate(["and "], 30, temperature=1.0, top_k=1, seed=seed, regex=pattern)[0]
        # the greedy choice recomputed from the model's logits, one step at a time
        ids, state, want = list(prime), 0, ""
        while len(want) < 30:
            logits = gen.backend.logits(np.array([ids]))[0, -1].astype(np.float64)
            allowed = con.next[state] >= 0
            end = np.log(np.exp(logits[~allowed]).sum()) if con.accepting[state] and (~allowed).any() else -np.inf
            best = int(np.argmax(np.where(allowed, logits, -np.inf)))
            if end > logits[best]:
                break
            ids.append(best)
            want += gen.vocab.chars[best]
            state = int(con.next[state, best])
        assert text == want


def test_numpy_and_tensorflow_give_the_same_text(gens):
    numpy_gen, tf_gen = gens
    primes = ["the ", "a ", "", "no"]
    for pattern, kwargs in ((PATTERNS[0], {"temperature": 1.0}), (PATTERNS[3], {"temperature": [0.0, 0.5, 1.0, 1.5]}),
                            (PATTERNS[2], {"temperature": 0.9, "top_k": 5}),
                            (PATTERNS[4], {"temperature": 1.2, "top_p": 0.8})):
        got = numpy_gen.generate(primes, 300, seed=[3, 3, 4, 5], regex=pattern, **kwargs)
        assert got == tf_gen.generate(primes, 300, seed=[3, 3, 4, 5], regex=pattern, **kwargs), (pattern, kwargs)
        assert all(is_prefix(pattern, t) for t in got) and len(set(got)) > 1  # top-k, top-p: still inside
    texts = []
    for gen in gens:  # a long match crosses the compiled loop's calls (KMAX) and stream's growing chunks
        pieces = list(gen.stream("the ", temperature=1.0, seed=2, n=3000, regex=r"[a-z ]{1100}"))
        assert len(pieces) > 1
        texts.append("".join(pieces))
    assert texts[0] == texts[1] and re.fullmatch(r"[a-z ]{1100}", texts[0])
    a, b = numpy_gen.session("the ", seed=5, regex=PATTERNS[3]), tf_gen.session("the ", seed=5, regex=PATTERNS[3])
    assert a.sample(7) == b.sample(7) and a.sample(100) == b.sample(100) and a.sample(50) == b.sample(50)


# --- sessions --------------------------------------------------------------------------------------------
def test_a_session_carries_a_match_across_calls_until_it_ends(gens):
    for gen in gens:
        s = gen.session("the ", temperature=1.0, seed=4)
        first = s.sample(3, regex=r"[0-9]{8}")
        assert len(first) == 3 and first.isdigit() and s.matching
        twin = s.fork()
        rest = s.sample(20)  # still matching: five more digits, then the match ends the call
        assert rest.isdigit() and len(first + rest) == 8 and not s.matching
        assert twin.sample(20) == rest and not twin.matching
        free = s.sample(40)  # free again: the same text as a session that never had a constraint from here
        assert len(free) == 40
        s.sample(2, regex=r"(yes|no)")
        s.feed(" and ")  # fed text is not generated: the match under way ends
        assert not s.matching and len(s.sample(30)) == 30
        # a whole match in one call leaves the state right after it: feeding the match gives the same stream
        t = gen.session("the ", temperature=1.0, seed=6, regex=PATTERNS[0])
        match = t.sample(50)
        assert re.fullmatch(PATTERNS[0], match) and not t.matching
        u = gen.session("the ", temperature=1.0, seed=6)
        u.feed(match)
        np.testing.assert_allclose(t.state["h"], u.state["h"], atol=1e-6)
        assert int(t.state["position"]) == len(match) and int(u.state["position"]) == 0
        t.reset()  # back to right after the prime, matching again
        assert t.matching and t.sample(50) == match


def test_stop_strings_and_n_still_cut_a_constrained_stream(gens):
    gen = gens[0]
    text = gen.generate(["the "], 200, temperature=1.0, seed=1, regex=r"[a-z ]+\.")[0]
    cut = text[5:7]
    stopped = gen.generate(["the "], 200, temperature=1.0, seed=1, regex=r"[a-z ]+\.", stop=cut)[0]
    assert stopped == text[:text.find(cut)]
    assert "".join(gen.stream("the ", temperature=1.0, seed=1, regex=r"[a-z ]+\.", n=7)) == text[:7]


# --- byte models ---------------------------------------------------------------------------------------
BYTE_PATTERNS = [r"[é€a-c]+!", r"(😀|€|ü){2,5}", r"(?s).{4}", r"(na(ï|i)ve|caf(é|e)) ?", r"[^a-z]{3}"]


@pytest.mark.parametrize("pattern", BYTE_PATTERNS)
def test_byte_models_constrain_the_decoded_text(byte_gens, pattern):
    numpy_gen, tf_gen = byte_gens
    seeds = list(range(32))
    for n in (5, 40):
        texts = numpy_gen.generate(["x"] * len(seeds), n, temperature=1.0, seed=seeds, regex=pattern)
        assert texts == tf_gen.generate(["x"] * len(seeds), n, temperature=1.0, seed=seeds, regex=pattern)
        for seed, text in zip(seeds, texts):
            assert is_prefix(pattern, text) and "\ufffd" not in text, (seed, text)
            if len(text.encode("utf-8")) < n - 3:  # ended well before n bytes: a full match
                assert re.fullmatch(pattern, text), (seed, text)
    for gen in byte_gens:  # one byte a call: a character's bytes are held back until it is whole
        s, pieces = gen.session("x", seed=1, regex=pattern), []
        while s.matching and len(pieces) < 40:
            pieces.append(s.sample(1))
        text = "".join(pieces)
        assert is_prefix(pattern, text) and "\ufffd" not in text and "" in pieces
        assert s.matching or re.fullmatch(pattern, text)


def test_the_byte_automaton_walks_utf8_exactly():
    """Every character's UTF-8 bytes lead where the character leads; invalid UTF-8 is never allowed."""
    vocab = Vocab.of_bytes()
    pattern = "[a-zé€😀\u4e00-\u4e10]+|ü?"
    con = compile_constraint(pattern, vocab)
    for ch in "aé€😀丁ü" + "bzÿ中\u4e11ßΩ\U0001F601\x00":
        state = con.walk(list(ch.encode("utf-8")))
        assert (state >= 0) == bool(re.fullmatch(pattern, ch)), ch
        if state >= 0:
            assert con.accepting[state]
    boundary = [s for s in range(con.states) if con.accepting[s]]
    for s in boundary:  # between characters: no continuation byte, no byte that never starts a character
        allowed = np.flatnonzero(con.next[s] >= 0)
        assert not any(0x80 <= b <= 0xBF or b in (0xC0, 0xC1) or b >= 0xF5 for b in allowed)
    rng = np.random.default_rng(0)
    for _ in range(300):  # random walks: whatever the DFA allows decodes and stays a prefix of a match
        state, data = 0, []
        for _ in range(int(rng.integers(1, 14))):
            allowed = np.flatnonzero(con.next[state] >= 0)
            if not len(allowed):
                break
            b = int(rng.choice(allowed))
            data.append(b)
            state = int(con.next[state, b])
        text = bytes(data).decode("utf-8", errors="ignore")
        assert is_prefix(pattern, text)
        if con.accepting[state]:
            assert re.fullmatch(pattern, bytes(data).decode("utf-8"))


# --- what is never generated, and the errors ---------------------------------------------------------------
def test_the_out_of_vocabulary_id_is_never_generated():
    chars = list("abc \ufffd")
    vocab = Vocab(chars=chars, oov_id=4)
    model = build_model(make_config("tiny", units=8), len(chars))
    model.head.bias.assign(np.array([0, 0, 0, 0, 30.0], np.float32))  # the model wants OOV above all
    gen = Generator(NumpyStep(step_weights_of(model)), vocab)
    assert "\ufffd" in gen.generate(["a"], 10, seed=0)[0]
    texts = gen.generate(["a"] * 16, 30, temperature=1.0, seed=0, regex=r"(?s).{30}")
    assert all("\ufffd" not in t and len(t) == 30 for t in texts)
    with pytest.raises(TextstreamError, match="vocabulary"):
        compile_constraint("\ufffd", vocab)


@pytest.mark.parametrize("pattern, message", [
    ("(", "does not compile"), ("[a-", "does not compile"), ("a{2,1}", "does not compile"),
    (r"\bthe", "does not support"), (r"(a)\1", "does not support"), ("a(?=b)", "lookahead"), ("(?x)a b", "support"),
    (r"[^\s\S]", "can never match"), (r"a[^\s\S]|[^\w\W]", "can never match"),
    ("Q+", "lacks 'Q'"), ("[0-9]+%", "lacks '%'"), ("(yes|ñ)ñ", "lacks 'ñ'"),
])
def test_bad_patterns_are_one_line_errors_before_generation(gens, pattern, message):
    gen = gens[0]
    for call in (lambda: gen.stream("the ", regex=pattern), lambda: gen.generate(["a"], 5, regex=pattern),
                 lambda: gen.session("a", regex=pattern), lambda: gen.session("a").sample(3, regex=pattern)):
        with pytest.raises(TextstreamError, match=re.escape(message)) as e:
            call()  # stream raises when called, before any text
        assert "\n" not in str(e.value) and "regex" in str(e.value)
    with pytest.raises(TextstreamError, match="must be a string"):
        gen.generate(["a"], 5, regex=3)


def test_anchors_at_the_ends_and_compiled_constraints_are_accepted(gens):
    gen = gens[0]
    plain = gen.generate(["a"] * 8, 20, seed=0, regex="(yes|no)")
    assert gen.generate(["a"] * 8, 20, seed=0, regex="^(yes|no)$") == plain
    con = compile_constraint(r"\A(yes|no)\Z", gen.vocab)
    assert isinstance(con, Constraint) and gen.generate(["a"] * 8, 20, seed=0, regex=con) == plain
    with pytest.raises(TextstreamError, match="compiled for a vocabulary of 256"):
        gen.generate(["a"], 5, regex=compile_constraint("a", Vocab.of_bytes()))
    assert split_ended(np.array([3, 4, -1, -1]))[1] and not split_ended(np.array([3]))[1]
    escaped = gen.generate(["a"] * 8, 20, seed=0, regex=r"(\x79es|n\u006f)")  # \xHH, \uHHHH as re reads them
    assert escaped == plain


# --- the CLI -----------------------------------------------------------------------------------------------
def test_cli_regex_output_and_errors(run, gens, capsys):
    argv = ["generate", str(run), "--prime", "the ", "--seed", "3", "--backend", "numpy"]
    assert main([*argv, "--regex", PATTERNS[0], "-n", "50"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(PATTERNS[0], out.rstrip("\n"))
    assert out.rstrip("\n") == gens[0].generate(["the "], 50, temperature=1.0, seed=3, regex=PATTERNS[0])[0]
    assert main([*argv, "--regex", "(yes|no)", "--follow"]) == 0
    assert capsys.readouterr().out in ("yes", "no")
    assert main([*argv, "--regex", "[a-z]+", "-n", "9", "--temperature", "0,1", "--streams", "2"]) == 0
    blocks = capsys.readouterr().out.split("\n")[:-1]
    assert len(blocks) == 4 and all(is_prefix("[a-z]+", b) for b in blocks)
    for bad, message in (("(", "does not compile"), ("Q+", "lacks 'Q'"), (r"\bx", "does not support"),
                         (r"[^\s\S]", "can never match")):
        assert main([*argv, "--regex", bad]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("textstream: ") and message in captured.err
        assert captured.err.count("\n") == 1
