"""textstream serve, resource limits: keys that cannot work and limits that cannot fit are refused at start (one
line, exit 2); a connection cap with a clear refusal; head and body deadlines (slowloris); running out of file
descriptors backs off with one log line per burst while /health keeps answering."""
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from serving import (  # noqa: E402
    GOOD,
    KEY,
    PRIME,
    ROOT,
    WAIT_S,
    ServerThread,
    SlowBackend,
    is_openai_error,
    post,
    raw,
    read_all,
    request_bytes,
    split_response,
)

from textstream.cli import main  # noqa: E402
from textstream.errors import TextstreamError  # noqa: E402
from textstream.serve.app import ServeConfig, Server  # noqa: E402
from textstream.serve.limits import check_memory, reserve_fds, stream_bytes  # noqa: E402


# --- refused at start -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, env, says", [
    (["--api-key", ""], {}, "--api-key is empty"),
    (["--api-key", "   "], {}, "--api-key is empty"),
    (["--api-key", "\t\n"], {}, "--api-key is empty"),
    ([], {"TEXTSTREAM_API_KEY": ""}, "$TEXTSTREAM_API_KEY is empty"),
    ([], {"TEXTSTREAM_API_KEY": " "}, "$TEXTSTREAM_API_KEY is empty"),
    (["--api-key", "two words"], {}, "printable ASCII"),
    (["--api-key", "s\u00e9krit"], {}, "printable ASCII"),
    (["--max-streams", "100000000"], {}, "--max-streams 100000000 needs about"),
    (["--max-tokens", str(10 ** 12)], {}, "--max-streams 2 needs about"),
    (["--max-connections", str(10 ** 9)], {}, "--max-connections 1000000000 needs"),
    (["--read-timeout", "0"], {}, "--read-timeout must be"),
    (["--read-timeout", "nan"], {}, "--read-timeout must be"),
    (["--grace", "inf"], {}, "--grace must be"),
])
def test_keys_and_limits_that_cannot_work_are_one_line_exit_2(tiny_run, monkeypatch, capsys, argv, env, says):
    monkeypatch.delenv("TEXTSTREAM_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", str(tiny_run), "--port", "0", "--max-streams", "2", *argv]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("textstream serve: loading")]
    assert out == "" and len(lines) == 1 and lines[0].startswith("textstream: ") and says in lines[0], err
    assert "Traceback" not in err


def test_the_library_refuses_the_same_before_allocating(tiny_gen):
    for config, says in [(ServeConfig(api_key=""), "empty"), (ServeConfig(api_key=" "), "empty"),
                         (ServeConfig(max_streams=10 ** 9), "--max-streams"),
                         (ServeConfig(max_connections=10 ** 8), "--max-connections")]:
        with pytest.raises(TextstreamError, match=says):
            Server(tiny_gen, config)


def test_the_memory_check_counts_streams_and_connections():
    per = stream_bytes(layers=3, units=512, vocab_size=200, buffer_chars=16384, max_tokens=4096)
    check_memory(256, per, 1024, 1 << 20, available=8 << 30)  # the defaults fit in 8 GiB
    with pytest.raises(TextstreamError, match=r"--max-streams 100000 needs about .* at most \d+ streams fit"):
        check_memory(100_000, per, 16, 1 << 20, available=8 << 30)
    with pytest.raises(TextstreamError, match=r"--max-connections 100000 needs about .* at most \d+ connections"):
        check_memory(16, per, 100_000, 1 << 20, available=8 << 30)


