"""Fault cases about files: a full disk everywhere textstream writes, stale temporaries, eval on bad sources, links.

Standalone (a table, then a JSON line with ``cases``, ``clean``, ``failed``,
``regressions``), or as the ``files`` family of ``tests.faults.drill``, which
calls ``file_cases(work, env)`` and turns each dict into one of its rows. From
the repository root:

    python -m tests.faults.files                # about a minute on 2 cores
    python -m tests.faults.files --keep /tmp/fc # keep the working directory
    python -m tests.faults.files --textstream /tmp/old-checkout   # the same cases on older code

A full disk is a child process under ``RLIMIT_FSIZE`` (a write past the limit
fails with EFBIG; SIGXFSZ ignored), so no root and no filled file system are
needed. Each group of cases runs in one child that imports textstream once
and lowers its soft limit for each command in turn. Checked for every case:
the exit status, one ``textstream:`` line naming the file, never a traceback,
no temporary left behind, the old data intact and, for training, that a
resume once there is room starts from the checkpoint that was in force (a
``regression`` otherwise).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tests.faults.harness import ROOT, Drill, Row, family

WORDS = "the cat sat on a mat while the dog ran after a red ball by the river as the sun went down".split()
TRAIN = ["--preset", "tiny", "--no-samples", "--seed", "7"]
# the child: each case runs `textstream ARGV` in-process under its own file size limit ("limit", bytes; none when
# absent), the soft limit going back up between cases; "at": the limit starts only when that function (MODULE.NAME) is called
CHILD = r"""
import contextlib, importlib, io, json, resource, signal, sys, traceback
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from textstream.cli import main
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
out = []
for case in json.loads(sys.argv[1]):
    limit, undo = case.get("limit"), None
    if limit is not None and case.get("at"):
        module, name = case["at"].rsplit(".", 1)
        mod = importlib.import_module(module)
        orig = getattr(mod, name)
        def limited(*a, _orig=orig, **k):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
            return _orig(*a, **k)
        setattr(mod, name, limited)
        undo = (mod, name, orig)
    elif limit is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(case["argv"])
    except BaseException:
        rc, err = 1, io.StringIO(traceback.format_exc())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        if undo:
            setattr(*undo)
    out.append({"rc": rc, "err": err.getvalue()})
