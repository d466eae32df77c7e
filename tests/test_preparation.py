"""prepare(): decoding the token files gives the normalised text back, whatever the chunking."""
import ast
import importlib
import math
import os
from pathlib import Path

import numpy as np
import pytest

from textstream import fsutil
from textstream.errors import TextstreamError
from textstream.data.preparation import prepare
from textstream.data.prepared import load_prepared
from textstream.progress import Progress
from textstream.data.vocab import OOV_CHAR

from textstream.data import preparation as tokens

KINYARWANDA = ("Mbere na mbere Imana yaremye ijuru n’isi.\n"
               "Imana iravuga iti “Habeho umucyo”, umucyo ubaho. Ā ā, ī, ū: inyajwi ndende.\n"
               "Uwiteka ni we mwungeri wanjye, sinzagira icyo nkena.\n") * 3


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def decoded(prep):
    return prep.vocab.decode(prep.ids("train")) + prep.vocab.decode(prep.ids("val"))


def normalised(text, lowercase=False):
    text = text.replace("\r\n", "\n")
    return text.lower() if lowercase else text


ASCII = "The quick brown fox jumps over the lazy dog. 0123456789!\n" * 20


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 22])
@pytest.mark.parametrize("text", [ASCII, KINYARWANDA], ids=["ascii", "kinyarwanda"])
def test_round_trip(tmp_path, text, chunk_size):
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", chunk_size=chunk_size, min_chars=1)
    assert decoded(prep) == normalised(text)
    assert prep.train_chars + prep.val_chars == len(text)
    assert prep.vocab.chars == sorted(set(text))  # ids in code point order
    assert prep.vocab.counts == [text.count(c) for c in prep.vocab.chars]
    # the same through load_prepared
    again = load_prepared(tmp_path / "out")
    assert decoded(again) == normalised(text) and again.vocab.chars == prep.vocab.chars


@pytest.mark.parametrize("char", ["ā", "“", "😀"])
def test_multibyte_char_split_across_chunks(tmp_path, char):
    text = ("abcdef" + char + "xyz\n") * 20  # the char starts at byte 6: it straddles the 7-byte chunk boundary
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", chunk_size=7, min_chars=1)
    assert decoded(prep) == text
    assert char in prep.vocab.chars


def test_crlf_at_chunk_boundary(tmp_path):
    data = b"abcdef\r\nghijkl\r\nmn\ro\r\n" * 10 + b"end\r"  # \r is the 7th byte: a chunk ends on it
    src = write(tmp_path / "src.txt", data)
    prep = prepare([src], tmp_path / "out", chunk_size=7, min_chars=1)
    expected = data.decode().replace("\r\n", "\n")
    assert decoded(prep) == expected
    assert expected.endswith("end\r") and "mn\ro" in expected  # lone CRs are kept
    assert prep.vocab.normalize(data.decode()) == expected


@pytest.mark.parametrize("chunk_size", [5, 1 << 22])
def test_lowercase(tmp_path, chunk_size):
    text = "Hello WORLD Ā Ī\r\nΟΔΟΣ ΣΟΦΙΑΣ ΚΑΙ ΛΟΓΟΣ. İstanbul\n" * 5
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", lowercase=True, chunk_size=chunk_size, min_chars=1)
    assert decoded(prep) == normalised(text, lowercase=True)  # incl. Greek final sigma at chunk edges
    assert not any(c.isupper() for c in prep.vocab.chars)
    assert prep.vocab.options["lowercase"] is True


