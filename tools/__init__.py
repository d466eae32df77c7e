"""textstream's tools, run as modules from the repository root (``python -m tools.bench.train``).

* ``tools.bench``: the benchmarks, each printing its figures beside a same-run baseline;
* ``tools.baselines``: what the benchmarks compare against;
* ``tools.dev``: utilities for developers.

None of this is part of the installed package: ``pip install`` ships ``textstream`` only.
"""
