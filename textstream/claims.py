"""What a command may read and where it may write: regular files only, and only into a directory it may claim.

Reading: textstream reads only regular files from the places it keeps
(a run directory, a prepared corpus, an export). A FIFO, a device or a
socket in place of one of them is one line naming it, never a hang:
``regular`` checks a path before it is opened, ``open_regular`` opens with
``O_NONBLOCK`` (a FIFO's open does not wait for a writer) and checks the
descriptor it got.

    check_regular(path)                   # TextstreamError naming path unless it is a regular file
    data = read_regular(path, limit=1 << 20)

Writing: a command writes only into a directory that is missing or empty,
of its own kind (``own``: an earlier output of the same command), or with an
explicit ``force``; and never, even forced, into a directory of another of
textstream's kinds (``KINDS``: a run directory, a prepared corpus, an
export, each known by the files that mark it). ``claim_directory`` is that
one rule; each command gives it its kind:

    claim_directory(out, what="prepare", kind="prepared corpus", own=is_prepared, force=args.force)

``make_directory`` creates an output directory and its parents, and turns
every reason it cannot (``-o /proc/x``, ``-o /dev/null/x``, a read-only
place) into one line.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from textstream.errors import TextstreamError
from textstream.temporaries import TEMPORARY

__all__ = ["kind_of", "check_regular", "open_regular", "read_regular", "KINDS", "other_kind", "claim_directory",
           "make_directory", "entries_of"]

# the kinds of directory textstream writes, each known by the entries that mark it
KINDS = {"run directory": ("config.json", "checkpoints"), "prepared corpus": ("train.bin", "val.bin"),
         "export": ("textstream-export.json", "saved_model.pb")}

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words: "a regular file", "a FIFO (named pipe)", ..."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _not_regular(path: Path, mode: int) -> TextstreamError:
    return TextstreamError(f"{path}: is {kind_of(mode)}, not a regular file; textstream reads only regular files "
                           f"here (replace it with the file itself)")


def check_regular(path: str | os.PathLike, *, follow: bool = True) -> os.stat_result:
    """The ``os.stat`` of ``path`` (``lstat`` unless ``follow``) when it is a regular file; else a ``TextstreamError``.

    A missing file raises ``FileNotFoundError`` (the caller knows what a
    missing one means); any other error of ``stat`` is a ``TextstreamError``.
    """
    path = Path(path)
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A descriptor of ``path`` opened with ``flags`` (and ``mode``), when it is a regular file (checked on it).

    Opened with ``O_NONBLOCK`` (so a FIFO does not wait for a writer), which
    is cleared again once the descriptor is known to be a regular file.
    ``FileNotFoundError`` for a missing file; a ``TextstreamError`` for any
    other kind of file.
    """
    path = Path(path)
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``; more than ``limit`` bytes is a ``TextstreamError``.

    ``FileNotFoundError`` when missing; other ``OSError``s as they come.
    """
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if limit is not None and size > limit:
            raise TextstreamError(f"{path}: {size:,} bytes, more than the {limit:,} such a file may hold")
        data, cap = bytearray(), None if limit is None else limit + 1  # a file may grow while it is read
        while cap is None or len(data) < cap:
            chunk = os.read(fd, 1 << 20 if cap is None else min(1 << 20, cap - len(data)))
            if not chunk:
                break
            data += chunk
        if limit is not None and len(data) > limit:
            raise TextstreamError(f"{path}: more than the {limit:,} bytes such a file may hold")
        return bytes(data)
    finally:
        os.close(fd)


# --- writing -----------------------------------------------------------------------------------------
def entries_of(d: Path) -> list[str]:
    """The names in directory ``d`` but textstream's own temporaries, sorted ([] when it is missing)."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TextstreamError(f"{d}: cannot read the directory ({e.strerror or e})") from None
    return sorted(n for n in names if not TEMPORARY.fullmatch(n))


def other_kind(d: Path, kind: str | None) -> str | None:
    """Why directory ``d`` is another of textstream's kinds than ``kind`` (``KINDS``): "holds X: it is a Y"; or None."""
    for name, markers in KINDS.items():
        if name != kind:
            for marker in markers:
                if os.path.lexists(d / marker):
                    return f"holds {marker}: it is a {name}"
    return None


def claim_directory(d: str | os.PathLike, *, what: str, kind: str | None, own: Callable[[Path], bool],
                    force: bool = False, writes: Iterable[str] = (),
                    hint: str = "pass --force to write there anyway") -> None:
    """A ``TextstreamError`` unless command ``what``, whose output is a ``kind``, may write into directory ``d``.

    It may when ``d`` is missing or empty (textstream's temporaries aside),
    when ``own(d)`` (an earlier output of the same kind), or with ``force``;
    never when ``d`` is another of textstream's kinds (``other_kind``), even
    with ``force``. ``writes`` names the entries the command writes, for the
    message. A path that exists and is not a directory is refused.
    """
    d = Path(d)
    if not os.path.lexists(d):
        return
    if d.is_symlink() and not d.is_dir():
        raise TextstreamError(f"{d}: is a symbolic link to nothing usable; choose another output")
    if not d.is_dir():
        raise TextstreamError(f"{d}: exists and is not a directory; {what} writes a directory there")
    names = entries_of(d)
    if not names:
        return
    reason = other_kind(d, kind)
    if reason:
        raise TextstreamError(f"{d}: {reason}; {what} never writes there (choose another output)")
    if own(d) or force:
        return
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    also = f" ({', '.join(writes)})" if writes else ""
    raise TextstreamError(f"{d}: holds {shown}, not the output of an earlier {what}; {what} writes its files{also} "
                          f"only into an empty directory or its own ({hint})")


def make_directory(d: str | os.PathLike, what: str = "output directory") -> list[Path]:
    """Create directory ``d`` and its missing parents; the directories created, deepest first.

    Every reason it cannot be created (a parent that is a file or a
    device, ``/proc``, no permission, a read-only file system) is one
    ``TextstreamError`` naming ``d``; what was created before the failure is removed.
    """
    d = Path(d)
    missing: list[Path] = []
    p = d
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    if os.path.lexists(d) and not d.is_dir():
        raise TextstreamError(f"{d}: cannot create the {what}: it exists and is not a directory")
    try:
        for new in reversed(missing):
            os.mkdir(new)
    except OSError as e:
        remove_empty(missing)
        why = "a parent is not a directory" if e.errno == errno.ENOTDIR else (e.strerror or str(e))
        raise TextstreamError(f"{d}: cannot create the {what} ({why})") from None
    return missing


def remove_empty(created: list[Path]) -> None:
    """Remove the directories ``created`` (deepest first) while they are empty; stops at the first that is not."""
    for p in created:
        try:
            p.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            break
