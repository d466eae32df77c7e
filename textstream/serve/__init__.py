"""``textstream serve``: an OpenAI-compatible streaming text server with continuous batching.

* ``stream.py``: one stream: its spec, stop strings, the bounded buffer its reader takes from;
* ``engine.py``: the continuous-batching loop (a thread over a step backend's
  ``advance_rows``); no TensorFlow, no HTTP;
* ``protocol.py``: OpenAI completions requests checked, responses shaped; no HTTP;
* ``chat.py``: chat completions: a chat's messages made one prompt by a plain rule, chat's shapes; no HTTP;
* ``metrics.py``: the Prometheus metrics of ``GET /metrics`` (``prometheus_client``); no HTTP;
* ``page/``: the playground served at ``GET /`` (plain HTML, CSS and JavaScript, package data);
* ``app.py``: the HTTP layer (aiohttp, the ``serve`` extra): routes, errors, server-sent events, drain.

    pip install "textstream[serve]"
    textstream serve runs/default --port 8000
"""
