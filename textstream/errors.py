"""The one exception type users can cause."""
from __future__ import annotations


class TextstreamError(Exception):
    """A problem with the user's input, written for the user: one line, no traceback.

    The CLI prints ``textstream: <message>`` on stderr and exits with status 2.
    """


class Interrupted(TextstreamError):
    """Work stopped on request (SIGINT/SIGTERM) after saving what it had; the CLI exits 130."""


class NoSpace(TextstreamError):
    """A file could not be written for lack of room: a full disk, a quota, a file size limit (exit 2).

    ``path`` is the file (or directory) that could not be written; the message
    says how much was needed or written and what was kept (``fsutil.no_space``
    builds it).
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def also(self, note: str) -> "NoSpace":
        """The same error with ``note`` appended to its message (what the caller knows was kept)."""
        return NoSpace(f"{self}; {note}", self.path)