def test_max_connections_beyond_the_hard_fd_limit_is_refused_and_a_soft_limit_is_raised():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(TextstreamError, match="file descriptors but this process may open at most"):
            reserve_fds(hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        reserve_fds(500)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 564
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the connection cap -----------------------------------------------------------------------------------------
def test_connections_past_the_cap_get_a_clear_503_and_health_still_answers(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=4, api_key=KEY, max_connections=3)
    held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(3)]
    try:
        s.wait_until(lambda: len(s.server.listener.open) == 3)
        status, headers, body = split_response(raw(s.port, request_bytes("/v1/completions", json.dumps(GOOD).encode())))
        err = json.loads(body)
        assert status == 503 and is_openai_error(err) and err["error"]["code"] == "too_many_connections"
        assert headers["retry-after"] == "1" and "--max-connections" in err["error"]["message"]
        for path in ("/health", "/health?x=1"):  # past the cap, /health is still answered
            status, _, body = split_response(raw(s.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
            assert status == 200 and json.loads(body)["status"] == "ok"
        status, _, _ = split_response(raw(s.port, b""))  # a client that sends nothing is answered too
        assert status == 503
    finally:
        for sock in held:
            sock.close()
    s.wait_until(lambda: len(s.server.listener.open) == 0)
    try:
        assert post(s.url + "/v1/completions", GOOD)[0] == 200
        assert 'textstream_rejected_requests_total{reason="connections"} 2.0' in s.metrics()  # not /health
    finally:
        s.close()


# --- head and body deadlines -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tiny_gen):
    """A server whose read deadline is half a second."""
    s = ServerThread(tiny_gen, max_streams=4, api_key=KEY, read_timeout_s=0.5)
    yield s
    s.close()


def _closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed ``sock`` (fails with socket.timeout if it never closes it)."""
    sock.settimeout(WAIT_S)
    return read_all(sock)


def test_a_connection_that_sends_nothing_or_a_partial_head_is_dropped(quick):
    with socket.create_connection(("127.0.0.1", quick.port)) as sock:  # nothing at all
        assert _closed_by_server(sock) == b""
    with socket.create_connection(("127.0.0.1", quick.port)) as sock:  # a head that never ends, byte by byte
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(40):
                sock.sendall(b"X")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed_by_server(sock) == b""
    assert quick.health()["status"] == "ok"


def test_headers_then_one_byte_of_body_gets_a_408_and_the_connection_closed(quick):
    with socket.create_connection(("127.0.0.1", quick.port)) as sock:
        sock.sendall(request_bytes("/v1/completions", b"{")[:-1].replace(b"Content-Length: 1",
                                                                         b"Content-Length: 100") + b"{")
        status, headers, body = split_response(_closed_by_server(sock))
    err = json.loads(body)
    assert status == 408 and is_openai_error(err) and err["error"]["code"] == "request_timeout"
    assert "--read-timeout" in err["error"]["message"] and headers["connection"] == "close"


def test_an_idle_keep_alive_connection_is_closed_but_a_long_stream_is_not(quick, tiny_gen):
    body = json.dumps({**GOOD, "seed": 1}).encode()
    head = request_bytes("/v1/completions", body).replace(b"Connection: close\r\n", b"")
    with socket.create_connection(("127.0.0.1", quick.port)) as sock:
        sock.sendall(head)
        data = _closed_by_server(sock)  # answered, then closed once idle past the deadline
    assert split_response(data)[0] == 200

    from textstream.generation.generator import Generator

    slow = Generator(SlowBackend(tiny_gen.backend, 0.02), tiny_gen.vocab, data_dir=tiny_gen.data_dir)
    s = ServerThread(slow, max_streams=2, api_key=KEY, read_timeout_s=0.3, call_s=0.02)
    try:
        t0 = time.monotonic()
        chunks = list(s.client().completions.create(model="tiny", prompt=PRIME, max_tokens=300, seed=8,
                                                    stream=True))
        assert time.monotonic() - t0 > 0.3  # the stream outlived the deadline: it ran to its end
        assert sum(len(c.choices[0].text) for c in chunks) == 300
    finally:
        s.close()


# --- out of file descriptors -----------------------------------------------------------------------------------
CHILD = """
import asyncio, os, resource, sys
from textstream.generation.generator import Generator
from textstream.serve.app import ServeConfig, Server
server = Server(Generator.load(sys.argv[1]), ServeConfig(port=0, max_streams=2,
                max_connections=10000, read_timeout_s=60))
import logging
logging.basicConfig(format="LOG %(levelname)s %(message)s")

async def main():
    host, port = await server.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent's reserved connection is open
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    print("limited", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await server.drain(grace_s=0)

asyncio.run(main())
"""


def _health_on(sock: socket.socket) -> dict:
    """GET /health on a connection kept open (keep-alive)."""
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.I)
        if sep and length and len(body) >= int(length.group(1)):
            return json.loads(body)
        part = sock.recv(65536)
        assert part, "the reserved connection was closed"
        data += part


def test_out_of_file_descriptors_backs_off_with_one_log_line_and_health_answers(tiny_run):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_run)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"))
    flood = []
    try:
        port = int(proc.stdout.readline())
        reserved = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        assert _health_on(reserved)["status"] == "ok"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "limited"
        for _ in range(40):  # more connections than descriptors: the accept loop runs out
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT_S))
        time.sleep(3.5)  # a few of asyncio's one-second retries
        assert _health_on(reserved)["status"] == "ok"  # answered throughout, on a connection it holds
        answered = []
        for sock in flood:  # the waiting clients are told, one at a time (a descriptor kept in reserve)
            sock.setblocking(False)
            try:
                answered.append(sock.recv(65536))
            except BlockingIOError:
                pass
        assert any(b"503" in a and b"too_many_descriptors" in a for a in answered), answered
        for sock in flood:
            sock.close()
        flood.clear()
        time.sleep(1.5)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as fresh:  # and after the release
            assert _health_on(fresh)["status"] == "ok"
        reserved.close()
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert proc.wait(timeout=WAIT_S) == 0
        err = proc.stderr.read()
    finally:
        for sock in flood:
            sock.close()
        proc.kill()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    warnings = [line for line in err.splitlines() if line.startswith("LOG WARNING") or line.startswith("LOG ERROR")]
    assert len(warnings) == 1 and "cannot accept connections" in warnings[0] and "Too many open files" in warnings[0]
    assert "Traceback" not in err, err[-2000:]
