"""State over HTTP: ``return_state`` gives each choice the library's save blob (base64), ``state`` continues it:
n characters then m more from the state are exactly the n + m characters of the same seed; blobs move between the
library and the server both ways; a foreign, truncated or non-base64 state is a 400 naming ``state``."""
import base64
import dataclasses

import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from conftest import make_run  # noqa: E402
from serving import GOOD, KEY, PRIME, ServerThread, complete, stream_chunks, expected, is_openai_error, post  # noqa: E402

from textstream.generation import state  # noqa: E402
from textstream.generation.generator import Generator  # noqa: E402
from textstream.generation.sampling import seed_u32  # noqa: E402


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, max_connections=32, max_body_bytes=3 << 20)
    yield s
    s.close()




SETTINGS = [{"seed": 1}, {"seed": 7, "temperature": 0.6}, {"seed": -3, "top_p": 0.8}, {"seed": 2 ** 40,
                                                                                           "temperature": 0.0}]


@pytest.mark.parametrize("settings", SETTINGS, ids=["plain", "t0.6", "top_p", "greedy"])
def test_a_completion_then_one_from_its_state_is_the_long_completion(srv, tiny_gen, settings):
    first = complete(srv, prompt=PRIME, max_tokens=100, return_state=True, **settings)["choices"][0]
    assert first["finish_reason"] == "length" and len(first["text"]) == 100
    second = complete(srv, state=first["state"], max_tokens=100, **settings)["choices"][0]
    assert "state" not in second
    assert first["text"] + second["text"] == expected(tiny_gen, PRIME, 200, **settings)
    # streamed: the state comes on each choice's last chunk only, and continues the same way
    chunks = stream_chunks(srv, prompt=PRIME, max_tokens=100, return_state=True, **settings)
    assert all("state" not in c["choices"][0] for c in chunks[:-1]) and chunks[-1]["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"][0]["state"] == first["state"]
    again = stream_chunks(srv, state=first["state"], prompt="", max_tokens=100, **settings)
    assert "".join(c["choices"][0]["text"] for c in again) == second["text"]
    # the settings come with the state when the request leaves them out
    bare = complete(srv, state=first["state"], max_tokens=100)["choices"][0]
    assert bare["text"] == second["text"]


def test_states_move_between_the_library_and_the_server(srv, tiny_gen):
    r = complete(srv, prompt=[PRIME, "THE END"], n=2, max_tokens=60, seed=4, return_state=True, temperature=0.9)
    for c in r["choices"]:
        s = tiny_gen.restore(base64.b64decode(c["state"]))  # the library reads the server's blob
        prompt = [PRIME, "THE END"][c["index"] // 2]
        assert c["text"] + s.sample(80) == expected(tiny_gen, prompt, 140, seed=4 + c["index"], temperature=0.9)
    session = tiny_gen.session("it was the age", seed=11, temperature=0.7)
    session.sample(30)
    blob = base64.b64encode(session.save()).decode()  # the server reads the library's blob
    twin = session.fork()
    assert complete(srv, state=blob, max_tokens=50)["choices"][0]["text"] == twin.sample(50)
    # a prompt is fed on top, as Session.feed does; a seed given replaces the state's (choice i: seed + i)
    twin = session.fork()
    twin.feed(" of wisdom")
    got = complete(srv, state=blob, prompt=" of wisdom", max_tokens=50, echo=True)["choices"][0]["text"]
    assert got == " of wisdom" + twin.sample(50)
    texts = [c["text"] for c in complete(srv, state=blob, max_tokens=40, n=2, seed=3)["choices"]]
    saved = state.read(session.save(), tiny_gen.backend, tiny_gen.vocab)
    for i, text in enumerate(texts):
        reseeded = dataclasses.replace(saved, seed=seed_u32(3 + i))
        assert text == tiny_gen.restore(state.write(reseeded, tiny_gen.backend, tiny_gen.vocab)).sample(40)
    assert texts[0] != texts[1]


def test_the_state_holds_exactly_the_text_returned(srv, tiny_gen):
    want = expected(tiny_gen, PRIME, 300, seed=21)
    stop = want[150:153]
    cut = want.find(stop)
    r = complete(srv, prompt=PRIME, max_tokens=300, seed=21, stop=stop, return_state=True)["choices"][0]
    assert (r["text"], r["finish_reason"]) == (want[:cut], "stop")
    s = tiny_gen.session(PRIME, seed=21)
    assert s.sample(cut) == want[:cut]  # the session that generated exactly the text returned, no more
    assert tiny_gen.restore(base64.b64decode(r["state"])).sample(100) == s.sample(100)
    # max_tokens 0: the prompt is fed and its state returned, no character generated
    r = complete(srv, prompt=PRIME, max_tokens=0, seed=21, return_state=True)
    assert r["choices"][0]["text"] == "" and r["usage"]["completion_tokens"] == 0
    assert tiny_gen.restore(base64.b64decode(r["choices"][0]["state"])).sample(300) == want
    # a regex match ends the completion; its state continues after the match
    r = complete(srv, prompt=PRIME, max_tokens=50, seed=21, regex="(the|an?) [a-z]+", return_state=True)
    text = r["choices"][0]["text"]
    assert r["choices"][0]["finish_reason"] == "stop" and text == tiny_gen.generate([PRIME], 50, seed=21,
                                                                                     regex="(the|an?) [a-z]+")[0]
    s = tiny_gen.session(PRIME, seed=21)
    assert s.sample(50, regex="(the|an?) [a-z]+") == text and not s.matching
    assert tiny_gen.restore(base64.b64decode(r["choices"][0]["state"])).sample(40) == s.sample(40)


def test_bad_states_are_400s_naming_state_and_the_server_keeps_serving(srv, tiny_gen, tmp_path):
    good = complete(srv, prompt=PRIME, max_tokens=5, return_state=True)["choices"][0]["state"]
    blob = base64.b64decode(good)
    other = Generator.load(make_run(tmp_path, seed=1))  # same shape and vocabulary, other weights
    s = other.session(PRIME, seed=1)
    top_k = tiny_gen.session(PRIME, seed=1, top_k=3)
    cases = [
        ("!!not base64!!", "not base64"),
        (good[:-3], "not base64"),  # cut inside a base64 quantum
        (base64.b64encode(blob[:-12]).decode(), "truncated"),
        (base64.b64encode(blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]).decode(), "altered"),
        (base64.b64encode(b"hello world").decode(), "not a textstream session state"),
        (base64.b64encode(s.save()).decode(), "from another model"),
        (base64.b64encode(top_k.save()).decode(), "top_k"),
        (12, "must be a string"),
        ("A" * (1 << 21), "longer than"),
    ]
    for bad, says in cases:
        status, _, err = post(srv.url + "/v1/completions", {**GOOD, "state": bad})
        assert status == 400 and is_openai_error(err), (says, err)
        assert err["error"]["param"] == "state" and says in err["error"]["message"], err
        assert len(err["error"]["message"]) < 300
    status, _, err = post(srv.url + "/v1/completions", {**GOOD, "return_state": "yes"})
    assert status == 400 and err["error"]["param"] == "return_state"
    status, _, err = post(srv.url + "/v1/completions", {**GOOD, "max_tokens": 0})  # nothing to feed it for
    assert status == 400 and err["error"]["param"] == "max_tokens"
    assert srv.health()["status"] == "ok" and complete(srv, state=good, max_tokens=5)["choices"][0]["text"]
