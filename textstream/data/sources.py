"""Corpus sources: files, directories, registry names, the embedded default. No TensorFlow here.

    from textstream.data.sources import resolve
    paths = resolve(["notes/", "nietzsche"])   # a directory's text files, then a download

``resolve`` turns what the user typed into a list of local text files, in a
stable order. Registry corpora are downloaded once into ``cache_dir()/corpora``
(temporary file, sha256 check, rename) and unpacked there if they are zipped.
Every file name built from the registry passes ``safe_name`` first: a crafted
entry cannot name a file outside the cache.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from textstream.errors import TextstreamError
from textstream.fsutil import atomic_file, atomic_write_bytes, no_space_errno
from textstream.progress import Progress, ProgressFn
from textstream.temporaries import remove_stale

REGISTRY_FORMAT = "textstream-registry/1"
DEFAULT_DESCRIPTION = ("Python's reference documentation (the stdlib's pydoc_data.topics: statements, "
                       "operators, data model), about 465K characters of English")

_SNIFF_BYTES = 8192
_IO_CHUNK = 1 << 20
_TIMEOUT_S = 60
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One corpus in the registry: where to get it and how to check it."""

    name: str
    url: str
    sha256: str  # of the downloaded file (the zip, for zipped corpora)
    size: int  # bytes downloaded
    licence: str
    description: str
    member: str | None = None  # the file inside a zip to unpack


# --- registry ------------------------------------------------------------------------------
def registry() -> dict[str, Entry]:
    """The corpus registry: ``textstream/corpora/registry.json``, or the file named by ``$TEXTSTREAM_REGISTRY``."""
    override = os.environ.get("TEXTSTREAM_REGISTRY")
    if override:
        where = override
        try:
            raw = Path(override).read_text(encoding="utf-8")
        except OSError as e:
            raise TextstreamError(f"{override}: cannot read the corpus registry ({e.strerror or e})") from None
    else:
        where = "textstream/corpora/registry.json"
        raw = resources.files("textstream.data.corpora").joinpath("registry.json").read_text(encoding="utf-8")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise TextstreamError(f"{where}: corpus registry is not valid JSON ({e})") from None
    items = data.get("corpora") if isinstance(data, dict) else None
    if isinstance(items, dict):
        items = [{"name": k, **v} for k, v in items.items()]
    if not isinstance(items, list):
        raise TextstreamError(f"{where}: not a corpus registry (expected {{\"corpora\": [...]}})")
    out: dict[str, Entry] = {}
    for item in items:
        try:
            entry = Entry(name=str(item["name"]), url=str(item["url"]), sha256=str(item["sha256"]).lower(),
                          size=int(item["size"]), licence=str(item.get("licence", "unknown")),
                          description=str(item.get("description", "")),
                          member=None if item.get("member") is None else str(item["member"]))
        except (KeyError, TypeError, ValueError) as e:
            raise TextstreamError(f"{where}: bad registry entry {item!r} ({e!r})") from None
        safe_name(entry.name, f"{where}: corpus name")
        if not _SHA256.fullmatch(entry.sha256):
            raise TextstreamError(f"{where}: corpus {entry.name!r}: sha256 must be 64 hex digits "
                                  f"(got {entry.sha256!r})")
        out[entry.name] = entry
    return out


def safe_name(name: str, what: str) -> str:
    """``name`` if it can be used as a file name as is, else ``TextstreamError`` naming ``what``.

    The one check for names that come from outside (registry entries and the
    cache files named after them): ASCII letters, digits and ``._+-``, not
    starting with a dot, at most 100 characters; no separator, so no ``..``
    path and nothing outside the directory it is joined to.
    """
    if not (isinstance(name, str) and _SAFE_NAME.fullmatch(name)):
        raise TextstreamError(f"{what} {name!r} is not a safe file name (letters, digits and ._+- only, "
                              f"not starting with a dot, at most 100 characters)")
    return name


