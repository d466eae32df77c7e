"""Starting a new run: what a start creates in its directory, removed again when it fails. No TensorFlow here.

A directory becomes a run with its first checkpoint (``run.RunPaths.has_checkpoint``).
A new run that fails before it (a missing source, a corpus too short, a NaN
at the first steps, Ctrl-C twice) leaves nothing behind: ``NewRun`` notes what
exists before the lock creates the directory, and removes what the start
added, never what was there.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from textstream.model.run import RunPaths
from textstream.temporaries import remove_path


class NewRun:
    """What starting a new run creates, removed again when the start fails before the run's first checkpoint.

    Take it before anything is created (the lock makes the directory):

        start = NewRun(paths)
        with RunLock(paths), start.undone_on_failure():
            ...  # an exception before a checkpoint exists removes what was created, and the directory if it was

    Only names that did not exist before are removed (never a file that was
    there), and the directories made for the run (RUN_DIR and missing parents)
    only when they are empty again.
    """

    NAMES = ("config.json", "vocab.json", "data.json", "metrics.jsonl", "tb", "checkpoints", ".lock")

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.made_dirs = [d for d in (paths.root, *paths.root.parents) if not os.path.lexists(d)]
        self.existing = {n for n in self.NAMES if os.path.lexists(paths.root / n)}

    @contextlib.contextmanager
    def undone_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if not self.paths.has_checkpoint():
                self.undo()
            raise

    def undo(self) -> None:
        """Remove what this start created (see the class docstring)."""
        for name in self.NAMES:
            if name not in self.existing:
                remove_path(self.paths.root / name)
        for d in self.made_dirs:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break
