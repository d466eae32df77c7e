"""`textstream prepare` and `textstream corpora`: exit codes, one-line errors, no partial output, no TensorFlow."""
import json
import re
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from textstream.cli import main
from textstream.data.prepared import load_prepared

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared" / "corpora"
TEXT = "Imana iravuga iti “Habeho umucyo”, umucyo ubaho. Ā ā\r\n" * 30


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TEXTSTREAM_REGISTRY", raising=False)


def test_prepare_then_cached(tmp_path, capsys):
    src = tmp_path / "src.txt"
    src.write_text(TEXT, encoding="utf-8", newline="")
    out = tmp_path / "out"
    assert main(["prepare", str(src), "-o", str(out), "--lowercase", "--val-fraction", "0.1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"wrote {out}") and "symbols" in err
    prep = load_prepared(out)
    assert prep.vocab.decode(prep.ids("train")) + prep.vocab.decode(prep.ids("val")) == \
        TEXT.replace("\r\n", "\n").lower()
    assert prep.vocab.options == {"lowercase": True, "val_fraction": 0.1, "max_vocab": None, "tokens": "auto",
                                   "errors": "strict"}
    assert main(["prepare", str(src), "-o", str(out), "--lowercase", "--val-fraction", "0.1"]) == 0
    assert capsys.readouterr().err.startswith(f"cached {out}")


def test_max_vocab_and_errors_options(tmp_path, capsys):
    src = tmp_path / "src.txt"
    src.write_bytes(b"aaaabbbcc\xffd" * 10)
    assert main(["prepare", str(src), "-o", str(tmp_path / "out"), "--max-vocab", "3", "--errors", "replace"]) == 0
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["chars"] == ["a", "b", "\ufffd"] and vocab["oov_id"] == 2 and vocab["dtype"] == "|u1"
    assert vocab["train_chars"] + vocab["val_chars"] == 110


def _offline_registry(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"corpora": [{"name": "far", "url": f"http://127.0.0.1:{port}/x.txt",
                                            "sha256": "0" * 64, "size": 10, "licence": "test",
                                            "description": "unreachable"}]}))
    return reg


BAD = {
    "missing": (lambda d: [str(d / "nope.txt")], r"nope\.txt: no such file or directory"),
    "empty": (lambda d: [str(_write(d / "empty.txt", b""))], r"empty\.txt: empty file"),
    "binary": (lambda d: [str(_write(d / "x.bin", b"text\x00more"))], r"x\.bin: binary file \(NUL byte at offset 4\)"),
    "utf8": (lambda d: [str(_write(d / "l1.txt", "caf\xe9 au lait".encode("latin-1") * 9))],
             r"l1\.txt: invalid UTF-8 at byte offset 3 "),
    "no_text_dir": (lambda d: [str(_mkdir_with(d / "imgs", "a.png", b"\x89PNG\x00"))],
                    r"imgs: no text files in this directory"),
    "too_short": (lambda d: [str(_write(d / "short.txt", b"tiny text"))], r"short\.txt: corpus too short"),
    "unknown_name": (lambda d: ["no-such-corpus"], r"no-such-corpus: .*known corpora: .*nietzsche"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _mkdir_with(d, name, data):
    d.mkdir()
    (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    make, pattern = BAD[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    args = make(inputs)
    out = tmp_path / "out"
    assert main(["prepare", *args, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textstream: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()  # no partial output, not even the directory


def test_unwritable_output(tmp_path, capsys):
    src = _write(tmp_path / "src.txt", TEXT.encode())
    blocker = _write(tmp_path / "file", b"x")
    assert main(["prepare", str(src), "-o", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"textstream: {blocker / 'out'}: cannot create") and err.count("\n") == 1


def test_offline_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_REGISTRY", str(_offline_registry(tmp_path)))
    assert main(["prepare", "far", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("textstream: cannot download far from http://127.0.0.1:") and err.count("\n") == 1
    assert "local file path" in err and not (tmp_path / "out").exists()


def test_failed_prepare_keeps_the_previous_output(tmp_path, capsys):
    src = _write(tmp_path / "src.txt", TEXT.encode())
    out = tmp_path / "out"
    assert main(["prepare", str(src), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = _write(tmp_path / "bad.txt", TEXT.encode() + b"\x00")
    assert main(["prepare", str(src), str(bad), "-o", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_corpora_lists_the_registry(capsys):
    assert main(["corpora"]) == 0
    out = capsys.readouterr().out
    for name in ("nietzsche", "kinyarwanda-bible", "tinyshakespeare", "enwik8", "text8", "(default)"):
        assert name in out


def test_help_and_prepare_do_not_import_tensorflow(tmp_path):
    src = _write(tmp_path / "src.txt", TEXT.encode())
    code = f"""
import contextlib, io, sys
from textstream.cli import main
for argv in (["--help"], ["prepare", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    assert "usage: textstream" in buf.getvalue()
assert main(["prepare", {str(src)!r}, "-o", {str(tmp_path / "out")!r}]) == 0
assert main(["corpora"]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras"))
print("heavy:", bad)
"""
    env = {"TEXTSTREAM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nietzsche.txt", "kinyarwanda-bible.txt", "tinyshakespeare.txt"])
def test_real_corpora_round_trip(tmp_path, capsys, name):
    if not SHARED.is_dir():
        pytest.skip("../shared/corpora not present (fresh clone)")
    src = SHARED / name
    assert main(["prepare", str(src), "-o", str(tmp_path / "out"), "--lowercase"]) == 0
    prep = load_prepared(tmp_path / "out")
    text = src.read_text(encoding="utf-8")
    assert prep.vocab.decode(prep.ids("train")) + prep.vocab.decode(prep.ids("val")) == \
        text.replace("\r\n", "\n").lower()
    assert prep.vocab.size < 256 and prep.vocab.dtype.itemsize == 1


def test_package_names_are_the_functions_whatever_was_imported_first():
    """``textstream.train`` etc. are the functions even after their modules were imported (no name clash)."""
    code = ("import textstream.training.loop, textstream.training.evaluation, textstream.data.preparation, textstream\n"
            "from textstream import train, evaluate, prepare\n"
            "assert all(callable(f) and f.__module__.startswith('textstream.') for f in (train, evaluate, prepare))\n"
            "assert textstream.train is train and textstream.prepare is prepare\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
