"""``textstream export``: each artefact gives the Generator's logits and text, without textstream; bad requests.

One export of each kind of the tiny run is shared by the session (``artefacts``).
Tolerances: float artefacts match the step model's logits to 1e-5; the
quantised LiteRT files are compared on log-probabilities, 5e-3 (float16) and
0.1 (dynamic int8), against log-probabilities of a few units.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_run
from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.export import export_run
from textstream.generation.sampling import seed_u32

ROOT = Path(__file__).resolve().parents[1]
PRIME = "it was the "
README_EXAMPLES = ("savedmodel", "litert", "keras")
HAS_LITERT = subprocess.run([sys.executable, "-c", "import ai_edge_litert.interpreter"],
                            capture_output=True).returncode == 0
needs_litert = pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert is not installed (pip install ai-edge-litert; "
                                                         "wheels for Linux and macOS)")

# runs a script with some modules unimportable: python -c BLOCKED "mod1,mod2" script.py args...
BLOCKED = ("import runpy, sys\n"
           "for name in sys.argv[1].split(','):\n"
           "    sys.modules[name] = None  # 'import name' raises ImportError\n"
           "sys.argv = sys.argv[2:]\n"
           "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_without(modules: tuple[str, ...], script: Path, *args) -> str:
    """The stdout of ``script args`` in a fresh interpreter where ``modules`` cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", BLOCKED, ",".join(modules), str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def readme_examples() -> dict[str, str]:
    """docs/export.md's ``<!-- example: NAME -->`` code blocks, by name."""
    text = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="session")
