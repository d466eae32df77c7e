"""The fault drill: textstream's failure promises, checked by doing the damage (the tests run it scaled down).

Families of cases, each a module registered with ``@family``
(``tests.faults.harness``):

* ``kill``: training killed with SIGKILL at random moments and resumed each
  time: every resume starts at the last checkpoint on disk, no checkpoint is
  ever lost, and the final weights equal an uninterrupted run's;
* ``damage``: every file textstream reads in a run directory and its prepared
  corpus, damaged every way (deleted, emptied, truncated, garbage, JSON of the
  wrong type); ``generate``, ``eval``, ``export`` and ``train --resume`` each
  either exit 2 with one line naming the file or recover as documented: never
  a traceback, never a silent restart, never a worse "best";
* ``files``: a full disk wherever textstream writes, temporaries left by
  killed processes, ``eval`` on bad sources, links planted in a run directory;
* ``hostile``: weights damaged or hostile (NaN, a size claim, a FIFO, an
  edited config), commands that could destroy files, closed standard
  streams, data changed under a run, SIGINT to a ``--follow`` that started
  with it ignored: one line or the documented recovery, nothing destroyed.

Run from the repository root (a table, then one JSON line; exit 1 on any
failed check)::

    python -m tests.faults.drill                      # every family: a few minutes on 2 cores
    python -m tests.faults.drill --families kill --kills 25 --seed 1
    python -m tests.faults.files                      # the files family alone

``tests/test_faults.py`` runs the drill scaled down (``pytest --slow``).
"""
