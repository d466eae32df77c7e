"""A checkpoint series directory (``RUN_DIR/checkpoints/last`` or ``best``) read without TensorFlow.

``tf.train.CheckpointManager`` writes each checkpoint as ``ckpt-N.index`` and
``ckpt-N.data-K-of-M`` files, then names the current one in the small state
file ``checkpoint`` (a text protobuf, replaced by rename). ``inspect_series``
reads that state file strictly (a regular file; any line CheckpointManager
does not write is damage) and checks that the index and data files it implies
are there, regular files and not empty; ``checkpoint.verify`` then reads their content with TensorFlow.

    found = inspect_series("last", run / "checkpoints" / "last")
    found.prefix, found.problem     # the current checkpoint; one line naming a damaged file, or None
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from textstream.claims import kind_of, read_regular
from textstream.errors import TextstreamError

STATE_FILE = "checkpoint"  # CheckpointManager's state file in each series directory
# the lines CheckpointManager writes in its state file (a text protobuf); any other line is damage
_STATE_LINE = re.compile(r'(model_checkpoint_path|all_model_checkpoint_paths):\s*"([^"\\/]+)"'
                         r'|(all_model_checkpoint_timestamps|last_preserved_timestamp):\s*[0-9.eE+-]+')
_CHECKPOINT_FILE = re.compile(r"(?P<name>.+)\.(index|data-(?P<shard>\d+)-of-(?P<shards>\d+))")


@dataclass(frozen=True)
class Series:
    """What one checkpoint series directory (``checkpoints/last`` or ``best``) holds, read without TensorFlow.

    ``prefix`` is the checkpoint its state file names (None: the series was
    never saved); ``problem`` is one line naming the damaged or missing file,
    None when the state file parses and the index and data files are there
    and not empty (``checkpoint.verify`` then reads their content).
    """

    which: str
    directory: Path
    prefix: Path | None = None
    problem: str | None = None

    @property
    def saved(self) -> bool:
        """Whether the series holds a checkpoint, intact or not (never saved: False)."""
        return self.prefix is not None or self.problem is not None

    @property
    def usable(self) -> bool:
        return self.prefix is not None and self.problem is None

    @property
    def step(self) -> int | None:
        """The step of the checkpoint (its number: ``ckpt-N`` is saved at step N), when the name says it."""
        match = re.fullmatch(r"ckpt-(\d+)", self.prefix.name) if self.prefix is not None else None
        return int(match.group(1)) if match else None


def inspect_series(which: str, directory: Path) -> Series:
    """The ``Series`` in ``directory``: its state file parsed strictly, its index and data files there, not empty."""
    state = directory / STATE_FILE
    try:
        text = read_regular(state, limit=1 << 20).decode("utf-8")
    except FileNotFoundError:
        leftovers = sorted(p.name for p in directory.iterdir()
                           if _CHECKPOINT_FILE.fullmatch(p.name)) if directory.is_dir() else []
        if leftovers:  # checkpoint files without the state file that names the current one
            return Series(which, directory, problem=f"{state}: missing (the directory holds {', '.join(leftovers)})")
        return Series(which, directory)
    except UnicodeDecodeError as e:
        return Series(which, directory, problem=f"{state}: damaged (not UTF-8: invalid byte at offset {e.start})")
    except OSError as e:
        return Series(which, directory, problem=f"{state}: cannot read ({e.strerror or e})")
    except TextstreamError as e:  # not a regular file, or far too big for a state file
        return Series(which, directory, problem=str(e))
    names = []
    for n, line in enumerate(text.splitlines(), 1):
        match = _STATE_LINE.fullmatch(line.strip())
        if line.strip() and match is None:
            return Series(which, directory, problem=f"{state}: damaged (line {n} is not a checkpoint record)")
        if match is not None and match.group(1) == "model_checkpoint_path":
            names.append(match.group(2))
    if len(names) != 1:
        return Series(which, directory, problem=f"{state}: damaged (names {len(names)} current checkpoints, not 1)")
    prefix = directory / names[0]
    return Series(which, directory, prefix, _missing_files(prefix))


def _missing_files(prefix: Path) -> str | None:
    """One line naming the checkpoint's index or data file that is missing or empty; None when all are there."""
    shards = 1  # the data files are NAME.data-K-of-N, K < N; N from any of them
    for p in prefix.parent.glob(glob_escape(prefix.name) + ".data-*-of-*"):
        match = _CHECKPOINT_FILE.fullmatch(p.name)
        if match and match.group("shards"):
            shards = max(shards, int(match.group("shards")))
    wanted = [prefix.with_name(prefix.name + ".index")]
    wanted += [prefix.with_name(f"{prefix.name}.data-{k:05d}-of-{shards:05d}") for k in range(shards)]
    for path in wanted:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path}: missing (checkpoint {prefix.name} is incomplete)"
        if not stat.S_ISREG(st.st_mode):
            return f"{path}: is {kind_of(st.st_mode)}, not a regular file (checkpoint {prefix.name} is damaged)"
        if st.st_size == 0:
            return f"{path}: empty (checkpoint {prefix.name} is damaged)"
    return None


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters made literal."""
    return re.sub(r"([*?\[])", r"[\1]", name)
