"""GET /metrics: Prometheus text that parses, names that follow Prometheus, and numbers that are true.

The generated-characters counter moves by exactly the ``usage.completion_tokens``
the responses report; the active-streams gauge is back to 0 once clients
drop mid-stream (their streams stopped, not generated to the end); a burst
of concurrent clients, some refused and some dropping, leaves every counter
agreeing with what the clients saw.
"""
import asyncio
import json
import logging
import random
import re
import socket
import sys
import urllib.error
import urllib.request

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")
parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is not installed "
                             "(pip install -e '.[test]')")

from prometheus_client.openmetrics import parser as openmetrics_parser  # noqa: E402
from serving import KEY, MODEL, PRIME, WAIT_S, ServerThread, is_openai_error, post, request_bytes  # noqa: E402

from textstream.cli import main  # noqa: E402

METRICS = {  # family name (as the parsers give it: counters without _total) -> type
    "textstream_requests": "counter", "textstream_request_duration_seconds": "histogram",
    "textstream_errors": "counter", "textstream_rejected_requests": "counter",
    "textstream_generated_chars": "counter", "textstream_prompt_chars": "counter",
    "textstream_time_to_first_char_seconds": "histogram", "textstream_batch_streams": "histogram",
    "textstream_engine_calls": "counter", "textstream_streams_active": "gauge", "textstream_streams_waiting": "gauge",
    "textstream_streams_paused": "gauge", "textstream_streams_max": "gauge", "textstream_connections_open": "gauge",
}
TEXT_FORMAT = {**METRICS, "textstream_model_info": "gauge"}  # Prometheus's text format has no info type
OPEN_METRICS = {**METRICS, "textstream_model": "info"}
NAME = re.compile(r"^textstream_[a-z][a-z0-9_]*$")
LONG = 10 ** 6  # characters a stream that is dropped asks for: far more than it can make before it is dropped
CONNECTIONS = 64  # (a server's memory check counts every connection it may open: no more than a test needs)


class Scrape:
    """One parsed scrape: ``value(name, **labels)`` of one sample, ``total(name, **labels)`` over matching ones."""

    def __init__(self, text: str):
        self.families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels) -> float:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1
        return found[0] if found else 0.0

    def total(self, name: str, **labels) -> float:
        return sum(s.value for s in self.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def scrape(srv) -> Scrape:
    return Scrape(srv.metrics())


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, max_connections=CONNECTIONS)
    yield s
    s.close()


