"""Files written whole or not at all: a temporary next to the target, fsync, rename. No TensorFlow here.

    from textstream.fsutil import atomic_file
    with atomic_file(path, "w") as f:   # the old file stays as it was until the block ends without error
        f.write(text)

Several files that must appear together, in order (``prepare``: both token
files, then ``vocab.json`` last), are ``PendingFile`` objects committed one by
one; whatever is not committed when its block ends is removed:

    with PendingFile(d / "train.bin") as train, PendingFile(d / "val.bin") as val:
        ...                                   # write train.file, val.file
        train.sync(); val.sync()              # data on disk before any rename
        train.commit(); val.commit()

Every temporary is named ``.NAME.PID@HOST.RANDOM.tmp`` in the target's
directory (``TEMPORARY`` matches it, naming the target and the writing
process), so a temporary left by a killed process can be recognised and
removed (``textstream.temporaries``).

A write that fails for lack of room (a full disk, a quota, a file size limit:
ENOSPC, EDQUOT, EFBIG) is a ``NoSpace`` error naming the file and how much was
needed or written, with the temporary removed and the old file intact:
``PendingFile`` and ``atomic_file`` do it for their own files, and
``space_checked`` for a block that writes through another library
(TensorFlow), whose errors carry the system's message:

    with space_checked(prefix, needed=n, note="the previous checkpoint stays in force"):
        manager.save()
"""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from textstream import temporaries
from textstream.errors import NoSpace, TextstreamError
from textstream.temporaries import TEMPORARY

__all__ = ["TEMPORARY", "NO_SPACE_ERRNOS", "PendingFile", "atomic_file", "atomic_write_bytes", "atomic_write_text",
           "append_bytes", "no_space", "no_space_errno", "space_checked", "free_space", "format_bytes",
           "remove_quietly", "fsync_dir", "start_writeback"]

