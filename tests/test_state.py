"""Saved sessions: restore == continue on both backends and across them; every damaged or foreign blob is one clear error."""
import json
import struct
import zlib

import numpy as np
import pytest

from conftest import make_run
from textstream.config import make_config
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.generation import state
from textstream.generation.generator import Generator
from textstream.generation.step_np import NumpyStep
from textstream.model.checkpoint import step_weights_of
from textstream.model.network import build_model


@pytest.fixture(scope="module")
def tf_gen(tiny_run):
    return Generator.load(tiny_run, backend="tf")


@pytest.fixture(scope="module")
def gens(tiny_gen, tf_gen):
    return {"numpy": tiny_gen, "tf": tf_gen}


def byte_gens(seed: int = 0, scale: float = 3.0):
    """A random-weight byte model on both backends (generates many multi-byte and invalid sequences)."""
    model = build_model(make_config("tiny"), 256)
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, scale / np.sqrt(max(w.shape[0], 1)), w.shape).astype(np.float32))
    tf_gen = Generator.from_model(model, Vocab.of_bytes())
    return {"numpy": Generator(NumpyStep(step_weights_of(model)), Vocab.of_bytes()), "tf": tf_gen}


def _crc_fixed(blob: bytes) -> bytes:
    """``blob`` with its checksum recomputed (an alteration the checksum cannot see)."""
    body = blob[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _with_header(blob: bytes, **changes) -> bytes:
    """``blob`` with header fields changed and a valid checksum."""
    _, version, size = struct.unpack_from("<16sHI", blob)
    header = json.loads(blob[22:22 + size])
    header.update(changes)
    text = json.dumps(header).encode()
    return _crc_fixed(blob[:16] + struct.pack("<HI", version, len(text)) + text + blob[22 + size:])


@pytest.mark.parametrize("backend", ["numpy", "tf"])
@pytest.mark.parametrize("settings", [{}, {"temperature": 0.7, "top_k": 5}, {"temperature": 1.3, "top_p": 0.8},
                                      {"temperature": 0.0}])
def test_restore_continues_exactly(gens, backend, settings):
    gen = gens[backend]
    s = gen.session("It was ", seed=11, **settings)
    s.sample(23)
    s.feed(" the age")
    blob = s.save()
    twin = gen.restore(blob)
    assert twin.sample(150) == s.sample(150)
    assert twin.settings == s.settings and twin.state["position"] == s.state["position"]


def test_a_blob_restores_on_the_other_backend(gens):
    for a, b in (("numpy", "tf"), ("tf", "numpy")):
        s = gens[a].session("it was the ", seed=5, temperature=0.9)
        s.sample(31)
        blob = s.save()
        assert gens[a].backend.fingerprint == gens[b].backend.fingerprint
        assert gens[b].restore(blob).sample(120) == s.sample(120)


@pytest.mark.parametrize("backend", ["numpy", "tf"])
def test_a_byte_session_saved_inside_a_character_finishes_it_after_restore(backend):
    gen = byte_gens()[backend]
    s = gen.session("It ", seed=3)
    for n in range(1, 200):  # find a cut inside a multi-byte character
        s.sample(1)
        if s._decoder.pending:
            break
    assert s._decoder.pending, "the random model never began a multi-byte character"
    blob = s.save()
    assert gen.restore(blob).sample(60) == s.sample(60)


def test_restore_resets_to_the_restored_state_and_forks_independently(tiny_gen):
    s = tiny_gen.session("It ", seed=2)
    s.sample(10)
    twin = tiny_gen.restore(s.save())
    first = twin.sample(40)
    twin.reset()
    assert twin.sample(40) == first
    assert twin.fork().sample(20) == twin.sample(20)


def test_blob_layout_and_size(tiny_gen):
    blob = tiny_gen.session("It ", seed=1).save()
    magic, version, size = struct.unpack_from("<16sHI", blob)
    assert (magic, version) == (state.MAGIC, state.VERSION)
    backend = tiny_gen.backend
    assert len(blob) == 22 + size + 8 * backend.layers * backend.units + 4
    header = json.loads(blob[22:22 + size])
    assert header["weights"] == backend.fingerprint and size < 400
    assert {"seed", "position", "temperature", "top_k", "top_p", "unknown", "pending", "held"} <= header.keys()


def test_another_model_is_refused_saying_what_differs(tiny_gen, tmp_path):
    blob = tiny_gen.session("It ", seed=1).save()
    other_weights = Generator.load(make_run(tmp_path, seed=1, name="w"))
    with pytest.raises(TextstreamError, match="another model.*different weights"):
        other_weights.restore(blob)
    other_shape = Generator.load(make_run(tmp_path, units=24, name="u"))
    with pytest.raises(TextstreamError, match=r"another model \(1 x 16 LSTM .* this one is 1 x 24"):
        other_shape.restore(blob)
    other_vocab = Generator.load(make_run(tmp_path, text="abcdefghijklmnopqrstuvwxyz It,.\n" * 2, name="v"))
    with pytest.raises(TextstreamError, match="another model"):
        other_vocab.restore(blob)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:30], "truncated"),
    (lambda b: b[:18], "truncated"),
    (lambda b: b + b"\0", "bytes after its end"),
    (lambda b: b[:-20] + bytes([b[-20] ^ 1]) + b[-19:], "checksum"),
    (lambda b: b[:40] + bytes([b[40] ^ 0x20]) + b[41:], "altered or corrupted"),
    (lambda b: b[:16] + struct.pack("<H", 2) + b[18:], "format version 2; this textstream reads version 1"),
    (lambda b: b"hello", "not a textstream session state"),
    (lambda b: b"", "not a textstream session state"),
    (lambda b: _with_header(b, temperature=-1), "damaged settings"),
    (lambda b: _with_header(b, top_p=7), "damaged settings"),
    (lambda b: _with_header(b, pending="e2"), "pending"),
    (lambda b: _with_header(b, seed=2 ** 40), "out of range"),
    (lambda b: _with_header(b, layers="1"), "model shape"),
])
def test_damaged_blobs_are_one_clear_error(tiny_gen, damage, message):
    blob = tiny_gen.session("It ", seed=1).save()
    with pytest.raises(TextstreamError, match=message):
        tiny_gen.restore(damage(blob))


def test_non_finite_states_are_refused(tiny_gen):
    s = tiny_gen.session("It ", seed=1)
    blob = bytearray(s.save())
    _, _, size = struct.unpack_from("<16sHI", blob)
    struct.pack_into("<f", blob, 22 + size, float("nan"))
    with pytest.raises(TextstreamError, match="NaN or Inf"):
        tiny_gen.restore(_crc_fixed(bytes(blob)))
    bad = dict(s.state)
    bad["c"] = np.full_like(bad["c"], np.inf)
    with pytest.raises(TextstreamError, match="NaN or Inf"):
        s.set_state(bad)
    with pytest.raises(TextstreamError, match="expected bytes"):
        tiny_gen.restore("not bytes")


def test_a_session_inside_a_regex_match_is_not_saved(tiny_gen):
    s = tiny_gen.session("It ", seed=1, regex="(was|is) [a-z]+")
    with pytest.raises(TextstreamError, match="regex match"):
        s.save()
