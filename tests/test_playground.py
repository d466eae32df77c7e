"""The playground at GET /, driven in Debian's chromium (headless, through playwright; no browser download).

The page streams the model's own text (the library's, for the seed in the
page), one element per character carrying the server's ``data-logprob``,
the likeliest alternatives on hover; Stop stops the server's stream too and
Continue picks up from the text shown; a prompt holding ``<script>`` is shown
as text; the key field is the Bearer header. With ``TEXTSTREAM_PLAYGROUND_PNG``
set to a path the screenshot is also saved there (how ``docs/playground.png``
is made).
"""
import copy
import json
import os
import shutil
import threading

import pytest

pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from conftest import TEXT, make_run  # noqa: E402
from serving import KEY, WAIT_S, ServerThread, SlowBackend, expected, post  # noqa: E402

from textstream.generation.generator import Generator  # noqa: E402

CHROMIUM = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium",) if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y "
                                "chromium; .ci/run installs it when it runs as root)")

SCRIPT = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
PAGE_TEXT = TEXT + SCRIPT + "\n"  # a vocabulary that can spell markup
PROMPT = "it was the "
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return Generator.load(make_run(tmp_path_factory.mktemp("page"), text=PAGE_TEXT, val_text=PAGE_TEXT * 2))


@pytest.fixture(scope="module")
def srv(model):
    s = ServerThread(model, max_streams=4, api_key=KEY, max_connections=64)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, srv):
    context = browser.new_context(viewport={"width": 1040, "height": 720}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.faults, pg.urls = [], []  # uncaught script errors and dialogs; every URL the page asked for
    pg.on("pageerror", lambda e: pg.faults.append(f"error: {e}"))
    pg.on("dialog", lambda d: (pg.faults.append(f"dialog: {d.message}"), d.dismiss()))
    pg.on("request", lambda r: pg.urls.append(r.url))
    pg.response = pg.goto(srv.url + "/")
    yield pg
    context.close()


def _settings(page, *, prompt=PROMPT, length=120, seed=7, key=KEY):
    page.fill("#key", key)
    page.fill("#prompt", prompt)
    page.fill("#length", str(length))
    page.fill("#seed", str(seed))


def _chars(page) -> list[dict]:
    return page.eval_on_selector_all("#output .ch", "els => els.map(e => ({text: e.textContent, "
                                     "logprob: e.dataset.logprob, top: e.dataset.top}))")


def _wait_for_chars(page, n: int) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('#output .ch').length >= {n}")


def _wait_until_idle(page) -> None:
    page.wait_for_function("() => !document.getElementById('generate').disabled")


def test_generate_streams_the_models_text_with_logprobs_and_alternatives_on_hover(page, srv, model, tmp_path):
    assert page.response.ok and "default-src 'none'" in page.response.headers["content-security-policy"]
    _settings(page)
    page.click("#generate")
    _wait_for_chars(page, 50)
    _wait_until_idle(page)
    assert "120 characters (length)" in page.text_content("#status")
    chars = _chars(page)
    text = "".join(c["text"] for c in chars)
    assert all(len(c["text"]) == 1 for c in chars)
    assert text == expected(model, PROMPT, 120, temperature=0.8, seed=7)  # the page shows the model's own text
    assert page.text_content("#output .prompt") == PROMPT
    # every character carries the server's logprob (a float, as /v1/completions gives it for the same request)
    status, _, r = post(srv.url + "/v1/completions", {"prompt": PROMPT, "max_tokens": 120, "temperature": 0.8,
                                                      "seed": 7, "logprobs": 5})
    assert status == 200 and r["choices"][0]["text"] == text
    want = r["choices"][0]["logprobs"]
    for c, lp, top in zip(chars, want["token_logprobs"], want["top_logprobs"]):
        assert c["logprob"] is not None and float(c["logprob"]) <= 0.0
        assert abs(float(c["logprob"]) - lp) < 1e-4
        assert len(c["top"].splitlines()) == 5
    # hovering a character shows its probability and its five likeliest alternatives
    assert page.is_hidden("#tip")
    page.hover("#output .ch >> nth=30")
    page.wait_for_selector("#tip", state="visible")
    tip = page.text_content("#tip").splitlines()
    assert tip[0].startswith(json.dumps(text[30]) + "  p = ") and tip[0].endswith("%") and len(tip) == 6
    shown = [line.split()[0] for line in tip[1:]]
    assert sorted(json.loads(s) for s in shown) == sorted(want["top_logprobs"][30])
    picture = page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("TEXTSTREAM_PLAYGROUND_PNG"):
        page.screenshot(path=os.environ["TEXTSTREAM_PLAYGROUND_PNG"], full_page=True)
    assert all(u.startswith(srv.url + "/") for u in page.urls), page.urls  # nothing from elsewhere: works offline
    assert page.faults == []


class GatedBackend(SlowBackend):
    """A backend that stops generating once ``chars`` characters are out, until ``opened`` is set."""

    def __init__(self, backend, chars: int):
        super().__init__(backend, 0.0)
        self.left, self.opened = chars, threading.Event()

    def advance_rows(self, rows, k, feed=None):
        if self.left <= 0:
            self.opened.wait(WAIT_S)
        self.left -= k
        return super().advance_rows(rows, k, feed)

    def advance_rows_logprobs(self, rows, k, top, feed=None):  # the page asks for logprobs: the engine calls this
        if self.left <= 0:
            self.opened.wait(WAIT_S)
        self.left -= k
        return super().advance_rows_logprobs(rows, k, top, feed)


@pytest.fixture
def gated(model):
    """A server whose stream holds still after its first characters (so Stop always finds it running)."""
    gen = copy.copy(model)
    gen.backend = GatedBackend(model.backend, 60)
    s = ServerThread(gen, max_streams=4, api_key=KEY, max_connections=64)
    yield s
    gen.backend.opened.set()
    s.close()


def test_stop_ends_the_servers_stream_and_continue_picks_up_where_the_text_stopped(page, gated, model):
    page.goto(gated.url + "/")
    _settings(page, length=4000, seed=3)
    assert page.is_disabled("#continue") and page.is_disabled("#stop")
    page.click("#generate")
    _wait_for_chars(page, 50)
    page.click("#stop")
    _wait_until_idle(page)
    assert "(stopped)" in page.text_content("#status")
    gated.server.generator.backend.opened.set()
    gated.wait_until(lambda: gated.health()["streams"] == 0)  # the server's stream was stopped, not run to 4000
    assert gated.server.engine.stats.finished == {"cancelled": 1}
    first = "".join(c["text"] for c in _chars(page))
    assert 50 <= len(first) < 4000
    assert first == expected(model, PROMPT, 4000, temperature=0.8, seed=3)[:len(first)]
    page.fill("#length", "40")
    page.click("#continue")
    _wait_until_idle(page)
    assert "40 characters (length)" in page.text_content("#status")
    chars = _chars(page)
    assert all(c["logprob"] is not None for c in chars)
    whole = "".join(c["text"] for c in chars)
    assert whole[:len(first)] == first  # nothing was added after Stop
    assert whole[len(first):] == expected(model, PROMPT + first, 40, temperature=0.8, seed=3)
    assert page.faults == []


def test_a_prompt_with_markup_is_shown_as_text_and_runs_nothing(page, model):
    _settings(page, prompt=SCRIPT, length=80, seed=5)
    page.click("#generate")
    _wait_for_chars(page, 50)
    _wait_until_idle(page)
    assert page.text_content("#output .prompt") == SCRIPT
    assert page.eval_on_selector_all("#output *", "els => els.filter(e => e.tagName !== 'SPAN').length") == 0
    assert page.evaluate("window.pwned") is None
    text = "".join(c["text"] for c in _chars(page))
    assert page.text_content("#output") == SCRIPT + text
    assert text == expected(model, SCRIPT, 80, temperature=0.8, seed=5)
    assert page.faults == []


@pytest.fixture
def byte_srv():
    """A server of a byte-level model: it gives no logprobs (its tokens are not characters)."""
    from textstream.config import make_config
    from textstream.data.vocab import Vocab
    from textstream.model.network import build_model

    gen = Generator.from_model(build_model(make_config("tiny"), 256), Vocab.of_bytes())
    s = ServerThread(gen, max_streams=4, api_key=KEY, max_connections=64)
    yield s
    s.close()


def test_when_the_server_gives_no_logprobs_the_text_comes_unshaded(page, byte_srv):
    page.goto(byte_srv.url + "/")
    _settings(page, length=10, seed=2)
    page.click("#generate")
    _wait_until_idle(page)
    assert "10 characters (length)" in page.text_content("#status")
    chars = _chars(page)
    assert "".join(c["text"] for c in chars) == expected(byte_srv.server.generator, PROMPT, 10, temperature=0.8,
                                                         seed=2)
    assert [c["logprob"] for c in chars] == [None] * len(chars)
    assert page.faults == []


def test_the_key_field_is_sent_as_the_bearer_header(page, browser, srv):
    _settings(page, key="")
    page.click("#generate")
    _wait_until_idle(page)
    assert page.text_content("#status").startswith("401: no API key provided")
    assert page.get_attribute("#status", "class") == "error" and _chars(page) == []
    page.fill("#key", "wrong")
    page.click("#generate")
    _wait_until_idle(page)
    assert page.text_content("#status") == "401: incorrect API key provided"
    page.fill("#key", KEY)
    page.click("#generate")
    _wait_for_chars(page, 50)
    _wait_until_idle(page)
    page.reload()  # the key stays for the tab (sessionStorage), so a reload needs no retyping
    assert page.input_value("#key") == KEY
    page.wait_for_function("() => document.getElementById('model').textContent === 'tiny'")
    assert page.faults == []
