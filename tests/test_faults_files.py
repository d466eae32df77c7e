"""Files under stress: a full disk is one line, exit 2, old data intact; run files are never links.

A full disk is a child process under ``RLIMIT_FSIZE`` (writes past the limit
fail with EFBIG, SIGXFSZ ignored): no root, no filled file system needed.
"""
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from textstream import fsutil
from textstream.cli import main
from textstream.errors import NoSpace, TextstreamError
from textstream.fsutil import PendingFile, append_bytes, atomic_write_bytes, no_space
from textstream.model.run import RunPaths
from tests.faults.files import CHILD  # each case runs `textstream ARGV` in-process under its own file size limit

ROOT = Path(__file__).resolve().parent.parent
WORDS = "the cat sat on a mat while the dog ran after a red ball by the river".split()


needs_rlimit = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE") or not hasattr(signal, "SIGXFSZ"),
                                  reason="needs RLIMIT_FSIZE and SIGXFSZ (POSIX)")


def limited(cases: list[dict], env: dict) -> list[dict]:
    """Run the ``cases`` (``limit``, ``argv``, optional ``at``) in one child process; each ``{"rc", "err"}``."""
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **env}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def one_line(result: dict, *fragments: str) -> str:
    """The error line of a case that must have failed cleanly: exit 2, one ``textstream:`` line naming ``fragments``."""
    assert "Traceback" not in result["err"], result["err"]
    assert result["rc"] == 2, result
    line = result["err"].strip().splitlines()[-1]
    assert line.startswith("textstream: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def temporaries(root: Path) -> list[str]:
    """Temporaries left anywhere under ``root``: textstream's and TensorFlow's."""
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or "_temp" in p.name or "tempstate" in p.name
            or p.name.startswith("checkpoint.tmp")]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_text(path: Path, n_lines: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, 10)) for _ in range(n_lines)) + "\n", encoding="utf-8")
    return path


# --- the library's pieces ------------------------------------------------------------------------
def test_no_space_names_the_file_and_the_sizes(tmp_path):
    e = no_space(tmp_path / "f.bin", OSError(errno.ENOSPC, "No space left on device"), needed=2_500_000, written=1200)
    assert isinstance(e, NoSpace) and isinstance(e, TextstreamError) and e.path == str(tmp_path / "f.bin")
    msg = str(e)
    assert msg.startswith(f"{tmp_path / 'f.bin'}: cannot write: no space left on the device (about 2.5 MB needed, "
                          f"1.2 kB written, ") and msg.endswith(" free)") and "\n" not in msg
    assert no_space(tmp_path, OSError(errno.EACCES, "Permission denied")) is None
    assert no_space(tmp_path, ValueError("x")) is None
    # another library's error (TensorFlow's) says it in its message
    assert "file too large" in str(no_space(tmp_path, RuntimeError("/x/y.tempstate1; File too large [Op:SaveV2]")))
    assert str(e.also("kept")) == msg + "; kept"


