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

Every temporary is named ``.NAME.PID.RANDOM.tmp`` in the target's directory
(``TEMPORARY`` matches it, naming the target and the writing process), so a
temporary left by a killed process can be recognised and removed.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp")


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
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb"):
        if mode not in ("wb", "w"):
            raise ValueError(f"mode must be 'wb' or 'w' (got {mode!r})")
        self.path = Path(path)
        self.committed = False
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp")
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, _mode_for(self.path))  # mkstemp makes 0600; the file gets what open() would give it
            self.file: IO = (os.fdopen(fd, "wb") if mode == "wb"
                             else os.fdopen(fd, "w", encoding="utf-8", newline=""))
        except BaseException:
            os.close(fd)
            remove_quietly(self.tmp)
            raise

    def sync(self) -> None:
        """Flush the data to disk and close the file (``commit`` does it too; no-op once closed)."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self, *, sync_dir: bool = True) -> None:
        """Sync, then rename the temporary to ``path`` (and fsync the directory, so the rename lasts)."""
        self.sync()
        os.replace(self.tmp, self.path)
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

    def __enter__(self) -> "PendingFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write ``path`` whole or not at all: a file object on a temporary, renamed over ``path`` when the block ends.

    ``mode``: "wb", or "w" (UTF-8, newlines as written). On any exception the
    temporary is removed and ``path`` is left as it was.
    """
    with PendingFile(path, mode) as pending:
        yield pending.file
        pending.commit()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically (see ``atomic_file``)."""
    with atomic_file(path, "wb") as f:
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
