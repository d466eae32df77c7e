"""logprobs and regex on the server: each character's logprob comes from the step that sampled it (equal to the
library's ``sample_logprobs``), streamed or not, at any length; ``echo`` with ``max_tokens`` 0 scores the prompt as
``Generator.score`` does (lm-evaluation-harness's ``local-completions`` request works unchanged); ``regex``
constrains completions and chats as the library does; bad values are 400s naming the field."""
import base64
import math

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from conftest import TEXT  # noqa: E402
from serving import GOOD, KEY, MODEL, PRIME, ServerThread, WAIT_S, complete, stream_chunks, expected, is_openai_error, post, run_engine  # noqa

from textstream.generation.generator import Generator  # noqa: E402
from textstream.serve.engine import Engine  # noqa: E402
from textstream.serve.stream import StreamSpec  # noqa: E402

PATTERN = r"(the|it) [a-z]+, [0-9]{2}"


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, max_connections=32)
    yield s
    s.close()




def _library(gen, prompt, n, top, **kw):
    """The library's records for the same completion: ``Session.sample_logprobs``."""
    return gen.session(prompt, **kw).sample_logprobs(n, top=top)


def _check(lp: dict, records, offset: int, top: int) -> None:
    assert lp["tokens"] == [r.char for r in records]
    np.testing.assert_allclose(lp["token_logprobs"], [r.logprob for r in records], atol=1e-4)
    assert lp["text_offset"] == list(range(offset, offset + len(records)))
    for got, r in zip(lp["top_logprobs"], records):
        assert list(got) == [ch for ch, _ in r.top][:top]
        np.testing.assert_allclose(list(got.values()), [v for _, v in r.top][:top], atol=1e-4)
        assert max(got.values(), default=math.inf) >= r.logprob - 1e-5 or r.char not in got


def test_logprobs_are_the_sampling_steps_own_streamed_or_not_at_any_length(srv, tiny_gen):
    for n, top, kw in ((300, 3, {"seed": 2}), (20000, 1, {"seed": 5, "temperature": 0.8, "top_p": 0.9})):
        want = _library(tiny_gen, PRIME, n, top, **kw)
        r = complete(srv, prompt=PRIME, max_tokens=n, logprobs=top, **kw)["choices"][0]
        assert r["text"] == "".join(rec.char for rec in want)
        _check(r["logprobs"], want, 0, top)
        chunks = [c["choices"][0] for c in stream_chunks(srv, prompt=PRIME, max_tokens=n, logprobs=top, **kw)]
        assert "".join(c["text"] for c in chunks) == r["text"]
        joined = {k: sum((c["logprobs"][k] for c in chunks), []) for k in r["logprobs"]}
        assert joined == r["logprobs"]
    # echo: the prompt first (its first character null), then the completion's characters at their offsets
    r = complete(srv, prompt=PRIME, max_tokens=40, logprobs=2, seed=9, echo=True)["choices"][0]
    lp, score = r["logprobs"], tiny_gen.score(PRIME)
    assert r["text"] == PRIME + expected(tiny_gen, PRIME, 40, seed=9)
    assert lp["tokens"][:len(PRIME)] == list(PRIME) and lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    np.testing.assert_allclose(lp["token_logprobs"][1:len(PRIME)], score.logprobs[1:], atol=1e-4)
    _check({k: v[len(PRIME):] for k, v in lp.items()}, _library(tiny_gen, PRIME, 40, 2, seed=9), len(PRIME), 2)
    streamed = [c["choices"][0] for c in stream_chunks(srv, prompt=PRIME, max_tokens=40, logprobs=2, seed=9, echo=True)]
    assert streamed[0]["text"] == PRIME and streamed[0]["logprobs"]["tokens"] == list(PRIME)
    assert {k: sum((c["logprobs"][k] for c in streamed), []) for k in lp} == lp


def test_echo_with_max_tokens_0_scores_the_prompt_as_generator_score_does(srv, tiny_gen):
    texts = [PRIME, TEXT, (TEXT * 30)[:3000], "it"]
    r = complete(srv, prompt=texts, max_tokens=0, echo=True, logprobs=0)
    assert r["usage"]["completion_tokens"] == 0
    for c, text in zip(r["choices"], texts):
        lp, score = c["logprobs"], tiny_gen.score(text)
        assert c["text"] == text and c["finish_reason"] == "length" and lp["tokens"] == list(text)
        assert lp["token_logprobs"][0] is None
        np.testing.assert_allclose(lp["token_logprobs"][1:], score.logprobs[1:], atol=1e-4)
    # lm-evaluation-harness's local-completions loglikelihood request and its parse_logprobs
    context, continuation = "it was the age of ", "wisdom"
    body = {"model": MODEL, "prompt": [context + continuation], "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": 1234, "echo": True}
    status, _, out = post(srv.url + "/v1/completions", body)
    assert status == 200, out
    choice = out["choices"][0]
    ctxlen = len(context)
    got = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
    is_greedy = all(tok == max(top.values()) for tok, top in zip(choice["logprobs"]["token_logprobs"][ctxlen:-1],
                                                                  choice["logprobs"]["top_logprobs"][ctxlen:-1]))
    want = tiny_gen.score(context + continuation).logprobs[ctxlen:]
    assert got == pytest.approx(want.sum(), abs=1e-3) and isinstance(is_greedy, bool)


