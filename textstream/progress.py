"""Progress of long library calls: the ``ProgressFn`` callback type and the one throttle. No TensorFlow here.

The library never prints: a long operation (download, unpack, hash, count,
encode) reports ``on_progress(label, done, total)`` and the CLI draws bars
from it (``cli/console.py``). ``Progress`` keeps the calls few:

    prog = Progress(on_progress, "encode", total_bytes)   # reports 0
    for n in ...:
        prog.update(done)   # reported when it moved ``every`` since the last report, or reached total
    prog.finish()           # the last value, if it was not reported yet
"""
from __future__ import annotations

from typing import Callable

ProgressFn = Callable[[str, int, "int | None"], None]


class Progress:
    """``done`` out of ``total`` reported to ``fn`` (None: nothing), throttled: the first, every ``every``, the end."""

    every = 1 << 22  # units (bytes) between two reports; a class attribute so a test can lower it

    def __init__(self, fn: ProgressFn | None, label: str, total: int | None):
        self.fn, self.label, self.total = fn, label, total
        self.done = 0
        self._reported: int | None = None
        self.update(0)

    def update(self, done: int) -> None:
        """Set the absolute amount done; report it if it moved far enough, or reached the total."""
        self.done = done
        if self.fn is None:
            return
        last = self._reported
        if last is None or done - last >= self.every or (done == self.total and done != last):
            self._report()

    def finish(self) -> None:
        """Report the current amount unless it was the last one reported (a download shorter than announced)."""
        if self.fn is not None and self._reported != self.done:
            self._report()

    def _report(self) -> None:
        assert self.fn is not None
        self.fn(self.label, self.done, self.total)
        self._reported = self.done
