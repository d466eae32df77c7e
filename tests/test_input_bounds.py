"""Inputs are read with bounds: a prime, a fed text, a prime file and stop strings have a maximum and a clear error."""
from __future__ import annotations

import pytest

from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.generation import sampling


def test_a_prime_file_that_never_ends_is_one_line(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr("textstream.cli.generate.MAX_PRIME_FILE_BYTES", 1 << 16)  # /dev/zero: past any cap
    assert main(["generate", str(tiny_run), "--prime-file", "/dev/zero", "-n", "5", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/zero: more than 65,536 bytes" in err


def test_a_prime_file_at_the_cap_is_read(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("textstream.cli.generate.MAX_PRIME_FILE_BYTES", 64)
    prime = tmp_path / "prime.txt"
    prime.write_text("it was " * 9 + "i", encoding="utf-8")  # exactly 64 bytes
    assert main(["generate", str(tiny_run), "--prime-file", str(prime), "-n", "5", "--backend", "tf"]) == 0
    prime.write_text("it was " * 9 + "it", encoding="utf-8")  # 65
    assert main(["generate", str(tiny_run), "--prime-file", str(prime), "-n", "5", "--backend", "numpy"]) == 2
    assert "prime.txt: more than 64 bytes" in capsys.readouterr().err


def test_primes_fed_texts_and_stops_past_their_maximum_raise(tiny_gen, monkeypatch):
    monkeypatch.setattr(sampling, "MAX_TEXT_CHARS", 100)
    with pytest.raises(TextstreamError, match="the prime is 101 characters; at most 100"):
        tiny_gen.generate(["i" * 101], 3)
    with pytest.raises(TextstreamError, match="the prime is 101"):
        next(tiny_gen.stream("i" * 101, n=3))
    s = tiny_gen.session("it ", seed=1)
    with pytest.raises(TextstreamError, match="the text is 101 characters"):
        s.feed("i" * 101)
    s.feed("i" * 100)  # at the maximum: fed
    with pytest.raises(TextstreamError, match="17 stop strings; at most 16"):
        tiny_gen.generate(["it "], 3, stop=[f"s{i}" for i in range(17)])
    with pytest.raises(TextstreamError, match="a stop string of 1,025 characters; at most 1,024"):
        tiny_gen.generate(["it "], 3, stop="w" * 1025)


def test_cli_stop_strings_past_the_maximum_are_one_line(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "-n", "5", "--stop", "w" * 1025, "--backend", "numpy"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