print(json.dumps(out))
"""


def run_child(cases: list[dict], env: dict) -> list[dict]:
    """The ``cases`` (``argv``, ``limit`` in bytes or None, ``at``) in one child; each ``{"rc", "err"}``."""
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, env=env, cwd="/",
                       timeout=1200)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [{"rc": 1, "err": "the child died: " + r.stderr[-500:]} for _ in cases]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.name.endswith(".tmp") or "_temp" in p.name or "tempstate" in p.name or p.name.startswith("checkpoint.tmp")]


def row(case: str, check: str, problems: list[str], regression: str | None = None, outcome: str = "") -> dict:
    return {"case": case, "check": check, "ok": not problems and regression is None,
            "outcome": "; ".join(problems) or outcome or "ok", "regression": regression}


def judge(case: str, result: dict, *, rc: int = 2, names: str = "", root: Path | None = None,
          before: tuple[Path, dict] | None = None) -> dict:
    """One row: exit ``rc``, one ``textstream:`` line naming ``names``, no traceback, no temporaries, data intact."""
    problems = []
    if "Traceback" in result["err"]:
        problems.append("traceback: " + result["err"].strip().splitlines()[-1][:120])
    if result["rc"] != rc:
        problems.append(f"exit {result['rc']}, expected {rc}")
    lines = [line for line in result["err"].splitlines() if line.startswith("textstream: ")]
    if rc == 2 and not (lines and names in lines[-1]):
        problems.append(f"no line naming {names!r}: {(lines or [result['err'][-120:]])[-1][:160]}")
    if root is not None and leftovers(root):
        problems.append(f"left {leftovers(root)[:3]}")
    if before is not None and snapshot(before[0]) != before[1]:
        problems.append(f"{before[0].name} changed")
    return row(case, "one line, exit 2, nothing left" if rc == 2 else f"exit {rc}, nothing left", problems,
               outcome=(lines or [""])[-1][:100])


def write_corpus(path: Path, lines: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(lines)) + "\n")
    return path


# --- the families of cases -------------------------------------------------------------------------
def disk_full(work: Path, env: dict) -> list[dict]:
    """prepare, the cache, train (checkpoint, metrics, step weights), export, generate, under a file size limit.

    (Long: the set-up, then one table of cases read top to bottom, then the resumes.)
    """
    small, big = write_corpus(work / "small.txt", 40), write_corpus(work / "big.txt", 3000, seed=1)
    text = ("word " * 8000).encode()
    (work / "t.txt").write_bytes(text)
    with zipfile.ZipFile(work / "t.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.txt", text)
    zdata = (work / "t.zip").read_bytes()
    registry = [{"name": "plain", "url": (work / "t.txt").as_uri(), "sha256": hashlib.sha256(text).hexdigest(),
                 "size": len(text)},
                {"name": "zipped", "url": (work / "t.zip").as_uri(), "sha256": hashlib.sha256(zdata).hexdigest(),
                 "size": len(zdata), "member": "inner.txt"}]
    (work / "registry.json").write_text(json.dumps({"corpora": registry}))
    env = {**env, "TEXTSTREAM_REGISTRY": str(work / "registry.json")}
    out = work / "prepared"
    (setup,) = run_child([{"argv": ["prepare", str(small), "-o", str(out)]}], env)
    base = work / "base"
    (trained,) = run_child([{"argv": ["train", str(small), "-o", str(base), "--steps", "6", *TRAIN]}], env)
    if setup["rc"] or trained["rc"]:
        return [row("disk-full setup", "prepare and train", [(setup["err"] or trained["err"])[-200:]])]
    runs = {name: Path(shutil.copytree(base, work / name)) for name in ("save", "metrics", "stepfile", "gen")}
    for p in runs["gen"].rglob("*.step.npz"):
        p.unlink()
    ckpt = (base / "checkpoints" / "last" / "ckpt-6.data-00000-of-00001").stat().st_size
    metrics = (base / "metrics.jsonl").stat().st_size
    prepared_before, base_ckpts = snapshot(out), snapshot(base / "checkpoints")
    resume = ["train", "--resume", "--steps", "12", "-o"]
    cases = [
        ("prepare over an old preparation", {"limit": 20_000, "argv": ["prepare", str(big), "-o", str(out)]},
         dict(names=f"{out / 'train.bin'}: cannot write", root=work, before=(out, prepared_before))),
        ("prepare into a new directory", {"limit": 20_000, "argv": ["prepare", str(big), "-o", str(work / "new")]},
         dict(names="new/train.bin: cannot write", root=work)),
        ("prepare into the cache (train)", {"limit": 20_000, "argv": ["train", str(big), "-o", str(work / "r"),
                                                                      "--steps", "2", *TRAIN]},
         dict(names="train.bin: cannot write", root=work)),
        ("download into the cache", {"limit": 10_000, "argv": ["prepare", "plain", "-o", str(work / "p")]},
         dict(names=".txt: cannot write", root=work)),
        ("unpack into the cache", {"limit": 10_000, "argv": ["prepare", "zipped", "-o", str(work / "z")]},
         dict(names=".txt: cannot write", root=work)),
        ("checkpoint save", {"limit": ckpt // 2, "argv": [*resume, str(runs["save"])]},
         dict(names="ckpt-12: cannot write", root=work)),
        ("metrics.jsonl line", {"limit": metrics + 20, "argv": [*resume, str(runs["metrics"])]},
         dict(names="metrics.jsonl: cannot write", root=work)),
        ("step weights file", {"limit": 1000, "at": "textstream.model.stepweights.write",
                               "argv": [*resume, str(runs["stepfile"])]},
         dict(names="ckpt-12.step.npz: cannot write", root=work)),
        ("export savedmodel", {"limit": 3000, "argv": ["export", str(base), "-o", str(work / "sm")]},
         dict(names="sm: cannot write", root=work)),
        ("export litert", {"limit": 3000, "argv": ["export", str(base), "-o", str(work / "m.tflite"),
                                                   "--format", "litert"]},
         dict(names="m.tflite: cannot write", root=work)),
        ("export keras", {"limit": 3000, "argv": ["export", str(base), "-o", str(work / "k"), "--format", "keras"]},
         dict(names="k: cannot write", root=work)),
        ("generate, step weights cache", {"limit": 500, "argv": ["generate", str(runs["gen"]), "-n", "20"]},
         dict(rc=0, root=work)),
    ]
    results = run_child([c for _, c, _ in cases], env)
    rows = [judge(f"disk full: {name}", r, **kw) for (name, _, kw), r in zip(cases, results)]
    if snapshot(base / "checkpoints") != base_ckpts:
        rows.append(row("disk full: the run exported", "unchanged", ["its checkpoints changed"]))
    # with room again: each stopped run resumes from the checkpoint that was in force
    again = run_child([{"argv": ["train", "-o", str(runs[n]), "--resume", "--steps", "14", *TRAIN[2:]]}
                       for n in ("save", "metrics", "stepfile")], env)
    stopped = {name: r for (name, _, _), r in zip(cases, results)}
    said = [in_force(stopped[case]["err"]) for case in ("checkpoint save", "metrics.jsonl line", "step weights file")]
    for name, want, r in zip(("save", "metrics", "stepfile"), said, again):  # where the stop said the run stands
        started = f"from step {want}" in r["err"]
        rows.append(row(f"disk full: resume after {name}", f"resumes from step {want}",
                        [] if r["rc"] == 0 else [f"exit {r['rc']}: {r['err'][-120:]}"],
                        None if started or r["rc"] else f"did not resume from step {want}"))
    return rows


def in_force(err: str) -> int | None:
    """The step of the checkpoint a stopped run's error line names as intact ("the last checkpoint, .../ckpt-N")."""
    match = re.search(r"the last checkpoint, \S*ckpt-(\d+), is intact", err)
    return int(match.group(1)) if match else None


