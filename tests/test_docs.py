"""The README and docs/ as a user meets them: every example runs, every synopsis names real flags, every link resolves.

Each page's fenced blocks are one of:

* ``sh``: shell commands, run in order with bash (``-euo pipefail``) in a
  directory of the page's own that holds ``corpus.txt`` (a text file) and
  ``my_texts/`` (a directory of text files), so an example's input is there
  the way a user's own text would be; ``textstream`` is the installed
  command and ``$TEXTSTREAM_CACHE`` a fresh cache;
* ``python``: a script, run in the same directory, after the blocks above it;
* ``text``: output, a synopsis or a file's layout, never run; a synopsis
  line (``textstream CMD ...``) may only name flags that ``CMD --help`` lists;
* no language: only the README's first block, the two command lines that
  ``.ci/run`` reads and runs.

An HTML comment right above a block (invisible on the rendered page) tells
the test how to run it as a quick check of the same command:

    <!-- test: --time-budget 30 => --preset tiny --steps 20 | background | wait-http: /health -->

``A => B`` replaces text (``{port}`` and ``{port2}`` are free ports of this run, ``{root}`` the
repository); ``background``
starts the block without waiting (killed when the page is done);
``wait-http: PATH`` waits until ``http://127.0.0.1:{port}PATH`` answers;
``then: CMD`` runs a command after the block. Blocks marked
``<!-- example: NAME -->`` are run by ``tests/test_export.py`` instead.

Running the examples trains small models: those tests are slow (``pytest --slow``).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "tools" / "README.md",
         ROOT / "corpora" / "README.md"]
RUN_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"sh", "python", "text"}
BLOCK = re.compile(r"(?:^[ \t]*<!--\s*(?P<kind>test|example):(?P<directive>[^\n]*?)-->[ \t]*\n)?"
                   r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
BLOCK_TIMEOUT_S = 600
COMMANDS = ("prepare", "corpora", "train", "generate", "eval", "export", "serve", "cache", "score")


def blocks(page: Path) -> list[dict]:
    """The page's fenced blocks, in order: language, body, directive (a dict) and the line it starts on."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        directive = _directive(m["directive"]) if m["kind"] == "test" else {}
        if m["kind"] == "example":
            directive = {"example": m["directive"].strip()}
        out.append({"lang": m["lang"], "body": textwrap.dedent(m["body"]), "directive": directive,
                    "line": text.count("\n", 0, m.start("lang")) + 1})
    return out


def _directive(text: str) -> dict:
    out: dict = {"replace": []}
    for part in (p.strip() for p in text.split(" | ")):
        if "=>" in part:
            a, b = part.split("=>", 1)
            out["replace"].append((a.strip(), b.strip()))
        elif part == "background":
            out["background"] = True
        elif part.startswith("wait-http:"):
            out["wait"] = part.split(":", 1)[1].strip()
        elif part.startswith("then:"):
            out["then"] = part.split(":", 1)[1].strip()
        elif part:
            raise ValueError(f"unknown test directive {part!r}")
    return out


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- the shape of the pages (fast) ----------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_block_has_a_known_language(page):
    found = blocks(page)
    for i, b in enumerate(found):
        if page.name == "README.md" and page.parent == ROOT and i == 0:
            assert b["lang"] == "", "the README's first block is the two command lines .ci/run reads"
            continue
        assert b["lang"] in LANGUAGES, f"{page}:{b['line']}: a block fenced {b['lang']!r} (sh, python or text)"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_test_directive_belongs_to_the_block_below_it(page):
    text = page.read_text(encoding="utf-8")
    attached = sum(1 for b in blocks(page) if b["directive"] and "example" not in b["directive"])
    assert text.count("<!-- test:") == attached, f"{page}: a test directive that is not right above a block"


