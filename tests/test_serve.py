"""textstream serve: the OpenAI client works unchanged; a seed's text is the library's whatever else is served;
slots are freed; every bad request is an OpenAI error with its 4xx status; SIGTERM drains."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from serving import (  # noqa: E402
    GOOD,
    KEY,
    MODEL,
    PRIME,
    ROOT,
    WAIT_S,
    BrokenBackend,
    ServerThread,
    SlowBackend,
    expected,
    is_openai_error,
    post,
)

from textstream.cli import main  # noqa: E402
from textstream.serve.engine import FEED_CHUNK, Engine, EngineFull  # noqa: E402
from textstream.serve.stream import StreamSpec  # noqa: E402


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY)
    yield s
    s.close()


# --- the openai client, unchanged -------------------------------------------------------------------
def test_openai_client_non_streaming_gets_the_librarys_text(srv, tiny_gen):
    client = srv.client()
    r = client.completions.create(model=MODEL, prompt=PRIME, max_tokens=150, temperature=0.7, seed=3)
    assert r.object == "text_completion" and r.model == MODEL and len(r.choices) == 1
    assert r.choices[0].text == expected(tiny_gen, PRIME, 150, temperature=0.7, seed=3)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 150, 161)

    # two prompts, n=2: choice i is prompt i // 2 with seed + i
    r = client.completions.create(model=MODEL, prompt=[PRIME, "THE END"], n=2, max_tokens=40, seed=10, top_p=0.8)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        prompt = [PRIME, "THE END"][c.index // 2]
        assert c.text == expected(tiny_gen, prompt, 40, seed=10 + c.index, top_p=0.8)
    assert r.usage.prompt_tokens == 2 * (11 + 7) and r.usage.completion_tokens == 160


def test_openai_client_streaming_and_stop_strings(srv, tiny_gen):
    client = srv.client()
    want = expected(tiny_gen, PRIME, 300, seed=21)
    chunks = list(client.completions.create(model=MODEL, prompt=PRIME, max_tokens=300, seed=21, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 300

    stop = want[150:153]
    cut = want.find(stop)
    r = client.completions.create(model=MODEL, prompt=PRIME, max_tokens=300, seed=21, stop=[stop, "\x00never"])
    assert r.choices[0].text == want[:cut] and r.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt=PRIME, max_tokens=300, seed=21, stop=stop,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == want[:cut]
    assert streamed[-1].choices[0].finish_reason == "stop"

    r = client.completions.create(model=MODEL, prompt=PRIME, max_tokens=5, seed=21, echo=True)
    assert r.choices[0].text == PRIME + want[:5]


def test_empty_prompt_is_the_default_prime_and_models_are_listed(srv, tiny_gen):
    client = srv.client()
    r = client.completions.create(model=MODEL, prompt="", max_tokens=60, seed=4)
    assert r.choices[0].text == expected(tiny_gen, "", 60, seed=4)
    assert r.usage.prompt_tokens == 0
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_no_seed_means_a_random_one(srv):
    client = srv.client()
    texts = {client.completions.create(model=MODEL, prompt=PRIME, max_tokens=40).choices[0].text for _ in range(3)}
    assert len(texts) == 3


# --- continuous batching ---------------------------------------------------------------------------
REQUESTS = [  # (prompt, max_tokens, settings): mixed temperatures, top-p, stops, greedy, a prompt fed over calls
    (PRIME, 700, {"temperature": 1.0}),
    ("wisdom", 300, {"temperature": 0.5, "top_p": 0.7}),
    ("", 450, {"temperature": 1.2}),
    (PRIME * 60, 200, {"temperature": 0.9}),  # 660 characters: fed over several calls
    ("THE END", 900, {"temperature": 0.0}),
    ("the age", 250, {"temperature": 1.0, "top_p": 0.95, "stop": ["zz", "q"]}),
    ("it", 60, {"temperature": 0.8}),
    ("foolishness", 500, {"temperature": 1.1, "top_p": 0.5}),
]


async def _one(session, url, prompt, max_tokens, settings, seed, delay):
    await asyncio.sleep(delay)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True, **settings}
    parts = []
    async with session.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(parts)


def test_a_seeds_text_is_the_same_whatever_else_is_served(tiny_gen):
    """16 streams with mixed settings, joining and leaving at different times: each is the library's text."""
    assert len(REQUESTS[3][0]) > 2 * FEED_CHUNK
    s = ServerThread(tiny_gen, max_streams=32, api_key=KEY)
    jobs = [(p, n, kw, 100 + i, 0.02 * (i % 5)) for i, (p, n, kw) in enumerate(REQUESTS * 2)]

    async def run_all():
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(_one(session, s.url, *job) for job in jobs))

    try:
        got = asyncio.run(run_all())
        calls = s.health()["calls"]
    finally:
        s.close()
    for (prompt, n, kw, seed, _), text in zip(jobs, got):
        assert text == expected(tiny_gen, prompt, n, seed=seed, **kw), (prompt[:20], kw)
    assert calls < sum(n for _, n, *_ in jobs) / 4  # the streams shared calls: they were batched


