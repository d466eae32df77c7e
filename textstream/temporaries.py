"""Temporary files: how textstream names them, whose they are, and removing those whose writer is gone.

Every temporary textstream writes sits next to its target and is named
``.NAME.PID@HOST.RANDOM.tmp`` (``prefix``): the target's name, the writing
process's id and an 8-hex tag of its host name (``fsutil.PendingFile``'s
files, ``export``'s staging directory). ``TEMPORARY`` matches it.

A temporary is *stale* when its writer cannot be running any more
(``is_stale``), and only then is it removed (``remove_stale``):

* written on this host: its process is gone, or the process now holding
  that id started after the file was last modified (the id was reused);
* written on another host (a cache on a shared file system): it has not
  been modified for ``FOREIGN_AGE_S`` (this host cannot see that process).

A live writer's file is never removed: a running ``prepare`` writes its
temporaries continuously, and every other temporary lives for seconds.

TensorFlow's own temporaries in a checkpoint series directory
(``ckpt-N_temp/``, ``*.tempstate*``, ``checkpoint.tmp*``) carry no process id:
``tf_temporaries`` lists them for a caller that holds the run's lock (only
``train`` writes checkpoints, and only under that lock). No TensorFlow here.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[0-9a-f]{8})\.[^.]+\.tmp")
TF_TEMPORARY = re.compile(r"ckpt-\d+_temp|.+\.tempstate\d+|checkpoint\.tmp[0-9a-f]{32}")
FOREIGN_AGE_S = 24 * 3600.0
_START_SLACK_S = 2.0  # /proc's start times are rounded (boot time to the second, start to a clock tick)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


HOST = _host_tag()


def prefix(name: str) -> str:
    """The start of a temporary's name for target ``name`` written by this process (``mkstemp`` adds the rest)."""
    return f".{name}.{os.getpid()}@{HOST}."


@dataclass(frozen=True)
class Temporary:
    """A temporary file or directory found next to its target: its size (bytes, a directory's whole tree)."""

    path: Path
    size: int
    stale: bool


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """Whether ``path`` is a textstream temporary whose writer cannot be running (see the module docstring)."""
    m = TEMPORARY.fullmatch(path.name)
    if m is None:
        return False
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    idle = (time.time() if now is None else now) - mtime
    pid, host = int(m["pid"]), m["host"]
    if host != HOST:
        return idle > FOREIGN_AGE_S
    if pid == os.getpid():
        return False
    started = _process_start(pid)
    gone = started is None or started > mtime + _START_SLACK_S
    return gone


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when it is not running.

    A running process whose start time cannot be read (no ``/proc``) counts
    as started at the epoch: as the writer, whose file is kept.
    """
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # running, as another user
    except OSError:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): the start time in clock ticks after boot
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def find(directory: Path) -> list[Temporary]:
    """The textstream temporaries directly in ``directory`` (none when it is missing), each sized and judged."""
    out = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return out
    now = time.time()
    for entry in entries:
        if TEMPORARY.fullmatch(entry.name):
            path = Path(entry.path)
            out.append(Temporary(path, size_of(path), is_stale(path, now=now)))
    return out


def remove_stale(directories: Iterable[Path]) -> list[Temporary]:
    """Remove the stale temporaries directly in each of ``directories``; the ones removed."""
    removed = []
    for d in directories:
        for t in find(d):
            if t.stale and remove_path(t.path):
                removed.append(t)
    return removed


def subdirectories(directory: Path) -> list[Path]:
    """The directories directly in ``directory`` (not through links), sorted; [] when it is missing."""
    try:
        return sorted(Path(e.path) for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def tf_temporaries(directory: Path) -> list[Path]:
    """TensorFlow's checkpoint temporaries directly in ``directory``: only safe to remove under the run's lock."""
    try:
        return sorted(Path(e.path) for e in os.scandir(directory) if TF_TEMPORARY.fullmatch(e.name))
    except OSError:
        return []


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a directory; links are not followed (0 when it is gone)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_path(path: Path) -> bool:
    """Remove a file, a link (never what it points to) or a directory tree; whether it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
