"""The run directory: its layout and its lock (loading a trained model: checkpoint.py).

    RUN_DIR/
      config.json          TrainConfig (json)
      vocab.json           the Vocab the model was trained with
      data.json            where the prepared token files are (path, sources)
      checkpoints/last/    tf.train.CheckpointManager, newest checkpoint (weights, optimizer, step, ...)
      checkpoints/best/    the checkpoint with the lowest validation loss so far
      metrics.jsonl        one JSON object per evaluation / epoch
      tb/                  TensorBoard scalars
      .lock                held (flock) while a `train` process uses the directory
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from textstream.errors import TextstreamError

CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class RunPaths:
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

    def prepared_dir(self) -> Path | None:
        """The prepared corpus directory recorded in ``data.json``, or None when there is none."""
        import json

        try:
            return Path(json.loads(self.data.read_text(encoding="utf-8"))["dir"])
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def checkpoints(self, which: str) -> Path:
        return self.root / "checkpoints" / which


def existing_run(run_dir: Path | str) -> RunPaths:
    """RunPaths for a run directory that must already hold a trained run."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.exists():
        raise TextstreamError(f"{paths.root}: no such run directory")
    if not paths.root.is_dir():
        raise TextstreamError(f"{paths.root}: not a directory")
    if not paths.config.exists() or not paths.vocab.exists():
        raise TextstreamError(f"{paths.root}: not a textstream run directory (no config.json / vocab.json)")
    return paths


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, released when the process ends (even by kill -9)."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
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
