"""The command line's skin: one module per command, one-line flag errors, settings rejected before any work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_run
from textstream.cli import COMMANDS, build_parser, main
from textstream.config import make_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_a_module_with_the_interface():
    for name, module in COMMANDS.items():
        assert module.__name__.startswith("textstream.cli."), name
        assert isinstance(module.HELP, str) and "\n" not in module.HELP
        assert callable(module.add_arguments) and callable(module.run)
    sub = build_parser().parse_args(["corpora"])
    assert sub.command == "corpora"


FLAG_ERRORS = {
    "unknown flag": (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "bad int": (["train", "--layers", "two"], "argument --layers: invalid int value: 'two'"),
    "bad float": (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    "missing argument": (["prepare", "x.txt"], "the following arguments are required: -o/--output"),
    "missing value": (["generate", "run", "--top-k"], "argument --top-k: expected one argument"),
    "invalid choice": (["train", "--objective", "both"], "argument --objective: invalid choice: 'both'"),
    "unknown command": (["trian"], "argument COMMAND: invalid choice: 'trian'"),
    "exclusive flags": (["train", "--epochs", "2", "--steps", "3"], "argument --steps: not allowed with"),
    "bad positive int": (["eval", "run", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(FLAG_ERRORS))
def test_flag_errors_are_one_line_and_exit_2(capsys, case):
    argv, text = FLAG_ERRORS[case]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("textstream: "), err
    assert text in err and "usage:" not in err


def test_help_is_unchanged_by_one_line_errors(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        assert capsys.readouterr().out.startswith("usage: textstream")
    assert main([]) == 2  # no command: the help, on stderr
    assert capsys.readouterr().err.startswith("usage: textstream")


BAD_SETTINGS = [
    (["--lr", "inf"], "--lr must be > 0 and finite (got inf)"),
    (["--lr", "nan"], "--lr must be > 0 and finite (got nan)"),
    (["--min-lr-ratio", "nan"], "--min-lr-ratio must be in [0, 1] (got nan)"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1] (got 2.0)"),
    (["--dropout", "nan"], "--dropout must be in [0, 1) (got nan)"),
    (["--weight-dropout", "1"], "--weight-dropout must be in [0, 1) (got 1.0)"),
    (["--clipnorm", "inf"], "--clipnorm must be >= 0 and finite (got inf)"),
    (["--time-budget", "nan"], "--time-budget must be > 0 minutes and finite (got nan)"),
    (["--time-budget", "inf"], "--time-budget must be > 0 minutes and finite (got inf)"),
    (["--warmup-steps", "-5"], "--warmup-steps must be >= 0 (got -5)"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1) (got 1.0)"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295] (got -1)"),
]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    """Each bad float or range: one line naming the flag, exit 2, no run directory, TensorFlow never imported."""
    run = tmp_path / "run"
    code = f"""
import contextlib, io, json, sys
from textstream.cli import main
results = []
for flags in {[flags for flags, _ in BAD_SETTINGS]!r}:
    with contextlib.redirect_stderr(io.StringIO()) as err:
        results.append((main(["train", "-o", {str(run)!r}, *flags]), err.getvalue()))
results.append((main(["prepare", "-o", {str(run)!r}, "--val-fraction", "nan"]), ""))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras"))
print(json.dumps({{"results": results, "heavy": heavy}}))
"""
    env = {"TEXTSTREAM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["heavy"] == []
    for (flags, message), (status, err) in zip(BAD_SETTINGS, got["results"]):
        assert status == 2 and err == f"textstream: {message}\n", (flags, err)
    assert got["results"][-1][0] == 2
    assert not run.exists()


def test_resume_refuses_a_damaged_config_json(tmp_path, capsys):
    run = make_run(tmp_path)  # a run (it has a checkpoint) whose config.json is then damaged
    (run / "config.json").write_text("[1, 2, 3]", encoding="utf-8")
    assert main(["train", "-o", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == f"textstream: {run / 'config.json'}: not a textstream config (a JSON list instead of an object)\n"
    config = json.loads(json.dumps(make_config("tiny").to_dict()))
    (run / "config.json").write_text(json.dumps({**config, "units": "abc"}), encoding="utf-8")
    assert main(["train", "-o", str(run), "--resume", "--steps", "5"]) == 2
    assert capsys.readouterr().err == \
        f"textstream: {run / 'config.json'}: units must be an integer (got 'abc')\n"


def test_console_does_not_import_the_cli_package():
    source = (ROOT / "textstream" / "cli" / "console.py").read_text(encoding="utf-8")
    assert "textstream.cli import" not in source and "from textstream.cli " not in source