def test_pending_file_turns_a_full_disk_into_no_space_and_removes_its_temporary(tmp_path, monkeypatch):
    (tmp_path / "b").write_bytes(b"old b")
    with pytest.raises(NoSpace) as e:
        with PendingFile(tmp_path / "a", size=10) as a, PendingFile(tmp_path / "b") as b:
            a.write(b"aaaa")
            monkeypatch.setattr(b.file, "write", lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
            b.write(b"bbbb")
    assert str(e.value).startswith(f"{tmp_path / 'b'}: cannot write: no space left on the device (")
    assert str(e.value).endswith("; the old file is unchanged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (tmp_path / "b").read_bytes() == b"old b"


@needs_rlimit
def test_prepare_on_a_full_disk(tmp_path):
    small, big = write_text(tmp_path / "small.txt", 40), write_text(tmp_path / "big.txt", 3000, seed=1)
    out = tmp_path / "out"
    assert main(["prepare", str(small), "-o", str(out)]) == 0
    before = snapshot(out)
    fresh = tmp_path / "fresh"
    cache = tmp_path / "cache"
    (r1, r2, r3, r4) = limited([{"limit": 20_000, "argv": ["prepare", str(big), "-o", str(out)]},
                                {"limit": 20_000, "argv": ["prepare", str(big), "-o", str(fresh)]},
                                {"limit": 20_000, "argv": ["train", str(big), "-o", str(tmp_path / "run"),
                                                           "--preset", "tiny", "--steps", "2"]},
                                {"limit": 20_000, "argv": ["train", "-o", str(tmp_path / "run2"),  # the default corpus
                                                           "--preset", "tiny", "--steps", "2"]}],
                               {"TEXTSTREAM_CACHE": str(cache)})
    n = (big.stat().st_size * 19 + 19) // 20  # train.bin: one byte per character of the head 95%
    one_line(r1, f"{out / 'train.bin'}: cannot write: file too large", "needed", "20.0 kB written",
             "the old file is unchanged")
    assert snapshot(out) == before  # the old preparation is intact, no temporary left
    one_line(r2, f"{fresh / 'train.bin'}: cannot write")
    assert not fresh.exists()  # the directory it made is gone again
    line = one_line(r3, str(cache / "prepared"), "train.bin: cannot write")
    assert f"about {fsutil.format_bytes(n)} needed" in line
    one_line(r4, f"{cache / 'corpora'}/default-", ".txt: cannot write", "needed", "20.0 kB written")
    assert temporaries(tmp_path) == []


@needs_rlimit
def test_cache_download_and_unpack_on_a_full_disk(tmp_path):
    text = ("word " * 8000).encode()
    (tmp_path / "t.txt").write_bytes(text)
    with zipfile.ZipFile(tmp_path / "t.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.txt", text)
    zdata = (tmp_path / "t.zip").read_bytes()
    entries = [{"name": "plain", "url": (tmp_path / "t.txt").as_uri(), "sha256": hashlib.sha256(text).hexdigest(),
                "size": len(text)},
               {"name": "zipped", "url": (tmp_path / "t.zip").as_uri(), "sha256": hashlib.sha256(zdata).hexdigest(),
                "size": len(zdata), "member": "inner.txt"}]
    (tmp_path / "registry.json").write_text(json.dumps({"corpora": entries}))
    env = {"TEXTSTREAM_CACHE": str(tmp_path / "cache"), "TEXTSTREAM_REGISTRY": str(tmp_path / "registry.json")}
    cache = tmp_path / "cache" / "corpora"
    r1, r2 = limited([{"limit": 10_000, "argv": ["prepare", "plain", "-o", str(tmp_path / "p")]},
                      {"limit": 10_000, "argv": ["prepare", "zipped", "-o", str(tmp_path / "z")]}], env)
    line = one_line(r1, f"{cache}/plain-", ".txt: cannot write: file too large", "about 40.0 kB needed",
                    "10.0 kB written")
    assert "cannot download" not in line  # it is the disk, not the network
    one_line(r2, f"{cache}/zipped-", ".txt: cannot write", "about 40.0 kB needed")
    assert [p.name for p in cache.iterdir()] == [f"zipped-{entries[1]['sha256'][:12]}.zip"]  # the zip is kept


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained to step 6 (a checkpoint in "last" and "best"), and its cache."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = write_text(tmp / "corpus.txt", 300)
    run = tmp / "run"
    old = os.environ.get("TEXTSTREAM_CACHE")
    os.environ["TEXTSTREAM_CACHE"] = str(tmp / "cache")
    try:
        assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "6", "--no-samples"]) == 0
    finally:
        os.environ.pop("TEXTSTREAM_CACHE") if old is None else os.environ.update(TEXTSTREAM_CACHE=old)
    return run, tmp / "cache"


def copy_run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "run", symlinks=True))


