"""Terminal output of the CLI: the standard streams made safe, a rich console on stderr, progress bars.

The library never prints: it reports through callbacks, and the commands
render them with what is here.

``standard_streams`` runs first in ``cli.main``, before anything opens a
file: a standard descriptor that is closed (``>&-``, ``2>&-``, ``<&-``) or
opened the wrong way (``1</dev/null``) is pointed at ``/dev/null``, so that
no file opened later lands on descriptor 1 or 2 (where Python, rich and
TensorFlow would write into it), and the names of those streams are
returned: ``main`` then refuses a command whose product is its standard
output, and lets every other one run (a closed stderr only silences
progress and errors; a closed stdout never stops a training run).
``interruptible`` makes SIGINT stop a command even when the process was
started with it ignored (a background job of a shell script).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import signal
import sys
import threading
from typing import IO, Iterator

from textstream.errors import TextstreamError

STREAMS = ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY))


def standard_streams() -> set[str]:
    """Point a closed or unusable descriptor 0, 1 or 2 at /dev/null; the names of those streams (see the module)."""
    gone = set()
    for fd, name, needs in STREAMS:
        try:
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            usable = mode == os.O_RDWR or mode == needs
        except OSError:  # EBADF: closed
            usable = False
        if usable:
            continue
        gone.add(name)
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
        if getattr(sys, name) is None:  # Python found the descriptor closed at start
            if fd == 0:
                setattr(sys, name, io.TextIOWrapper(os.fdopen(fd, "rb", closefd=False), encoding="utf-8"))
            else:
                setattr(sys, name, io.TextIOWrapper(os.fdopen(fd, "wb", closefd=False), encoding="utf-8",
                                                    line_buffering=True))
    return gone


class StreamError(TextstreamError):
    """A write to a standard stream failed (a full disk, an I/O error): one line naming the stream."""

    def __init__(self, message: str, stream):
        super().__init__(message)
        self.stream = stream


class Checked:
    """A standard stream whose failed writes are one ``StreamError`` naming it (``BrokenPipeError`` stays itself).

    For the commands whose product is their output: ``generate > /dev/full``
    is "standard output: cannot write (No space left on device)", not a
    traceback. ``buffer`` is checked the same way.
    """

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def _call(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StreamError(f"{self._name}: cannot write ({e.strerror or e})", self._stream) from None

    def write(self, data):
        return self._call("write", data)

    def flush(self) -> None:
        self._call("flush")

    @property
    def buffer(self):
        return Checked(self._stream.buffer, self._name)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def interruptible() -> None:
    """SIGINT raises ``KeyboardInterrupt`` even when the process started with it ignored (``cmd &`` in a script)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

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


class Unbroken:
    """A text stream for a display that must never stop the work behind it: a failed write stops the display.

    When the reader goes away (``| head``: EPIPE), the terminal is gone (EIO)
    or the file cannot grow (ENOSPC), the first failed write or flush points
    the stream's descriptor at ``/dev/null`` (so nothing written later, by
    Python, rich or TensorFlow, fails either, at exit included) and every
    later write goes nowhere. Everything else is the wrapped stream's.
    """

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):  # ValueError: the stream was closed
                self._detach()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._detach()

    def _detach(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # what is still buffered goes to /dev/null now

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def unbroken_output(*names: str) -> Iterator[None]:
    """The ``sys`` streams ``names`` ("stdout", "stderr"; default both) as ``Unbroken`` streams for the block."""
    names = names or ("stdout", "stderr")
    saved = {name: getattr(sys, name) for name in names}
    for name, stream in saved.items():
        setattr(sys, name, Unbroken(stream))
    try:
        yield
    finally:
        for name, stream in saved.items():
            getattr(sys, name).flush()
            setattr(sys, name, stream)
