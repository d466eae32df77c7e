"""POST /v1/chat/completions: the official client unchanged; the text is /v1/completions' on the documented
prompt rule with the same seed; the same limits, stops, seeds and errors; malformed messages are 400s."""
import json

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the serve extra is not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install -e '.[test]')")

from serving import KEY, MODEL, PRIME, ServerThread, expected, is_openai_error, post  # noqa: E402

from textstream.serve.chat import chat_prompt  # noqa: E402

MESSAGES = [{"role": "system", "content": "it was the age"}, {"role": "user", "content": "of wisdom"}]
RULE = "it was the age\nof wisdom\n"  # the rule: each content followed by a newline
MAX_PROMPT = 2000


@pytest.fixture(scope="module")
def srv(tiny_gen):
    s = ServerThread(tiny_gen, max_streams=8, api_key=KEY, limits={"max_prompt_chars": MAX_PROMPT},
                     max_connections=64)
    yield s
    s.close()


def _chat(srv, body, key=KEY):
    return post(srv.url + "/v1/chat/completions", {"model": MODEL, **body}, key=key)


def test_the_rule_joins_contents_each_followed_by_a_newline():
    assert chat_prompt(MESSAGES) == RULE
    assert chat_prompt([{"role": "user", "content": [{"type": "text", "text": "of "}, {"type": "text",
                                                                                        "text": "wisdom"}]},
                        {"role": "assistant", "content": "", "name": "x"}]) == "of wisdom\n\n"


def test_openai_client_non_streaming_is_completions_on_the_rules_prompt(srv, tiny_gen):
    client = srv.client()
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=120, temperature=0.7, seed=3)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    (c,) = r.choices
    assert c.message.role == "assistant" and c.finish_reason == "length"
    want = expected(tiny_gen, RULE, 120, temperature=0.7, seed=3)
    assert c.message.content == want
    same = client.completions.create(model=MODEL, prompt=RULE, max_tokens=120, temperature=0.7, seed=3)
    assert same.choices[0].text == want
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(RULE), 120,
                                                                                         len(RULE) + 120)
    # n: choice i has seed + i, as in completions; max_completion_tokens is chat's name for max_tokens
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_completion_tokens=40, seed=10,
                                       top_p=0.8)
    assert [c.message.content for c in r.choices] == [expected(tiny_gen, RULE, 40, seed=10 + i, top_p=0.8)
                                                      for i in range(3)]
    assert r.usage.prompt_tokens == 3 * len(RULE) and r.usage.completion_tokens == 120
    # content as text parts is the same prompt
    parts = [{"role": "user", "content": [{"type": "text", "text": "it was the age\nof "},
                                          {"type": "text", "text": "wisdom"}]}]
    r = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=120, temperature=0.7, seed=3)
    assert r.choices[0].message.content == want


def test_openai_client_streaming_chunks_then_usage(srv, tiny_gen):
    client = srv.client()
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=300, seed=21,
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(tiny_gen, RULE, 300, seed=21)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 300
    assert chunks[-1].usage.prompt_tokens == len(RULE)

    # n streamed: each choice's deltas are its own text
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50, seed=5, n=2,
                                                 stream=True))
    for i in range(2):
        got = "".join(ch.delta.content or "" for c in chunks for ch in c.choices if ch.index == i)
        assert got == expected(tiny_gen, RULE, 50, seed=5 + i)


def test_stops_and_seeds_behave_as_in_completions(srv, tiny_gen):
    client = srv.client()
    want = expected(tiny_gen, RULE, 300, seed=8)
    stop = want[120:123]
    cut = want.find(stop)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=300, seed=8, stop=[stop, "qq"])
    assert r.choices[0].message.content == want[:cut] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == cut
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=300, seed=8, stop=stop,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want[:cut]
    assert chunks[-1].choices[0].finish_reason == "stop"
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=60, seed=8)
    assert again.choices[0].message.content == want[:60]
    texts = {client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40).choices[0].message.content
             for _ in range(3)}
    assert len(texts) == 3  # no seed: a random one


def test_limits_keys_and_models_as_in_completions(srv):
    client = srv.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10 ** 9)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=5)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=MODEL, messages=MESSAGES)
    status, _, body = _chat(srv, {"messages": MESSAGES}, key=None)
    assert status == 401 and is_openai_error(body)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, max_completion_tokens=5)
    assert e.value.body["param"] == "max_tokens"


def _huge(chars):
    return [{"role": "user", "content": "a" * (chars - 1)}]


BAD = [  # (messages or a body change, param, code)
    ({"messages": None}, "messages", "missing_required_parameter"),
    ({}, "messages", "missing_required_parameter"),
    ({"messages": []}, "messages", "invalid_type"),
    ({"messages": "hello"}, "messages", "invalid_type"),
    ({"messages": {"role": "user", "content": "x"}}, "messages", "invalid_type"),
    ({"messages": ["hello"]}, "messages[0]", "invalid_type"),
    ({"messages": [{"content": "it"}]}, "messages[0].role", "missing_required_parameter"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": {"text": "it"}}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0]",
     "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "it"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": ["user"], "content": "it"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": {"a": 1}, "content": "it"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": "it"}, {"role": "bot", "content": "it"}]}, "messages[1].role",
     "invalid_value"),
    ({"messages": [{"role": "user", "content": "it", "name": 3}]}, "messages[0].name", "invalid_type"),
    ({"messages": [{"role": "assistant", "content": "it", "tool_calls": []}]}, "messages[0].tool_calls",
     "unsupported_parameter"),
    ({"messages": _huge(MAX_PROMPT + 1)}, "messages", "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": "a" * 1000}] * 2}, "messages", "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": "€ and \u4e2d"}]}, "messages", "invalid_value"),  # not in the vocab
    ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools", "unknown_parameter"),
    ({"messages": MESSAGES, "logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"messages": MESSAGES, "stream": "yes"}, "stream", "invalid_type"),
]


@pytest.mark.parametrize("change, param, code", BAD, ids=[f"{i}-{b[1]}-{b[2]}" for i, b in enumerate(BAD)])
def test_malformed_messages_are_400s_in_openais_format(srv, change, param, code):
    status, _, err = post(srv.url + "/v1/chat/completions", {"model": MODEL, "max_tokens": 5, **change})
    assert status == 400 and is_openai_error(err), err
    assert err["error"]["type"] == "invalid_request_error"
    assert (err["error"]["param"], err["error"]["code"]) == (param, code), err
    assert len(err["error"]["message"]) < 300 and "\n" not in err["error"]["message"]


def test_a_huge_body_is_refused_before_it_is_parsed_and_the_server_still_serves(srv, tiny_gen):
    big = json.dumps({"model": MODEL, "messages": _huge(2 << 20)}).encode()
    status, _, err = post(srv.url + "/v1/chat/completions", None, raw=big)
    assert status == 413 and is_openai_error(err)
    status, _, r = _chat(srv, {"messages": [{"role": "user", "content": PRIME}], "max_tokens": 7, "seed": 2})
    assert status == 200 and r["choices"][0]["message"]["content"] == expected(tiny_gen, PRIME + "\n", 7, seed=2)