def _get(url: str, key: str | None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_the_exposition_parses_and_every_name_is_textstream_and_prometheus_shaped(srv):
    assert post(srv.url + "/v1/completions", {"prompt": PRIME, "max_tokens": 5})[0] == 200
    assert post(srv.url + "/v1/completions", {"prompt": PRIME, "max_tokens": -1})[0] == 400
    status, headers, text = _get(srv.url + "/metrics", KEY)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = Scrape(text)
    req = urllib.request.Request(srv.url + "/metrics", headers={  # what Prometheus sends: OpenMetrics first
        "Authorization": f"Bearer {KEY}", "Accept": "application/openmetrics-text;version=1.0.0;q=0.9,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        open_metrics = {f.name: f.type for f in openmetrics_parser.text_string_to_metric_families(r.read().decode())}
    assert {k: v for k, v in open_metrics.items() if k in OPEN_METRICS} == OPEN_METRICS
    for name, kind in TEXT_FORMAT.items():
        assert m.families[name].type == kind, name
    for f in m.families.values():
        assert NAME.match(f.name), f.name
        assert f.documentation, f.name
        for s in f.samples:
            assert NAME.match(s.name) and all(re.match(r"^[a-z_][a-z0-9_]*$", k) for k in s.labels), s
            if f.type == "counter":
                assert s.name in (f.name + "_total", f.name + "_created"), s.name
            if f.type == "histogram":
                assert s.name[len(f.name):] in ("_bucket", "_sum", "_count", "_created"), s.name
    for f in m.families.values():  # units in the name: every duration in seconds
        assert f.type != "histogram" or "time" not in f.name and "duration" not in f.name \
            or f.name.endswith("_seconds"), f.name
    assert m.value("textstream_requests_total", route="/v1/completions", code="200") >= 1
    assert m.value("textstream_requests_total", route="/v1/completions", code="400") >= 1
    assert m.value("textstream_errors_total", type="invalid_request_error") >= 1
    assert m.value("textstream_model_info", model=MODEL, layers="1", units="16",
                   vocab_size=str(srv.server.generator.vocab.size), backend="NumpyStep") == 1
    assert m.value("textstream_streams_max") == 8
    assert m.value("textstream_request_duration_seconds_count", route="/v1/completions") >= 2
    # routes are counted by their pattern, never by the raw path (no label per model name or stray URL)
    _get(srv.url + "/v1/models/x", KEY)
    _get(srv.url + "/nowhere/at/all", KEY)
    routes = {s.labels["route"] for s in scrape(srv).samples if s.name == "textstream_requests_total"}
    assert "/nowhere/at/all" not in routes and "other" in routes


def test_generated_chars_move_by_exactly_the_usage_the_responses_report(srv):
    client = srv.client()
    before = scrape(srv)
    completion, prompt = 0, 0

    def count(usage):
        nonlocal completion, prompt
        completion += usage.completion_tokens
        prompt += usage.prompt_tokens

    count(client.completions.create(model=MODEL, prompt=PRIME, max_tokens=120, seed=1).usage)
    count(client.completions.create(model=MODEL, prompt=[PRIME, "wisdom"], n=2, max_tokens=33, seed=2).usage)
    count(client.completions.create(model=MODEL, prompt=PRIME, max_tokens=9, seed=3, echo=True, logprobs=2).usage)
    r = client.completions.create(model=MODEL, prompt=PRIME, max_tokens=200, seed=4)
    count(r.usage)
    want = r.choices[0].text
    stop = want[100:103]
    r = client.completions.create(model=MODEL, prompt=PRIME, max_tokens=200, seed=4, stop=stop)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens < 200
    count(r.usage)
    for kw in ({}, {"stop": stop}, {"n": 3}):
        chunks = list(client.completions.create(model=MODEL, prompt=PRIME, max_tokens=150, seed=4, stream=True,
                                                stream_options={"include_usage": True}, **kw))
        assert sum(len(c.choices[0].text) for c in chunks if c.choices) == chunks[-1].usage.completion_tokens
        count(chunks[-1].usage)
    messages = [{"role": "user", "content": "it was the age"}]
    count(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, n=2, seed=5).usage)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=70, seed=6, stop="e",
                                                 stream=True, stream_options={"include_usage": True}))
    count(chunks[-1].usage)
    # the prompt of each streamed request was fed, the requests and their errors counted by route and code
    assert post(srv.url + "/v1/chat/completions", {"messages": []})[0] == 400

    def generating(m: Scrape) -> float:
        return sum(m.total("textstream_requests_total", route=r) for r in ("/v1/completions", "/v1/chat/completions"))

    # a stream's request is counted as its handler returns, just after the client has its [DONE]
    srv.wait_until(lambda: generating(scrape(srv)) - generating(before) == 11)
    after = scrape(srv)
    assert after.value("textstream_generated_chars_total") - before.value("textstream_generated_chars_total") \
        == completion
    assert after.value("textstream_prompt_chars_total") - before.value("textstream_prompt_chars_total") == prompt
    ok = {route: after.value("textstream_requests_total", route=route, code="200")
          - before.value("textstream_requests_total", route=route, code="200")
          for route in ("/v1/completions", "/v1/chat/completions")}
    assert ok == {"/v1/completions": 8, "/v1/chat/completions": 2}
    assert after.value("textstream_requests_total", route="/v1/chat/completions", code="400") \
        - before.value("textstream_requests_total", route="/v1/chat/completions", code="400") == 1
    assert after.value("textstream_time_to_first_char_seconds_count") \
        - before.value("textstream_time_to_first_char_seconds_count") == 10
    assert after.value("textstream_streams_active") == 0