def stale_temporaries(work: Path, env: dict) -> list[dict]:
    """Temporaries of a dead process go with the next prepare and `cache clean`; a live one's stay."""
    from textstream.temporaries import HOST  # the same host tag as the children's

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        src, out, cache = write_corpus(work / "s.txt", 40), work / "out", Path(env["TEXTSTREAM_CACHE"])
        out.mkdir(parents=True, exist_ok=True)
        names = {"dead": out / f".train.bin.{dead.pid}@{HOST}.aaaa.tmp",
                 "live": out / f".train.bin.{live.pid}@{HOST}.bbbb.tmp",
                 "cache": cache / "prepared" / ("0" * 24) / f".val.bin.{dead.pid}@{HOST}.cccc.tmp"}
        for p in names.values():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"\0" * 100_000)
        prep, clean = run_child([{"argv": ["prepare", str(src), "-o", str(out)]}, {"argv": ["cache", "clean"]}], env)
        return [row("stale: prepare removes a dead process's", "removed",
                    [] if not names["dead"].exists() else ["kept"]),
                row("stale: prepare keeps a live process's", "kept", [] if names["live"].exists() else ["REMOVED"],
                    None if names["live"].exists() else "a live file removed"),
                row("stale: cache clean", "removed, freed reported",
                    ([] if not names["cache"].exists() else ["kept"]) + ([] if clean["rc"] == 0 else [clean["err"]]))]
    finally:
        live.kill()
        live.wait()


