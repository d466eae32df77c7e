"""``textstream serve``: an OpenAI-compatible streaming text server with continuous batching.

* ``stream.py``: one stream: its spec, stop strings, the bounded buffer its reader takes from;
* ``engine.py``: the continuous-batching loop (a thread over a step backend's
  ``advance_rows``); no TensorFlow, no HTTP; ``pacing.py``: how many characters each of its calls generates;
* ``prefix.py``: the prefix-state cache (the state after a long prompt, kept for the prompts that begin with it);
* ``state.py``: state over HTTP (``state`` and ``return_state``: the library's save blob, base64);
* ``logprobs.py``: per-character logprobs from the engine's step, in OpenAI's completions format;
* ``regexes.py``: ``regex`` patterns compiled in a child process with a deadline, kept in a bounded LRU;
* ``protocol.py``: OpenAI completions requests checked, responses shaped; no HTTP;
* ``chat.py``: chat completions: a chat's messages made one prompt by a plain rule, chat's shapes; no HTTP;
* ``metrics.py``: the Prometheus metrics of ``GET /metrics`` (``prometheus_client``); no HTTP;
* ``page/``: the playground served at ``GET /`` (plain HTML, CSS and JavaScript, package data);
* ``app.py``: the HTTP layer (aiohttp, the ``serve`` extra): routes, errors, server-sent events, drain.

    pip install "textstream[serve]"
    textstream serve runs/default --port 8000
"""
