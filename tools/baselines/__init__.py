"""Baselines: what the benchmarks compare textstream against, each runnable on its own.

* ``seed``: the original Keras example (one-hot arrays in memory, ``model.fit``,
  ``model.predict`` per generated character), ``python -m tools.baselines.seed CORPUS ...``;
* ``nanogpt``: nanoGPT's character model on the same split and budget, run with
  a Python that has torch: ``/work/venv-torch/bin/python -m tools.baselines.nanogpt CORPUS ...``.
"""
