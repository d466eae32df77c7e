"""Weights that are damaged, foreign or hostile (issue 33, class 2): never used silently, never a hang, never an OOM.

One mechanism each: the step weights file is read without trusting it
(``stepweights.load``: regular file, stored members, each array's header
checked against the meta before its data, finite values) and a file that
fails is rebuilt from the checkpoint by ``auto`` and named by ``--backend
numpy`` with advice that works; checkpoints are verified finite; every run
file is a regular file (``RunPaths.check_entries``); ``config.json`` and
``vocab.json`` are checked against the checkpoint's shapes before a model is
built (``checkpoint.check_shapes``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_run
from textstream.cli import main
from textstream.errors import TextstreamError
from textstream.generation.generator import Generator
from textstream.generation.step_np import NumpyStep
from textstream.model import checkpoint as checkpoint_module
from textstream.model import stepweights
from textstream.model.checkpoint import load_model
from textstream.model.run import RunPaths

PRIME = "it was the "


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A run with a validation split and its current step weights file (written by a first load)."""
    run = make_run(tmp_path_factory.mktemp("hostile"), val_text="it was the age of wisdom\n" * 8)
    Generator.load(run, warm=False)
    return run


@pytest.fixture
def run(base, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    data = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**data, "dir": str(tmp_path / "prepared")}))
    shutil.copytree(data["dir"], tmp_path / "prepared")
    return copy


def prefix(run: Path) -> Path:
    return RunPaths(run).series("last").prefix  # read without TensorFlow: nothing verified


def step_file(run: Path) -> Path:
    return stepweights.path_for(prefix(run))


def rewrite(path: Path, change, *, compressed: bool = False) -> None:
    """The step file at ``path`` with ``change(arrays)`` applied (a well-formed zip: only the content is hostile)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)


def cli(argv, capsys) -> tuple[int, list[str]]:
    """``textstream ARGV`` in-process, with a hang guard: a FIFO read would block forever."""
    def hung(signum, frame):
        raise AssertionError(f"textstream {' '.join(map(str, argv))} hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        rc = main([str(a) for a in argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def one_line(capsys, argv, *names: str) -> str:
    rc, lines = cli(argv, capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("textstream: "), (argv, lines)
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --- NaN, Inf and damaged bodies in the step weights file ---------------------------------------------
@pytest.mark.parametrize("array, value", [("embed", np.nan), ("head_bias", np.inf), ("recurrent_0", -np.inf),
                                          ("head_kernel", np.nan)])
def test_a_step_file_holding_nan_or_inf_is_named_and_rebuilt(run, capsys, array, value):
    want = Generator.load(run, backend="tf", warm=False).generate([PRIME], 40, seed=3)[0]
    path = step_file(run)

    def poison(arrays):
        arrays[array] = arrays[array].copy()
        arrays[array].flat[len(arrays[array].flat) // 2] = value

    rewrite(path, poison)
    with pytest.raises(stepweights.StepFileError, match=f"{array} holds NaN or Inf"):
        stepweights.load(prefix(run))
    line = one_line(capsys, ["generate", run, "--backend", "numpy", "--prime", PRIME], str(path), "NaN or Inf")
    assert "--backend auto" in line  # the advice: and it works
    assert main(["generate", str(run), "--prime", PRIME, "-n", "40", "--seed", "3"]) == 0
    assert capsys.readouterr().out == want + "\n"  # the checkpoint's own text
    assert stepweights.is_current(prefix(run))  # rebuilt once: no later generate pays for TensorFlow again
    gen = Generator.load(run, backend="numpy", warm=False)
    assert isinstance(gen.backend, NumpyStep) and gen.generate([PRIME], 40, seed=3)[0] == want


@pytest.mark.parametrize("damage", ["data bytes flipped", "member truncated", "compressed", "float64",
                                    "fortran order", "extra member", "missing member", "meta layers 10**9"])
def test_a_step_file_that_fails_any_check_is_never_used_and_is_rebuilt(run, damage):
    path = step_file(run)
    if damage == "data bytes flipped":  # the header still says "current": only the data is wrong
        data = bytearray(path.read_bytes())
        at = data.index(b"recurrent_0.npy") + 300
        data[at:at + 16] = bytes(16)
        path.write_bytes(bytes(data))
    elif damage == "member truncated":
        with zipfile.ZipFile(path) as z:
            members = {n: z.read(n) for n in z.namelist()}
        members["embed.npy"] = members["embed.npy"][:-40]
        with zipfile.ZipFile(path, "w") as z:
            for n, b in members.items():
                z.writestr(n, b)
    elif damage == "compressed":
        rewrite(path, lambda a: None, compressed=True)
    elif damage == "float64":
        rewrite(path, lambda a: a.update(embed=a["embed"].astype(np.float64)))
    elif damage == "fortran order":
        rewrite(path, lambda a: a.update(head_kernel=np.asfortranarray(a["head_kernel"])))
    elif damage == "extra member":
        rewrite(path, lambda a: a.update(surprise=np.zeros(3, np.float32)))
    elif damage == "missing member":
        rewrite(path, lambda a: a.pop("head_bias"))
    else:
        def huge(arrays):
            meta = json.loads(str(arrays["meta"][()]))
            arrays["meta"] = np.array(json.dumps({**meta, "layers": 10**9}))
        rewrite(path, huge)
    with pytest.raises(stepweights.StepFileError) as e:
        stepweights.load(prefix(run))
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert stepweights.read(prefix(run)) is None
    with pytest.raises(TextstreamError, match="no current step weights file"):
        Generator.load(run, backend="numpy", warm=False)
    Generator.load(run, warm=False)  # auto: from the checkpoint, and the file written again
    assert stepweights.is_current(prefix(run))


def bomb(path: Path, *, compress: bool) -> None:
    """A small step file whose embed member claims 40 GB (100,000 x 100,000 float32), stored or deflated."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100_000, 100_000)})
    members["embed.npy"] = header.getvalue() + bytes(1 << 20)  # a megabyte of data behind the claim
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b, compress_type=zipfile.ZIP_DEFLATED if compress and n == "embed.npy" else
                       zipfile.ZIP_STORED)


