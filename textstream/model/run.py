"""The run directory: its layout, its lock, and the one reader and writer of its files.

    RUN_DIR/
      config.json          TrainConfig (json)
      vocab.json           the Vocab the model was trained with
      data.json            where the prepared token files are (path, sources)
      checkpoints/last/    tf.train.CheckpointManager, newest checkpoint (weights, optimizer, step, ...)
                           and ckpt-N.step.npz beside it: the step weights without TensorFlow (stepweights.py)
      checkpoints/best/    the checkpoint with the lowest validation loss so far (and its ckpt-N.step.npz)
      metrics.jsonl        one JSON object per log line (kind train | val | end; see events.py)
      tb/                  TensorBoard scalars
      .lock                held (flock) while a `train` process uses the directory

Every file read back is checked here, and damage is one line naming the file
(``TextstreamError``): ``config.json`` (``TrainConfig.load``), ``vocab.json``
(``Vocab.load``), ``data.json``, a checkpoint series' state file and the
presence of its index and data files (``RunPaths.series``; ``checkpoint.py``
reads their content). A directory is a run once it holds a checkpoint: one
without any (a start that failed, or a process killed before its first save)
may be started again; ``runstart.NewRun`` removes what a failed start created.

Regular files only: every file textstream keeps in the run is checked to
be one before anything is read (``check_entries``; a FIFO, a device or a
socket in its place is one line, never a hang), and the files read here are
opened so that a FIFO cannot block (``claims.read_regular``).

No links: the run directory itself may be a symbolic link, but none of the
files and directories textstream keeps in it may be (``RunPaths.check_entries``,
called before a run is read or trained): nothing is read from or written to a
place outside the run through a link planted in it (a ``metrics.jsonl``
pointing at ``~/.bashrc`` is never appended to, a ``vocab.json`` pointing at a
private file is never copied into an export). Appends and the lock also open
their file with ``O_NOFOLLOW``. Temporaries left by killed writers are removed
when ``train`` starts (``remove_stale_temporaries``).

No TensorFlow here (the CLI reads run directories before TensorFlow loads);
the checkpoints themselves are ``checkpoint.py``'s.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from textstream.claims import entries_of, make_directory, open_regular, read_regular
from textstream.config import TrainConfig
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.fsutil import append_bytes, atomic_write_text
from textstream.model.runcheck import check_kinds, check_new_run
from textstream.model.series import Series, inspect_series
from textstream.temporaries import Temporary, remove_path, remove_stale, size_of, tf_temporaries

CHECKPOINTS = ("best", "last")
ENTRIES = ("config.json", "vocab.json", "data.json", "metrics.jsonl", ".lock", "tb", "checkpoints")  # none a link
DIRECTORIES = ("tb", "checkpoints")  # entries that must be directories when they exist (the others: files)


def checkpoint_series(which: str) -> list[str]:
    """The series to look in, in order, for checkpoint ``which``: "best" falls back to "last" (never validated)."""
    if which not in CHECKPOINTS:
        raise TextstreamError(f"unknown checkpoint {which!r}; choose one of: {', '.join(CHECKPOINTS)}")
    return [which] + (["last"] if which == "best" else [])


def recorded_path(value: Any, what: str) -> str:
    """``value`` if it can stand for a path recorded in a run's file (``data.json``), else a ``TextstreamError``.

    The one check for paths that come from a run directory, which may come
    from elsewhere: a non-empty string without NUL. textstream only ever
    reads what they name (the prepared corpus, the sources to prepare again);
    a relative path is relative to the current directory, as when it was
    written. (Registry names have theirs: ``corpus.safe_name``.)
    """
    if not isinstance(value, str) or not value or "\0" in value:
        raise TextstreamError(f"{what}: {value!r} is not a path")
    return value


@dataclass(frozen=True)
class DataRecord:
    """``data.json``: the prepared corpus directory and the sources it was made from."""

    dir: Path
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory, and their readers and writers (writes are atomic)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def vocab(self) -> Path:
        return self.root / "vocab.json"

    @property
    def data(self) -> Path:
        return self.root / "data.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def checkpoint_root(self) -> Path:
        return self.root / "checkpoints"

    def checkpoints(self, which: str) -> Path:
        return self.checkpoint_root / which

    def series(self, which: str) -> Series:
        """What checkpoint series ``which`` ("last" or "best") holds: its state file and files checked (TF-free)."""
        if which not in CHECKPOINTS:
            raise TextstreamError(f"unknown checkpoint {which!r}; choose one of: {', '.join(CHECKPOINTS)}")
        return inspect_series(which, self.checkpoints(which))

    def chosen_series(self, which: str) -> Series:
        """The series that checkpoint ``which`` reads: "best" falls back to "last" only when it was never saved.

        (A run without a validation split has no "best"; a damaged "best" is
        reported, never silently replaced by "last".)
        """
        for kind in checkpoint_series(which):
            found = self.series(kind)
            if found.saved:
                return found
        return found

    def newest_checkpoint(self, which: str) -> Path | None:
        """Path prefix of checkpoint ``which`` ("best", falling back to "last"; or "last"), read without TensorFlow.

        What ``checkpoint.latest_checkpoint`` answers: the checkpoint named by
        the chosen series' state file (``chosen_series``). None when there is
        none or its files are damaged (``checkpoint.latest_checkpoint`` then
        says which file).
        """
        found = self.chosen_series(which)
        return found.prefix if found.usable else None

    # --- config.json, vocab.json ------------------------------------------------------------
    def read_config(self) -> TrainConfig:
        return TrainConfig.load(self.config)

    def write_config(self, cfg: TrainConfig) -> None:
        atomic_write_text(self.config, json.dumps(cfg.to_dict(), indent=1) + "\n")

    def read_vocab(self) -> Vocab:
        return Vocab.load(self.vocab)

    def write_vocab(self, vocab: Vocab) -> None:
        vocab.save(self.vocab)

    # --- data.json --------------------------------------------------------------------------
    def read_data(self) -> DataRecord | None:
        """``data.json``, or None when the run has none; a ``TextstreamError`` naming the file when it is damaged."""
        try:
            text = read_regular(self.data, limit=1 << 20).decode("utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as e:
            raise TextstreamError(f"{self.data}: damaged (not UTF-8: invalid byte at offset {e.start})") from None
        except OSError as e:
            raise TextstreamError(f"{self.data}: cannot read ({e.strerror or e})") from None
        try:
            d = json.loads(text)
        except ValueError as e:
            raise TextstreamError(f"{self.data}: damaged (not valid JSON: {e})") from None
        if not isinstance(d, dict) or "dir" not in d:
            raise TextstreamError(f"{self.data}: not a textstream data.json (expected an object with a \"dir\" path)")
        sources = d.get("sources", [])
        if not isinstance(sources, list):
            raise TextstreamError(f"{self.data}: not a textstream data.json (\"sources\" is not a list of paths)")
        return DataRecord(Path(recorded_path(d["dir"], f"{self.data}: dir")),
                          tuple(recorded_path(x, f"{self.data}: source") for x in sources))

    def write_data(self, prepared_dir: Path | str, sources: Sequence[str | Path]) -> None:
        record = {"dir": str(prepared_dir), "sources": [str(s) for s in sources]}
        atomic_write_text(self.data, json.dumps(record, indent=1) + "\n")

    def prepared_dir(self) -> Path | None:
        """The prepared corpus directory recorded in ``data.json``, or None when there is none (or it is damaged)."""
        try:
            record = self.read_data()
        except TextstreamError:
            return None
        return record.dir if record is not None else None

    # --- metrics.jsonl ----------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (one ``write``: a crash loses at most that line)."""
        append_bytes(self.metrics, (json.dumps(record) + "\n").encode("utf-8"))  # no link; a full disk: NoSpace

    def end_metrics_line(self) -> None:
        """Check ``metrics.jsonl`` can be appended to, and end a last line cut short (a crash, a hand edit)."""
        try:
            fd = open_regular(self.metrics, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
            finally:
                os.close(fd)
        except OSError as e:
            raise TextstreamError(f"{self.metrics}: cannot append to the run's log ({e.strerror or e})") from None
        if cut:
            append_bytes(self.metrics, b"\n")  # the next record starts a line of its own

    def read_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (those of ``kind`` only, if given); [] when there is none.

        A line that is not a JSON object (cut short by a crash, edited by
        hand) is skipped: the log is a record, never a reason to stop.
        """
        try:
            lines = read_regular(self.metrics).decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (kind is None or record.get("kind") == kind):
                records.append(record)
        return records

    # --- checks -----------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        """Whether a checkpoint series holds a checkpoint, intact or damaged: the directory is then a run."""
        return any(self.series(which).saved for which in CHECKPOINTS)

    def check_entries(self) -> None:
        """A ``TextstreamError`` naming the first of the run's entries that is a link or of the wrong kind.

        The run's entries (``ENTRIES``), the checkpoint series directories
        and the files in them: textstream reads and writes none of them
        through a link (see the module docstring), and a directory it keeps
        there (``tb``, ``checkpoints``, the series) must not be a file, nor a
        file it keeps a directory.
        """
        entries = [self.root / name for name in ENTRIES]
        for which in CHECKPOINTS:
            directory = self.checkpoints(which)
            entries.append(directory)
            if directory.is_dir() and not directory.is_symlink() and not self.checkpoint_root.is_symlink():
                entries.extend(directory / name for name in entries_of(directory))
        directories = {self.root / name for name in DIRECTORIES} | {self.checkpoints(w) for w in CHECKPOINTS}
        check_kinds(self.root, entries, directories)

    def check_claim(self, resume: bool) -> None:
        """Before anything is written: the entries' kinds, and for a new run that the directory may hold one.

        (``runcheck.check_new_run``: never over another kind's files.)
        """
        self.check_directory()
        self.check_entries()
        if not resume:
            check_new_run(self.root, [n for n in ENTRIES if n != ".lock"])

    def remove_stale_temporaries(self) -> list[Temporary]:
        """Remove the temporaries that killed writers left in the run; the ones removed.

        textstream's own (``.NAME.PID@HOST.RANDOM.tmp``) when their writer is
        gone, and TensorFlow's checkpoint temporaries (``ckpt-N_temp/``, ...):
        call it holding the run's lock, the only writer of checkpoints.
        """
        removed = remove_stale([self.root, *(self.checkpoints(w) for w in CHECKPOINTS)])
        for which in CHECKPOINTS:
            for path in tf_temporaries(self.checkpoints(which)):
                size = size_of(path)
                if remove_path(path):
                    removed.append(Temporary(path, size, stale=True))
        return removed

    def check_directory(self) -> None:
        """The run directory may be missing (training creates it), not a file."""
        if self.root.exists() and not self.root.is_dir():
            raise TextstreamError(f"{self.root}: exists and is not a directory")

    def check_for_training(self, resume: bool) -> None:
        """A new run needs a directory without a checkpoint; ``resume`` needs a checkpoint and the run's config.

        A directory without any checkpoint (a start that failed, a process
        killed before its first save) is not a run: a new start may use it.
        Its entries are checked first (``check_entries``): nothing is read
        from a FIFO or through a link.
        """
        if self.root.is_dir():
            self.check_entries()
        if resume:
            if not self.has_checkpoint():
                what = "no checkpoint yet: the run stopped before its first" if self.root.is_dir() else \
                    "no such run directory"
                raise TextstreamError(f"{self.root}: nothing to resume ({what}); run the same command without "
                                      f"--resume to start it")
            if not self.config.is_file():
                raise TextstreamError(f"{self.config}: missing; the run's settings are needed to resume it "
                                      f"(restore the file, or start a new run with another -o)")
        elif self.has_checkpoint():
            raise TextstreamError(f"{self.root}: already holds a run; pass --resume to continue it, "
                                  f"or choose another -o")

    def clear_attempt(self) -> None:
        """Remove the log of an earlier start that saved no checkpoint (metrics.jsonl, tb/), before starting again.

        Only in a directory that start made its own (it wrote config.json):
        other directories' files are never removed.
        """
        if not self.config.is_file():
            return
        remove_path(self.metrics)
        remove_path(self.tensorboard)
        for which in CHECKPOINTS:  # series directories left empty
            with contextlib.suppress(OSError):
                self.checkpoints(which).rmdir()
        with contextlib.suppress(OSError):
            self.checkpoint_root.rmdir()


def existing_run(run_dir: Path | str) -> RunPaths:
    """RunPaths for a run directory that must already hold a trained run."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.exists():
        raise TextstreamError(f"{paths.root}: no such run directory")
    if not paths.root.is_dir():
        raise TextstreamError(f"{paths.root}: not a directory")
    missing = [p for p in (paths.config, paths.vocab) if not p.exists()]
    if len(missing) == 2:
        raise TextstreamError(f"{paths.root}: not a textstream run directory (no config.json / vocab.json)")
    if missing:
        raise TextstreamError(f"{missing[0]}: missing (the run directory is damaged)")
    paths.check_entries()
    return paths


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, released when the process ends (even by kill -9)."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        make_directory(self.paths.root, "run directory")
        try:
            fd = open_regular(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # never truncate what a planted link points to
                raise TextstreamError(f"{self.paths.lock}: is a symbolic link; textstream does not write a run's "
                                      f"files through links (remove it)") from None
            raise TextstreamError(f"{self.paths.lock}: cannot open the run's lock ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TextstreamError(
                    f"{self.paths.root}: run directory is in use by another textstream process (pid {owner}); "
                    f"wait for it or choose another -o") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