NO_SPACE_ERRNOS = frozenset(n for n in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if n is not None)
_REASONS = {errno.ENOSPC: "no space left on the device", getattr(errno, "EDQUOT", -1): "disk quota exceeded",
            errno.EFBIG: "file too large for the file system or this process's file size limit"}


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it; set back at once (at import: one thread)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _mode_for(path: Path) -> int:
    """The mode a replaced file keeps, or the one ``open()`` gives a new file (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


class PendingFile:
    """A file being written into a temporary next to ``path``; ``commit()`` renames it into place.

    Used as a context manager, the temporary is removed at the end of the
    block unless it was committed, whatever the exception (KeyboardInterrupt too).
    A write that fails for lack of room becomes ``NoSpace`` naming ``path``
    (``size``, the expected final size, goes into that message). With several
    files open at once, write through ``write`` so that the error names the
    right one.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, size: int | None = None):
        if mode not in ("wb", "w"):
            raise ValueError(f"mode must be 'wb' or 'w' (got {mode!r})")
        self.path = Path(path)
        self.size = size
        self.committed = False
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=temporaries.prefix(self.path.name), suffix=".tmp")
        except OSError as e:
            raise self._full(e) or e from None
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, _mode_for(self.path))  # mkstemp makes 0600; the file gets what open() would give it
            self.file: IO = (os.fdopen(fd, "wb") if mode == "wb"
                             else os.fdopen(fd, "w", encoding="utf-8", newline=""))
        except BaseException:
            os.close(fd)
            remove_quietly(self.tmp)
            raise

    def write(self, data) -> None:
        """Write ``data`` to the temporary (a full disk: ``NoSpace`` naming this file)."""
        try:
            self.file.write(data)
        except OSError as e:
            raise self._full(e) or e from None

    def sync(self) -> None:
        """Flush the data to disk and close the file (``commit`` does it too; no-op once closed)."""
        if not self.file.closed:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
            except OSError as e:
                raise self._full(e) or e from None
            self.file.close()

    def commit(self, *, sync_dir: bool = True) -> None:
        """Sync, then rename the temporary to ``path`` (and fsync the directory, so the rename lasts)."""
        self.sync()
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise self._full(e) or e from None
        self.committed = True
        if sync_dir:
            fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temporary; nothing happens to a committed file."""
        try:
            self.file.close()
        except OSError:
            pass  # flushing data that is being thrown away failed (a full disk): the error that led here matters
        finally:
            if not self.committed:
                remove_quietly(self.tmp)

    def _full(self, error: BaseException) -> NoSpace | None:
        """``NoSpace`` naming ``path`` when ``error`` is a write that failed for lack of room, else None."""
        if no_space_errno(error) is None:
            return None
        written = None
        try:
            written = os.fstat(self.file.fileno()).st_size if not self.file.closed else self.tmp.stat().st_size
        except (AttributeError, OSError, ValueError):
            pass
        kept = "the old file is unchanged" if self.path.exists() else None
        return no_space(self.path, error, needed=self.size, written=written, note=kept)

    def __enter__(self) -> "PendingFile":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        full = self._full(exc) if isinstance(exc, OSError) and not self.committed else None
        self.discard()
        if full is not None:
            raise full from None  # a write through ``file`` failed for lack of room: say which file


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", *, size: int | None = None) -> Iterator[IO]:
    """Write ``path`` whole or not at all: a file object on a temporary, renamed over ``path`` when the block ends.

    ``mode``: "wb", or "w" (UTF-8, newlines as written). On any exception the
    temporary is removed and ``path`` is left as it was; a write that fails
    for lack of room is ``NoSpace`` (``size``: the expected size, for its message).
    """
    with PendingFile(path, mode, size=size) as pending:
        yield pending.file
        pending.commit()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically (see ``atomic_file``)."""
    with atomic_file(path, "wb", size=len(data)) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` in UTF-8, atomically (see ``atomic_file``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_quietly(path: str | os.PathLike | None) -> None:
    """Remove the file ``path`` if it can be (cleanup: a missing file or an error is not one to report)."""
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


def fsync_dir(d: str | os.PathLike) -> None:
    """Make the renames and removals in directory ``d`` durable (where the filesystem supports it)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def start_writeback(files: Iterable[IO]) -> None:
    """Have the kernel start writing what was written so far, so the final fsync is short.

    (``POSIX_FADV_DONTNEED`` starts asynchronous writeback of dirty pages on
    Linux and drops the clean ones: the page cache does not fill with a big file.)
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for f in files:
        try:
            f.flush()
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) in one write, never through a symbolic link.

    A write that fails for lack of room cuts the file back to its length
    before (no half line) and raises ``NoSpace``; a link at ``path`` is a
    ``TextstreamError`` (``O_NOFOLLOW``: nothing is written where it points).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TextstreamError(f"{path}: is a symbolic link; textstream does not write through links") from None
        raise no_space(path, e, needed=len(data)) or e from None
    try:
        before = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        full = no_space(path, e, needed=len(data), note="the file is as it was")
        if full is None:
            raise
        try:
            os.ftruncate(fd, before)
        except OSError:
            pass
        raise full from None
    finally:
        os.close(fd)


# --- no room to write -------------------------------------------------------------------------
def no_space_errno(error: BaseException | None) -> int | None:
    """The errno that makes ``error`` a write that failed for lack of room (ENOSPC, EFBIG, EDQUOT), else None.

    An ``OSError`` says it in its errno; another library's error (TensorFlow
    reports EFBIG as ``OutOfRangeError``, ENOSPC as ``ResourceExhaustedError``)
    in its message, which carries the system's text (``os.strerror``).
    """
    if error is None or isinstance(error, TextstreamError):
        return None
    if isinstance(error, OSError):
        return error.errno if error.errno in NO_SPACE_ERRNOS else None
    text = str(error)
    return next((n for n in sorted(NO_SPACE_ERRNOS) if os.strerror(n) in text), None)


def no_space(path: str | os.PathLike, error: BaseException | None, *, needed: int | None = None,
             written: int | None = None, note: str | None = None) -> NoSpace | None:
    """``NoSpace`` for ``path`` when ``error`` is a write that failed for lack of room, else None.

    One line: the file, the reason, the bytes needed (``needed``, an
    estimate) and written (``written``), the room left on its file system,
    and ``note`` (what was kept).
    """
    n = no_space_errno(error)
    if n is None:
        return None
    details = []
    if needed:
        details.append(f"about {format_bytes(needed)} needed")
    if written is not None:
        details.append(f"{format_bytes(written)} written")
    free = free_space(path)
    if free is not None:
        details.append(f"{format_bytes(free)} free")
    message = f"{path}: cannot write: {_REASONS[n]}" + (f" ({', '.join(details)})" if details else "")
    return NoSpace(message + (f"; {note}" if note else ""), str(path))


@contextmanager
def space_checked(path: str | os.PathLike, *, needed: int | None = None, note: str | None = None) -> Iterator[None]:
    """Inside the block, an error that is a write failing for lack of room becomes ``NoSpace`` naming ``path``."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only the ones no_space recognises are replaced
        full = no_space(path, e, needed=needed, note=note)
        if full is None:
            raise
        raise full from None


def free_space(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system of ``path`` (or of its nearest existing parent); None if unknown."""
    p = Path(os.path.abspath(path))
    while True:
        try:
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
        except OSError:
            if p == p.parent:
                return None
            p = p.parent


def format_bytes(n: int | float) -> str:
    """``n`` bytes for a message: "812 bytes", "29.1 kB", "1.2 GB" (powers of 1000)."""
    if n < 1000:
        return f"{int(n)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"
