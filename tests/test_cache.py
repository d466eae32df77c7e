"""Temporaries of killed processes are removed (never a live one's), and `textstream cache` shows and cleans."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textstream import temporaries
from textstream.data.cache import inventory
from textstream.cli import main
from textstream.fsutil import PendingFile
from textstream.data.preparation import prepare
from textstream.model.run import RunLock, RunPaths
from textstream.temporaries import HOST, TEMPORARY, is_stale

DAY = 86400


@pytest.fixture
def dead_pid():
    """The id of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_pid():
    """The id of a process running for the test's duration."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p.pid
    p.kill()
    p.wait()


def temp(d: Path, target: str, pid: int, size: int = 1000, host: str | None = HOST, age: float = 0.0) -> Path:
    """A temporary as textstream names it, ``size`` bytes, last modified ``age`` seconds ago."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / f".{target}.{pid}{'@' + host if host else ''}.x1y2z3.tmp"
    path.write_bytes(b"\0" * size)
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_pending_files_are_named_with_their_writer_and_host(tmp_path):
    with PendingFile(tmp_path / "train.bin") as p:
        m = TEMPORARY.fullmatch(p.tmp.name)
        assert m and m["target"] == "train.bin" and int(m["pid"]) == os.getpid() and m["host"] == HOST
        assert not is_stale(p.tmp)  # ours


def test_which_temporaries_are_stale(tmp_path, dead_pid, live_pid):
    assert is_stale(temp(tmp_path, "a", dead_pid))  # this host, process gone
    assert not is_stale(temp(tmp_path, "b", live_pid))  # this host, running
    assert is_stale(temp(tmp_path, "c", live_pid, age=3600))  # that id now belongs to a process started later
    assert not is_stale(temp(tmp_path, "d", dead_pid, host="0badc0de"))  # another host: cannot tell
    assert is_stale(temp(tmp_path, "e", dead_pid, host="0badc0de", age=2 * DAY))  # ... unless idle for a day
    assert not is_stale(temp(tmp_path, "f", dead_pid, host=None))  # not a name textstream writes: never removed
    assert not is_stale(temp(tmp_path, "g", dead_pid, host=None, age=7200))
    assert not is_stale(tmp_path / "train.bin") and not is_stale(temp(tmp_path, "h", os.getpid()))


def test_prepare_removes_stale_temporaries_in_its_directory_and_keeps_live_ones(tmp_path, dead_pid, live_pid,
                                                                                 monkeypatch):
    src = tmp_path / "src.txt"
    src.write_text("some text to prepare, long enough for a window or two.\n" * 20)
    out = tmp_path / "out"
    stale = [temp(out, "train.bin", dead_pid, 100_000), temp(out, "val.bin", dead_pid)]
    live = temp(out, "train.bin", live_pid)
    prepare([src], out)
    assert not any(p.exists() for p in stale) and live.exists()
    # the cache: every prepared directory and the downloads
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    in_cache = [temp(tmp_path / "cache" / "prepared" / "0123abcd", "train.bin", dead_pid),
                temp(tmp_path / "cache" / "prepared", "x", dead_pid)]
    prepare([src])
    assert not any(p.exists() for p in in_cache)