def test_top_p_of_one_filters_nothing_even_where_the_cumulative_sum_rounds_to_one(tiny_gen):
    from textstream._tf import tf
    from textstream.generation.sampling_tf import choose

    # character 1 has probability ~1.5e-8: the mass above it rounds to 1.0 in float32, yet noise can pick it
    logits, noise, t = tf.constant([[0.0, -18.0]]), tf.constant([[0.0, 19.0]]), tf.constant([1.0])
    assert int(choose(logits, t, noise)[0]) == 1
    assert int(choose(logits, t, noise, top_p=tf.constant([1.0]))[0]) == 1  # a row with top-p 1: no filter
    assert int(choose(logits, t, noise, top_p=tf.constant([0.9]))[0]) == 0


def test_rows_with_and_without_top_p_share_a_call_exactly(tiny_gen):
    from textstream.generation.interface import RowBatch
    from textstream.generation.sampling import seed_u32

    backend, prime = tiny_gen.backend, tiny_gen.encode(PRIME)

    def rows(settings):
        b = len(settings)
        zeros = np.zeros((backend.layers, b, backend.units), np.float32)
        return RowBatch(zeros, zeros.copy(), np.array([seed_u32(s) for s, _, _ in settings], np.uint32),
                        np.zeros(b, np.uint32), np.array([t for _, t, _ in settings], np.float32),
                        np.array([p for _, _, p in settings], np.float32))

    settings = [(1, 1.0, 1.0), (2, 0.7, 0.6), (3, 1.3, 1.0), (4, 0.0, 0.9), (5, 2.0, 1.0)]
    together = backend.advance_rows(rows(settings), 400, [prime] * len(settings))
    for row, (seed, t, p) in zip(together, settings):
        alone = backend.advance_rows(rows([(seed, t, p)]), 400, [prime])[0]
        assert (row == alone).all()
        assert tiny_gen.vocab.decode(row) == expected(tiny_gen, PRIME, 400, seed=seed, temperature=t,
                                                      top_p=None if p >= 1 else p)


def test_a_slow_reader_sits_out_and_never_slows_the_others(tiny_gen):
    engine = Engine(tiny_gen.backend, tiny_gen.vocab, max_streams=2, buffer_chars=64).start()
    try:
        prime = tiny_gen.encode(PRIME)
        slow, fast = engine.admit([StreamSpec(prime, seed=1, max_chars=3000),
                                   StreamSpec(prime, seed=2, max_chars=3000)])
        text, finish = [], None
        while finish is None:  # the fast reader reads everything while the slow one reads nothing
            part, finish = fast.take()
            text.append(part)
            time.sleep(0.001)
        assert "".join(text) == expected(tiny_gen, PRIME, 3000, seed=2) and finish == "length"
        assert slow.paused and slow.finish is None and slow.unread < 64 + 256  # its buffer is bounded
        with pytest.raises(EngineFull):
            engine.admit([StreamSpec(prime, seed=3)] * 2)
        text, finish = [], None
        while finish is None:  # the slow reader catches up: its stream goes on where it stopped
            part, finish = slow.take()
            text.append(part)
            time.sleep(0.001)
        assert "".join(text) == expected(tiny_gen, PRIME, 3000, seed=1)
    finally:
        engine.close()