@needs_rlimit
def test_train_saves_export_and_step_weights_on_a_full_disk(trained, tmp_path, capsys):
    """The checkpoint save, metrics.jsonl, the step weights file and export, each in turn hitting the limit."""
    run = copy_run(trained, tmp_path)
    logged = Path(shutil.copytree(run, tmp_path / "logged"))  # one copy per case: each gets as far as it can
    other = Path(shutil.copytree(run, tmp_path / "other"))
    series = run / "checkpoints" / "last"
    ckpt = (series / "ckpt-6.data-00000-of-00001").stat().st_size
    metrics = (run / "metrics.jsonl").read_bytes()
    state = snapshot(run / "checkpoints")
    cases = [{"limit": ckpt // 2, "argv": ["train", "-o", str(run), "--resume", "--steps", "12"]},  # the data file
             {"limit": len(metrics) + 20, "argv": ["train", "-o", str(logged), "--resume", "--steps", "12"]},
             {"limit": 1000, "argv": ["train", "-o", str(other), "--resume", "--steps", "12"],
              "at": "textstream.model.stepweights.write"},  # once the checkpoint itself is saved
             {"limit": 3000, "argv": ["export", str(run), "-o", str(tmp_path / "sm")]},
             {"limit": 3000, "argv": ["export", str(run), "-o", str(tmp_path / "m.tflite"), "--format", "litert"]}]
    save, metrics_line, step_file, savedmodel, litert = limited(cases, {"TEXTSTREAM_CACHE": str(trained[1])})
    kept = f"the last checkpoint, {series / 'ckpt-6'}, is intact: free some space, then continue with: " \
           f"textstream train --resume -o {run}"
    # at an epoch's end "best" (when it improved) is saved before "last": either may be the one that fails
    one_line(save, f"{run / 'checkpoints'}/", "/ckpt-12: cannot write: file too large", "needed", kept)
    assert snapshot(run / "checkpoints") == state  # the failed save left nothing, changed nothing
    one_line(metrics_line, f"{logged / 'metrics.jsonl'}: cannot write", "the file is as it was",
             f"the last checkpoint, {logged / 'checkpoints' / 'last' / 'ckpt-6'}, is intact")
    assert (logged / "metrics.jsonl").read_bytes() == metrics  # no half line
    # the step weights file of ckpt-12 ("best" is saved before "last" when the loss improved): the stop names
    # the "last" checkpoint in force, and a resume starts there
    line = one_line(step_file, f"{other / 'checkpoints'}/", "/ckpt-12.step.npz: cannot write", "is intact")
    in_force = re.search(r"the last checkpoint, (\S*/checkpoints/last/ckpt-(\d+)), is intact", line)
    assert in_force and Path(in_force.group(1) + ".index").exists(), line
    for result, out in ((savedmodel, tmp_path / "sm"), (litert, tmp_path / "m.tflite")):
        one_line(result, f"{out}: cannot write: file too large", "written", f"nothing was written to {out}")
        assert not out.exists()
    assert temporaries(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["logged", "other", "run"]
    # with room again: a resume goes on from the checkpoint in force
    assert main(["train", "-o", str(run), "--resume", "--steps", "14", "--no-samples"]) == 0
    assert "from step 6" in capsys.readouterr().err
    assert RunPaths(run).read_metrics("end")[-1]["step"] == 14
    assert main(["train", "-o", str(other), "--resume", "--steps", "14", "--no-samples"]) == 0
    assert f"from step {in_force.group(2)}" in capsys.readouterr().err


@needs_rlimit
def test_generate_goes_on_when_the_step_weights_file_cannot_be_written(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    for p in run.rglob("*.step.npz"):
        p.unlink()
    (r,) = limited([{"limit": 500, "argv": ["generate", str(run), "-n", "20", "--seed", "1"]}], {})
    assert r["rc"] == 0 and "Traceback" not in r["err"], r
    assert not list(run.rglob("*.step.npz")) and temporaries(run) == []


def test_the_cli_turns_any_write_that_found_no_room_into_one_line(monkeypatch, capsys, tmp_path):
    from textstream.cli import COMMANDS

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "somewhere.bin"))

    monkeypatch.setattr(COMMANDS["corpora"], "run", full)
    assert main(["corpora"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"textstream: {tmp_path / 'somewhere.bin'}: cannot write: no space left on the device (")
    assert err.count("\n") == 1

    def tf_like(args):  # TensorFlow's errors are not OSErrors; their message names the file
        raise RuntimeError(f"{{{{function_node}}}} {tmp_path}/x.tempstate9; Disk quota exceeded [Op:SaveV2]")

    monkeypatch.setattr(COMMANDS["corpora"], "run", tf_like)
    assert main(["corpora"]) == 2
    assert capsys.readouterr().err.startswith(f"textstream: {tmp_path}/x.tempstate9: cannot write: disk quota")

    def other(args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(COMMANDS["corpora"], "run", other)
    with pytest.raises(OSError):  # not a user's problem: stays a traceback
        main(["corpora"])


@needs_rlimit
def test_append_cuts_a_failed_line_back(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n')
    code = (f"import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, (20, 20))\n"
            f"from textstream.fsutil import append_bytes\n"
            f"try:\n    append_bytes({str(path)!r}, b'x' * 30 + b'\\n')\nexcept Exception as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert r.stdout.startswith(f"{path}: cannot write: file too large") and "the file is as it was" in r.stdout
    assert path.read_bytes() == b'{"a": 1}\n'


def test_atomic_writes_and_appends_never_go_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(TextstreamError, match="link: is a symbolic link"):
        append_bytes(link, b"evil\n")
    atomic_write_bytes(link, b"replaced\n")  # the link itself is replaced, never its target
    assert victim.read_bytes() == b"precious\n" and not link.is_symlink() and link.read_bytes() == b"replaced\n"


# --- links in a run directory ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["metrics.jsonl", ".lock", "config.json", "data.json", "tb", "checkpoints",
                                  "checkpoints/last", "checkpoints/last/checkpoint", "checkpoints/best/ckpt-6.index"])
def test_a_link_in_a_run_directory_is_refused_and_its_target_untouched(trained, tmp_path, capsys, name):
    run = copy_run(trained, tmp_path)
    target = run / name
    outside = tmp_path / "outside"
    if target.is_dir():
        outside.mkdir()
        os.rename(target, outside / "moved")
        target.symlink_to(outside / "moved", target_is_directory=True)
    else:
        if target.exists():
            outside.write_bytes(target.read_bytes())
            target.unlink()
        else:
            outside.write_bytes(b"precious\n")
        target.symlink_to(outside)
    before = snapshot(tmp_path)
    commands = [["train", "-o", str(run), "--resume", "--steps", "8"], ["generate", str(run), "-n", "5"],
                ["eval", str(run)], ["export", str(run), "-o", str(tmp_path / "out")]]
    if name == ".lock":
        commands = commands[:1]  # only train takes the lock
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"textstream: {target}: is a symbolic link; textstream does not read or write a run's files " \
                      f"through links (replace it with the file or directory itself)\n", err
    assert snapshot(tmp_path) == before


def test_a_run_directory_that_is_itself_a_link_is_fine(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(run, target_is_directory=True)
    assert main(["generate", str(alias), "-n", "5", "--seed", "1"]) == 0
    assert main(["train", "-o", str(alias), "--resume", "--steps", "8", "--no-samples"]) == 0


@pytest.mark.parametrize("record", [{"dir": ""}, {"dir": 3}, {"dir": "a\u0000b"}, {"dir": "/x", "sources": [""]},
                                    {"dir": "/x", "sources": [["nested"]]}])
def test_paths_recorded_in_data_json_are_checked(tmp_path, record):
    paths = RunPaths(tmp_path)
    paths.data.write_text(json.dumps(record))
    with pytest.raises(TextstreamError, match=r"data\.json: (dir|source): .* is not a path"):
        paths.read_data()
    paths.data.write_text(json.dumps({"dir": "rel/prepared", "sources": ["a.txt", "nietzsche"]}))
    assert paths.read_data().dir == Path("rel/prepared")


@pytest.mark.parametrize("name, kind", [("tb", "file"), ("checkpoints", "file"), ("config.json", "dir"),
                                        ("metrics.jsonl", "dir")])
def test_a_run_entry_of_the_wrong_kind_is_one_line_before_any_work(tmp_path, capsys, name, kind):
    """``tb`` as a file gave a TensorFlow traceback; ``checkpoints`` as a file said "already holds a run"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / name).mkdir() if kind == "dir" else (run / name).write_text("x")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    rc = main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "2", "--no-samples"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"textstream: {run / name}: is ") and "\n" not in err
    assert sorted(p.name for p in run.iterdir()) == [name]  # nothing written