def test_max_vocab_maps_rare_chars_to_one_oov_id(tmp_path):
    text = "a" * 10 + "c" * 5 + "b" * 5 + "d" + "e" * 2
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", max_vocab=3, val_fraction=0, min_chars=1)
    v = prep.vocab
    assert v.chars == ["a", "b", OOV_CHAR]  # b beats c on the tie (lower code point), OOV last
    assert v.oov_id == 2 and v.size == 3
    assert v.counts == [10, 5, 8]
    ids = prep.ids("train")
    assert ids.tolist() == [0] * 10 + [2] * 5 + [1] * 5 + [2] + [2] * 2
    assert decoded(prep) == "a" * 10 + OOV_CHAR * 5 + "b" * 5 + OOV_CHAR * 3
    # a larger limit than the alphabet changes nothing
    full = prepare([src], tmp_path / "full", max_vocab=50, min_chars=1)
    assert full.vocab.oov_id is None and full.vocab.chars == sorted(set(text))


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.1, 0.5])
def test_val_split_is_the_tail(tmp_path, fraction):
    text = "".join(chr(ord("a") + i % 26) for i in range(1003))
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", val_fraction=fraction, min_chars=1)
    n_val = math.floor(len(text) * fraction)
    assert (prep.train_chars, prep.val_chars) == (len(text) - n_val, n_val)
    assert prep.vocab.decode(prep.ids("train")) == text[: len(text) - n_val]
    assert prep.vocab.decode(prep.ids("val")) == text[len(text) - n_val:]
    assert prep.val_path.stat().st_size == n_val * prep.vocab.dtype.itemsize
    if fraction == 0:
        assert prep.ids("val").shape == (0,) and prep.val_path.exists()


@pytest.mark.parametrize("n_symbols,dtype", [(200, np.uint8), (256, np.uint8), (300, np.uint16),
                                             (66_000, np.uint32)])
def test_dtype_is_the_narrowest_that_fits(tmp_path, n_symbols, dtype):
    base = 0x10000 if n_symbols > 65536 else 0x100
    text = "".join(chr(base + i) for i in range(n_symbols)) * 2
    src = write(tmp_path / "src.txt", text)
    prep = prepare([src], tmp_path / "out", min_chars=1, val_fraction=0.1, tokens="chars")
    assert prep.vocab.dtype == np.dtype(dtype)
    assert prep.train_path.stat().st_size == prep.train_chars * np.dtype(dtype).itemsize
    assert decoded(prep) == text


def test_ids_are_read_only_memmaps(tmp_path):
    src = write(tmp_path / "src.txt", ASCII)
    prep = prepare([src], tmp_path / "out")
    ids = prep.ids("train")
    assert isinstance(ids, np.memmap) and ids.dtype == prep.vocab.dtype
    with pytest.raises(ValueError):
        ids[0] = 1
    with pytest.raises(ValueError):
        prep.ids("test")


def test_several_sources_are_concatenated_in_order(tmp_path):
    a = write(tmp_path / "a.txt", "first file\r")  # a CR at the end of a file stays a CR
    b = write(tmp_path / "b.txt", "\nsecond file\n" * 10)
    prep = prepare([b, a], tmp_path / "out", min_chars=1)
    assert decoded(prep) == "\nsecond file\n" * 10 + "first file\r"
    prep = prepare([a, b], tmp_path / "out2", min_chars=1)
    assert decoded(prep) == "first file\r" + "\nsecond file\n" * 10


def test_directory_source_in_sorted_order(tmp_path):
    d = tmp_path / "corpus"
    write(d / "b" / "2.txt", "two\n" * 20)
    write(d / "a.txt", "one\n" * 20)
    write(d / "b" / "1.txt", "three\n" * 20)
    write(d / ".hidden.txt", "hidden\n")
    write(d / "image.bin", b"\x89PNG\r\n\x1a\n\x00\x00")
    prep = prepare([d], tmp_path / "out", val_fraction=0)
    assert decoded(prep) == "one\n" * 20 + "three\n" * 20 + "two\n" * 20
    assert prep.vocab.meta["sources"] == [str(d / "a.txt"), str(d / "b" / "1.txt"), str(d / "b" / "2.txt")]


