"""Byte models: generation never splits a character, per-character figures, runs of either kind; old runs."""
import json
import re
import math

import numpy as np
import pytest

from textstream.cli import main
from textstream.config import TrainConfig, make_config
from textstream.training.evaluation import IdStream, evaluate, score
from textstream.generation.generator import Generator
from textstream.model.network import build_model
from textstream.model.run import RunPaths
from textstream.training.loop import train
from textstream.data.vocab import Vocab

from test_training import write_text

EURO = list("€".encode("utf-8"))  # E2 82 AC


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    return write_text(tmp_path / "corpus.txt", n_lines=200, extra="\nÉté à Kigali: “Muraho” 😀 €5\n" * 20)


def byte_model(successor: dict[int, int] | None = None, *, always: int | None = None):
    """A one-layer byte model that, whatever the state, follows ``successor`` (next byte after each byte).

    Each byte of ``successor`` owns one LSTM unit: its kernel row opens the
    cell candidate of that unit only (gates saturated, previous cell forgotten),
    and the head gives that unit's successor a logit of about 38. With
    ``always``, the head's bias makes that byte win after anything.
    """
    successor = successor or {}
    units = max(1, len(successor))
    model = build_model(make_config("tiny", units=units), 256)
    cell = model.lstms[0].cell
    kernel = np.zeros((256, 4 * units), np.float32)
    bias = np.zeros(4 * units, np.float32)
    bias[:units], bias[units:2 * units], bias[3 * units:] = 20.0, -20.0, 20.0  # input open, forget, output open
    head = np.zeros((units, 256), np.float32)
    head_bias = np.zeros(256, np.float32)
    for j, (byte, nxt) in enumerate(successor.items()):
        kernel[byte, 2 * units:3 * units] = -20.0
        kernel[byte, 2 * units + j] = 20.0
        head[j, nxt] = 50.0
    if always is not None:
        head_bias[always] = 100.0
    cell.kernel.assign(kernel)
    cell.recurrent_kernel.assign(np.zeros_like(cell.recurrent_kernel.numpy()))
    cell.bias.assign(bias)
    model.head.kernel.assign(head)
    model.head.bias.assign(head_bias)
    return Generator.from_model(model, Vocab.of_bytes())


def cycle(text: str) -> dict[int, int]:
    data = list(text.encode("utf-8"))
    return {b: data[(i + 1) % len(data)] for i, b in enumerate(data)}


def test_generation_holds_back_the_bytes_of_an_incomplete_character():
    gen = byte_model(cycle("€"))
    s = gen.session("€", temperature=0.0)  # after AC comes E2, 82, AC, E2, ...
    chunks = [s.sample(1) for _ in range(9)]
    assert chunks == ["", "", "€"] * 3  # never a broken character, never a replacement character
    s.sample(1)  # E2 held back ...
    twin = s.fork()  # ... and copied by the fork
    assert s.sample(2) == "€" and twin.sample(5) == "€€" and twin.sample(1) == ""
    pieces = list(gen.stream("€", temperature=0.0, n=3000))
    assert "".join(pieces) == "€" * 1000 and all("\ufffd" not in p for p in pieces)
    assert gen.generate(["€", "€"], 31, temperature=0.0) == ["€" * 10] * 2  # the 31st byte is held back


def test_stop_strings_and_primes_work_on_decoded_text():
    gen = byte_model(cycle("a€😀"))
    assert gen.generate(["a€😀"], 70, temperature=0.0)[0] == "a€😀" * 8 + "a€"
    assert gen.generate(["a€😀"], 70, temperature=0.0, stop="😀a")[0] == "a€"
    assert "".join(gen.stream("a€😀", temperature=0.0, n=70, stop="€😀")) == "a"
    s = gen.session("a€", temperature=0.0)
    assert s.sample(4) == "😀"
    s.feed("a")
    assert s.sample(3) == "€"


def test_feeding_text_ends_a_character_sampled_only_in_part():
    """Bytes held back before ``feed`` can no longer be completed: U+FFFD, never glued to later bytes."""
    gen = byte_model(cycle("€"))
    s = gen.session("€", temperature=0.0)
    assert s.sample(1) == ""  # E2 held back
    s.feed("€")  # the model reads a whole other character after it
    assert s.sample(3) == "\ufffd€"
    s.feed("€")  # nothing held back: nothing owed
    assert s.sample(3) == "€"


def test_a_sampled_lone_continuation_byte_becomes_u_fffd():
    gen = byte_model(always=0x80)
    assert gen.generate(["x"], 5, temperature=1.0, seed=1)[0] == "\ufffd" * 5
    assert "".join(gen.stream("x", temperature=0.0, n=40)) == "\ufffd" * 40
    assert gen.session("x", temperature=0.5, seed=2).sample(7) == "\ufffd" * 7


