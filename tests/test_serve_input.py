"""textstream serve, hostile input: every request-derived value is checked before use; every refusal is a 4xx in
OpenAI's error format; the log never shows a traceback for a client's mistake; a stream that has begun ends with
an error event and [DONE], never a second HTTP response."""
import json
import logging

import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from serving import (  # noqa: E402
    GOOD,
    KEY,
    MODEL,
    PRIME,
    BrokenBackend,
    ServerThread,
    is_openai_error,
    post,
    raw,
    request_bytes,
    split_response,
)

from textstream.serve.jsonbody import MAX_DEPTH  # noqa: E402


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, limits={"max_prompt_chars": 1000})
    yield s
    s.close()


@pytest.fixture
def quiet_log(caplog):
    """The server's log (and aiohttp's) at every level: a client's mistake must not put a traceback in it."""
    caplog.set_level(logging.DEBUG, logger="textstream.serve")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    yield caplog
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.WARNING]


def _body(prompt_json: str) -> bytes:
    return ('{"model": "%s", "max_tokens": 3, "prompt": %s}' % (MODEL, prompt_json)).encode()


BODIES = [  # (raw body, what the message says)
    (b"[" * 10000 + b"]" * 10000, "nested"),
    (b'{"a":' * 10000 + b"1" + b"}" * 10000, "nested"),
    (_body("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)), "nested"),
    (_body('"x"').replace(b"3", b"NaN"), "NaN"),
    (_body('"x"').replace(b"3", b"Infinity"), "Infinity"),
    (_body('"x"').replace(b"3", b"-Infinity"), "Infinity"),
    (_body('"x"').replace(b"3", b"1e999"), "out of range"),
    (_body('"x"').replace(b"3", b"9" * 5000), "out of range"),
    (_body('"x"').replace(b"3", b"9223372036854775808"), "out of range"),
    (_body('"x"').replace(b"3", b"0." + b"1" * 100), "too long"),
    (b'{"prompt": "a", "prompt": "b", "max_tokens": 3}', "twice"),
    (b'{"stream_options": {"include_usage": true, "include_usage": false}, "prompt": "a"}', "twice"),
    (_body('"caf"').replace(b"caf", b"caf\xff"), "not UTF-8"),
    (b"\xff\xfe" + json.dumps(GOOD).encode("utf-16-le"), "not UTF-8"),
    (json.dumps(GOOD).encode("utf-16"), "not UTF-8"),
    (b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), "byte-order mark"),
    (_body('"\\ud800"'), "surrogate"),
    (_body('["ok", "\\udfff x"]'), "surrogate"),
    (b"", "parse"),
    (b"   \n", "parse"),
    (b"{} {}", "parse"),
    (b'{"prompt": "a",}', "parse"),
    (b"{'prompt': 'a'}", "parse"),
]


@pytest.mark.parametrize("body, says", BODIES, ids=[f"body{i}" for i in range(len(BODIES))])
def test_malformed_json_bodies_are_400s_in_openai_format_without_a_traceback(srv, quiet_log, body, says):
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, _, err = post(srv.url + path, None, raw=body)
        assert status == 400 and is_openai_error(err), err
        assert err["error"]["code"] == "invalid_json" and says in err["error"]["message"], err
    assert srv.health()["status"] == "ok"


BAD_FIELDS = [  # (body changes, param, code): members beyond the first round's list
    ({"stream_options": {"include_usage": 1}, "stream": True}, "stream_options.include_usage", "invalid_type"),
    ({"stream_options": {"whatever": True}, "stream": True}, "stream_options", "unknown_parameter"),
    ({"stream_options": [1]}, "stream_options", "invalid_type"),
    ({"user": 5}, "user", "invalid_type"),
    ({"echo": "yes"}, "echo", "invalid_type"),
    ({"n": -1}, "n", "invalid_value"),
    ({"n": 2 ** 62}, "n", "invalid_value"),
    ({"max_tokens": -(2 ** 62)}, "max_tokens", "invalid_value"),
    ({"max_tokens": 5.0}, "max_tokens", "invalid_type"),
    ({"max_tokens": [5]}, "max_tokens", "invalid_type"),
    ({"max_tokens": {"a": 1}}, "max_tokens", "invalid_type"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"temperature": 1e300}, "temperature", "invalid_value"),
    ({"temperature": [1]}, "temperature", "invalid_type"),
    ({"top_p": "0.5"}, "top_p", "invalid_type"),
    ({"top_p": -1e-300}, "top_p", "invalid_value"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"seed": [1]}, "seed", "invalid_type"),
    ({"stop": "x" * 257}, "stop", "invalid_value"),
    ({"stop": {"a": "b"}}, "stop", "invalid_type"),
    ({"stop": [None]}, "stop", "invalid_type"),
    ({"prompt": "x" * 1001}, "prompt", "context_length_exceeded"),
    ({"prompt": ["ok", "x" * 1001]}, "prompt", "context_length_exceeded"),
    ({"prompt": ["ok", 3]}, "prompt", "invalid_type"),
    ({"prompt": {"text": "a"}}, "prompt", "invalid_type"),
    ({"prompt": True}, "prompt", "invalid_type"),
    ({"model": ["tiny"]}, "model", "invalid_type"),
    ({"model": "x" * 10000}, "model", "model_not_found"),
    ({"suffix": "x"}, "suffix", "unsupported_parameter"),
    ({"logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
    ({"x" * 5000: 1}, "x" * 64, "unknown_parameter"),
]


@pytest.mark.parametrize("change, param, code", BAD_FIELDS, ids=[f"field{i}" for i in range(len(BAD_FIELDS))])
def test_wrong_types_ranges_and_sizes_are_400s_naming_the_field(srv, quiet_log, change, param, code):
    status, _, err = post(srv.url + "/v1/completions", {**GOOD, **change})
    assert status in (400, 404) and is_openai_error(err), err
    assert (err["error"]["param"], err["error"]["code"]) == (param, code), err
    assert len(err["error"]["message"]) < 300  # a huge value is never echoed back whole


def test_a_tiny_top_p_and_the_largest_temperature_are_served(srv, tiny_gen):
    """Values at the edges of their ranges reach the backend without overflow (float32 rounds 1e-300 to 0)."""
    for change in ({"top_p": 1e-300}, {"temperature": 100}, {"temperature": 1e-320}, {"seed": -(2 ** 63)},
                   {"seed": 2 ** 63 - 1}):
        status, _, r = post(srv.url + "/v1/completions", {**GOOD, "max_tokens": 20, **change})
        assert status == 200, (change, r)
        assert len(r["choices"][0]["text"]) == 20


HEADS = [  # (raw request, status, code): what aiohttp's parser refuses, answered in OpenAI's format
    (request_bytes("/v1/completions", b"{}", extra=b"X-Big: " + b"a" * 9000 + b"\r\n"), 431, "headers_too_large"),
    (request_bytes("/v1/completions", b"{}", extra=b"".join(b"X-%d: 1\r\n" % i for i in range(200))), 400,
     "bad_request"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "headers_too_large"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "bad_request"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400,
     "bad_request"),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
     + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, None),
    (request_bytes("/v1/completions", b"\x1f\x8b\x08\x00garbage", extra=b"Content-Encoding: gzip\r\n"), 400, None),
    (request_bytes("/v1/completions", json.dumps(GOOD).encode(), key=None,
                   extra=b"Authorization: Bearer \xff\xfe\r\n"), 401, "invalid_api_key"),
    (request_bytes("/v1/completions", json.dumps(GOOD).encode(), key=None,
                   extra=b"Authorization: Bearer " + KEY.encode() + b"\r\nAuthorization: Bearer x\r\n"), 400,
     "invalid_header"),
    (request_bytes("/v1/completions", json.dumps(GOOD).encode(), key=None, extra=b"Authorization: Bearer\r\n"), 401,
     "invalid_api_key"),
    (request_bytes("/v1/completions", json.dumps(GOOD).encode(), key=None,
                   extra="Authorization: Bearer s\u00e9krit\r\n".encode()), 401, "invalid_api_key"),
    (request_bytes("/v1/models/%ff%fe%00", b"", method="GET"), 404, "model_not_found"),
    (request_bytes("/v1/nothing?%ff=%fe&&&=", b"", method="GET"), 404, "not_found"),
]


