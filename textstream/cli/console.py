"""Terminal output of the CLI: a rich console on stderr and the progress bars of long library calls.

The library never prints: it reports through callbacks, and the commands
render them with what is here.
"""
from __future__ import annotations

import sys


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


class ProgressUI:
    """A rich progress bar on stderr fed by the library's ``on_progress(label, done, total)``.

    Silent when stderr is not a terminal (pipes, tests, CI logs).
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=console(),
                                      transient=True)
            self._progress.start()
        if label not in self._tasks:
            self._tasks[label] = self._progress.add_task(label, total=total)
        self._progress.update(self._tasks[label], completed=done, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
