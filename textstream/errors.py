"""The one exception type users can cause."""


class TextstreamError(Exception):
    """A problem with the user's input, written for the user: one line, no traceback.

    The CLI prints ``textstream: <message>`` on stderr and exits with status 2.
    """


class Interrupted(TextstreamError):
    """Work stopped on request (SIGINT/SIGTERM) after saving what it had; the CLI exits 130."""
