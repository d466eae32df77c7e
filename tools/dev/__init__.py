"""Developer utilities: not benchmarks, not part of the package.

* ``realtext``: an N-MB corpus of real text from the files on this machine
  (``build_corpus``; ``python -m tools.dev.realtext OUT.txt SIZE_MB``);
* ``run_multiworker``: training with MultiWorkerMirroredStrategy on N local
  worker processes (``python -m tools.dev.run_multiworker CORPUS -o RUN``).
"""