# --- cache -----------------------------------------------------------------------------------
def test_cache_hit_does_not_re_encode(tmp_path, monkeypatch):
    src = write(tmp_path / "src.txt", KINYARWANDA)
    first = prepare([src], tmp_path / "out")
    assert not first.cached
    stamp = [(tmp_path / "out" / n).stat().st_mtime_ns for n in ("vocab.json", "train.bin", "val.bin")]

    def boom(*a, **k):
        raise AssertionError("re-encoded")

    monkeypatch.setattr(tokens, "_encode", boom)
    again = prepare([src], tmp_path / "out")
    assert again.cached and again.vocab.chars == first.vocab.chars
    assert [(tmp_path / "out" / n).stat().st_mtime_ns for n in ("vocab.json", "train.bin", "val.bin")] == stamp
    assert decoded(again) == KINYARWANDA
    monkeypatch.undo()
    # other options or other content: a new preparation
    assert not prepare([src], tmp_path / "out", lowercase=True).cached
    write(src, KINYARWANDA + "more\n")
    assert not prepare([src], tmp_path / "out", lowercase=True).cached


def test_default_output_is_keyed_in_the_cache(tmp_path):
    src = write(tmp_path / "src.txt", ASCII)
    first = prepare([src])
    assert first.dir.parent == tmp_path / "cache" / "prepared" and not first.cached
    assert first.vocab.meta["cache_key"] == first.dir.name
    assert prepare([str(src)]).cached
    copy = write(tmp_path / "elsewhere" / "copy.txt", ASCII)  # same bytes elsewhere: same key
    assert prepare([copy]).dir == first.dir
    assert prepare([src], val_fraction=0.2).dir != first.dir


