"""``textstream serve``: an OpenAI-compatible streaming text server with continuous batching.

* ``stream.py``: one stream: its spec, stop strings, the bounded buffer its reader takes from;
* ``engine.py``: the continuous-batching loop (a thread over a step backend's
  ``advance_rows``); no TensorFlow, no HTTP;
* ``protocol.py``: OpenAI completions requests checked, responses shaped; no HTTP;
* ``app.py``: the HTTP layer (aiohttp, the ``serve`` extra): routes, errors, server-sent events, drain.

    pip install "textstream[serve]"
    textstream serve runs/default --port 8000
"""