def test_a_client_that_stops_reading_is_paused_over_http(tiny_gen):
    import socket

    s = ServerThread(tiny_gen, max_streams=2, api_key=KEY, buffer_chars=1024, max_tokens=10 ** 8)
    body = json.dumps({"model": MODEL, "prompt": PRIME, "max_tokens": 10 ** 8, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes soon block
    try:
        sock.connect(("127.0.0.1", int(s.url.rsplit(":", 1)[1])))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        s.wait_until(lambda: s.health()["paused"] == 1)  # it reads nothing: its stream sits out
        calls = s.health()["calls"]
        r = s.client().completions.create(model=MODEL, prompt=PRIME, max_tokens=3000, seed=5)
        assert r.choices[0].text == expected(tiny_gen, PRIME, 3000, seed=5)  # the other stream went on
        assert s.health()["calls"] > calls
        s.wait_until(lambda: s.health()["paused"] == 1)  # (the kernel's send buffer may grow a while: it waits)
    finally:
        sock.close()  # and when it goes away, its slot is freed
    s.wait_until(lambda: s.health()["streams"] == 0)
    s.close()


def test_a_client_that_disconnects_frees_its_slot(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=1, api_key=KEY, max_tokens=10 ** 8)
    body = {"model": MODEL, "prompt": PRIME, "max_tokens": 10 ** 8, "stream": True}

    async def open_then_leave():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            async with session.post(s.url + "/v1/completions", json=body) as r:
                assert r.status == 200
                assert (await r.content.readline()).startswith(b"data: {")
                # the one slot is taken: a second request is told to come back later
                status, headers, err = await asyncio.to_thread(post, s.url + "/v1/completions",
                                                               {"prompt": PRIME, "max_tokens": 5})
                assert status == 429 and headers["Retry-After"] == "1"
                assert err["error"]["code"] == "rate_limit_exceeded"
                r.connection.transport.abort()  # the client goes away mid-stream

    try:
        asyncio.run(open_then_leave())
        s.wait_until(lambda: s.health()["streams"] == 0)
        status, _, r = post(s.url + "/v1/completions", {"prompt": PRIME, "max_tokens": 5, "seed": 1})
        assert status == 200 and r["choices"][0]["text"] == expected(tiny_gen, PRIME, 5, seed=1)
        assert s.server.engine.stats.finished.get("cancelled") == 1
    finally:
        s.close()


def test_drain_lets_running_streams_finish_and_refuses_new_ones(tiny_gen):
    from textstream.generation.generator import Generator

    slow = Generator(SlowBackend(tiny_gen.backend, 0.02), tiny_gen.vocab, data_dir=tiny_gen.data_dir)
    s = ServerThread(slow, max_streams=4, api_key=KEY, call_s=0.02)  # a few characters per 20 ms call
    stream = s.client().completions.create(model=MODEL, prompt=PRIME, max_tokens=400, seed=8, stream=True)
    chunks = iter(stream)
    first = next(chunks).choices[0].text
    drained = asyncio.run_coroutine_threadsafe(s.server.drain(grace_s=WAIT_S), s.loop)
    s.wait_until(lambda: s.server.draining)
    assert s.server.engine.streams == 1  # still running when the drain began
    with pytest.raises(openai.APIConnectionError):  # the listening socket is closed
        s.client().completions.create(model=MODEL, prompt=PRIME, max_tokens=5)
    rest = [c.choices[0] for c in chunks]
    drained.result(WAIT_S)
    assert first + "".join(c.text for c in rest) == expected(tiny_gen, PRIME, 400, seed=8)
    assert rest[-1].finish_reason == "length"
    s.close()


def test_an_engine_failure_is_a_503_error_never_a_traceback(tiny_gen, caplog):
    from textstream.generation.generator import Generator

    broken = Generator(BrokenBackend(tiny_gen.backend, good=2), tiny_gen.vocab, data_dir=tiny_gen.data_dir)
    s = ServerThread(broken, max_streams=4, api_key=KEY)
    try:
        stream = s.client().completions.create(model=MODEL, prompt=PRIME, max_tokens=10 ** 4, seed=1, stream=True)
        with pytest.raises(openai.APIError, match="engine failed"):
            for _ in stream:
                pass
        status, _, body = post(s.url + "/v1/completions", GOOD)
        assert status == 503 and body["error"]["code"] == "engine_error" and is_openai_error(body)
        assert s.health()["status"] == "failed"
    finally:
        s.close()
    assert "the device fell over" in caplog.text  # the traceback goes to the log, not to the client


# --- bad requests: an OpenAI error with the right status, never a 500 ------------------------------------
BAD = [  # (body changes, status, param, code)
    ({"temperature": "hot"}, 400, "temperature", "invalid_type"),
    ({"temperature": -0.5}, 400, "temperature", "invalid_value"),
    ({"top_p": 0}, 400, "top_p", "invalid_value"),
    ({"top_p": 1.5}, 400, "top_p", "invalid_value"),
    ({"max_tokens": 20001}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 2.5}, 400, "max_tokens", "invalid_type"),
    ({"max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ({"n": 5}, 400, "n", "invalid_value"),
    ({"seed": "1"}, 400, "seed", "invalid_type"),
    ({"stream": "yes"}, 400, "stream", "invalid_type"),
    ({"stop": ""}, 400, "stop", "invalid_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ({"stop": [1]}, 400, "stop", "invalid_type"),
    ({"prompt": None}, 400, "prompt", "missing_required_parameter"),
    ({"prompt": 7}, 400, "prompt", "invalid_type"),
    ({"prompt": [1, 2]}, 400, "prompt", "unsupported_parameter"),
    ({"prompt": [[1, 2]]}, 400, "prompt", "unsupported_parameter"),
    ({"prompt": []}, 400, "prompt", "invalid_type"),
    ({"prompt": "naïve"}, 400, "prompt", "invalid_value"),  # characters outside the vocabulary
    ({"model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"model": 3}, 400, "model", "invalid_type"),
    ({"best_of": 3}, 400, "best_of", "unsupported_parameter"),
    ({"frequency_penalty": 0.5}, 400, "frequency_penalty", "unsupported_parameter"),
    ({"temprature": 1}, 400, "temprature", "unknown_parameter"),
]


@pytest.mark.parametrize("change, status, param, code", BAD)
def test_bad_values_get_an_openai_error_naming_the_parameter(srv, change, status, param, code):
    got, _, body = post(srv.url + "/v1/completions", {**GOOD, **change})
    assert (got, body["error"]["param"], body["error"]["code"]) == (status, param, code), body
    assert is_openai_error(body) and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw, headers, key, status, code", [
    (b"{", {}, KEY, 400, "invalid_json"),
    (b"\xff\xfe", {}, KEY, 400, "invalid_json"),
    (b"[1, 2]", {}, KEY, 400, "invalid_type"),
    (json.dumps(GOOD).encode(), {}, None, 401, "invalid_api_key"),
    (json.dumps(GOOD).encode(), {}, "wrong", 401, "invalid_api_key"),
    (json.dumps(GOOD).encode(), {"Authorization": f"Basic {KEY}"}, None, 401, "invalid_api_key"),
    (json.dumps({**GOOD, "prompt": "x" * (2 << 20)}).encode(), {}, KEY, 413, "request_too_large"),
])
def test_bad_bodies_and_keys_get_an_openai_error(srv, raw, headers, key, status, code):
    got, _, body = post(srv.url + "/v1/completions", None, raw=raw, key=key, headers=headers)
    assert (got, body["error"]["code"]) == (status, code) and is_openai_error(body), body


def test_unknown_paths_and_methods_and_the_openai_clients_errors(srv):
    for method, path, status in [("GET", "/v1/nothing", 404), ("PUT", "/v1/completions", 405),
                                 ("GET", "/v1/completions", 405)]:
        req = urllib.request.Request(srv.url + path, method=method, headers={"Authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=WAIT_S)
        assert e.value.code == status and is_openai_error(json.load(e.value))
    with pytest.raises(openai.BadRequestError) as e:
        srv.client().completions.create(model=MODEL, prompt=PRIME, max_tokens=5, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert srv.health()["status"] == "ok"  # /health needs no key


# --- the command ------------------------------------------------------------------------------------------
def test_serve_without_the_extra_says_how_to_install_it(tiny_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if it were not installed
    assert main(["serve", str(tiny_run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == 'textstream: serve needs the serve extra: pip install "textstream[serve]"\n'


def test_serve_on_a_taken_port_is_one_line(tiny_run, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run), "--port", str(port), "--max-streams", "2"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"textstream: cannot listen on 127.0.0.1:{port} ("), err


def test_engine_protocol_and_command_import_no_tensorflow_or_http():
    code = ("import sys\n"
            "import textstream.serve.engine, textstream.serve.protocol, textstream.cli.serve\n"
            "from textstream.cli import main\n"
            "assert main(['serve', '/nonexistent/run']) == 2\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'aiohttp'))\n"
            "assert not loaded, loaded[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("textstream: ") == 1


@pytest.mark.slow
def test_sigterm_drains_cancels_what_outlives_the_grace_and_exits_0(tiny_run):
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "serve", str(tiny_run), "--port", "0",
                             "--max-streams", "4", "--grace", "1", "--max-tokens", str(10 ** 8)],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"on (http://\S+)/v1 ", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server never said where it listens"
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0)
        stream = iter(client.completions.create(model="run", prompt=PRIME, max_tokens=10 ** 8, stream=True))
        assert next(stream).choices[0].text
        errors = []

        def read_on():  # the client keeps reading, as a live client does
            try:
                for _ in stream:
                    pass
            except openai.APIError as e:
                errors.append(e)

        reader = threading.Thread(target=read_on)
        reader.start()
        proc.send_signal(signal.SIGTERM)
        reader.join(WAIT_S)
        assert len(errors) == 1 and "shutting down" in str(errors[0])  # the stream outlived the grace period
        assert proc.wait(timeout=WAIT_S) == 0
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.stderr.close()
    assert "Traceback" not in err and err.rstrip().endswith("textstream serve: stopped"), err
