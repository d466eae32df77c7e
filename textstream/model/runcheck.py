"""The checks of a run directory's entries before it is read or written. No TensorFlow here.

``check_kinds`` (``RunPaths.check_entries``): none of the entries
textstream keeps in a run is a link, each is of its kind (a directory where
it keeps one, else a regular file: a FIFO, a device or a socket in place of
a run file is one line, never a hang).

``check_new_run`` (``RunPaths.check_claim``): a new run is written only into
a directory that is missing or empty, that holds a run's own files (its
``config.json`` is a textstream config: an earlier start), or that holds
none of the names a run writes (the other files there are left alone);
never into another of textstream's kinds (a prepared corpus, an export:
``claims.other_kind``) nor over another program's files (a ``config.json``
that is not textstream's).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from textstream.claims import entries_of, kind_of, other_kind
from textstream.config import TrainConfig
from textstream.errors import TextstreamError


def check_kinds(root: Path, entries: Iterable[Path], directories: set[Path]) -> None:
    """A ``TextstreamError`` naming the first of ``entries`` that is a link or not of its kind (see the module)."""
    for path in entries:
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):  # missing (a parent that is a file: said where it is made)
            continue
        except OSError as e:
            raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
        if stat.S_ISLNK(mode):
            raise TextstreamError(f"{path}: is a symbolic link; textstream does not read or write a run's "
                                  f"files through links (replace it with the file or directory itself)")
        if path in directories and not stat.S_ISDIR(mode):
            raise TextstreamError(f"{path}: is not a directory (textstream keeps a directory there; move it away)")
        if path.parent == root and path not in directories and stat.S_ISDIR(mode):
            raise TextstreamError(f"{path}: is a directory, not the file textstream keeps there (move it away)")
        if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):  # in a series, TensorFlow's temporaries are directories
            raise TextstreamError(f"{path}: is {kind_of(mode)}, not a regular file; textstream reads only regular "
                                  f"files from a run directory (move it away)")


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a config.json that textstream's ``train`` wrote (it loads as a ``TrainConfig``)."""
    try:
        TrainConfig.load(path)
    except (TextstreamError, OSError):
        return False
    return True


def check_new_run(root: Path, writes: Iterable[str]) -> None:
    """A ``TextstreamError`` unless a new run may be written into ``root`` (see the module docstring)."""
    if not root.is_dir():
        return  # missing (created), or not a directory (``RunPaths.check_directory`` says so)
    reason = other_kind(root, "run directory")
    if reason:
        raise TextstreamError(f"{root}: {reason}; train never writes a run there (choose another -o)")
    names = set(entries_of(root))
    clash = sorted(names & set(writes))
    if not clash or is_run_config(root / "config.json"):
        return
    shown = ", ".join(clash[:3])
    raise TextstreamError(f"{root}: holds {shown}, which train did not write (no textstream config.json beside "
                          f"it); a new run is written only into an empty directory, an earlier start of a run, or "
                          f"one that holds none of a run's files: choose another -o")