def artefacts(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run exported once in every format (the SavedModel through the CLI)."""
    out = tmp_path_factory.mktemp("exports")
    paths = {"savedmodel": out / "savedmodel", "keras": out / "keras", "litert": out / "float.tflite",
             "float16": out / "float16.tflite", "dynamic": out / "dynamic.tflite"}
    assert main(["export", str(tiny_run), "-o", str(paths["savedmodel"])]) == 0
    export_run(tiny_run, paths["keras"], format="keras")
    export_run(tiny_run, paths["litert"], format="litert")
    for q in ("float16", "dynamic"):
        export_run(tiny_run, paths[q], format="litert", quantize=q)
    return paths


@pytest.fixture(scope="session")
def saved(artefacts):
    from textstream._tf import tf

    return tf.saved_model.load(str(artefacts["savedmodel"]))


def step_through(saved, ids, h=None, c=None):
    """The SavedModel's ``step`` signature over ``ids`` (one stream): logits (T, V) and the state."""
    from textstream._tf import tf

    if h is None:
        state = saved.signatures["initial_state"](batch=tf.constant(1))
        h, c = state["h"], state["c"]
    logits = []
    for i in ids:
        out = saved.signatures["step"](ids=tf.constant([i], tf.int32), h=h, c=c)
        h, c = out["h"], out["c"]
        logits.append(out["logits"].numpy()[0])
    return np.array(logits), h, c


def generate(saved, primes, n, temperature, seed, position=None, h=None, c=None):
    """The SavedModel's ``generate`` signature; ``primes`` are id lists, padded with -1 to one length."""
    from textstream._tf import tf

    b = len(primes)
    width = max(len(p) for p in primes)
    padded = np.full((b, width), -1, np.int32)
    for row, p in enumerate(primes):
        padded[row, width - len(p):] = p  # left padding (right padding works the same)
    if h is None:
        state = saved.signatures["initial_state"](batch=tf.constant(b))
        h, c = state["h"], state["c"]
    return saved.signatures["generate"](
        prime_ids=tf.constant(padded), n=tf.constant(n, tf.int32), temperature=tf.constant(temperature, tf.float32),
        seed=tf.constant(seed, tf.int64), position=tf.constant(position or [0] * b, tf.int64), h=h, c=c)


# --- the SavedModel ---------------------------------------------------------------------------
def test_savedmodel_step_logits_equal_the_step_model(saved, tiny_gen):
    ids = tiny_gen.encode(PRIME + "wisdom")
    got, h, c = step_through(saved, ids)
    want = tiny_gen.backend.logits(ids[None])[0]
    assert np.abs(want).max() > 2  # far from flat: the comparison has teeth
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert h.shape == c.shape == (1, 1, 16)  # (layers, batch, units)


def test_savedmodel_generate_equals_the_generator(saved, tiny_gen):
    primes = [PRIME, "the "]
    ids = [list(tiny_gen.encode(p)) for p in primes]
    for temperature, seed in ((0.0, 0), (1.0, 7), (0.6, -3), (1.3, 2**40)):
        out = generate(saved, ids, 150, [temperature] * 2, [seed, seed + 1])
        texts = [tiny_gen.vocab.decode(row) for row in out["ids"].numpy()]
        assert texts == tiny_gen.generate(primes, 150, temperature=temperature, seed=seed), (temperature, seed)
        assert list(out["position"].numpy()) == [150, 150]
    assert len(set(texts[0])) > 5  # it did sample


def test_savedmodel_generate_continues_a_stream_exactly(saved, tiny_gen):
    ids = [list(tiny_gen.encode(PRIME))]
    whole = generate(saved, ids, 120, [0.9], [5])["ids"].numpy()
    first = generate(saved, ids, 50, [0.9], [5])
    none = generate(saved, [[]], 0, [0.9], [5], position=list(first["position"].numpy()), h=first["h"], c=first["c"])
    assert none["ids"].shape == (1, 0)
    rest = generate(saved, [[]], 70, [0.9], [5], position=list(none["position"].numpy()), h=none["h"], c=none["c"])
    np.testing.assert_array_equal(np.concatenate([first["ids"].numpy(), rest["ids"].numpy()], axis=1), whole)


def test_seed_folding_in_the_graph_equals_the_generator(saved):
    from textstream._tf import tf
    from textstream.export.graph import fold_seed

    seeds = [0, 1, -1, 7, 2**31, 2**32 + 5, -2**40, 2**63 - 1, -2**63, 123456789012345]
    got = fold_seed(tf.constant(seeds, tf.int64)).numpy()
    assert [int(s) for s in got] == [seed_u32(s) for s in seeds]


def test_vocabulary_signature_and_asset(saved, tiny_run, artefacts, tiny_gen):
    vocab = saved.signatures["vocabulary"]()
    assert [c.decode("utf-8") for c in vocab["chars"].numpy()] == tiny_gen.vocab.chars
    assert vocab["tokens"].numpy() == b"chars" and int(vocab["oov_id"]) == -1 and not bool(vocab["lowercase"])
    asset = artefacts["savedmodel"] / "assets" / "vocab.json"
    assert json.loads(asset.read_text(encoding="utf-8")) == json.loads((tiny_run / "vocab.json").read_text("utf-8"))
    assert asset.stat().st_mode & 0o044  # readable by others (umask permitting), not the temporary's 0600


@pytest.mark.parametrize("kw", [dict(layers=2, units=8, embedding=5), dict(layers=3, units=12)])
def test_step_graph_equals_the_step_model_for_other_shapes(tmp_path, kw):
    """In memory (no save): stacked layers and a learned embedding give the step model's logits and greedy text."""
    from textstream._tf import tf
    from textstream.model.checkpoint import load_model
    from textstream.export import vocab_info
    from textstream.export.graph import StepGraph
    from textstream.generation.generator import Generator

    cfg, vocab, model = load_model(make_run(tmp_path, **kw))
    graph = StepGraph.from_model(model, vocab_info(cfg, vocab))
    gen = Generator.from_model(model, vocab)
    ids = vocab.encode(PRIME)
    state = graph.initial_state(tf.constant(1))
    h, c, got = state["h"], state["c"], []
    for i in ids:
        out = graph.step(tf.constant([i], tf.int32), h, c)
        h, c = out["h"], out["c"]
        got.append(out["logits"].numpy()[0])
    np.testing.assert_allclose(np.array(got), gen.backend.logits(ids[None])[0], atol=1e-5)
    state = graph.initial_state(tf.constant(1))
    out = graph.generate(tf.constant([ids]), tf.constant(80), tf.constant([0.0]), tf.constant([0], tf.int64),
                         tf.constant([0], tf.int64), state["h"], state["c"])
    assert vocab.decode(out["ids"].numpy()[0]) == gen.generate([PRIME], 80, temperature=0.0)[0]


# --- LiteRT -----------------------------------------------------------------------------------
LITERT_PROBE = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

ids, n, results = [int(i) for i in sys.argv[1].split(",")], int(sys.argv[2]), {}
for path in sys.argv[3:]:
    interpreter = Interpreter(model_path=path)
    step = interpreter.get_signature_runner("step")
    state = interpreter.get_signature_runner("initial_state")(batch=np.array(2, np.int32))
    h, c, logits, text = state["h"], state["c"], [], list(ids)
    for t in range(len(ids) + n - 1):  # batch of 2: the same stream twice
        out = step(ids=np.array([text[t]] * 2, np.int32), h=h, c=c)
        h, c = out["h"], out["c"]
        assert np.array_equal(out["logits"][0], out["logits"][1])
        logits.append(out["logits"][0].tolist())
        if t >= len(ids) - 1:
            text.append(int(np.argmax(out["logits"][0])))
    results[path] = {"logits": logits[:len(ids)], "greedy": text[len(ids):], "state_shape": list(h.shape),
                     "tensorflow": "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None}
print(json.dumps(results))
"""


@needs_litert
def test_litert_files_give_the_step_model_logits_without_tensorflow(artefacts, tiny_gen, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(LITERT_PROBE, encoding="utf-8")
    ids = tiny_gen.encode(PRIME)
    files = [artefacts[k] for k in ("litert", "float16", "dynamic")]
    got = json.loads(run_without(("tensorflow", "textstream"), probe, ",".join(map(str, ids)), 60, *files))
    want = tiny_gen.backend.logits(ids[None])[0]
    greedy = tiny_gen.generate([PRIME], 60, temperature=0.0)[0]
    floats, half, dynamic = (got[str(f)] for f in files)
    np.testing.assert_allclose(floats["logits"], want, atol=1e-5)
    assert tiny_gen.vocab.decode(floats["greedy"]) == greedy
    assert floats["state_shape"] == [1, 2, 16] and not floats["tensorflow"]
    np.testing.assert_allclose(log_softmax(half["logits"]), log_softmax(want), atol=5e-3)
    np.testing.assert_allclose(log_softmax(dynamic["logits"]), log_softmax(want), atol=0.1)
    sizes = [f.stat().st_size for f in files]
    assert sizes[1] < sizes[0] and sizes[2] < sizes[0]


# --- Keras ------------------------------------------------------------------------------------
def test_keras_file_loads_with_stock_tf_keras_and_gives_the_model_logits(artefacts, tiny_run):
    from textstream._tf import tf, tf_keras
    from textstream.model.checkpoint import load_model

    _, vocab, model = load_model(tiny_run)
    loaded = tf_keras.models.load_model(artefacts["keras"] / "model.keras")  # no custom_objects
    ids = np.random.default_rng(3).integers(0, vocab.size, (2, 30))
    want = model(tf.constant(ids, tf.int32)).numpy()
    np.testing.assert_allclose(loaded(ids).numpy(), want, atol=1e-5)
    assert [layer.name for layer in loaded.layers] == ["ids", "one_hot", "lstm_0", "logits"]
    assert not loaded.get_layer("one_hot").trainable and loaded.optimizer is not None
    assert json.loads((artefacts["keras"] / "vocab.json").read_text("utf-8"))["chars"] == vocab.chars


@pytest.mark.parametrize("kw", [dict(layers=2, units=8, embedding=5, dropout=0.3),
                                dict(objective="next", seq_len=12, layers=2, units=8)])
def test_keras_model_of_other_shapes(tmp_path, kw):
    from textstream._tf import tf
    from textstream.model.checkpoint import load_model
    from textstream.export.kerasfile import functional_model

    cfg, vocab, model = load_model(make_run(tmp_path, **kw))
    keras_model = functional_model(model, cfg)
    ids = np.random.default_rng(4).integers(0, vocab.size, (3, 12))
    np.testing.assert_allclose(keras_model(ids).numpy(), model(tf.constant(ids, tf.int32)).numpy(), atol=1e-5)
    if cfg.dropout:  # compiled with the run's optimizer and loss: fine-tunes as it stands
        x, y = ids[:, :-1], ids[:, 1:]

        def nats():  # inference (no dropout), so the comparison is not noisy
            z = log_softmax(keras_model(x).numpy())
            return -np.take_along_axis(z, y[..., None], axis=-1).mean()

        before = nats()
        keras_model.fit(x, y, epochs=8, verbose=0)
        assert nats() < before


# --- docs/export.md's examples, run where textstream cannot be imported ---------------------------
def test_readme_examples_are_short(tmp_path):
    examples = readme_examples()
    assert sorted(examples) == sorted(README_EXAMPLES)
    for name, code in examples.items():
        assert len(code.strip().splitlines()) < 30, name
        assert "textstream" not in code, name


def write_example(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}_example.py"
    path.write_text(readme_examples()[name], encoding="utf-8")
    return path


def test_readme_savedmodel_example_gives_the_generators_seeded_text(artefacts, tiny_gen, tmp_path):
    out = run_without(("textstream",), write_example(tmp_path, "savedmodel"), artefacts["savedmodel"], PRIME, 100,
                      0.8, 3)
    assert out == PRIME + tiny_gen.generate([PRIME], 100, temperature=0.8, seed=3)[0] + "\n"


@needs_litert
def test_readme_litert_example_gives_the_generators_greedy_text(artefacts, tiny_gen, tmp_path):
    script = write_example(tmp_path, "litert")
    out = run_without(("textstream", "tensorflow"), script, artefacts["litert"], PRIME, 80, 0)
    assert out == PRIME + tiny_gen.generate([PRIME], 80, temperature=0.0)[0] + "\n"
    sampled = run_without(("textstream", "tensorflow"), script, artefacts["float16"], PRIME, 80, 1.0)
    assert sampled.startswith(PRIME) and len(sampled) == len(PRIME) + 81


def test_readme_keras_example_gives_the_generators_greedy_text(artefacts, tiny_gen, tmp_path):
    out = run_without(("textstream",), write_example(tmp_path, "keras"), artefacts["keras"], PRIME, 25, 0)
    assert out == PRIME + tiny_gen.generate([PRIME], 25, temperature=0.0)[0] + "\n"


# --- bad requests: one line, exit 2, nothing left behind ----------------------------------------
def entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def refused(capsys, argv, message: str) -> None:
    assert main(["export", *map(str, argv)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"textstream: {message}\n" and captured.out == ""


def test_bad_requests_are_one_line_and_leave_nothing(tiny_run, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model"
    assert main(["export", str(tiny_run), "-o", str(out), "--format", "onnx"]) == 2
    err = capsys.readouterr().err  # argparse's wording of the choices varies with the Python version
    assert err.startswith("textstream: argument --format: invalid choice: 'onnx'") and err.count("\n") == 1
    refused(capsys, [tiny_run, "-o", out, "--quantize", "dynamic"],
            "quantisation (dynamic) applies to the litert format only (got savedmodel)")
    refused(capsys, [tmp_path / "nowhere", "-o", out], f"{tmp_path / 'nowhere'}: no such run directory")
    refused(capsys, [out_dir, "-o", out], f"{out_dir}: not a textstream run directory (no config.json / vocab.json)")
    refused(capsys, [tiny_run, "-o", tmp_path / "missing" / "model"],
            f"{tmp_path / 'missing' / 'model'}: cannot write: {tmp_path / 'missing'} does not exist")
    a_file = out_dir / "file"
    a_file.write_text("x")
    refused(capsys, [tiny_run, "-o", a_file / "model"], f"{a_file / 'model'}: cannot write: {a_file} is not a directory")
    refused(capsys, [tiny_run, "-o", a_file], f"{a_file}: already exists (pass --force to replace an earlier export)")
    refused(capsys, [tiny_run, "-o", tiny_run, "--force"], f"{tiny_run}: holds the run being exported; "
                                                          f"choose another output")
    refused(capsys, [tiny_run, "-o", out_dir, "--force"],
            f"{out_dir}: is a directory that textstream's export did not write (no textstream-export.json, not a "
            f"LiteRT file); --force replaces only an earlier export (remove it yourself if you mean it)")
    with pytest.raises(TextstreamError, match="unknown export format 'onnx'"):
        export_run(tiny_run, out, format="onnx")
    assert entries(out_dir) == ["file"] and a_file.read_text() == "x"


def test_a_run_without_a_checkpoint_is_refused(tmp_path, capsys):
    run = make_run(tmp_path)
    for p in sorted((run / "checkpoints").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    refused(capsys, [run, "-o", tmp_path / "model"], f"{run}: no checkpoint yet (train first)")
    assert entries(tmp_path) == ["run"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_output_directory_is_refused(tiny_run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(capsys, [tiny_run, "-o", locked / "model"], f"{locked / 'model'}: cannot write: {locked} is not writable")
    finally:
        locked.chmod(0o755)
    assert entries(locked) == []


def test_force_replaces_an_export_and_a_failed_write_leaves_the_old_one(tiny_run, tmp_path, monkeypatch, capsys):
    import textstream.export as export

    out = tmp_path / "sm"
    assert main(["export", str(tiny_run), "-o", str(out), "--format", "keras"]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: keras, ")
    before = (out / "model.keras").read_bytes()

    def broken(format, dest, *args):
        dest.mkdir()
        (dest / "half.bin").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write", broken)
    assert main(["export", str(tiny_run), "-o", str(out), "--format", "keras", "--force"]) == 2
    err = capsys.readouterr().err  # the file, how much was written, what was kept (and the room left)
    assert err.startswith(f"textstream: {out}: cannot write: no space left on the device (7 bytes written, ")
    assert err.endswith(f" free); the earlier {out} is unchanged\n") and err.count("\n") == 1
    assert entries(tmp_path) == ["sm"] and (out / "model.keras").read_bytes() == before
    monkeypatch.undo()
    done = export_run(tiny_run, out, format="savedmodel", force=True)
    assert entries(tmp_path) == ["sm"]
    assert entries(out) == ["assets", "fingerprint.pb", "saved_model.pb", "textstream-export.json", "variables"]
    assert done.size == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def test_bad_requests_are_refused_before_tensorflow_loads(tiny_run, tmp_path):
    code = ("import sys\n"
            "from textstream.cli import main\n"
            f"for argv in (['--format', 'onnx'], ['--quantize', 'float16'], ['--checkpoint', 'worst']):\n"
            f"    assert main(['export', {str(tiny_run)!r}, '-o', {str(tmp_path / 'm')!r}, *argv]) == 2, argv\n"
            f"assert main(['export', {str(tmp_path)!r}, '-o', {str(tmp_path / 'm')!r}]) == 2\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'))\n"
            "assert not loaded, loaded[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 4 and proc.stderr.count("textstream: ") == 4, proc.stderr
    assert entries(tmp_path) == []