def eval_sources(work: Path, env: dict, run: Path) -> list[dict]:
    """eval on invalid UTF-8, a binary file, unknown characters (and --unknown skip, --errors replace)."""
    (work / "bad.txt").write_bytes(b"the cat \xff\xfe sat\n" * 20)
    (work / "bin.txt").write_bytes(b"the cat\x00 sat")
    (work / "unk.txt").write_text("the cat QQ sat ZZ\n" * 20)
    cases = [("eval invalid UTF-8", ["eval", str(run), str(work / "bad.txt")], 2, "invalid UTF-8"),
             ("eval binary", ["eval", str(run), str(work / "bin.txt")], 2, "binary file"),
             ("eval unknown characters", ["eval", str(run), str(work / "unk.txt")], 2, "outside the vocabulary"),
             ("eval --unknown skip", ["eval", str(run), str(work / "unk.txt"), "--unknown", "skip"], 0, ""),
             ("eval --errors replace --unknown skip", ["eval", str(run), str(work / "bad.txt"), "--errors", "replace",
                                                       "--unknown", "skip"], 0, "")]
    results = run_child([{"argv": argv} for _, argv, _, _ in cases], env)
    return [judge(name, r, rc=rc, names=names) for (name, _, rc, names), r in zip(cases, results)]


def links(work: Path, env: dict, run: Path) -> list[dict]:
    """A run file planted as a link is refused, and what it points to is untouched."""
    rows = []
    for name in ("metrics.jsonl", ".lock", "config.json", "checkpoints/last/checkpoint"):
        copy = Path(shutil.copytree(run, work / f"link-{name.replace('/', '-')}"))
        victim = work / f"victim-{name.replace('/', '-')}"
        target = copy / name
        victim.write_bytes(target.read_bytes() if target.exists() else b"precious\n")
        target.unlink(missing_ok=True)
        target.symlink_to(victim)
        before = victim.read_bytes()
        (r,) = run_child([{"argv": ["train", "-o", str(copy), "--resume", "--steps", "8"]}], env)
        judged = judge(f"link: {name}", r, names="is a symbolic link")
        if victim.read_bytes() != before:
            judged.update(ok=False, regression=f"wrote through the link into {victim.name}")
        rows.append(judged)
    return rows


def file_cases(work: Path, env: dict | None = None) -> list[dict]:
    """Every case, in ``work`` (a fresh directory); ``env``: the commands' environment (TEXTSTREAM_CACHE set here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {}),
           "TEXTSTREAM_CACHE": str(work / "cache")}
    (work / "full").mkdir(parents=True)
    rows = disk_full(work / "full", env)
    (work / "stale").mkdir()
    rows += stale_temporaries(work / "stale", {**env, "TEXTSTREAM_CACHE": str(work / "stale" / "cache")})
    base = work / "full" / "base"
    if base.is_dir():
        (work / "eval").mkdir()
        rows += eval_sources(work / "eval", env, base)
        (work / "links").mkdir()
        rows += links(work / "links", env, base)
    return rows


@family("files")
def files_family(drill: Drill) -> list[Row]:
    """``file_cases`` (a full disk everywhere textstream writes, ...), as the drill's rows."""
    got = file_cases(drill.work / "files", {"PYTHONPATH": drill.env["PYTHONPATH"]})
    return [Row("files", r["case"], r["check"], r["ok"], r["outcome"], r["regression"]) for r in got]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    p.add_argument("--textstream", type=Path, metavar="DIR", help="run the commands from this source tree (to compare)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-files-")) if args.keep is None else args.keep
    t0 = time.monotonic()
    try:
        rows = file_cases(work, {"PYTHONPATH": str(args.textstream.resolve())} if args.textstream else None)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r["case"]) for r in rows)
    for r in rows:
        extra = f"  [REGRESSION: {r['regression']}]" if r["regression"] else ""
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:<{width}}  {r['check']:<32} {r['outcome']}{extra}")
    print(json.dumps({"cases": len(rows), "clean": sum(r["ok"] for r in rows), "failed": sum(not r["ok"] for r in rows),
                      "regressions": sum(r["regression"] is not None for r in rows),
                      "seconds": round(time.monotonic() - t0, 1)}))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