def test_the_readme_starts_with_the_two_commands_and_stays_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks(ROOT / "README.md")[0]["body"].strip().splitlines()
    assert len(first) == 2 and "textstream train" in first[0] and "pytest" in first[1]
    assert text.count("\n") <= 300
    assert text.index("```") < text.index("\n## "), "the two commands come before the first section"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_resolves(page):
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)  # not links
    text = re.sub(r"`[^`\n]*`", "", text)
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for m in LINK.finditer(text):
        target = m["target"]
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            there = anchors if dest == page else {_anchor(h) for h in re.findall(
                r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
            assert anchor in there, f"{page}: link to {target}: no such heading"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_docs_page_is_linked_from_the_index_and_the_readme_links_the_index():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
    assert "(docs/README.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", RUN_PAGES + [ROOT / "tools" / "README.md"], ids=_page_id)
def test_no_dated_history_in_the_pages(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{page}: a date (history goes in git)"


def _helps() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="200")
    out = {}
    for cmd in COMMANDS:
        done = subprocess.run([sys.executable, "-m", "textstream", cmd, "--help"], capture_output=True, text=True,
                              env=env)
        if done.returncode == 0:
            out[cmd] = done.stdout
    for action in ("info", "clean", "prune"):  # the cache's actions have flags of their own
        out["cache"] += subprocess.run([sys.executable, "-m", "textstream", "cache", action, "--help"],
                                       capture_output=True, text=True, env=env, check=True).stdout
    return out


@pytest.fixture(scope="module")
def helps():
    return _helps()


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_synopsis_lines_name_only_real_flags(page, helps):
    for b in blocks(page):
        if b["lang"] not in ("text", "sh"):
            continue
        for line in b["body"].splitlines():
            m = re.match(r"\s*(?:[A-Z_]+=\S+\s+)*textstream (\w+)(.*)", line)
            if not m or m[1] not in helps:
                continue
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m[2].split("#")[0]):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[m[1]]), \
                    f"{page}:{b['line']}: `textstream {m[1]}` has no {flag}"


# --- running the examples (slow) ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixture_texts(where: Path) -> None:
    """``corpus.txt`` and ``my_texts/``: English prose from Python's own documentation (as the default corpus)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    (where / "corpus.txt").write_text(text[:300_000], encoding="utf-8")
    (where / "my_texts").mkdir()
    for i in range(3):
        (where / "my_texts" / f"part{i}.txt").write_text(text[i * 100_000:(i + 1) * 100_000], encoding="utf-8")


def _wait_http(url: str, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > end:
                raise AssertionError(f"{url} did not answer within {deadline_s:g} s") from None
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=_page_id)
def test_the_pages_examples_run(page, tmp_path):
    runnable = [b for b in blocks(page) if b["lang"] in ("sh", "python") and "example" not in b["directive"]]
    if not runnable:
        pytest.skip(f"{_page_id(page)} has no runnable example")
    work = tmp_path / "work"
    work.mkdir()
    _fixture_texts(work)
    ports = {"{port}": str(_free_port()), "{port2}": str(_free_port()), "{root}": str(ROOT)}
    env = dict(os.environ, TEXTSTREAM_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    background: list[subprocess.Popen] = []
    try:
        for i, b in enumerate(runnable):
            body = b["body"]
            for a, r in b["directive"].get("replace", []):
                assert a in body, f"{page}:{b['line']}: the test directive replaces {a!r}, which is not there"
                for name, value in ports.items():
                    r = r.replace(name, value)
                body = body.replace(a, r)
            if b["lang"] == "python":
                script = work / f".example{i}.py"
                script.write_text(body, encoding="utf-8")
                argv = [sys.executable, script.name]
            else:
                then = b["directive"].get("then")
                argv = ["bash", "-euo", "pipefail", "-c", body + (f"\n{then}\n" if then else "")]
            log = tmp_path / f"block{i}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            if b["directive"].get("background"):
                background.append(proc)
            else:
                try:
                    rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = "timeout"
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                assert rc == 0, f"{page}:{b['line']}: the example failed ({rc}):\n{body}\n--- output ---\n{tail}"
            if "wait" in b["directive"]:
                _wait_http(f"http://127.0.0.1:{ports['{port}']}{b['directive']['wait']}")
    finally:
        for proc in background:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