def _open_stream(port: int, body: dict) -> socket.socket:
    """A socket whose streamed completion has sent its first event."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(request_bytes("/v1/completions", json.dumps(body).encode()))
    seen = b""
    while b"data: {" not in seen:
        part = sock.recv(65536)
        assert part, seen
        seen += part
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def test_streams_active_returns_to_zero_once_clients_drop_mid_stream(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, max_tokens=LONG, max_connections=CONNECTIONS)
    try:
        socks = [_open_stream(s.port, {"prompt": PRIME, "max_tokens": LONG, "stream": True, "seed": i})
                 for i in range(6)]
        m = scrape(s)
        assert m.value("textstream_streams_active") == 6 and m.value("textstream_streams_waiting") == 0
        for sock in socks:
            sock.close()  # unread data in its buffer: the kernel resets the connection
        s.wait_until(lambda: scrape(s).value("textstream_streams_active") == 0)
        stats = s.server.engine.stats
        assert stats.finished == {"cancelled": 6}  # stopped, not generated to the end
        m = scrape(s)
        assert m.value("textstream_requests_total", route="/v1/completions", code="499") == 6
        assert m.value("textstream_streams_paused") == m.value("textstream_streams_waiting") == 0
        s.wait_until(lambda: scrape(s).value("textstream_connections_open") == 1)  # only the scrape's own
    finally:
        s.close()


def test_metrics_need_the_key_health_and_the_page_do_not(srv):
    status, _, text = _get(srv.url + "/metrics", None)
    assert status == 401 and is_openai_error(json.loads(text))
    status, _, text = _get(srv.url + "/metrics", "wrong")
    assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
    assert _get(srv.url + "/metrics", KEY)[0] == 200
    status, _, text = _get(srv.url + "/health", None)
    assert status == 200 and json.loads(text)["status"] == "ok"
    assert _get(srv.url + "/", None)[0] == 200  # the page loads so that its key field can be filled
    assert scrape(srv).value("textstream_requests_total", route="/metrics", code="401") >= 2


def test_no_metrics_is_a_404_and_the_flag_reaches_the_server(tiny_gen, tiny_run, monkeypatch):
    s = ServerThread(tiny_gen, metrics=False, max_connections=CONNECTIONS)
    try:
        status, _, text = _get(s.url + "/metrics", KEY)
        assert status == 404 and is_openai_error(json.loads(text))
        assert post(s.url + "/v1/completions", {"prompt": PRIME, "max_tokens": 3})[0] == 200
    finally:
        s.close()

    seen = []

    async def fake_serve(server, on_ready=None):
        seen.append(server.config.metrics)

    import textstream.serve.app

    monkeypatch.setattr(textstream.serve.app, "serve", fake_serve)
    for flags, want in (([], True), (["--no-metrics"], False)):
        assert main(["serve", str(tiny_run), "--backend", "numpy", "--checkpoint", "last", "--max-streams", "2",
                     "--port", "0", *flags]) == 0
        assert seen.pop() is want


def test_serve_without_prometheus_client_says_how_to_install_the_extra(tiny_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if it were not installed
    assert main(["serve", str(tiny_run)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == 'textstream: serve needs the serve extra: pip install "textstream[serve]"\n'


# --- a burst: 256 clients at once, some refused (429), some dropping -------------------------------
HOLDERS = 24  # streams holding half of the slots when the burst comes, dropped during it
async def _client(session, url, port, i, rng):
    """One client; returns what it saw: its status, whether it read to the end, its usage or received chars."""
    kind = ("stream", "whole", "drop", "raw-drop")[i % 4]
    n = 2 if kind == "whole" and i % 8 == 1 else 1
    max_tokens = rng.randint(50, 300)
    body = {"model": MODEL, "prompt": PRIME[:rng.randint(1, len(PRIME))], "max_tokens": max_tokens, "n": n,
            "seed": i, "stream": kind != "whole", "stream_options": {"include_usage": True} if kind == "stream"
            else None}
    seen = {"kind": kind, "n": n, "max_chars": max_tokens * n, "received": 0, "usage": None,
            "prompt": len(body["prompt"]) * n}
    await asyncio.sleep(rng.random() * 0.1)
    if kind == "raw-drop":  # gone as soon as the status line and headers are there
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("/v1/completions", json.dumps(body).encode()))
        head = await reader.readuntil(b"\r\n\r\n")
        seen["status"] = int(head.split()[1])
        writer.transport.abort()
        return seen
    async with session.post(url, json=body) as r:
        seen["status"] = r.status
        if r.status != 200:
            await r.read()
            return seen
        if kind == "whole":
            seen["usage"] = (await r.json())["usage"]
            return seen
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            for c in event["choices"]:
                seen["received"] += len(c["text"])
            if event.get("usage"):
                seen["usage"] = event["usage"]
            if kind == "drop":
                r.close()  # (when its whole response has arrived already, the server has finished it)
                return seen
    return seen


async def _burst(s, clients: int, holders: list[socket.socket]):
    """``clients`` at once; ``holders`` (sockets with a stream each) are closed while the burst runs."""
    rng = random.Random(0)

    async def drop_holders():
        await asyncio.sleep(0.05)
        for sock in holders:
            sock.close()

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
        seen = await asyncio.gather(drop_holders(), *(_client(session, s.url + "/v1/completions", s.port, i, rng)
                                                      for i in range(clients)))
    return seen[1:]


def test_a_burst_of_256_clients_some_refused_some_dropping_leaves_the_counters_consistent(tiny_gen, caplog):
    s = ServerThread(tiny_gen, max_streams=2 * HOLDERS, api_key=KEY, max_tokens=LONG, max_connections=320)
    try:
        # half the slots held by streams whose clients stop reading, then drop in the middle of the burst
        holders = [_open_stream(s.port, {"prompt": PRIME, "max_tokens": LONG, "stream": True, "seed": i})
                   for i in range(HOLDERS)]
        seen = asyncio.run(_burst(s, 256, holders))
        assert {c["status"] for c in seen} <= {200, 429}
        ok = [c for c in seen if c["status"] == 200]
        done = [c for c in ok if c["usage"] is not None]
        dropped = [c for c in ok if c["usage"] is None]
        refused = sum(c["status"] == 429 for c in seen)
        counts = {"refused": refused, "dropped": len(dropped), "done": len(done)}
        assert all(counts.values()), counts  # 256 clients, 24 free slots: every case happens
        assert len(done) == sum(c["kind"] in ("stream", "whole") for c in ok)
        s.wait_until(lambda: scrape(s).total("textstream_requests_total") == 256 + HOLDERS)
        s.wait_until(lambda: scrape(s).value("textstream_streams_active") == 0)
        m = scrape(s)
        route = "/v1/completions"
        assert m.value("textstream_requests_total", route=route, code="429") == refused
        assert m.value("textstream_rejected_requests_total", reason="busy") == refused
        assert m.value("textstream_requests_total", route=route, code="200") \
            + m.value("textstream_requests_total", route=route, code="499") == len(ok) + HOLDERS
        assert m.value("textstream_requests_total", route=route, code="200") >= len(done)
        assert m.value("textstream_requests_total", route=route, code="499") >= HOLDERS
        assert m.value("textstream_request_duration_seconds_count", route=route) == 256 + HOLDERS
        # characters: exactly the usage of the finished ones, plus what the dropped ones were sent before they left
        generated = m.value("textstream_generated_chars_total")
        finished = sum(c["usage"]["completion_tokens"] for c in done)
        assert finished + sum(c["received"] for c in dropped) + HOLDERS <= generated
        fed = m.value("textstream_prompt_chars_total")
        assert sum(c["usage"]["prompt_tokens"] for c in done) + HOLDERS * len(PRIME) <= fed
        assert fed <= sum(c["prompt"] for c in ok) + HOLDERS * len(PRIME)
        stats = s.server.engine.stats
        assert sum(stats.finished.values()) == stats.admitted == sum(c["n"] for c in ok) + HOLDERS
        assert HOLDERS <= stats.finished["cancelled"] <= len(dropped) + HOLDERS  # the held streams were stopped
        assert m.value("textstream_engine_calls_total") == m.value("textstream_batch_streams_count") > 0
        assert m.value("textstream_streams_waiting") == m.value("textstream_streams_paused") == 0
        s.wait_until(lambda: scrape(s).value("textstream_connections_open") == 1)  # only the scrape's own
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # a drop is no fault
    finally:
        s.close()
