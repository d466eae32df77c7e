"""The server's limits checked at start, against what they would allocate. No HTTP library, no TensorFlow.

Each check raises ``TextstreamError`` with one line naming the flag (the CLI
prints it and exits 2), before anything is allocated:

* ``check_api_key``: an empty or whitespace key would let everyone in, and a
  key no HTTP header can carry would let no one in;
* ``check_memory``: ``--max-streams`` and ``--max-connections`` against the
  memory available now (``MemAvailable``), with the bytes each stream and
  each connection can take (``stream_bytes``, ``connection_bytes``), beside
  the prefix-state cache (``--prefix-cache-mb``);
* ``reserve_fds``: ``--max-connections`` against the file-descriptor limit
  (``RLIMIT_NOFILE``; the soft limit is raised towards the hard one when it
  is too low), so the accept loop does not run out of descriptors first.

    >>> stream_bytes(layers=1, units=16, vocab_size=60, buffer_chars=1024, max_tokens=100) > 0
    True
"""
from __future__ import annotations

import os

from textstream.errors import TextstreamError

FD_RESERVE = 64  # descriptors kept for everything but client connections (model files, logs, the listener)
MEMORY_SHARE = 0.8  # the limits may claim at most this share of the memory available at start
DEFAULT_MAX_CONNECTIONS = 1024
CONNECTION_OVERHEAD = 64 << 10  # a connection's handler, parser and write buffers, about

__all__ = ["check_api_key", "stream_bytes", "connection_bytes", "available_memory", "check_memory",
           "reserve_fds", "default_max_connections"]


def check_api_key(key: str | None, flag: str = "--api-key") -> str | None:
    """``key`` as given (None: no authentication), or ``TextstreamError`` for a key that cannot work.

    Raises for an empty or whitespace-only key (it would silently disable
    authentication) and for a key with whitespace or characters outside
    printable ASCII (no ``Authorization`` header can carry it intact).
    """
    if key is None:
        return None
    if not key.strip():
        raise TextstreamError(f"{flag} is empty: give a non-empty key, or leave it out to serve without one")
    if not all("!" <= ch <= "~" for ch in key):
        raise TextstreamError(f"{flag} must be printable ASCII without spaces (it is sent as 'Authorization: "
                              f"Bearer KEY')")
    return key


def stream_bytes(*, layers: int, units: int, vocab_size: int, buffer_chars: int, max_tokens: int) -> int:
    """Bytes one stream slot can take at most: its LSTM state (kept, gathered and in the backend's call),
    a step's logits and gates, its unread buffer (4 bytes a character) and a whole completion's text and JSON
    (10 bytes a character).
    """
    state = 4 * 2 * layers * units * 3
    step = 4 * (4 * vocab_size + 8 * layers * units)
    text = 4 * buffer_chars + 10 * max_tokens
    return state + step + text + 4096


def connection_bytes(max_body_bytes: int) -> int:
    """Bytes one open connection can take at most: a whole request body being read, and the handler."""
    return max_body_bytes + CONNECTION_OVERHEAD


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable`` of ``/proc/meminfo``, else free pages), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(max_streams: int, per_stream: int, max_connections: int, per_connection: int,
                 available: int | None = None, *, fixed: int = 0) -> None:
    """``TextstreamError`` unless ``max_streams`` streams and ``max_connections`` connections fit in
    ``MEMORY_SHARE`` of the memory available (``available``: bytes, default measured now; unknown: no check)
    beside ``fixed`` bytes (the prefix cache's bound).
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    budget = int(available * MEMORY_SHARE)
    if fixed > budget:
        raise TextstreamError(f"--prefix-cache-mb {fixed / (1 << 20):g} needs {_size(fixed)}, but {_size(available)} "
                              f"of memory is available: give a smaller cache")
    budget -= fixed  # what the streams and the connections may take
    streams, connections = max_streams * per_stream, max_connections * per_connection
    if streams + connections <= budget:
        return
    if connections <= budget:  # the connections alone fit: the streams are what is too many
        fit = max(0, (budget - connections) // per_stream)
        raise TextstreamError(
            f"--max-streams {max_streams} needs about {_size(streams)} ({_size(per_stream)} per stream: state, "
            f"buffers, text) beside {_size(connections)} for --max-connections {max_connections}, but "
            f"{_size(available)} of memory is available: at most {fit} streams fit")
    fit = max(0, (budget - streams) // per_connection)
    raise TextstreamError(
        f"--max-connections {max_connections} needs about {_size(connections)} ({_size(per_connection)} per "
        f"connection: a whole request body) beside the streams, but {_size(available)} of memory is available: "
        f"at most {fit} connections fit")


def reserve_fds(max_connections: int) -> None:
    """Make room for ``max_connections`` open connections under ``RLIMIT_NOFILE`` (raising the soft limit
    up to the hard one when needed), or ``TextstreamError`` when the hard limit is too low.
    """
    try:
        import resource
    except ImportError:  # not on this platform: nothing to check
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise TextstreamError(
            f"--max-connections {max_connections} needs {need} file descriptors but this process may open at "
            f"most {hard} (ulimit -n): ask for at most {max(1, hard - FD_RESERVE)} connections")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    except (ValueError, OSError) as e:
        raise TextstreamError(f"--max-connections {max_connections} needs {need} file descriptors; raising the "
                              f"limit from {soft} failed ({e})") from None


def default_max_connections() -> int:
    """``DEFAULT_MAX_CONNECTIONS``, or fewer when the file-descriptor hard limit leaves less room."""
    try:
        import resource
    except ImportError:
        return DEFAULT_MAX_CONNECTIONS
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, hard - FD_RESERVE))


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
