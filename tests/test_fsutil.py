"""fsutil: a file is replaced whole or not at all, and no temporary outlives its writer."""
import os

import pytest

from textstream import fsutil
from textstream.fsutil import TEMPORARY, PendingFile, atomic_file, atomic_write_text, remove_quietly


def names(d):
    return sorted(p.name for p in d.iterdir())


def test_success_replaces_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_file(path) as f:
        f.write(b"new ")
        f.write(b"content")
        assert path.read_bytes() == b"old"  # not yet
    assert path.read_bytes() == b"new content" and names(tmp_path) == ["f.bin"]


def test_text_mode_writes_utf8(tmp_path):
    path = tmp_path / "f.txt"
    with atomic_file(path, "w") as f:
        f.write("Ā ā “x”\r\n")
    assert path.read_bytes() == "Ā ā “x”\r\n".encode("utf-8")
    atomic_write_text(path, "é\n")
    assert path.read_text(encoding="utf-8") == "é\n" and names(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt, OSError])
def test_exception_keeps_the_old_file_and_no_temporary(tmp_path, exc):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(exc):
        with atomic_file(path) as f:
            f.write(b"half")
            raise exc("stop")
    assert path.read_bytes() == b"old" and names(tmp_path) == ["f.bin"]


def test_exception_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_temporary_is_hidden_next_to_the_target_and_names_its_writer(tmp_path):
    with atomic_file(tmp_path / "train.bin") as f:
        f.write(b"x")
        (tmp,) = names(tmp_path)
    m = TEMPORARY.fullmatch(tmp)
    assert m and m["target"] == "train.bin" and int(m["pid"]) == os.getpid()
    assert not TEMPORARY.fullmatch("train.bin") and not TEMPORARY.fullmatch(".train.bin.tmp")


def test_pending_files_commit_in_order_and_the_rest_is_removed(tmp_path):
    """prepare's pattern: several temporaries, committed one by one; an error leaves the uncommitted ones out."""
    (tmp_path / "b").write_bytes(b"old b")
    with pytest.raises(RuntimeError):
        with PendingFile(tmp_path / "a") as a, PendingFile(tmp_path / "b") as b:
            a.file.write(b"new a")
            b.file.write(b"new b")
            a.sync()
            b.sync()
            a.commit()
            raise RuntimeError("between the commits")
    assert names(tmp_path) == ["a", "b"]
    assert (tmp_path / "a").read_bytes() == b"new a" and (tmp_path / "b").read_bytes() == b"old b"


def test_a_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # a non-empty directory: os.replace onto it fails
    with pytest.raises(OSError):
        with atomic_file(target) as f:
            f.write(b"x")
    assert names(tmp_path) == ["dir"]


def test_fsync_happens_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_file(tmp_path / "f") as f:
        f.write(b"x")
    assert events[:2] == ["fsync", "replace"]  # the data, then the rename (then the directory)


def test_remove_quietly(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"")
    remove_quietly(p)
    remove_quietly(p)  # already gone: fine
    remove_quietly(None)
    remove_quietly(tmp_path)  # a directory: not removed, not an error
    assert not p.exists() and tmp_path.is_dir()


def test_discard_removes_the_temporary_even_when_closing_fails(tmp_path):
    pending = PendingFile(tmp_path / "f")
    real = pending.file

    class FullDisk:  # closing flushes the buffer, which fails
        def close(self):
            real.close()
            raise OSError(28, "No space left on device")

    pending.file = FullDisk()
    pending.discard()
    assert names(tmp_path) == []


def test_atomic_file_gets_the_mode_open_would_give_and_keeps_a_replaced_files_mode(tmp_path):
    """A new file is 0666 less the umask (not mkstemp's 0600); a replaced file keeps its mode."""
    mask = os.umask(0o022)
    os.umask(mask)
    new = tmp_path / "new.txt"
    with atomic_file(new, "w") as f:
        f.write("x")
    assert new.stat().st_mode & 0o777 == 0o666 & ~mask
    old = tmp_path / "old.txt"
    old.write_text("a")
    old.chmod(0o640)
    with atomic_file(old, "w") as f:
        f.write("b")
    assert old.stat().st_mode & 0o777 == 0o640 and old.read_text() == "b"
