"""The cache's content, and removing what is not needed: ``textstream cache``. No TensorFlow here.

    from textstream import cache
    for entry in cache.inventory():          # what the cache holds, with sizes
        print(entry.path, entry.size, entry.kind, entry.what)
    removed = cache.clean()                  # stale temporaries, unfinished preparations
    removed = cache.prune(days=30)           # ... and prepared corpora unused for 30 days
    removed = cache.clean(everything=True)   # everything but the files of running processes

The cache (``corpus.cache_dir()``) holds ``corpora/`` (downloads, checked
against their sha256, and the embedded default corpus as a file) and
``prepared/KEY/`` (token files, keyed by the sources' content and the
options). Nothing in it is needed for good: a missing download is downloaded
again, a missing preparation prepared again (``train --resume`` does it
from the run's sources). What it may hold that is of no use at all:

* temporaries of processes that were killed (``temporaries.is_stale``), up
  to the size of a whole corpus;
* unfinished preparations: a ``prepared/KEY/`` without ``vocab.json`` (written
  last), not modified for a minute and holding no temporary of a running process.

Each prepared corpus records its last use in its directory's modification
time (``mark_used``, whenever ``preparation`` loads it: a cache hit, a
resume, ``eval``), which ``prune`` reads.

Files of running processes are never removed: a process that uses a
prepared corpus (a ``train``, for as long as it runs) holds a shared lock on
its directory (``Lease``, an ``flock`` that ends with the process, even by
kill -9); ``clean`` and ``prune`` list such a directory as in use and remove
a prepared corpus only under an exclusive lock they could take. Only what the
cache writes is removed: a download is named ``NAME-SHA12.txt`` (or
``.zip``), the default corpus ``default-SHA16.txt``, a prepared corpus is
``prepared/KEY/`` (24 hex digits) holding ``vocab.json``, ``train.bin`` and
``val.bin`` and nothing else. Anything else (a file of the user's among
them, a benchmark's files) is listed as "other", never removed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from textstream.claims import entries_of
from textstream.data.sources import cache_dir, registry
from textstream.errors import TextstreamError
from textstream.temporaries import TEMPORARY, Temporary, find, remove_path, size_of, subdirectories

UNFINISHED_AGE_S = 60.0  # an unfinished preparation this recent may be one starting now
DAY_S = 86400.0

# kinds of entries; REMOVABLE ones go with `clean`
DOWNLOAD, DEFAULT, PREPARED, UNFINISHED, IN_USE, STALE, OTHER = (
    "download", "default corpus", "prepared", "unfinished preparation", "in use",
    "stale temporary", "other")
REMOVABLE = (STALE, UNFINISHED)
PREPARED_FILES = frozenset({"vocab.json", "train.bin", "val.bin"})  # all that a prepared corpus directory holds
_KEY = re.compile(r"[0-9a-f]{24}")  # the name of a prepared corpus directory
_DOWNLOAD = re.compile(r".+-[0-9a-f]{12}\.(txt|zip)")
_DEFAULT = re.compile(r"default-[0-9a-f]{16}\.txt")


class Lease:
    """A shared ``flock`` on a prepared corpus directory: its files are in use by this process until ``release``.

        lease = Lease(prep.dir)     # cache clean leaves the directory alone while it is held
        ...
        lease.release()

    The lock ends with the process (kill -9 included). Where the file system
    has no locks, the lease holds nothing (and says so in ``held``).
    """

    def __init__(self, d: Path):
        self.dir = Path(d)
        self._fd: int | None = None
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # a cleaner holds its exclusive lock only while it removes
        except OSError:
            os.close(fd)
            return
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _exclusive(d: Path) -> int | None:
    """A descriptor of directory ``d`` holding an exclusive lock (no process leases it), or None when one does.

    A directory that cannot be opened, or a file system without locks, gives
    a descriptor without a lock (nothing can be leased there either).
    """
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            return None
    return fd


def in_use(d: Path) -> bool:
    """Whether a running process holds a ``Lease`` on the prepared corpus directory ``d``."""
    fd = _exclusive(d)
    if fd is None:
        return True
    if fd >= 0:
        os.close(fd)
    return False


@dataclass(frozen=True)
class Entry:
    """One thing in the cache: a file or a directory, its size in bytes, its kind and a description.

    ``used``: for a prepared corpus, when it was last used (seconds since the epoch).
    """

    path: Path
    size: int
    kind: str
    what: str = ""
    used: float | None = None


def mark_used(d: Path) -> None:
    """Record that the prepared corpus in ``d`` is being used: the directory's modification time, set to now.

    ``prune`` removes the prepared corpora not used for a while. The files
    are not touched; a directory that is not ours keeps its time.
    """
    try:
        os.utime(d)
    except OSError:
        pass


def inventory(root: Path | None = None) -> list[Entry]:
    """Everything in the cache ``root`` (default: ``corpus.cache_dir()``), in path order; [] when there is none."""
    root = Path(root) if root is not None else cache_dir()
    if not root.is_dir():
        if root.exists() or root.is_symlink():
            raise TextstreamError(f"{root}: the cache is not a directory (set TEXTSTREAM_CACHE to a directory)")
        return []
    names = _registry_names()
    entries: list[Entry] = []
    for path in _children(root):
        if path.name == "corpora" and path.is_dir() and not path.is_symlink():
            entries.extend(_corpora(path, names))
        elif path.name == "prepared" and path.is_dir() and not path.is_symlink():
            entries.extend(_prepared(path))
        elif TEMPORARY.fullmatch(path.name):
            entries.extend(_temporary(t) for t in find(root) if t.path == path)
        else:
            entries.append(Entry(path, size_of(path), OTHER, "not textstream's cache: left alone"))
    return entries


def clean(root: Path | None = None, *, everything: bool = False) -> list[Entry]:
    """Remove stale temporaries and unfinished preparations (``everything``: also every download and prepared
    corpus); the entries removed. Temporaries of running processes and other entries are kept."""
    kinds = REMOVABLE + ((DOWNLOAD, DEFAULT, PREPARED) if everything else ())
    return _remove(e for e in inventory(root) if e.kind in kinds)


def prune(root: Path | None = None, *, days: float = 30.0) -> list[Entry]:
    """``clean``, and remove the prepared corpora not used for ``days`` days; the entries removed."""
    if not days >= 0:
        raise TextstreamError(f"--days must be a number >= 0 (got {days})")
    cutoff = time.time() - days * DAY_S
    return _remove(e for e in inventory(root)
                   if e.kind in REMOVABLE or (e.kind == PREPARED and (e.used or 0) <= cutoff))


def _remove(entries) -> list[Entry]:
    """Remove ``entries``; a prepared corpus only under an exclusive lock (a process leasing it keeps it)."""
    removed = []
    for e in entries:
        if e.kind not in (PREPARED, UNFINISHED):
            if remove_path(e.path):
                removed.append(e)
            continue
        fd = _exclusive(e.path)
        if fd is None:
            continue  # leased since the inventory: in use
        try:
            if remove_path(e.path):
                removed.append(e)
        finally:
            if fd >= 0:
                os.close(fd)
    return removed


def _children(d: Path) -> list[Path]:
    try:
        return sorted(d.iterdir())
    except OSError:
        return []


def _registry_names() -> dict[str, str]:
    """Cache file stem (``NAME-SHA12``) -> corpus name, for the registry in force; {} when it cannot be read."""
    try:
        return {f"{e.name}-{e.sha256[:12]}": e.name for e in registry().values()}
    except TextstreamError:
        return {}


def _temporary(t: Temporary) -> Entry:
    m = TEMPORARY.fullmatch(t.path.name)
    assert m is not None
    whose = f"of {m['target']}, process {m['pid']}"
    return Entry(t.path, t.size, STALE if t.stale else IN_USE,
                 f"{whose} (gone)" if t.stale else f"{whose} (running, or on another host)")


def _corpora(d: Path, names: dict[str, str]) -> list[Entry]:
    """The downloads, the default corpus and the temporaries in ``corpora/``."""
    temps = {t.path: t for t in find(d)}
    out = []
    for path in _children(d):
        if path in temps:
            out.append(_temporary(temps[path]))
        elif _DEFAULT.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            out.append(Entry(path, size_of(path), DEFAULT, "the embedded default corpus"))
        elif _DOWNLOAD.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            name = names.get(path.stem)
            what = f"{name}{' (zip)' if path.suffix == '.zip' else ''}" if name else "not in the registry now"
            out.append(Entry(path, size_of(path), DOWNLOAD, what))
        else:
            out.append(Entry(path, size_of(path), OTHER, "not textstream's cache: left alone"))
    return out


def _prepared(d: Path) -> list[Entry]:
    """Each prepared corpus in ``prepared/`` (its own files' size), and the temporaries in and beside them."""
    out = [_temporary(t) for t in find(d)]
    now = time.time()
    subs = subdirectories(d)
    for name in entries_of(d):
        if d / name not in subs:
            out.append(Entry(d / name, size_of(d / name), OTHER, "not textstream's cache: left alone"))
    for sub in subs:
        temps = find(sub)
        out.extend(_temporary(t) for t in temps)
        own = size_of(sub) - sum(t.size for t in temps)
        vocab = sub / "vocab.json"
        unknown = sorted(set(entries_of(sub)) - PREPARED_FILES)
        if not _KEY.fullmatch(sub.name) or unknown:
            what = f"holds {', '.join(unknown[:3])}, which the cache did not write" if unknown else \
                "not a prepared corpus of the cache"
            out.append(Entry(sub, own, OTHER, f"{what}: left alone"))
        elif in_use(sub):
            out.append(Entry(sub, own, IN_USE, "used by a running process (a train)", used=_mtime(sub)))
        elif vocab.is_file():
            out.append(Entry(sub, own, PREPARED, _describe(vocab), used=_mtime(sub)))
        elif any(not t.stale for t in temps) or now - _mtime(sub) < UNFINISHED_AGE_S:
            out.append(Entry(sub, own, IN_USE, "a preparation in progress"))
        else:
            out.append(Entry(sub, own, UNFINISHED, "no vocab.json: a preparation that was stopped"))
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _describe(vocab: Path) -> str:
    """A prepared corpus in a few words: its sources, tokens and size, from its vocab.json."""
    try:
        d = json.loads(vocab.read_text(encoding="utf-8"))
        sources = [str(s) for s in d.get("sources", [])]
        chars = int(d.get("train_chars", 0)) + int(d.get("val_chars", 0))
        tokens = str(d.get("tokens", "chars"))
    except (OSError, ValueError, TypeError, AttributeError):
        return "vocab.json unreadable"
    where = sources[0] if len(sources) == 1 else f"{len(sources)} files ({sources[0]}, ...)" if sources else "?"
    return f"{where}: {chars:,} characters, {tokens}"
