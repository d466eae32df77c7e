"""Token kinds: byte tokens round-trip any text, the byte decoder never splits a character, the auto rule."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from textstream.data import tokens as tokens_module
from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.data.preparation import prepare
from textstream.data.prepared import load_prepared
from textstream.data.vocab import OOV_CHAR, ByteDecoder, CharDecoder, Vocab
from textstream.data.tokens import AUTO_MAX_SYMBOLS, TokenChoice, choose_tokens, vocab_for

ROOT = Path(__file__).resolve().parents[1]
KINYARWANDA = ROOT / ".." / "shared" / "corpora" / "kinyarwanda-bible.txt"
# 1-, 2-, 3- and 4-byte characters, and a CRLF
MIXED = "plain ASCII, é ñ ß (2 bytes), € “quotes” 中文 (3 bytes), 😀 𝄞 (4 bytes)\r\nnext line\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))


def decoded(prep):
    return prep.vocab.decode(prep.ids("train")) + prep.vocab.decode(prep.ids("val"))


# --- byte tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 5, 64, 1 << 22])
def test_bytes_round_trip_with_2_3_and_4_byte_characters(tmp_path, chunk_size):
    src = tmp_path / "src.txt"
    src.write_bytes((MIXED * 20).encode("utf-8"))
    text = (MIXED * 20).replace("\r\n", "\n")
    prep = prepare([src], tmp_path / "out", tokens="bytes", chunk_size=chunk_size, val_fraction=0.1, min_chars=1)
    assert prep.vocab.is_bytes and prep.vocab.size == 256 and prep.vocab.dtype == np.dtype("u1")
    # the ids are the UTF-8 bytes of the normalised text, split by characters
    n_val = len(text) // 10
    assert prep.train_path.read_bytes() == text[:len(text) - n_val].encode("utf-8")
    assert prep.val_path.read_bytes() == text[len(text) - n_val:].encode("utf-8")
    assert (prep.train_chars, prep.val_chars) == (len(text) - n_val, n_val)
    assert prep.train_tokens + prep.val_tokens == len(text.encode("utf-8"))
    assert decoded(prep) == text
    assert prep.vocab.counts == np.bincount(np.frombuffer(text.encode(), np.uint8), minlength=256).tolist()
    saved = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert saved["tokens"] == "bytes" and "chars" not in saved and saved["size"] == 256
    again = load_prepared(tmp_path / "out")
    assert again.vocab.is_bytes and decoded(again) == text and again.val_tokens == prep.val_tokens


def test_bytes_round_trip_on_kinyarwanda(tmp_path):
    if not KINYARWANDA.is_file():
        pytest.skip("../shared/corpora/kinyarwanda-bible.txt not present (fresh clone)")
    prep = prepare([KINYARWANDA], tmp_path / "out", tokens="bytes", chunk_size=1 << 16)
    text = KINYARWANDA.read_text(encoding="utf-8").replace("\r\n", "\n")
    assert decoded(prep) == text
    assert prep.train_chars + prep.val_chars == len(text)
    assert prep.vocab.count_chars(prep.ids("val")) == prep.val_chars  # the split is on a character boundary
    assert prep.vocab.encode(text[:5000]).tolist() == list(text[:5000].encode("utf-8"))


def test_any_text_encodes_as_bytes():
    v = Vocab.of_bytes()
    assert v.unknown("never seen: 𝄞") == []
    assert v.encode("a€\r\n").tolist() == [0x61, 0xE2, 0x82, 0xAC, 0x0A]
    assert v.decode([0x61, 0xE2, 0x82, 0xAC]) == "a€"
    assert v.count_chars(np.frombuffer("é€😀a".encode(), np.uint8)) == 4
    assert v.chars.index("\n") == 10 and v.chars[0xE2] == OOV_CHAR  # what an id decodes to on its own
    with pytest.raises(TextstreamError, match="lone surrogate"):
        v.encode("bad \ud800")


def test_byte_decoder_holds_back_incomplete_characters():
    data = MIXED.encode("utf-8")
    for cut in range(len(data) + 1):  # every split point, in two chunks and byte by byte
        d = ByteDecoder()
        assert d(np.frombuffer(data[:cut], np.uint8)) + d(np.frombuffer(data[cut:], np.uint8)) == MIXED
    d = ByteDecoder()
    assert "".join(d(np.array([b])) for b in data) == MIXED
    d = ByteDecoder()
    assert d(np.array([0xF0, 0x9F])) == "" and d.pending == b"\xf0\x9f"
    twin = copy.copy(d)  # a fork carries the held-back bytes
    assert d(np.array([0x98, 0x80])) == "😀" and twin(np.array([0x98, 0x80])) == "😀"


def test_invalid_byte_sequences_become_replacement_characters():
    d = ByteDecoder()
    # a lone continuation byte, a sequence cut short by ASCII, a byte never used by UTF-8
    assert d(np.array([0x80, 0x41, 0xE2, 0x82, 0x41, 0xFF, 0x42])) == "\ufffdA\ufffdA\ufffdB"
    assert Vocab.of_bytes().decode([0xC3]) == "\ufffd"  # a whole text ending mid-character


# --- vocab.json -------------------------------------------------------------------------------
def test_vocab_json_says_what_its_ids_stand_for(tmp_path):
    old = {"format": "textstream-vocab/1", "chars": ["a", "b"], "counts": [3, 1], "oov_id": None,
           "dtype": "|u1", "size": 2, "options": {"lowercase": False}, "train_chars": 4, "val_chars": 0}
    (tmp_path / "vocab.json").write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(TextstreamError, match=r"vocab.json: not a vocab.json of this version of textstream \(no "):
        Vocab.load(tmp_path / "vocab.json")
    (tmp_path / "vocab.json").write_text(json.dumps({**old, "tokens": "chars"}), encoding="utf-8")
    v = Vocab.load(tmp_path / "vocab.json")
    assert v.tokens == "chars" and v.chars == ["a", "b"] and isinstance(v.decoder(), CharDecoder)
    assert TokenChoice.of(v).line() == "tokens: characters (--tokens chars): 2 distinct characters"
    (tmp_path / "vocab.json").write_text(json.dumps({**old, "tokens": "words"}), encoding="utf-8")
    with pytest.raises(TextstreamError, match="unknown tokens 'words'"):
        Vocab.load(tmp_path / "vocab.json")
    Vocab.of_bytes(options={"tokens": "bytes"}).save(tmp_path / "bytes.json")
    back = Vocab.load(tmp_path / "bytes.json")
    assert back.is_bytes and back.size == 256 and back.options == {"tokens": "bytes"}


# --- the auto rule ----------------------------------------------------------------------------
def histogram(pairs):
    counts = np.zeros(0x110000, np.int64)
    for cp, n in pairs:
        counts[cp] += n
    return counts


def test_auto_keeps_every_character_of_a_small_alphabet():
    counts = histogram([(ord(c), 100) for c in "abc"] + [(0x4E00 + i, 1) for i in range(AUTO_MAX_SYMBOLS - 3)])
    assert choose_tokens(counts[counts > 0], "auto", None) == ("chars", None)
    vocab, kept = vocab_for(counts, int(counts.sum()), tokens="auto", max_vocab=None, options={}, meta={})
    assert vocab.size == AUTO_MAX_SYMBOLS and vocab.oov_id is None and len(kept) == AUTO_MAX_SYMBOLS


def test_auto_with_thousands_of_rare_characters_maps_them_to_one_id():
    """95 frequent ASCII characters and 3,000 that occur once: the 255 most frequent cover >= 99.99%."""
    pairs = [(c, 1_000_000) for c in range(0x20, 0x7F)] + [(0x4E00 + i, 1) for i in range(3000)]
    counts = histogram(pairs)
    total = int(counts.sum())
    vocab, kept = vocab_for(counts, total, tokens="auto", max_vocab=None, options={"tokens": "auto"},
                            meta={"train_chars": total, "val_chars": 0})
    assert vocab.tokens == "chars" and vocab.size == AUTO_MAX_SYMBOLS and vocab.oov_id == AUTO_MAX_SYMBOLS - 1
    assert len(kept) == 255 and vocab.meta["distinct_chars"] == 95 + 3000
    mapped = 3000 - (255 - 95)  # ties among the rare ones go to the lower code points
    assert vocab.counts[vocab.oov_id] == mapped
    choice = TokenChoice.of(vocab)
    assert (choice.mapped, choice.distinct) == (mapped, 3095)
    assert choice.mapped_share == pytest.approx(mapped / total)
    assert choice.line() == ("tokens: characters (auto): the 255 most frequent of 3,095 distinct characters; "
                             f"the other {mapped:,} ({100 * mapped / total:.4f}% of the text) map to the "
                             "out-of-vocabulary id (U+FFFD)")


def test_auto_chooses_bytes_when_rare_characters_are_too_much_of_the_text(tmp_path, capsys):
    """ASCII text with 3,000 distinct CJK characters (a few percent of it): bytes, lossless."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "\n"]
    rare = [chr(0x4E00 + i) for i in range(3000)]
    pieces = list(rng.choice(words, 30_000)) + rare * 2
    rng.shuffle(pieces)
    text = " ".join(pieces)
    src = tmp_path / "src.txt"
    src.write_text(text, encoding="utf-8")
    assert main(["prepare", str(src), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    prep = load_prepared(tmp_path / "out")
    assert prep.vocab.is_bytes and decoded(prep) == text
    assert err[1].startswith(f"tokens: bytes (auto): 256 byte ids for {len(set(text)):,} distinct characters "
                             f"(the 255 most frequent cover 9")
    assert err[1].endswith(f"% of the text, under 99.99%), {len(text.encode()) / len(text):.3f} bytes per character")
    assert len(err) == 2


def test_auto_maps_rare_characters_to_the_oov_id_end_to_end(tmp_path, capsys, monkeypatch):
    """The same rule through prepare and the CLI line (coverage lowered so that a small file shows it)."""
    monkeypatch.setattr(tokens_module, "AUTO_COVERAGE", 0.9)
    text = ("abcdefgh " * 2000) + "".join(chr(0x4E00 + i) for i in range(400))
    src = tmp_path / "src.txt"
    src.write_text(text, encoding="utf-8")
    assert main(["prepare", str(src), "-o", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    prep = load_prepared(tmp_path / "out")
    assert prep.vocab.size == 256 and prep.vocab.oov_id == 255 and prep.vocab.chars[-1] == OOV_CHAR
    mapped = 400 - (255 - 9)
    assert decoded(prep) == text[:-mapped] + OOV_CHAR * mapped  # the rarest (ties: highest code points) map
    assert err[1] == (f"tokens: characters (auto): the 255 most frequent of 409 distinct characters; the other "
                      f"{mapped} ({100 * mapped / len(text):.4f}% of the text) map to the out-of-vocabulary id "
                      f"(U+FFFD)")


def test_explicit_choices_are_followed():
    counts = np.array([5] * 1000)
    assert choose_tokens(counts, "chars", None) == ("chars", None)
    assert choose_tokens(counts, "auto", 50) == ("chars", 50)
    assert choose_tokens(counts, "bytes", None) == ("bytes", None)
    assert choose_tokens(counts, "auto", None) == ("bytes", None)  # 255 of 1,000 equal ones cover 25.5%


def test_cache_key_includes_the_token_mode(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text(MIXED * 10, encoding="utf-8")
    a = prepare([src], None, tokens="chars", min_chars=1)
    b = prepare([src], None, tokens="bytes", min_chars=1)
    c = prepare([src], None, tokens="auto", min_chars=1)
    assert len({a.dir, b.dir, c.dir}) == 3 and b.vocab.is_bytes and not a.vocab.is_bytes
    assert prepare([src], None, tokens="bytes", min_chars=1).cached


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "bytes", "--max-vocab", "10"],
     "textstream: --max-vocab does not apply to --tokens bytes (always 256 byte ids); drop one of them or pass "
     "--tokens chars\n"),
    (["--tokens", "words"], None),
])
@pytest.mark.parametrize("command", ["prepare", "train"])
def test_bad_token_options_are_one_line_and_write_nothing(tmp_path, capsys, argv, message, command):
    src = tmp_path / "src.txt"
    src.write_text(MIXED * 10, encoding="utf-8")
    out = tmp_path / "out"
    assert main([command, str(src), "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("textstream: ")
    if message:
        assert err == message
    else:
        assert "--tokens" in err and "words" in err
    assert not out.exists() and not (tmp_path / "cache").exists()
    with pytest.raises(TextstreamError):
        prepare([src], out, tokens="words")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nietzsche.txt", "kinyarwanda-bible.txt", "tinyshakespeare.txt", None],
                         ids=["nietzsche", "kinyarwanda", "tinyshakespeare", "embedded-default"])
def test_small_corpora_keep_todays_representation(tmp_path, name):
    """auto on the corpora the project measures: every character, ids in code point order, no OOV: as before."""
    if name is not None and not (KINYARWANDA.parent / name).is_file():
        pytest.skip("../shared/corpora not present (fresh clone)")
    sources = [KINYARWANDA.parent / name] if name else []
    prep = prepare(sources, tmp_path / "auto")
    text = "".join(prep.vocab.decode(prep.ids(s)) for s in ("train", "val"))
    chars = sorted(set(text))
    assert prep.vocab.tokens == "chars" and prep.vocab.oov_id is None and prep.vocab.chars == chars
    assert prep.vocab.dtype == np.dtype("u1") and prep.train_tokens == prep.train_chars
    code_points = np.frombuffer(text.encode("utf-32-le"), "<u4")
    ids = np.searchsorted(np.array([ord(c) for c in chars]), code_points).astype(np.uint8)
    assert prep.train_path.read_bytes() + prep.val_path.read_bytes() == ids.tobytes()
    as_chars = prepare(sources, tmp_path / "chars", tokens="chars")
    assert as_chars.train_path.read_bytes() == prep.train_path.read_bytes()
    assert as_chars.vocab.counts == prep.vocab.counts


def test_whole_chars_cuts_the_pieces_of_characters_at_both_ends():
    b = Vocab.of_bytes()
    data = np.frombuffer("a€😀b".encode("utf-8"), np.uint8)  # 61 | E2 82 AC | F0 9F 98 80 | 62
    assert b.decode(b.whole_chars(data[2:])) == "😀b"  # a lone 82 AC at the start goes
    assert b.decode(b.whole_chars(data[:6])) == "a€"  # F0 9F at the end goes
    assert b.decode(b.whole_chars(data)) == "a€😀b" and len(b.whole_chars(data[2:3])) == 0
    c = Vocab(chars=["a", "b"])
    assert list(c.whole_chars(np.array([1, 0, 1]))) == [1, 0, 1]