def test_damaged_output_is_prepared_again(tmp_path):
    src = write(tmp_path / "src.txt", ASCII)
    prepare([src], tmp_path / "out")
    with open(tmp_path / "out" / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(TextstreamError, match="train.bin.*prepare the corpus again"):
        load_prepared(tmp_path / "out")
    again = prepare([src], tmp_path / "out")
    assert not again.cached and decoded(again) == ASCII


def test_cache_hit_still_checks_min_chars(tmp_path):
    src = write(tmp_path / "src.txt", "x" * 100)
    prepare([src], tmp_path / "out", min_chars=10)
    with pytest.raises(TextstreamError, match="corpus too short"):
        prepare([src], tmp_path / "out", min_chars=1000)


# --- bad input -------------------------------------------------------------------------------
def test_missing_source(tmp_path):
    with pytest.raises(TextstreamError, match=r"nope\.txt: no such file or directory"):
        prepare([tmp_path / "nope.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_file(tmp_path):
    src = write(tmp_path / "empty.txt", b"")
    with pytest.raises(TextstreamError, match=r"empty\.txt: empty file"):
        prepare([src], tmp_path / "out")


def test_binary_file_names_the_nul_offset(tmp_path):
    src = write(tmp_path / "data.bin", b"some text first " * 3 + b"\x00\x01\x02")
    with pytest.raises(TextstreamError, match=r"data\.bin: binary file \(NUL byte at offset 48\)"):
        prepare([src], tmp_path / "out", chunk_size=7)


@pytest.mark.parametrize("chunk_size", [5, 7, 1 << 22])
def test_invalid_utf8_names_the_byte_offset(tmp_path, chunk_size):
    data = "héllo wörld ".encode() * 3 + b"\xff rest"  # 14 bytes a repeat: the bad byte is at 42
    src = write(tmp_path / "bad.txt", data)
    with pytest.raises(TextstreamError, match=r"bad\.txt: invalid UTF-8 at byte offset 42 .*--errors replace"):
        prepare([src], tmp_path / "out", chunk_size=chunk_size)
    assert not (tmp_path / "out").exists()


def test_truncated_char_at_end_of_file(tmp_path):
    src = write(tmp_path / "cut.txt", b"x" * 70 + "“".encode()[:2])  # 2 of the 3 bytes
    with pytest.raises(TextstreamError, match=r"invalid UTF-8 at byte offset 70"):
        prepare([src], tmp_path / "out", chunk_size=7)


def test_errors_replace(tmp_path):
    src = write(tmp_path / "bad.txt", b"abc\xffdef" * 20)
    prep = prepare([src], tmp_path / "out", errors="replace")
    assert decoded(prep) == "abc\ufffddef" * 20
    assert prep.vocab.options["errors"] == "replace"


def test_too_short(tmp_path):
    src = write(tmp_path / "short.txt", "x" * 64)  # 64 - floor(64 * 0.05) = 61 train chars
    assert prepare([src], tmp_path / "ok", min_chars=61).train_chars == 61
    with pytest.raises(TextstreamError, match=r"short\.txt: corpus too short: 61 training characters, need at least 62"):
        prepare([src], tmp_path / "out", min_chars=62)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_found_before_the_work(tmp_path, monkeypatch):
    src = write(tmp_path / "src.txt", ASCII)
    blocker = write(tmp_path / "file", "not a directory")
    monkeypatch.setattr(tokens, "read_texts", lambda *a, **k: pytest.fail("read the sources first"))
    with pytest.raises(TextstreamError, match=r"cannot (create|write)"):
        prepare([src], blocker / "out")
    with pytest.raises(TextstreamError, match=r"exists and is not a directory"):
        prepare([src], blocker)


def test_read_only_output_still_serves_its_own_preparation(tmp_path, monkeypatch):
    """An output directory that cannot be written is fine for a cache hit; a miss names the problem."""
    src = write(tmp_path / "src.txt", ASCII)
    out = tmp_path / "out"
    first = prepare([src], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def read_only(d):
        raise TextstreamError(f"{d}: output directory is not writable (Read-only file system)")

    monkeypatch.setattr(tokens, "_make_dir", read_only)
    again = prepare([src], out)
    assert again.cached and again.vocab.chars == first.vocab.chars
    write(src, KINYARWANDA)
    with pytest.raises(TextstreamError, match=r"out: output directory is not writable"):
        prepare([src], out)
    with pytest.raises(TextstreamError, match=r"new: output directory is not writable"):
        prepare([src], tmp_path / "new")  # no vocab.json there: the problem comes before any work
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failure_keeps_the_previous_output_and_leaves_no_temporaries(tmp_path, monkeypatch):
    src = write(tmp_path / "src.txt", ASCII)
    out = tmp_path / "out"
    prepare([src], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write(src, KINYARWANDA)  # a new text: a cache miss that will be interrupted mid-encode

    def interrupt(label, done, total):
        if label == "encode" and done > 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "every", 1)  # a report after every piece: the interrupt comes mid-encode
    with pytest.raises(KeyboardInterrupt):
        prepare([src], out, chunk_size=16, on_progress=interrupt)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing else, nothing changed


def test_bad_source_in_a_new_directory_leaves_no_directory(tmp_path):
    good = write(tmp_path / "good.txt", ASCII)
    bad = write(tmp_path / "bad.txt", b"ok\x00")
    with pytest.raises(TextstreamError, match="NUL"):
        prepare([good, bad], tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()


def test_progress_is_reported(tmp_path):
    src = write(tmp_path / "src.txt", ASCII)
    seen = []
    prepare([src], tmp_path / "out", on_progress=lambda label, done, total: seen.append((label, done, total)))
    size = src.stat().st_size
    assert {"count", "encode"} <= {s[0] for s in seen}
    assert ("encode", size, size) in seen and ("count", size, size) in seen
    assert len(seen) < 20


def test_load_prepared_rejects_other_dirs(tmp_path):
    with pytest.raises(TextstreamError, match="not a prepared corpus"):
        load_prepared(tmp_path)


def test_no_tensorflow_or_rich_imports():
    for name in ("data.preparation", "data.textio", "data.sources", "data.cache", "fsutil", "progress", "data.vocab"):
        mod = importlib.import_module(f"textstream.{name}")
        tree = ast.parse(Path(mod.__file__).read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"tensorflow", "tf_keras", "keras", "rich"}, mod.__name__


def test_temporaries_use_hidden_names(tmp_path, monkeypatch):
    src = write(tmp_path / "src.txt", ASCII)
    names = []
    real = fsutil.tempfile.mkstemp

    def spy(*a, **k):
        fd, name = real(*a, **k)
        names.append(os.path.basename(name))
        return fd, name

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", spy)
    prepare([src], tmp_path / "out")
    assert any(n.startswith(".train.bin.") and n.endswith(".tmp") for n in names)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.bin", "val.bin", "vocab.json"]