def test_regex_constrains_completions_and_chats_as_the_library_does(srv, tiny_gen):
    for seed in range(4):
        want = tiny_gen.generate([PRIME], 80, seed=seed, regex=PATTERN)[0]
        r = complete(srv, prompt=PRIME, max_tokens=80, seed=seed, regex=PATTERN)["choices"][0]
        assert r["text"] == want and r["finish_reason"] == "stop"
        streamed = stream_chunks(srv, prompt=PRIME, max_tokens=80, seed=seed, regex=PATTERN)
        assert "".join(c["choices"][0]["text"] for c in streamed) == want
    cut = complete(srv, prompt=PRIME, max_tokens=3, seed=0, regex=PATTERN)["choices"][0]
    assert cut["finish_reason"] == "length" and cut["text"] == tiny_gen.generate([PRIME], 80, seed=0,
                                                                                  regex=PATTERN)[0][:3]
    chat = complete(srv, "/v1/chat/completions", messages=[{"role": "user", "content": "it was"}], max_tokens=60,
                     seed=3, regex="(yes|no)")
    assert chat["choices"][0]["message"]["content"] == tiny_gen.generate(["it was\n"], 60, seed=3,
                                                                          regex="(yes|no)")[0]


BAD = [  # (body changes, param, says)
    ({"regex": "(unclosed"}, "regex", "regex"),
    ({"regex": "[0-9]{3}zzq"}, "regex", "regex"),  # the vocabulary cannot spell it
    ({"regex": 5}, "regex", "must be a string"),
    ({"regex": ""}, "regex", "1 to"),
    ({"regex": "x" * 5000}, "regex", "1 to"),
    ({"regex": "(yes|no)", "logprobs": 1}, "regex", "together"),
    ({"logprobs": 6}, "logprobs", "[0, 5]"),
    ({"logprobs": 10 ** 18}, "logprobs", "[0, 5]"),
    ({"logprobs": -1}, "logprobs", "[0, 5]"),
    ({"logprobs": 1.5}, "logprobs", "integer"),
    ({"logprobs": "5"}, "logprobs", "integer"),
    ({"logprobs": 1, "echo": True, "prompt": "it " * 30000}, "logprobs", "at most"),
]


@pytest.mark.parametrize("change, param, says", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_logprobs_and_regexes_are_400s_naming_the_field(srv, change, param, says):
    status, _, err = post(srv.url + "/v1/completions", {**GOOD, **change})
    assert status == 400 and is_openai_error(err), err
    assert err["error"]["param"] == param and says in err["error"]["message"], err
    assert len(err["error"]["message"]) < 400


def test_a_nan_logprobs_is_refused_and_the_server_keeps_serving(srv):
    status, _, err = post(srv.url + "/v1/completions", None, raw=b'{"model": "tiny", "prompt": "it", "logprobs": NaN}')
    assert status == 400 and is_openai_error(err) and "NaN" in err["error"]["message"]
    status, _, err = post(srv.url + "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user",
                                                                                             "content": "a"}],
                                                             "regex": "(a"})
    assert status == 400 and err["error"]["param"] == "regex"
    assert srv.health()["status"] == "ok" and complete(srv, **GOOD)["choices"][0]["text"]


def test_the_tensorflow_engine_gives_the_same_logprobs_regex_matches_and_states(tiny_run, tiny_gen):
    gen = Generator.load(tiny_run, backend="tf", warm=False)
    engine = Engine(gen.backend, gen.vocab, max_streams=4).start()
    try:
        specs = [StreamSpec(prompt=gen.encode(PRIME), seed=3, max_chars=50, logprobs=2),
                 StreamSpec(prompt=gen.encode(PRIME), seed=4, max_chars=50, constraint=gen.constraints(PATTERN)),
                 StreamSpec(prompt=gen.encode(TEXT), seed=5, max_chars=0, logprobs=1, score_prompt=True),
                 StreamSpec(prompt=gen.encode(PRIME), seed=6, max_chars=50, return_state=True, top_p=0.9)]
        texts, streams = run_engine(engine, specs)
        records = _library(tiny_gen, PRIME, 50, 2, seed=3)
        assert texts[0] == "".join(r.char for r in records)
        np.testing.assert_allclose(streams[0].logprobs.take(50)[1], [r.logprob for r in records], atol=1e-4)
        assert texts[1] == tiny_gen.generate([PRIME], 50, seed=4, regex=PATTERN)[0]
        np.testing.assert_allclose(streams[2].logprobs.prompt()[1], tiny_gen.score(TEXT).logprobs, atol=1e-4)
        assert texts[3] + tiny_gen.restore(base64.b64decode(streams[3].state)).sample(50) == \
            expected(tiny_gen, PRIME, 100, seed=6, top_p=0.9)
    finally:
        engine.close()


def test_a_regex_whose_automaton_explodes_is_a_400_within_the_deadline(srv, monkeypatch):
    monkeypatch.setattr(srv.server.patterns, "timeout_s", 1.0)  # interegular needs minutes for this one
    status, _, err = post(srv.url + "/v1/completions", {**GOOD, "regex": "(a|b)*a(a|b){18}"})
    assert status == 400 and err["error"]["param"] == "regex" and "did not compile within 1 s" in \
        err["error"]["message"], err
    assert srv.health()["status"] == "ok" and complete(srv, **GOOD, regex="(yes|no)")["choices"][0]["text"]
