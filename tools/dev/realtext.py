"""Build an N-MB real-text corpus file from text already on this machine (for benchmarks).

    from tools.dev.realtext import build_corpus
    path = build_corpus(Path("/tmp/realtext-100mb.txt"), 100)

The text is the ``.py``, ``.txt``, ``.rst`` and ``.md`` files of this Python's
standard library, then of its site-packages, concatenated in a stable order
(sorted by path) and repeated if needed to reach the size. Files that are not
valid UTF-8 or hold NUL bytes are skipped. The result is exactly
``int(size_mb * 1e6)`` bytes of valid UTF-8 (never a character cut in two),
written atomically (``textstream.fsutil.atomic_file``), streaming: memory does
not grow with the size. An existing file of the right size is reused.

    python -m tools.dev.realtext OUT.txt 100
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from textstream.fsutil import atomic_file

SUFFIXES = (".py", ".txt", ".rst", ".md")
MAX_FILE_BYTES = 8 << 20  # skip giant generated files
_SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "test", "tests", "idle_test"}


def source_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("stdlib", "purelib", "platlib"):
        p = paths.get(key)
        if p and Path(p).is_dir() and Path(p).resolve() not in [r.resolve() for r in roots]:
            roots.append(Path(p))
    return roots


def source_files() -> list[Path]:
    """The candidate files, in a stable order: root by root, sorted by relative path."""
    files: list[Path] = []
    for root in source_roots():
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
            for fn in filenames:
                if fn.endswith(SUFFIXES) and not fn.startswith("."):
                    found.append(Path(dirpath) / fn)
        found.sort(key=lambda p: p.relative_to(root).parts)
        files.extend(found)
    return files


def _texts(files: list[Path]) -> Iterator[bytes]:
    """The content of each usable file (valid UTF-8, no NUL, not empty, not huge), forever."""
    while True:
        any_used = False
        for p in files:
            try:
                if not 0 < p.stat().st_size <= MAX_FILE_BYTES:
                    continue
                data = p.read_bytes()
                data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if b"\0" in data:
                continue
            any_used = True
            yield data if data.endswith(b"\n") else data + b"\n"
        if not any_used:
            raise RuntimeError("realtext: no usable text files found under " + ", ".join(map(str, source_roots())))


def _utf8_prefix(data: bytes, n: int) -> bytes:
    """The longest prefix of ``data`` of at most ``n`` bytes that does not cut a character."""
    if n >= len(data):
        return data
    while n > 0 and (data[n] & 0xC0) == 0x80:  # data[n] continues a character: back off
        n -= 1
    return data[:n]


def build_corpus(path: Path, size_mb: float) -> Path:
    """Write (or reuse) ``path``: exactly ``int(size_mb * 1e6)`` bytes of real UTF-8 text."""
    path = Path(path)
    target = int(size_mb * 1e6)
    if target < 1:
        raise ValueError(f"size_mb must give at least one byte (got {size_mb})")
    if path.is_file() and path.stat().st_size == target:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as out:
        written = 0
        for data in _texts(source_files()):
            room = target - written
            if len(data) >= room:
                part = _utf8_prefix(data, room)
                out.write(part)
                out.write(b"\n" * (room - len(part)))  # pad a cut character with newlines
                break
            out.write(data)
            written += len(data)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tools.dev.realtext OUT.txt SIZE_MB")
    out = build_corpus(Path(sys.argv[1]), float(sys.argv[2]))
    print(f"{out}: {out.stat().st_size:,} bytes")
