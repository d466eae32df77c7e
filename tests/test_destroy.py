"""Commands that could destroy files (issue 33, class 3): each writes only where it may.

One rule (``claims.claim_directory``): a command writes only into a
directory that is missing or empty, of its own kind, or explicitly forced;
never, even forced, into another of textstream's kinds (a run directory, a
prepared corpus, an export). ``export --force`` replaces only what an earlier
export wrote (its marker ``textstream-export.json``, or a LiteRT file);
``prepare -o`` and ``train -o`` never write over another kind's files;
``cache clean`` never removes a prepared corpus that a running process
leases, nor a file the cache did not write.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_run
from textstream.cli import main
from textstream.config import make_config
from textstream.data import cache
from textstream.data.preparation import prepare
from textstream.errors import TextstreamError
from textstream.export import MARKER, export_run, is_export
from textstream.model.run import RunPaths
from textstream.training.loop import train

TEXT = "the cat sat on a mat while the dog ran after a red ball by the river.\n" * 30
OTHER = "a quick brown fox jumps over the lazy dog again and again, all day long!\n" * 30


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the lock aside) and its sha256: what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path, val_text="it was the best of times\n" * 4)


def refused(capsys, argv, *words: str) -> str:
    assert main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("textstream: "), err
    for w in words:
        assert w in err, (w, err)
    return err


# --- export --force -----------------------------------------------------------------------------------
def test_export_force_never_replaces_a_run_file_or_a_run_directory(run, capsys):
    before = snapshot(run)
    prefix = RunPaths(run).series("last").prefix
    targets = [run / "config.json", run / "vocab.json", run / "data.json", Path(f"{prefix}.index"),
               Path(f"{prefix}.data-00000-of-00001"), run / "checkpoints", run / "checkpoints" / "last", run,
               run.parent]
    for target in targets:
        for fmt in ("keras", "litert"):
            refused(capsys, ["export", run, "-o", target, "--format", fmt, "--force"], str(target))
    assert snapshot(run) == before


@pytest.mark.parametrize("planted", ["model.keras", "saved_model.pb", "notes.txt"])
def test_export_force_never_replaces_a_users_directory_that_merely_looks_like_an_export(run, tmp_path, capsys,
                                                                                      planted):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / planted).write_text("not an export")
    (mine / "thesis.tex").write_text("precious")
    before = snapshot(mine)
    refused(capsys, ["export", run, "-o", mine, "--format", "keras", "--force"], str(mine))
    assert snapshot(mine) == before


@pytest.mark.parametrize("content", [b"precious notes\n", b"\x1c\x00\x00\x00TFL2rest", b""])
def test_export_force_never_replaces_a_file_that_is_not_a_litert_export(run, tmp_path, capsys, content):
    mine = tmp_path / "model.tflite"
    mine.write_bytes(content)
    refused(capsys, ["export", run, "-o", mine, "--format", "keras", "--force"], str(mine), "did not write")
    assert mine.read_bytes() == content


def test_export_force_never_follows_a_link(run, tmp_path, capsys):
    link = tmp_path / "latest"
    link.symlink_to(run / "config.json")
    before = snapshot(run)
    refused(capsys, ["export", run, "-o", link, "--format", "keras", "--force"], "symbolic link")
    assert snapshot(run) == before and link.is_symlink()


def test_export_force_replaces_an_earlier_export_of_either_form(run, tmp_path):
    out = tmp_path / "exported"
    export_run(run, out, format="keras")
    assert is_export(out) and json.loads((out / MARKER).read_text())["export"] == "keras"
    with pytest.raises(TextstreamError, match="already exists"):
        export_run(run, out, format="keras")
    export_run(run, out, format="keras", force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "model.keras", "vocab.json"])
    fake = tmp_path / "old.tflite"  # what a LiteRT export is: a TFLite flatbuffer (identifier TFL3)
    fake.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    assert is_export(fake)
    export_run(run, fake, format="keras", force=True)
    assert (fake / "model.keras").is_file()


# --- prepare -o ---------------------------------------------------------------------------------------
@pytest.fixture
def texts(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(OTHER)
    return tmp_path / "a.txt", tmp_path / "b.txt"


def test_prepare_never_writes_into_a_run_directory_even_forced(run, texts, capsys):
    before = snapshot(run)
    for extra in ([], ["--force"]):
        refused(capsys, ["prepare", texts[1], "-o", run, *extra], str(run), "run directory")
    assert snapshot(run) == before
    RunPaths(run).read_vocab()  # still the run's


def test_prepare_never_writes_into_an_export(run, texts, tmp_path, capsys):
    out = tmp_path / "exported"
    export_run(run, out, format="keras")
    before = snapshot(out)
    for extra in ([], ["--force"]):
        refused(capsys, ["prepare", texts[1], "-o", out, *extra], str(out), "export")
    assert snapshot(out) == before


def test_prepare_writes_into_an_empty_directory_its_own_or_a_forced_one(texts, tmp_path, capsys):
    a, b = texts
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", str(a), "-o", str(empty)]) == 0
    assert main(["prepare", str(b), "-o", str(empty)]) == 0  # an earlier preparation: its own kind
    assert "a quick brown fox" in prepare([b], empty).vocab.decode(prepare([b], empty).ids("train")[:40])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    refused(capsys, ["prepare", a, "-o", mine], str(mine), "notes.txt", "--force")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert main(["prepare", str(a), "-o", str(mine), "--force"]) == 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "train.bin", "val.bin", "vocab.json"]
    assert (mine / "notes.txt").read_text() == "keep me"


def test_prepare_refuses_to_replace_a_corpus_that_a_running_train_uses(texts, tmp_path, capsys):
    a, b = texts
    out = tmp_path / "p"
    prep = prepare([a], out).hold()
    try:
        before = snapshot(out)
        refused(capsys, ["prepare", b, "-o", out], str(out), "running process")
        assert snapshot(out) == before
        assert prepare([a], out).cached  # the same preparation: a hit writes nothing, and goes
    finally:
        prep.release()
    assert main(["prepare", str(b), "-o", str(out)]) == 0


# --- train -o -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["prepared corpus", "export", "foreign config.json"])
def test_a_new_run_is_never_written_over_another_kinds_files(run, texts, tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "prepared corpus":
        prepare([texts[1]], target)
    elif kind == "export":
        export_run(run, target, format="keras")
    else:
        target.mkdir()
        (target / "config.json").write_text('{"theme": "dark"}\n')
        (target / "metrics.jsonl").write_text('{"my": "data"}\n')
    before = snapshot(target)
    refused(capsys, ["train", texts[0], "-o", target, "--preset", "tiny", "--steps", "2"], str(target))
    assert snapshot(target) == before


# --- cache clean ---------------------------------------------------------------------------------------
def test_cache_clean_all_keeps_a_running_trains_corpus_and_leaves_unknown_files(texts, tmp_path, monkeypatch):
    a, _ = texts
    root = tmp_path / "cache"
    (root / "corpora").mkdir(parents=True)
    (root / "corpora" / "notes.txt").write_text("mine")  # not a name the cache writes
    (root / "corpora" / "shakespeare-0123456789ab.txt").write_text("a download")
    seen = {}

    def clean_midway():
        if not seen:
            (seen["dir"],) = [e.path for e in cache.inventory(root) if e.kind == cache.IN_USE]
            seen["removed"] = [e.path.name for e in cache.clean(root, everything=True)]
            seen["left"] = seen["dir"].is_dir() and (seen["dir"] / "train.bin").is_file()
        return False

    done = train(make_config("tiny", steps=6, seq_len=16, batch_size=8, samples=False), [a], tmp_path / "r",
                 should_stop=clean_midway)
    assert done.step == 6 and seen["left"]  # the corpus of the running train is kept, and the train finished
    assert seen["removed"] == ["shakespeare-0123456789ab.txt"]
    assert (root / "corpora" / "notes.txt").read_text() == "mine"
    assert [e.path for e in cache.clean(root, everything=True)] == [seen["dir"]]  # once it ended: removable


def test_cache_clean_leaves_files_it_did_not_write_inside_a_prepared_corpus(texts, tmp_path, capsys):
    prep = prepare([texts[0]])
    (prep.dir / "my-analysis.csv").write_text("1,2,3")
    (prep.dir.parent / "README").write_text("notes")
    entries = {e.path: e for e in cache.inventory()}
    assert entries[prep.dir].kind == cache.OTHER and "my-analysis.csv" in entries[prep.dir].what
    assert entries[prep.dir.parent / "README"].kind == cache.OTHER
    assert main(["cache", "clean", "--all"]) == 0
    assert (prep.dir / "my-analysis.csv").read_text() == "1,2,3" and (prep.dir / "train.bin").is_file()
    assert (prep.dir.parent / "README").is_file()


def test_a_lease_held_by_another_process_keeps_the_corpus(texts, tmp_path):
    prep = prepare([texts[0]])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from textstream.data.cache import Lease\n"
                               f"lease = Lease({str(prep.dir)!r}); print(lease.held, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert cache.in_use(prep.dir)
        assert cache.clean(everything=True) == [] and prep.dir.is_dir()
        assert cache.prune(days=0) == [] and prep.dir.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert not cache.in_use(prep.dir)  # the lock ended with the process (as with kill -9)
    assert [e.path for e in cache.prune(days=0)] == [prep.dir]
