"""A trained run as standard artefacts that work without textstream: SavedModel, LiteRT file, Keras file.

    from textstream.export import export_run
    export_run("runs/shk", "shk_savedmodel")                                  # a SavedModel directory
    export_run("runs/shk", "shk.tflite", format="litert", quantize="float16")  # one LiteRT file
    export_run("runs/shk", "shk_keras", format="keras")                       # model.keras + vocab.json

What each format holds (docs/export.md has the
signatures and a generation example for each):

==========  ====================  ==============================================================
format      OUT                   contents
==========  ====================  ==============================================================
savedmodel  a directory           signatures ``initial_state``, ``step``, ``generate``,
                                  ``vocabulary`` (``graph.py``); ``assets/vocab.json``;
                                  ``textstream-export.json``
litert      one ``.tflite`` file  signatures ``initial_state``, ``step``, ``vocabulary``
                                  (``litert.py``); ``quantize``: None, "float16", "dynamic"
keras       a directory           ``model.keras`` (standard layers only, ``kerasfile.py``),
                                  ``vocab.json`` and ``textstream-export.json``
==========  ====================  ==============================================================

The artefact is built in a temporary directory next to OUT
(``.OUT.PID@HOST.RANDOM.tmp``) and renamed into place, so OUT is whole or absent
(a full disk: ``NoSpace``, nothing left behind). An existing OUT is refused
unless ``force``, and even then only an earlier export is replaced: a
directory holding the marker ``textstream-export.json`` (every directory
export has one: ``{"format": "textstream-export/1", "export": FORMAT, ...}``),
or a LiteRT file (a TFLite flatbuffer). Anything else (a run directory or a
file in one, a directory that merely holds a ``model.keras``, a user's file)
is never replaced. No TensorFlow at import: every check on the request runs
before it loads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Iterator

from textstream import temporaries
from textstream.claims import open_regular, other_kind, read_regular
from textstream.config import TrainConfig
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.fsutil import fsync_dir, no_space
from textstream.model.run import CHECKPOINTS, RunPaths, existing_run

FORMATS = ("savedmodel", "litert", "keras")
QUANTIZE = ("float16", "dynamic")  # LiteRT only
MARKER = "textstream-export.json"  # in every directory export: what ``force`` may replace
MARKER_FORMAT = "textstream-export/1"
TFLITE_ID = b"TFL3"  # a TFLite flatbuffer's file identifier (bytes 4..8): a LiteRT export

__all__ = ["export_run", "Exported", "FORMATS", "QUANTIZE", "check_request", "vocab_info"]


@dataclass(frozen=True)
class Exported:
    """What ``export_run`` wrote: where, in which format, how many bytes, from which checkpoint."""

    path: Path
    format: str
    size: int  # bytes, all files together
    checkpoint: str  # the checkpoint's path prefix
    quantize: str | None = None


def check_request(format: str, checkpoint: str = "best", quantize: str | None = None) -> None:
    """A ``TextstreamError`` for an unknown format, checkpoint or quantisation, or one the format lacks."""
    if format not in FORMATS:
        raise TextstreamError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINTS:
        raise TextstreamError(f"unknown checkpoint {checkpoint!r}; choose one of: {', '.join(CHECKPOINTS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise TextstreamError(f"unknown quantisation {quantize!r}; choose one of: {', '.join(QUANTIZE)}")
    if quantize is not None and format != "litert":
        raise TextstreamError(f"quantisation ({quantize}) applies to the litert format only (got {format})")


def check_output(out: Path, run_root: Path, force: bool = False) -> None:
    """A ``TextstreamError`` unless ``out`` can be written: its directory exists; absent, or ``force`` and an export.

    ``force`` replaces only an earlier export (``is_export``), never the run,
    a directory holding it, or another kind of textstream directory.
    """
    parent = out.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        raise TextstreamError(f"{out}: cannot write: {parent} {why}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TextstreamError(f"{out}: cannot write: {parent} is not writable")
    if not os.path.lexists(out):
        return
    if not force:
        raise TextstreamError(f"{out}: already exists (pass --force to replace an earlier export)")
    resolved = out.resolve()
    if resolved == run_root.resolve() or resolved in run_root.resolve().parents:
        raise TextstreamError(f"{out}: holds the run being exported; choose another output")
    if out.is_symlink():
        raise TextstreamError(f"{out}: is a symbolic link; --force replaces only an earlier export itself, never "
                              f"what a link points to (remove the link yourself if you mean it)")
    reason = other_kind(out, "export") if out.is_dir() else None
    if reason:
        raise TextstreamError(f"{out}: {reason}; export never replaces it (choose another output)")
    if not is_export(out):
        what = "a directory" if out.is_dir() else "a file"
        raise TextstreamError(f"{out}: is {what} that textstream's export did not write (no {MARKER}, not a LiteRT "
                              f"file); --force replaces only an earlier export (remove it yourself if you mean it)")


def is_export(path: Path) -> bool:
    """Whether ``path`` is what an earlier ``export_run`` wrote: a directory with ``MARKER``, or a LiteRT file."""
    try:
        if path.is_dir() and not path.is_symlink():
            marker = json.loads(read_regular(path / MARKER, limit=1 << 16).decode("utf-8"))
            return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT
        fd = open_regular(path)
        try:
            head = os.pread(fd, 8, 0)
        finally:
            os.close(fd)
        return head[4:8] == TFLITE_ID
    except (OSError, ValueError, TextstreamError):
        return False


def vocab_info(cfg: TrainConfig, vocab: Vocab) -> dict:
    """What the ``vocabulary`` signature returns: chars in id order, token mode, OOV id (-1: none), lowercase."""
    return {"chars": list(vocab.chars), "tokens": vocab.tokens,
            "oov_id": -1 if vocab.oov_id is None else int(vocab.oov_id),
            "lowercase": bool(vocab.options.get("lowercase", cfg.lowercase))}


def export_run(run_dir: str | Path, out: str | Path, *, format: str = "savedmodel", checkpoint: str = "best",
               quantize: str | None = None, force: bool = False) -> Exported:
    """Write the run's ``checkpoint`` to ``out`` as a standard artefact that runs without textstream.

        from textstream.export import export_run
        export_run("runs/shk", "shk.tflite", format="litert", quantize="float16")

    Args:
        run_dir: a trained run directory.
        out: the file or directory to write (built next to it and renamed:
            whole or absent).
        format: "savedmodel" (a directory), "litert" (one file) or "keras"
            (a directory with ``model.keras`` and ``vocab.json``).
        checkpoint: "best" (falling back to "last" when the run never
            validated) or "last".
        quantize: LiteRT only: None, "float16" or "dynamic" (int8 weights).
        force: replace an existing ``out`` that an earlier export wrote
            (``is_export``); nothing else is ever replaced.

    Returns:
        ``Exported``: the path written, its format and size, the checkpoint.

    Raises:
        TextstreamError: an unknown format, not a run directory, no
            checkpoint, an output that exists or cannot be written: one line,
            and nothing is left behind.
    """
    check_request(format, checkpoint, quantize)
    run = existing_run(run_dir)
    out = Path(out)
    check_output(out, run.root, force)
    from textstream.model import checkpoint as checkpoints  # TensorFlow: only once the request is known to be good

    prefix = checkpoints.latest_checkpoint(run, checkpoint)
    cfg, vocab, model = checkpoints.load_model(run.root, checkpoint)
    kept = f"the earlier {out} is unchanged" if out.exists() else f"nothing was written to {out}"
    with _staging(out) as stage:
        new = stage / "new"
        try:
            _write(format, new, run, cfg, vocab, model, quantize, stage)
            _place(new, out)
        except Exception as e:  # noqa: BLE001 - a full disk (TensorFlow's errors too), any other OSError
            full = no_space(out, e, written=_size(stage), note=kept)
            if full is not None:
                raise full from None
            if isinstance(e, OSError):
                raise TextstreamError(f"{out}: cannot write ({e.strerror or e})") from None
            raise
    return Exported(out, format, _size(out), prefix, quantize)


def _write(format: str, dest: Path, run: RunPaths, cfg: TrainConfig, vocab: Vocab, model, quantize: str | None,
           stage: Path) -> None:
    """Write the artefact of ``format`` at ``dest`` (a path that does not exist yet) inside ``stage``."""
    info = vocab_info(cfg, vocab)
    vocab_file = stage / "vocab.json"  # a copy with the umask's mode (the run's own may be private: 0600)
    shutil.copyfile(run.vocab, vocab_file)
    if format == "savedmodel":
        import_module("textstream.export.graph").write_savedmodel(dest, model, info, vocab_file)
    elif format == "litert":
        import_module("textstream.export.litert").write_litert(dest, model, info, vocab_file, quantize=quantize,
                                                                scratch=stage / "savedmodel")
    else:
        import_module("textstream.export.kerasfile").write_keras(dest, model, cfg, vocab_file)
    if dest.is_dir():  # the marker that lets a later --force replace this export, and nothing else
        marker = {"format": MARKER_FORMAT, "export": format, "vocab_size": vocab.size}
        (dest / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary directory next to ``out`` (``.OUT.PID.RANDOM.tmp``), removed with what is left in it."""
    try:
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=temporaries.prefix(out.name), suffix=".tmp"))
    except OSError as e:
        raise no_space(out, e) or TextstreamError(f"{out}: cannot write ({e.strerror or e})") from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(new: Path, out: Path) -> None:
    """Sync ``new`` to disk and rename it to ``out``; an ``out`` already there moves into the staging directory."""
    _fsync_tree(new)
    old = None
    if out.exists() or out.is_symlink():
        old = new.parent / "old"
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory under ``path``."""
    paths = [path] if path.is_file() else [path, *sorted(path.rglob("*"))]
    for p in paths:
        if p.is_dir():
            fsync_dir(p)
        else:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