@pytest.mark.parametrize("compress", [True, False], ids=["deflated", "stored"])
def test_a_size_claim_is_refused_before_anything_is_inflated_or_allocated(run, compress):
    path = step_file(run)
    bomb(path, compress=compress)
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(stepweights.StepFileError, match="compressed" if compress else "header says"):
            stepweights.load(prefix(run))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the claim (40 GB) is never allocated, the deflated member never inflated


# --- FIFOs, sockets and devices in place of a run's files --------------------------------------------
RUN_FILES = ["config.json", "vocab.json", "data.json", "metrics.jsonl", ".lock", "checkpoints/last/checkpoint",
             "checkpoints/last/ckpt-1.index", "checkpoints/last/ckpt-1.data-00000-of-00001",
             "checkpoints/last/ckpt-1.step.npz"]


def plant(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    else:
        try:
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))  # a character device, like /dev/zero
        except (PermissionError, OSError):
            pytest.skip("creating a device node needs privileges this machine lacks")


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_fifo_in_place_of_any_run_file_is_one_line_never_a_hang(run, capsys, name):
    (run / "metrics.jsonl").write_text("")
    (run / ".lock").write_text("")
    plant(run / name, "fifo")
    target = str(run / name)
    for argv in (["generate", run, "--prime", PRIME, "-n", "5"], ["generate", run, "--backend", "numpy", "-n", "5"],
                 ["eval", run], ["export", run, "-o", run.parent / "out", "--format", "keras"],
                 ["train", "-o", run, "--resume", "--steps", "3"]):
        line = one_line(capsys, argv, target)
        assert "not a regular file" in line
    assert not (run.parent / "out").exists()


@pytest.mark.parametrize("kind", ["socket", "device"])
@pytest.mark.parametrize("name", ["vocab.json", "checkpoints/last/ckpt-1.step.npz"])
def test_a_socket_or_a_device_in_place_of_a_run_file_is_one_line(run, capsys, kind, name):
    plant(run / name, kind)
    one_line(capsys, ["generate", run, "--prime", PRIME, "-n", "5"], str(run / name), "not a regular file")


@pytest.mark.parametrize("name", ["vocab.json", "train.bin", "val.bin"])
def test_a_fifo_in_the_prepared_corpus_is_one_line_for_eval_and_ignored_for_generate(run, capsys, name):
    prepared = run.parent / "prepared"
    plant(prepared / name, "fifo")
    one_line(capsys, ["eval", run], str(prepared / name), "not a regular file")
    rc, _ = cli(["generate", run, "-n", "5", "--seed", "1"], capsys)  # the default prime falls back, never waits
    assert rc == 0