def test_train_start_removes_its_own_stale_temporaries(tmp_path, dead_pid, live_pid, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src.txt"
    src.write_text("the cat sat on the mat and the dog ran after the ball.\n" * 60)
    run = tmp_path / "run"
    assert main(["train", str(src), "-o", str(run), "--preset", "tiny", "--steps", "3", "--no-samples"]) == 0
    last = run / "checkpoints" / "last"
    stale = [temp(run, "config.json", dead_pid), temp(last, "ckpt-3.step.npz", dead_pid),
             last / "ckpt-9_temp", last / ("checkpoint.tmp" + "ab" * 16)]  # TensorFlow's, of a killed save
    stale[2].mkdir()
    (stale[2] / "part-00000-of-00001.data-00000-of-00001.tempstate123").write_bytes(b"x" * 500)
    stale[3].write_text("model_checkpoint_path: \"ckpt-9\"\n")
    live = temp(last, "ckpt-3.step.npz", live_pid)  # a generate writing the step weights file
    assert main(["train", "-o", str(run), "--resume", "--steps", "5", "--no-samples"]) == 0
    assert not any(p.exists() for p in stale) and live.exists()
    removed = RunPaths(run).remove_stale_temporaries()
    assert removed == []  # nothing left to remove; the live one stays
    with RunLock(RunPaths(run)):
        assert live.exists()


def test_cache_info_clean_and_prune(tmp_path, dead_pid, live_pid, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(cache))
    src = tmp_path / "src.txt"
    src.write_text("text of a corpus, long enough for a window or two.\n" * 20)
    used = prepare([src]).dir
    unused = prepare([src], lowercase=True).dir
    old = time.time() - 40 * DAY
    os.utime(unused, (old, old))
    corpora = cache / "corpora"
    corpora.mkdir()
    (corpora / "default-0123456789abcdef.txt").write_bytes(b"d" * 3000)
    (corpora / "gone-0123456789ab.txt").write_bytes(b"g" * 4000)  # a download no longer in the registry
    stale = [temp(used, "train.bin", dead_pid, 5000), temp(corpora, "gone-0123456789ab.txt", dead_pid, 2000)]
    live = temp(corpora, "big.txt", live_pid, 700)
    unfinished = cache / "prepared" / "feedfeedfeedfeedfeedfeed"
    unfinished.mkdir()
    (unfinished / "train.bin").write_bytes(b"u" * 1000)
    os.utime(unfinished, (old, old))
    (cache / "bench").mkdir()  # not textstream's: listed, never removed
    (cache / "bench" / "data").write_bytes(b"b" * 100)

    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{cache}: ") and "in 9 entries" in out.splitlines()[0]
    for kind, name in [("stale temporary", stale[0].name), ("in use", live.name), ("default corpus", "default-"),
                       ("download", "gone-0123456789ab.txt  not in the registry now"), ("prepared", used.name),
                       ("unfinished preparation", unfinished.name), ("other", "bench/")]:
        assert any(line.lstrip().startswith(kind) and name in line for line in out.splitlines()), (kind, out)
    assert out.splitlines()[-1] == "8.0 kB in 3 entries of no use: textstream cache clean removes them"
    assert "used 40 days ago" in out

    assert main(["cache", "clean"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"freed 8.0 kB (3 entries) in {cache}"
    assert not any(p.exists() for p in [*stale, unfinished]) and live.exists() and used.is_dir()

    assert main(["cache", "prune", "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"removed prepared/{unused.name} (prepared, {_size(out)})",
                                out.splitlines()[-1]] and not unused.exists() and used.exists()

    assert main(["cache", "clean", "--all"]) == 0
    capsys.readouterr()
    left = {e.path.name: e.kind for e in inventory(cache)}
    assert left == {live.name: "in use", "bench": "other"}
    assert main(["cache", "prune", "--days", "-1"]) == 2
    assert capsys.readouterr().err == "textstream: --days must be a number >= 0 (got -1.0)\n"


def test_a_cache_that_is_not_a_directory_is_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "none"
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(missing))
    assert main(["cache"]) == 0  # nothing cached yet: not an error
    assert capsys.readouterr().out == f"{missing}: 0 bytes in 0 entries\n"
    afile = tmp_path / "file"
    afile.write_text("not a cache")
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(afile))
    for argv in (["cache"], ["cache", "clean", "--all"], ["cache", "prune", "--days", "0"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == f"textstream: {afile}: the cache is not a directory (set TEXTSTREAM_CACHE to a " \
                               f"directory)\n" and captured.out == "", argv
    assert afile.read_text() == "not a cache"


def _size(out: str) -> str:
    return out.splitlines()[0].rsplit(", ", 1)[1].rstrip(")")


def test_cache_command_does_not_import_tensorflow(tmp_path):
    code = ("import sys; from textstream.cli import main; main(['cache']); main(['cache', 'clean']); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras')); "
            "assert not bad, bad")
    env = {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(Path(__file__).parent.parent)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_a_planted_lock_link_is_never_truncated(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(Exception, match=r"\.lock: is a symbolic link"):
        RunLock(RunPaths(run)).acquire()
    assert victim.read_text() == "precious\n"


def test_temporaries_module_is_what_fsutil_exports():
    from textstream import fsutil

    assert fsutil.TEMPORARY is temporaries.TEMPORARY