def test_per_character_figures_of_char_and_byte_models_agree_on_ascii():
    """The same logits from a character model and a byte model: equal nats per character and per token."""
    from textstream._tf import tf

    text = "It was the best of times, it was the worst of times.\n" * 8
    chars = Vocab(chars=sorted(set(text)))
    cfg = make_config("tiny", units=16)
    char_model = build_model(cfg, chars.size)
    rng = np.random.default_rng(0)
    for w in char_model.weights:
        w.assign(rng.normal(0.0, 3.0 / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    bytes_model = build_model(cfg, 256)
    rows = [ord(c) for c in chars.chars]
    kernel = np.zeros((256, 64), np.float32)
    kernel[rows] = char_model.lstms[0].cell.kernel.numpy()
    bytes_model.lstms[0].cell.kernel.assign(kernel)
    bytes_model.lstms[0].cell.recurrent_kernel.assign(char_model.lstms[0].cell.recurrent_kernel)
    bytes_model.lstms[0].cell.bias.assign(char_model.lstms[0].cell.bias)
    head, head_bias = np.zeros((16, 256), np.float32), np.full(256, -1e4, np.float32)  # other bytes: probability 0
    head[:, rows], head_bias[rows] = char_model.head.kernel.numpy(), char_model.head.bias.numpy()
    bytes_model.head.kernel.assign(head)
    bytes_model.head.bias.assign(head_bias)
    byte_vocab = Vocab.of_bytes()
    c_ids, b_ids = chars.encode(text), byte_vocab.encode(text)
    np.testing.assert_allclose(tf.nn.log_softmax(bytes_model(b_ids[None]))[0].numpy()[:, rows],
                               tf.nn.log_softmax(char_model(c_ids[None]))[0].numpy(), atol=1e-5)
    for objective_kw in ({}, {"burn_in": 7}):
        c = score(char_model, "sequence", 16, IdStream(c_ids[40:], c_ids[:40]), batch_size=3, vocab=chars,
                  **objective_kw)
        b = score(bytes_model, "sequence", 16, IdStream(b_ids[40:], b_ids[:40]), batch_size=3, vocab=byte_vocab,
                  **objective_kw)
        assert (c.tokens, c.chars) == (b.tokens, b.chars) == (len(text) - 40, len(text) - 40)
        assert b.nats_per_char == pytest.approx(c.nats_per_char, rel=1e-5)
        assert b.nats_per_token == pytest.approx(c.nats_per_token, rel=1e-5) == pytest.approx(b.nats_per_char)


def test_byte_figures_count_characters_not_bytes():
    model = build_model(make_config("tiny"), 256)
    ids = Vocab.of_bytes().encode("aé€😀" * 5)  # 20 characters, 50 bytes
    s = score(model, "sequence", 16, IdStream(ids), vocab=Vocab.of_bytes())
    assert (s.tokens, s.chars) == (49, 19)  # the first byte has no context: left out
    assert s.nats_per_char == pytest.approx(s.nats / 19) and s.nats_per_token == pytest.approx(s.nats / 49)


def test_a_byte_run_trains_validates_generates_and_evaluates(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "20", "--no-samples",
                 "--tokens", "bytes", "--val-fraction", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "tokens: bytes (--tokens bytes): 256 byte ids for" in err and "bits/byte" in err
    assert TrainConfig.load(run / "config.json").tokens == "bytes"
    saved = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    assert saved["tokens"] == "bytes" and saved["val_tokens"] > saved["val_chars"]
    (val,) = RunPaths(run).read_metrics("val")
    assert val["val_tokens"] > val["val_chars"] == saved["val_chars"]  # every character scored, in bytes
    assert val["val_bits_per_char"] > val["val_bits_per_token"] and val["val_seconds"] > 0
    result = evaluate(run)
    assert result["tokens"] == "bytes" and result["chars"] == saved["val_chars"]
    assert result["token_count"] == saved["val_tokens"]
    assert result["nats_per_char"] == pytest.approx(val["val_nats_per_char"], rel=1e-5)
    assert result["bits_per_token"] == pytest.approx(result["nats_per_token"] / math.log(2))
    assert main(["eval", str(run)]) == 0
    assert "bits/byte" in capsys.readouterr().out
    text = Generator.load(run).generate(["Kigali 😀 "], 200, temperature=1.0, seed=3)[0]
    assert isinstance(text, str) and text.encode("utf-8")  # whole characters (U+FFFD at worst)
    # resuming with another token kind is refused, and writes nothing
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["train", "-o", str(run), "--resume", "--steps", "30", "--tokens", "chars"]) == 2
    assert capsys.readouterr().err == "textstream: --resume keeps the run's settings; cannot change: --tokens\n"
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def written_without_tokens(run):
    """Rewrite a run directory (and its prepared corpus) without the ``tokens`` fields, as no version writes."""
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    del config["tokens"]
    (run / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    prepared = RunPaths(run).prepared_dir()
    for path in (run / "vocab.json", prepared / "vocab.json"):
        vocab = json.loads(path.read_text(encoding="utf-8"))
        vocab.pop("tokens")
        path.write_text(json.dumps(vocab, indent=1, ensure_ascii=False), encoding="utf-8")
    return prepared


def test_a_run_directory_of_another_version_is_one_line_naming_the_file(corpus, tmp_path, capsys):
    """No guess about what an id stands for: generate, eval and resume refuse, naming the file, and change nothing."""
    run = tmp_path / "run"
    train(make_config("tiny", steps=10, samples=False), [corpus], run)
    written_without_tokens(run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    for argv in (["generate", str(run), "-n", "5"], ["eval", str(run)],
                 ["train", "-o", str(run), "--resume", "--steps", "15", "--no-samples"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.fullmatch(rf"textstream: {re.escape(str(run))}/(config|vocab)\.json: not a \1\.json of this "
                            rf"version of textstream \(no \"?tokens\"?\)\n", err), (argv, err)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
