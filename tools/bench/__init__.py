"""Benchmarks: each measures textstream beside a baseline from the same run and prints both figures and their ratio.

Run from the repository root, e.g. ``python -m tools.bench.train --steps 20``;
each ends with one JSON line on stdout (its figures, baselines and targets).

* ``prepare``: ``textstream prepare`` throughput and peak memory on real text;
* ``train``: ``--preset seed`` against the original Keras example (throughput, memory);
* ``scale``: training cost against vocabulary size, corpus size, and a corpus beyond RAM;
* ``precision``: float32 against bfloat16 training speed;
* ``generate``: cold start and rates of the numpy and TensorFlow step backends;
* ``regex``: regex-constrained generation against unconstrained, both backends, one stream and 64;
* ``export``: the exported LiteRT step model against the SavedModel;
* ``serve``: ``textstream serve`` under many streaming clients against in-process generation;
* ``quality``: validation loss in a time budget against nanoGPT and the original example;
* ``context_reach``: how much context a trained run uses.
"""
