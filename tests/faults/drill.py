"""Fault drill: training killed at random moments, a run directory damaged file by file, and more.

Case families (``--families``, all by default; a new one is a function
``(drill) -> rows`` decorated with ``@family`` (``tests.faults.harness``), which
may use ``Drill.cli`` and ``Drill.train_argv``, in a module imported below):

* ``kill`` (``tests.faults.kill``): an uninterrupted reference run, then the same run started and
  killed with SIGKILL ``--kills`` times at random moments (``textstream train``
  when the directory holds no checkpoint, ``textstream train --resume`` once
  it does), then run to its end. Checked: every launch started at the last
  checkpoint on disk (never from step 0 when there is one, never a step
  back), the checkpoint on disk never went back, ``--resume`` on a directory
  without a checkpoint says so, and the final weights equal the reference
  run's (``weights_sha256`` of the ``end`` record of ``metrics.jsonl``).
* ``damage`` (``tests.faults.damage``): a trained run whose "last" checkpoint is ahead of "best"
  (interrupted mid-epoch), copied per case; one file damaged (``--damages``:
  deleted, emptied, truncated, garbage, wrong JSON type, a FIFO) for every file
  textstream reads (``--files``: the run's JSON files and metrics, each
  checkpoint series' state, index, data and step weights files, the
  prepared corpus in the cache); then ``generate``, ``eval``, ``export``,
  ``train --resume`` and, where the error names a way on, that way
  (``--from best``, the sources). Checked: exit 2 with one line naming the
  damaged file, or a documented recovery (exit 0; a notice naming the file
  for a put-aside "best" or a re-prepared corpus); never a traceback or a
  TensorFlow ERROR line; a refused resume changes nothing; a resume starts
  at the checkpoint it should (no silent restart) and never leaves "best"
  worse than it was.
* ``files`` (``tests.faults.files``): a full disk wherever textstream
  writes, temporaries of killed processes, ``eval`` on bad sources, links
  planted in a run directory, each of its cases a row.
* ``hostile`` (``tests.faults.hostile``): what a hostile user tries, a case
  or more per class: damaged and hostile weights (NaN, a 40 GB claim, a FIFO,
  an edited config.json), commands that could destroy files (``export
  --force``, ``prepare -o RUN``, ``cache clean --all`` under a running
  train), closed standard streams, data changed under a run (a changed
  corpus, a token file truncated mid-training, an output directory that
  cannot be made), and SIGINT to a ``--follow`` started with it ignored.

The damage family's commands run in worker processes that import textstream
once (``--jobs``), or each in its own process (``--isolated``: slower, closest
to a user). ``--textstream DIR`` runs every family's commands from another
source tree (an older checkout, to compare; implies ``--isolated``) while the
drill's own checks use this one. Prints a table, then a JSON line: ``cases``
(rows), ``clean``, ``failed``, ``kills``, ``regressions`` (silent restarts,
steps gone back, "best" worsened or lost, final weights that differ, writes
through links, ...), and the same per family.

From the repository root:

    python -m tests.faults.drill                                  # every family: a few minutes on 2 cores
    python -m tests.faults.drill --kills 25 --jobs 4 --isolated   # more, and closer to a user
    python -m tests.faults.drill --families damage --files 'run/checkpoints/last/*' --damages truncated,garbage
    python -m tests.faults.drill --textstream /tmp/old-checkout               # the same cases on older code
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# importing a family's module registers it; the default order of --families is this order
from tests.faults import kill, damage, files, hostile  # noqa: F401  # isort: skip
from tests.faults.damage import DAMAGES
from tests.faults.harness import FAMILIES, ROOT, Drill, Row, write_corpus


def print_table(rows: list[Row]) -> None:
    width = max((len(r.case) for r in rows), default=10)
    for r in rows:
        mark = "ok  " if r.ok else "FAIL"
        extra = f"  [REGRESSION: {r.regression}]" if r.regression else ""
        print(f"{mark} {r.family:<7} {r.case:<{width}}  {r.check:<38} {r.outcome}{extra}")


def summary(rows: list[Row], kills: int, seconds: float) -> dict:
    def counts(rs):
        return {"cases": len(rs), "clean": sum(r.ok for r in rs), "failed": sum(not r.ok for r in rs),
                "regressions": sum(r.regression is not None for r in rs)}

    return {**counts(rows), "kills": kills, "seconds": round(seconds, 1),
            "families": {f: counts([r for r in rows if r.family == f]) for f in sorted({r.family for r in rows})}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--kills", type=int, default=8, help="SIGKILLs in the kill family (default 8)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the damage family's base run (default 12)")
    p.add_argument("--kill-epochs", type=int, default=24, help="epochs of the kill family's runs (default 24)")
    p.add_argument("--corpus-chars", type=int, default=12_000, help="size of the generated corpus (default 12,000)")
    p.add_argument("--files", default="*", help="damage family: comma-separated globs over the FILES keys")
    p.add_argument("--damages", default=",".join(DAMAGES), help=f"damage family: of {', '.join(DAMAGES)}")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for the damage family (default 2)")
    p.add_argument("--isolated", action="store_true", help="each command in its own process (slower)")
    p.add_argument("--textstream", type=Path, metavar="DIR",
                   help="run the textstream commands from this source tree (implies --isolated)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    args = p.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    args.files = [f for f in args.files.split(",") if f]
    args.damages = [d for d in args.damages.split(",") if d]
    args.isolated = args.isolated or args.textstream is not None
    unknown = set(args.families) - set(FAMILIES) or set(args.damages) - set(DAMAGES)
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-drill-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # the commands run from another directory (harness.NEUTRAL)
    env = {**os.environ, "TEXTSTREAM_CACHE": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    os.environ.update({k: env[k] for k in ("TEXTSTREAM_CACHE", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")})
    commands = str(args.textstream.resolve()) if args.textstream else env["PYTHONPATH"]
    drill = Drill(args, work, write_corpus(work / "corpus.txt", args.corpus_chars), {**env, "PYTHONPATH": commands})
    t0, rows = time.monotonic(), []
    try:
        for name in args.families:
            t = time.monotonic()
            got = FAMILIES[name](drill)
            print(f"# {name}: {len(got)} checks in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
            rows += got
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    print(json.dumps(summary(rows, drill.kills, time.monotonic() - t0)))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