def cache_dir() -> Path:
    """``$TEXTSTREAM_CACHE``, else ``$XDG_CACHE_HOME/textstream``, else ``~/.cache/textstream``."""
    if os.environ.get("TEXTSTREAM_CACHE"):
        return Path(os.environ["TEXTSTREAM_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "textstream"
    return Path.home() / ".cache" / "textstream"


def _known(reg: dict[str, Entry]) -> str:
    return ", ".join(sorted(reg)) or "(the registry is empty)"


def _corpora_dir() -> Path:
    """``cache_dir()/corpora``, created if needed, without the temporaries of downloads that were killed."""
    d = cache_dir() / "corpora"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TextstreamError(f"{d}: cannot create the corpus cache ({e.strerror or e}); "
                              f"set TEXTSTREAM_CACHE to a writable directory") from None
    remove_stale([d])
    return d


# --- download ------------------------------------------------------------------------------
def fetch(name: str, on_progress: ProgressFn | None = None) -> Path:
    """The local path of registry corpus ``name``, downloading (and unpacking) it the first time.

    Files only ever appear in the cache by rename after their checksum matched,
    so a file that is there is a good one. Their names carry the start of the
    checksum: a registry entry that changes gets a new file.
    """
    reg = registry()
    if name not in reg:
        raise TextstreamError(f"unknown corpus {name!r}; known corpora: {_known(reg)}")
    entry = reg[name]
    d = _corpora_dir()
    stem = f"{entry.name}-{entry.sha256[:12]}"
    final = d / safe_name(f"{stem}.txt", "cache file")
    if final.is_file() and (entry.member is not None or final.stat().st_size == entry.size):
        return final
    download = d / safe_name(f"{stem}.zip", "cache file") if entry.member else final
    if entry.member is None or not download.is_file():
        _download(entry, download, on_progress)
    if entry.member is not None:
        _unzip(entry, download, final, on_progress)
    return final


def _download(entry: Entry, dest: Path, on_progress: ProgressFn | None) -> None:
    """Download ``entry`` to ``dest``: streamed into a temporary, checked against its sha256, renamed."""
    # imported here, not at the top: together they cost ~40 ms, which every `prepare` and `corpora` start-up
    # would pay although few of them download
    import http.client
    import urllib.error
    import urllib.request

    h = hashlib.sha256()
    done = 0
    with atomic_file(dest, size=entry.size) as out:  # a full disk: NoSpace naming dest
        try:
            with urllib.request.urlopen(entry.url, timeout=_TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else entry.size
                progress = Progress(on_progress, f"download {entry.name}", total)
                while block := resp.read(_IO_CHUNK):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    progress.update(done)
                progress.finish()
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            if no_space_errno(e) is not None:
                raise  # writing the download failed, not the network: atomic_file says which file
            if isinstance(e, urllib.error.HTTPError):
                reason = f"HTTP {e.code} {e.reason}"
            else:
                reason = getattr(e, "reason", None) or e
            reason = " ".join(str(reason).split())  # one line
            raise TextstreamError(
                f"cannot download {entry.name} from {entry.url} ({reason}); download it yourself "
                f"and pass the local file path instead") from None
        got = h.hexdigest()
        if got != entry.sha256:
            raise TextstreamError(
                f"{entry.name}: checksum mismatch for {entry.url}: expected sha256 {entry.sha256}, got {got} "
                f"({done:,} bytes); the download was removed")


def _unzip(entry: Entry, zpath: Path, final: Path, on_progress: ProgressFn | None) -> None:
    """Unpack the member ``entry.member`` of ``zpath`` to ``final`` (temporary, rename)."""
    try:
        with zipfile.ZipFile(zpath) as zf:
            try:
                info = zf.getinfo(entry.member)
            except KeyError:
                raise TextstreamError(f"{zpath}: no member {entry.member!r} in the zip of {entry.name} "
                                      f"(it has: {', '.join(zf.namelist()[:10])})") from None
            with atomic_file(final, size=info.file_size) as out:  # a full disk: NoSpace naming final
                progress = Progress(on_progress, f"unpack {entry.name}", info.file_size)
                with zf.open(info) as src:
                    while block := src.read(_IO_CHUNK):
                        out.write(block)
                        progress.update(progress.done + len(block))
                progress.finish()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        if no_space_errno(e) is not None:
            raise
        raise TextstreamError(f"{zpath}: cannot unpack {entry.name} ({e}); delete the file "
                              f"to download it again") from None


# --- the embedded default ------------------------------------------------------------------
def default_text() -> str:
    """The embedded default corpus: the stdlib's ``pydoc_data.topics``, values in sorted-key order."""
    try:
        # imported here: some distributions strip pydoc_data; only the default corpus needs it, and its
        # absence must be this one-line error, not a failure to import textstream.data.sources
        from pydoc_data.topics import topics
    except ImportError:
        raise TextstreamError("this Python has no pydoc_data module (the embedded default corpus); "
                              "pass a SOURCE file instead") from None
    return "\n\n".join(topics[k] for k in sorted(topics))


def default_corpus() -> Path:
    """The embedded default corpus as a file in the cache, written once (atomically)."""
    data = default_text().encode("utf-8")
    # the text depends on the Python version: name the file by its content
    path = _corpora_dir() / f"default-{hashlib.sha256(data).hexdigest()[:16]}.txt"
    if not (path.is_file() and path.stat().st_size == len(data)):
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise TextstreamError(f"{path}: cannot write the default corpus ({e.strerror or e})") from None
    return path


# --- sources -> files ------------------------------------------------------------------------
def is_text_file(path: Path) -> bool:
    """Sniff the first bytes: non-empty, no NUL, and valid UTF-8 (a character cut at the end is fine)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    if not head or b"\0" in head:
        return False
    try:
        # a character cut by the window is fine; one cut by the end of the file is not
        codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=len(head) < _SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def text_files(root: Path) -> list[Path]:
    """The text files under ``root``, recursively, hidden files and directories skipped, sorted by path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.is_file() and is_text_file(p):
                found.append(p)
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def resolve(sources: Iterable[str | os.PathLike] | None, on_progress: ProgressFn | None = None) -> list[Path]:
    """Local text files for ``sources`` (files, directories, registry names); ``[]`` -> the default."""
    sources = list(sources or [])
    if not sources:
        return [default_corpus()]
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files = text_files(p)
            if not files:
                raise TextstreamError(f"{p}: no text files in this directory (searched recursively; "
                                      f"hidden, empty and binary files are skipped)")
            out.extend(files)
        elif p.exists():
            out.append(p)
        elif isinstance(src, str) and _looks_like_name(src):
            reg = registry()
            if src not in reg:
                raise TextstreamError(f"{src}: no such file or directory, and not a corpus in the registry "
                                      f"(known corpora: {_known(reg)})")
            out.append(fetch(src, on_progress))
        else:
            raise TextstreamError(f"{p}: no such file or directory")
    return out


def _looks_like_name(s: str) -> bool:
    return bool(s) and "/" not in s and os.sep not in s and not s.startswith(".")


def describe(paths: Sequence[Path]) -> str:
    """A short name for a list of source files, for messages."""
    if len(paths) == 1:
        return str(paths[0])
    return f"{len(paths)} files ({paths[0]}, ...)"