# --- a config.json or vocab.json that does not describe the checkpoint ---------------------------------
@pytest.mark.parametrize("edit, named", [({"units": 4096}, "config.json"), ({"layers": 9}, "config.json"),
                                         ({"embedding": 64}, "config.json"), ("vocab", "vocab.json")])
def test_an_edited_size_is_one_line_before_any_model_is_built(run, capsys, monkeypatch, edit, named):
    if edit == "vocab":
        vocab = json.loads((run / "vocab.json").read_text())
        vocab["chars"] = vocab["chars"] + [chr(0x4E00 + i) for i in range(5000)]
        vocab["counts"] = vocab.get("counts", []) and vocab["counts"] + [1] * 5000
        (run / "vocab.json").write_text(json.dumps(vocab))
    else:
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, **edit}))

    def never(*a, **k):
        raise AssertionError("a model was built from a config that does not describe the checkpoint")

    monkeypatch.setattr(checkpoint_module, "build_model", never)
    commands = [["generate", run, "--backend", "tf", "-n", "5"], ["eval", run],
                ["export", run, "-o", run.parent / "out", "--format", "keras"]]
    if edit != {"embedding": 64}:  # the step weights hold layer 0's input kernel whatever fed it: they still fit
        commands.append(["generate", run, "--prime", PRIME, "-n", "5"])
    for argv in commands:
        one_line(capsys, argv, str(run / named))
    with pytest.raises(TextstreamError, match=named):
        load_model(run)


def test_an_edited_size_stops_a_resume_before_its_model_is_built(tmp_path, capsys, monkeypatch):
    from textstream.training import update

    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on a mat while the dog ran after a red ball.\n" * 40)
    run = tmp_path / "run"
    assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--seq-len", "16", "--batch-size", "8",
                 "--steps", "3", "--no-samples"]) == 0
    capsys.readouterr()
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "units": 100_000}))
    monkeypatch.setattr(update, "build_model", lambda *a, **k: pytest.fail("built a 100,000-unit model"))
    one_line(capsys, ["train", "-o", run, "--resume", "--steps", "6"], str(run / "config.json"), "units 100000")


# --- NaN in a checkpoint, and in a session state -------------------------------------------------------
def test_a_checkpoint_holding_nan_is_damage_naming_its_data_file(tmp_path, capsys):
    from textstream._tf import tf

    run = make_run(tmp_path)
    _, _, model = load_model(run)
    model.head.bias.assign(np.full(model.head.bias.shape, np.nan, np.float32))
    shutil.rmtree(run / "checkpoints" / "last")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(run / "checkpoints" / "last"), 1).save()
    data = str(prefix(run)) + ".data-00000-of-00001"
    for argv in (["generate", run, "--prime", PRIME, "-n", "5"], ["eval", run], ["generate", run, "--backend", "tf"]):
        one_line(capsys, argv, data, "head/bias holds NaN or Inf")
    assert not step_file(run).exists()  # nothing was written from it


def test_an_index_claiming_more_than_its_data_files_hold_is_refused_before_any_tensor_is_read(tmp_path, capsys):
    small, big = make_run(tmp_path, name="small", units=16), make_run(tmp_path, name="big", units=512)
    index = Path(f"{prefix(small)}.index")
    shutil.copyfile(f"{prefix(big)}.index", index)  # its CRCs and offsets describe 4 MB of tensors
    for argv in (["generate", small, "--prime", PRIME, "-n", "5"], ["eval", small],
                 ["train", "-o", small, "--resume", "--steps", "3"]):
        one_line(capsys, argv, f"{prefix(small)}.data-00000-of-00001: damaged", "ckpt-1.index lists")


def test_a_session_state_holding_nan_is_refused(base):
    gen = Generator.load(base, warm=False)
    s = gen.session(PRIME, seed=1)
    state = {k: np.array(v) for k, v in s.state.items()}
    for key in ("h", "c"):
        bad = dict(state)
        bad[key] = state[key].copy()
        bad[key].flat[0] = np.inf if key == "c" else np.nan
        with pytest.raises(TextstreamError, match=f"{key} holds NaN or Inf"):
            s.set_state(bad)
    s.set_state(state)  # a good one still goes
    assert len(s.sample(5)) == 5