@pytest.mark.parametrize("data, status, code", HEADS, ids=[f"head{i}" for i in range(len(HEADS))])
def test_malformed_http_is_answered_in_openai_format_never_as_a_traceback(srv, quiet_log, data, status, code):
    got, headers, body = split_response(raw(srv.port, data))
    err = json.loads(body)
    assert got == status and is_openai_error(err), (got, body[:300])
    assert code is None or err["error"]["code"] == code, err
    assert headers["content-type"].startswith("application/json")
    assert srv.health()["status"] == "ok"


def test_a_query_string_is_never_read(srv, quiet_log):
    body = json.dumps({**GOOD, "seed": 1}).encode()
    got, _, data = split_response(raw(srv.port, request_bytes("/v1/completions?%ff%fe=%00&x", body)))
    assert got == 200 and json.loads(data)["choices"][0]["text"]


class FailingReply:
    """Makes the reply's events fail after the first update: a fault of the server's after the stream began."""

    def __init__(self, monkeypatch):
        from textstream.serve import replies

        original, calls = replies.CompletionReply.events, []

        def events(reply, batch, logprobs):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("a bug in shaping the events")
            return original(reply, batch, logprobs)

        monkeypatch.setattr(replies.CompletionReply, "events", events)


def test_a_fault_after_a_stream_began_ends_it_with_an_error_event_and_done(srv, monkeypatch, caplog):
    FailingReply(monkeypatch)
    body = json.dumps({**GOOD, "max_tokens": 3000, "stream": True, "seed": 2}).encode()
    data = raw(srv.port, request_bytes("/v1/completions", body))
    assert data.count(b"HTTP/1.1 ") == 1  # one response, never a second one written into the body
    status, headers, events = split_response(data)
    assert status == 200 and headers["content-type"] == "text/event-stream"
    lines = [line for line in events.split(b"\n\n") if line]
    assert lines[-1] == b"data: [DONE]"
    err = json.loads(lines[-2][len(b"data: "):])
    assert is_openai_error(err) and err["error"]["code"] == "internal_error"
    assert json.loads(lines[0][len(b"data: "):])["choices"][0]["text"]  # the text before the fault came through
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "a bug in shaping the events" in errors[0].getMessage()
    assert "Traceback" not in caplog.text
    assert srv.health()["status"] == "ok"


def test_a_fault_in_a_route_is_a_500_with_one_log_line(srv, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("a bug in a route")

    monkeypatch.setattr(srv.server, "admit", broken)
    status, _, err = post(srv.url + "/v1/completions", GOOD)
    assert status == 500 and is_openai_error(err) and err["error"]["code"] == "internal_error"
    assert "a bug in a route" not in json.dumps(err)  # nothing of the server's internals goes to the client
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "KeyError" in errors[0].getMessage() and "Traceback" not in caplog.text


def test_a_stream_cut_by_the_engine_ends_with_an_error_event_then_done(tiny_gen):
    from textstream.generation.generator import Generator

    broken = Generator(BrokenBackend(tiny_gen.backend, good=2), tiny_gen.vocab, data_dir=tiny_gen.data_dir)
    s = ServerThread(broken, max_streams=4, api_key=KEY)
    try:
        body = json.dumps({"prompt": PRIME, "max_tokens": 10 ** 4, "stream": True}).encode()
        data = raw(s.port, request_bytes("/v1/completions", body))
    finally:
        s.close()
    assert data.count(b"HTTP/1.1 ") == 1
    events = [e for e in split_response(data)[2].split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and b'"engine_error"' in events[-2]
