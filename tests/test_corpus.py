"""Corpus sources: registry, download (checksum, cache, offline), default corpus, files and directories."""
import hashlib
import http.server
import json
import socket
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest

from textstream.data import sources as corpus
from textstream.errors import TextstreamError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
SHARED_FILES = {"nietzsche": "nietzsche.txt", "kinyarwanda-bible": "kinyarwanda-bible.txt",
                "tinyshakespeare": "tinyshakespeare.txt"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TEXTSTREAM_REGISTRY", raising=False)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/www; yields (base url, www dir, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(www)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, log
    httpd.shutdown()
    httpd.server_close()


def use_registry(tmp_path, monkeypatch, entries):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format": "textstream-registry/1", "corpora": entries}))
    monkeypatch.setenv("TEXTSTREAM_REGISTRY", str(path))


def entry(name, url, data, **extra):
    return {"name": name, "url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "licence": "test", "description": f"{name} for tests", **extra}


TEXT = "Some text to download.\n".encode() * 50


# --- registry --------------------------------------------------------------------------------
def test_builtin_registry():
    reg = corpus.registry()
    assert {"nietzsche", "kinyarwanda-bible", "tinyshakespeare", "enwik8", "text8"} <= set(reg)
    for e in reg.values():
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0 and e.size > 0 and e.url.startswith("http")
        assert e.licence and e.description
    assert reg["enwik8"].member == "enwik8" and reg["text8"].member == "text8"
    assert reg["nietzsche"].member is None
    assert "4b0e01a72bc3d16afe4a13c6819442719df1eba7" in reg["kinyarwanda-bible"].url


def test_builtin_checksums_match_the_shared_copies():
    if not SHARED.is_dir():
        pytest.skip("../shared/corpora not present (fresh clone)")
    reg = corpus.registry()
    for name, fn in SHARED_FILES.items():
        data = (SHARED / fn).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (reg[name].sha256, reg[name].size), name


def test_registry_override(tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, [entry("mine", "file:///nowhere", b"x")])
    assert list(corpus.registry()) == ["mine"]
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(TextstreamError, match="registry.json: corpus registry is not valid JSON"):
        corpus.registry()


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TEXTSTREAM_CACHE")
    assert corpus.cache_dir() == tmp_path / "xdg" / "textstream"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpus.cache_dir() == tmp_path / "home" / ".cache" / "textstream"


# --- download --------------------------------------------------------------------------------
def test_fetch_downloads_once_with_progress(tmp_path, monkeypatch, server):
    base, www, log = server
    (www / "t.txt").write_bytes(TEXT)
    use_registry(tmp_path, monkeypatch, [entry("tiny", f"{base}/t.txt", TEXT)])
    seen = []
    path = corpus.fetch("tiny", on_progress=lambda *a: seen.append(a))
    assert path.parent == tmp_path / "cache" / "corpora" and path.read_bytes() == TEXT
    assert path.name == f"tiny-{hashlib.sha256(TEXT).hexdigest()[:12]}.txt"
    assert seen[0] == ("download tiny", 0, len(TEXT)) and seen[-1] == ("download tiny", len(TEXT), len(TEXT))
    assert len(log) == 1
    assert corpus.fetch("tiny") == path and len(log) == 1  # cached: no second request
    assert corpus.resolve(["tiny"]) == [path]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries left


def test_fetch_from_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_bytes(TEXT)
    use_registry(tmp_path, monkeypatch, [entry("local", src.as_uri(), TEXT)])
    assert corpus.fetch("local").read_bytes() == TEXT


def test_checksum_mismatch_removes_the_download(tmp_path, monkeypatch, server):
    base, www, _ = server
    (www / "t.txt").write_bytes(TEXT + b"tampered")
    good = hashlib.sha256(TEXT).hexdigest()
    got = hashlib.sha256(TEXT + b"tampered").hexdigest()
    use_registry(tmp_path, monkeypatch, [entry("tiny", f"{base}/t.txt", TEXT)])
    with pytest.raises(TextstreamError) as e:
        corpus.fetch("tiny")
    msg = str(e.value)
    assert "tiny" in msg and f"expected sha256 {good}" in msg and f"got {got}" in msg and "\n" not in msg
    assert list((tmp_path / "cache" / "corpora").iterdir()) == []


def test_zipped_corpus_is_unpacked(tmp_path, monkeypatch, server):
    base, www, log = server
    with zipfile.ZipFile(www / "c.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner", TEXT)
        z.writestr("README", b"other member")
    data = (www / "c.zip").read_bytes()
    use_registry(tmp_path, monkeypatch, [entry("zipped", f"{base}/c.zip", data, member="inner"),
                                         entry("wrong", f"{base}/c.zip", data, member="missing")])
    path = corpus.fetch("zipped")
    assert path.read_bytes() == TEXT and path.name.startswith("zipped-") and path.suffix == ".txt"
    assert corpus.fetch("zipped") == path and len(log) == 1
    with pytest.raises(TextstreamError, match="no member 'missing'"):
        corpus.fetch("wrong")
    left = sorted(p.name for p in path.parent.iterdir())
    assert not [n for n in left if n.startswith("wrong") and n.endswith(".txt") or n.endswith(".tmp")], left


def test_offline_names_the_url_and_the_workaround(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/corpus.txt"
    use_registry(tmp_path, monkeypatch, [entry("far", url, TEXT)])
    with pytest.raises(TextstreamError) as e:
        corpus.fetch("far")
    msg = str(e.value)
    assert url in msg and "download it yourself" in msg and "local file path" in msg and "\n" not in msg
    assert list((tmp_path / "cache" / "corpora").iterdir()) == []


def test_http_error(tmp_path, monkeypatch, server):
    base, _, _ = server
    use_registry(tmp_path, monkeypatch, [entry("gone", f"{base}/missing.txt", TEXT)])
    with pytest.raises(TextstreamError, match=r"cannot download gone from .*missing\.txt \(HTTP 404 "):
        corpus.fetch("gone")


def test_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, [entry("alpha", "file:///a", b"a"), entry("beta", "file:///b", b"b")])
    with pytest.raises(TextstreamError, match=r"unknown corpus 'gamma'; known corpora: alpha, beta"):
        corpus.fetch("gamma")
    with pytest.raises(TextstreamError, match=r"gamma: no such file or directory, .*known corpora: alpha, beta"):
        corpus.resolve(["gamma"])


# --- the default corpus ----------------------------------------------------------------------
def test_default_corpus_is_written_once():
    from pydoc_data.topics import topics

    path = corpus.default_corpus()
    text = path.read_text(encoding="utf-8")
    assert text == "\n\n".join(topics[k] for k in sorted(topics))
    assert 300_000 < len(text) < 1_000_000
    stamp = path.stat().st_mtime_ns
    assert corpus.default_corpus() == path and path.stat().st_mtime_ns == stamp
    assert corpus.resolve([]) == [path]
    assert "pydoc_data" in corpus.DEFAULT_DESCRIPTION


# --- files and directories -------------------------------------------------------------------
def test_directory_is_walked_in_sorted_order_text_only(tmp_path):
    d = tmp_path / "d"
    for rel, data in [("z.txt", b"z"), ("a/b.md", b"b"), ("a/a.py", b"a"), ("A.txt", b"A"), ("m/n/o.rst", b"o"),
                      (".git/config", b"hidden"), ("a/.secret", b"hidden"), ("pic.png", b"\x89PNG\x00\x00"),
                      ("latin1.txt", "caf\xe9".encode("latin-1")), ("empty.txt", b"")]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    got = [p.relative_to(d).as_posix() for p in corpus.resolve([d])]
    assert got == ["A.txt", "a/a.py", "a/b.md", "m/n/o.rst", "z.txt"]


def test_text_sniffing_accepts_a_char_cut_by_the_sniff_window(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"x" * 8191 + "é".encode() + b"more")  # é straddles the 8192-byte window
    assert corpus.is_text_file(p)


def test_directory_without_text_files(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(TextstreamError, match=r"bin: no text files in this directory"):
        corpus.resolve([d])


def test_files_and_missing_paths(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("hi")
    assert corpus.resolve([f, str(f)]) == [f, f]
    with pytest.raises(TextstreamError, match=r"sub/missing\.txt: no such file or directory$"):
        corpus.resolve([str(tmp_path / "sub" / "missing.txt")])


# --- path safety -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../ESCAPE", "..", ".hidden", "a/b", "a\\b", "", "x" * 101, "nul\0", "tab\tname",
                                  "caf\u00e9"])
def test_crafted_registry_names_are_rejected(tmp_path, monkeypatch, name):
    src = tmp_path / "src.txt"
    src.write_bytes(TEXT)
    use_registry(tmp_path, monkeypatch, [entry(name, src.as_uri(), TEXT)])
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(TextstreamError, match="corpus name .* is not a safe file name") as e:
        corpus.fetch(name)
    assert "\n" not in str(e.value) and "registry.json" in str(e.value)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, in the cache or outside it


def test_crafted_registry_checksum_is_rejected(tmp_path, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_bytes(TEXT)
    use_registry(tmp_path, monkeypatch, [entry("ok", src.as_uri(), TEXT, sha256="0" * 12 + "/../../../ESCAPE")])
    with pytest.raises(TextstreamError, match=r"corpus 'ok': sha256 must be 64 hex digits"):
        corpus.fetch("ok")
    assert not list(tmp_path.rglob("*ESCAPE*")) and not (tmp_path / "cache").exists()


def test_safe_name():
    for name in ["nietzsche", "kinyarwanda-bible", "text8", "a.b_c+d-1", "x" * 100]:
        assert corpus.safe_name(name, "corpus name") == name
    with pytest.raises(TextstreamError, match=r"^cache file '\.\./x' is not a safe file name"):
        corpus.safe_name("../x", "cache file")
