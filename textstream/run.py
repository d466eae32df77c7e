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

No links: the run directory itself may be a symbolic link, but none of the
files and directories textstream keeps in it may be (``RunPaths.check_links``,
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

import errno
import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from textstream.config import TrainConfig
from textstream.errors import TextstreamError
from textstream.fsutil import append_bytes, atomic_write_text
from textstream.temporaries import Temporary, remove_path, remove_stale, size_of, tf_temporaries
from textstream.vocab import Vocab

CHECKPOINTS = ("best", "last")
ENTRIES = ("config.json", "vocab.json", "data.json", "metrics.jsonl", ".lock", "tb", "checkpoints")  # none a link
_STATE_PATH = re.compile(r'^model_checkpoint_path:\s*"([^"\\]*)"\s*$', re.MULTILINE)


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

    def newest_checkpoint(self, which: str) -> Path | None:
        """Path prefix of checkpoint ``which`` ("best", falling back to "last"; or "last"), read without TensorFlow.

        What ``checkpoint.latest_checkpoint`` answers for directories that
        ``CheckpointManager`` wrote: per series, the ``model_checkpoint_path``
        of its ``checkpoint`` state file when its ``.index`` file exists. None
        when there is none, or when a state file is not one this reader
        understands (TensorFlow then decides).
        """
        for kind in checkpoint_series(which):
            directory = self.checkpoints(kind)
            try:
                text = (directory / "checkpoint").read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError):
                return None
            match = _STATE_PATH.search(text)
            if match is None or not match.group(1):
                return None
            prefix = directory / match.group(1)  # a relative record is relative to the directory
            if prefix.with_name(prefix.name + ".index").is_file():
                return prefix
        return None

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
        """``data.json``, or None when the run has none; a ``TextstreamError`` when it is unreadable."""
        try:
            d = json.loads(self.data.read_text(encoding="utf-8"))
            return DataRecord(Path(recorded_path(d["dir"], f"{self.data}: dir")),
                              tuple(recorded_path(s, f"{self.data}: source") for s in d.get("sources", [])))
        except FileNotFoundError:
            return None
        except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise TextstreamError(f"{self.data}: not a textstream data.json ({type(e).__name__}: {e})") from None

    def write_data(self, prepared_dir: Path | str, sources: Sequence[str | Path]) -> None:
        record = {"dir": str(prepared_dir), "sources": [str(s) for s in sources]}
        atomic_write_text(self.data, json.dumps(record, indent=1) + "\n")

    def prepared_dir(self) -> Path | None:
        """The prepared corpus directory recorded in ``data.json``, or None when there is none (or it is unreadable)."""
        try:
            record = self.read_data()
        except TextstreamError:
            return None
        return record.dir if record is not None else None

    # --- metrics.jsonl ----------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (one ``write``: a crash loses at most that line)."""
        append_bytes(self.metrics, (json.dumps(record) + "\n").encode("utf-8"))  # no link; a full disk: NoSpace

    def read_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (those of ``kind`` only, if given); [] when there is none."""
        try:
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for n, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                if n < len(lines):  # only the last line may be cut short by a crash
                    raise TextstreamError(f"{self.metrics}:{n}: not a JSON line") from None
        return [r for r in records if kind is None or r.get("kind") == kind]

    # --- checks -----------------------------------------------------------------------------
    def has_checkpoint(self) -> bool:
        last = self.checkpoints("last")
        return last.is_dir() and any(last.iterdir())

    def check_links(self) -> None:
        """A ``TextstreamError`` naming the first of the run's files or directories that is a symbolic link.

        The run's entries (``ENTRIES``), the checkpoint series directories
        and the files in them: textstream reads and writes none of them
        through a link (see the module docstring).
        """
        entries = [self.root / name for name in ENTRIES]
        for which in CHECKPOINTS:
            directory = self.checkpoints(which)
            entries.append(directory)
            if directory.is_dir() and not directory.is_symlink() and not self.checkpoint_root.is_symlink():
                entries.extend(sorted(directory.iterdir()))
        for path in entries:
            if path.is_symlink():
                raise TextstreamError(f"{path}: is a symbolic link; textstream does not read or write a run's "
                                      f"files through links (replace it with the file or directory itself)")

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
        """A new run needs an empty directory; ``resume`` needs a config and a checkpoint."""
        if resume:
            if not self.config.exists():
                raise TextstreamError(f"{self.root}: nothing to resume (no config.json); drop --resume to start a run")
            if not self.has_checkpoint():
                raise TextstreamError(f"{self.root}: nothing to resume (no checkpoint yet); "
                                      f"drop --resume to start over")
        elif self.has_checkpoint() or self.config.exists():
            raise TextstreamError(f"{self.root}: already holds a run; pass --resume to continue it, "
                                  f"or choose another -o")


def existing_run(run_dir: Path | str) -> RunPaths:
    """RunPaths for a run directory that must already hold a trained run."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.exists():
        raise TextstreamError(f"{paths.root}: no such run directory")
    if not paths.root.is_dir():
        raise TextstreamError(f"{paths.root}: not a directory")
    if not paths.config.exists() or not paths.vocab.exists():
        raise TextstreamError(f"{paths.root}: not a textstream run directory (no config.json / vocab.json)")
    paths.check_links()
    return paths


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, released when the process ends (even by kill -9)."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.paths.root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # never truncate what a planted link points to
                raise TextstreamError(f"{self.paths.lock}: is a symbolic link; textstream does not write a run's "
                                      f"files through links (remove it)") from None
            raise
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
