"""`eval` on SOURCEs: read like `prepare` reads (binary, invalid UTF-8, --errors), streamed, --unknown."""
import json

import pytest

from conftest import TEXT, make_run
from textstream.model.checkpoint import load_model
from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.training.evaluation import IdStream, evaluate, score, source_ids

BODY = TEXT * 30  # ~5,000 characters: several strips of 512 + more


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    return {"sequence": make_run(root, name="seq"), "next": make_run(root, name="next", objective="next")}


def whole_text_score(run, text: str) -> float:
    """What eval computed before it streamed: the whole text encoded in memory, then scored."""
    cfg, vocab, model = load_model(run)
    return score(model, cfg.objective, cfg.seq_len, IdStream(vocab.encode(text)), batch_size=64, vocab=vocab)


@pytest.mark.parametrize("objective", ["sequence", "next"])
def test_streamed_scores_equal_the_whole_text_scores(runs, tmp_path, objective):
    src = tmp_path / "src.txt"
    src.write_text(BODY, encoding="utf-8")
    want = whole_text_score(runs[objective], BODY)
    got = evaluate(runs[objective], [src])
    assert got["chars"] == want.chars == len(BODY) - 1 and got["token_count"] == want.tokens
    assert got["nats_per_char"] == want.nats_per_char  # the same ids, the same strips: the same sums


def test_source_ids_in_small_pieces_are_the_whole_texts_ids(runs, tmp_path):
    vocab = load_model(runs["sequence"])[1]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(BODY[:1000] + "\r\n" + BODY[1000:2000], encoding="utf-8")
    b.write_text(BODY[2000:], encoding="utf-8")
    with source_ids([a, b], vocab, chunk_size=7) as ids:
        got = ids.read(0, len(ids) + 10)  # clipped at the end
        assert len(ids) == len(BODY) + 1 and ids.read(5, 3).tolist() == got[5:8].tolist()
    assert got.tolist() == vocab.encode(BODY[:1000] + "\n" + BODY[1000:]).tolist()  # CRLF is LF


def test_invalid_utf8_and_binary_sources_are_one_line(runs, tmp_path, capsys):
    run = runs["sequence"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"It was the best \xff\xfe of times\n" * 20)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"It was\x00 the best")
    assert main(["eval", str(run), str(bad)]) == 2
    assert capsys.readouterr().err == (f"textstream: {bad}: invalid UTF-8 at byte offset 16 (invalid start byte); "
                                       f"pass --errors replace to read it as U+FFFD\n")
    assert main(["eval", str(run), str(binary)]) == 2
    assert capsys.readouterr().err == f"textstream: {binary}: binary file (NUL byte at offset 6), not UTF-8 text\n"
    # --errors replace reads the bad bytes as U+FFFD: outside this vocabulary, so they are listed ...
    assert main(["eval", str(run), str(bad), "--errors", "replace"]) == 2
    assert capsys.readouterr().err == (f"textstream: {bad}: 1 character(s) outside the vocabulary: '\ufffd' "
                                       f"(pass --unknown skip to drop them)\n")
    # ... and skipped with --unknown skip
    assert main(["eval", str(run), str(bad), "--errors", "replace", "--unknown", "skip", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    clean = "It was the best  of times\n" * 20
    assert result["chars"] == len(clean) - 1
    assert result["nats_per_char"] == whole_text_score(run, clean).nats_per_char


def test_unknown_characters_are_listed_from_every_source_or_skipped(runs, tmp_path, capsys):
    run = runs["sequence"]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(BODY[:3000] + "Ω" + BODY[3000:], encoding="utf-8")
    b.write_text("ZZ" + BODY[:100] + "ж", encoding="utf-8")
    assert main(["eval", str(run), str(a), str(b)]) == 2
    assert capsys.readouterr().err == (f"textstream: 2 files ({a}, ...): 3 character(s) outside the vocabulary: "
                                       f"'Z' 'Ω' 'ж' (pass --unknown skip to drop them)\n")
    assert main(["eval", str(run), str(a), "--unknown", "skip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nats_per_char"] == whole_text_score(run, BODY).nats_per_char
    with pytest.raises(TextstreamError, match="unknown must be 'error' or 'skip'"):
        evaluate(run, [a], unknown="drop")


def test_a_vocabulary_with_an_oov_id_maps_unknown_characters_to_it(tmp_path):
    run = make_run(tmp_path, text=TEXT + "\ufffd")
    vocab_file = run / "vocab.json"
    d = json.loads(vocab_file.read_text(encoding="utf-8"))
    d["oov_id"] = d["chars"].index("\ufffd")
    vocab_file.write_text(json.dumps(d), encoding="utf-8")
    src = tmp_path / "src.txt"
    src.write_text(BODY[:2000] + "Ωж" + BODY[2000:], encoding="utf-8")
    got = evaluate(run, [src])
    assert got["chars"] == len(BODY) + 1
    assert got["nats_per_char"] == whole_text_score(run, BODY[:2000] + "\ufffd\ufffd" + BODY[2000:]).nats_per_char


def test_eval_flags_are_checked(runs, tmp_path, capsys):
    src = tmp_path / "s.txt"
    src.write_text(BODY)
    assert main(["eval", str(runs["sequence"]), str(src), "--unknown", "maybe"]) == 2
    assert "argument --unknown: invalid choice: 'maybe'" in capsys.readouterr().err
    assert main(["eval", str(runs["sequence"]), str(src), "--errors", "ignore"]) == 2
    assert "argument --errors: invalid choice: 'ignore'" in capsys.readouterr().err


def test_no_temporary_is_left(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    src = tmp_path / "s.txt"
    src.write_text(BODY)
    evaluate(runs["sequence"], [src])
    with pytest.raises(TextstreamError):
        evaluate(runs["sequence"], [tmp_path / "missing.txt"])
    assert list((tmp_path / "t").iterdir()) == []
