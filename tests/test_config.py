"""Presets, budget tiers, settings (flags, checks, the resume rule) and config.json."""
import argparse
import dataclasses
import json
import math

import pytest

from textstream.cli import build_parser
from textstream.cli.options import add_setting_arguments
from textstream.config import (MODEL, PREPARE, PRESETS, TrainConfig, check_prepare_options, make_config, options,
    prepare_options)
from textstream.settings import setting
from textstream.errors import TextstreamError


def test_default_preset_is_the_dataclass_defaults():
    assert PRESETS["default"] == {}
    cfg = make_config()
    assert (cfg.layers, cfg.units, cfg.objective, cfg.epochs) == (1, TrainConfig.units, "sequence", 20)


def test_default_preset_leaves_its_size_to_the_time_budget():
    """The model of a time-budget run is chosen by the compute it buys (tests/test_sizing.py)."""
    short = make_config("default", time_budget=2)
    assert short.units is None and short.time_budget == 2 and short.epochs is None
    assert make_config("default", epochs=50).units == TrainConfig.units  # without a budget: the defaults
    assert make_config("default", time_budget=30, units=64, dropout=0.0).units == 64  # the caller's own win


def test_other_presets_do_not_scale():
    assert make_config("tiny", time_budget=600).units == PRESETS["tiny"]["units"]
    assert make_config("seed", time_budget=600).units == 128


def test_config_errors_are_one_line():
    with pytest.raises(TextstreamError, match="unknown preset 'huge'; known presets: seed, default, tiny"):
        make_config("huge")
    with pytest.raises(TextstreamError, match="--carry-state needs --objective sequence"):
        make_config("default", objective="next", carry_state=True)
    with pytest.raises(TextstreamError, match=r"--dropout must be in \[0, 1\)"):
        make_config("default", dropout=1.0)


def test_config_round_trips_through_json(tmp_path):
    cfg = make_config("default", time_budget=30, carry_state=True)
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(cfg.to_dict()))
    assert TrainConfig.load(path) == cfg


# --- one declaration per setting: flags, checks and the resume rule come from the field -------------

def _flag_argv(option):
    """A valid command line for ``option``'s flag: the flag alone for booleans, else flag + a value."""
    if option.kind is bool:
        return [option.flags[0]]
    value = option.setting.choices[-1] if option.setting.choices else option.default
    if value is None:
        value = 1
    return [option.flags[-1], str(value)]


@pytest.mark.parametrize("name", [n for n, o in options().items() if o.setting.cli])
def test_every_setting_has_a_train_flag(name):
    option = options()[name]
    args = build_parser().parse_args(["train", *_flag_argv(option)])
    assert getattr(args, name) is not None  # the flag (or its last alias) sets the field
    assert isinstance(getattr(args, name), option.kind)
    if option.setting.group == PREPARE:
        assert getattr(build_parser().parse_args(["prepare", "-o", "x", *_flag_argv(option)]), name) is not None


def test_flags_default_to_unset_so_presets_apply():
    args = build_parser().parse_args(["train"])
    assert all(getattr(args, n, None) is None for n in options())


def test_a_field_without_a_setting_is_caught():
    @dataclasses.dataclass
    class Careless(TrainConfig):
        new_option: int = 3

    with pytest.raises(TypeError, match="Careless.new_option is declared without setting"):
        options(Careless)


def test_a_new_setting_is_one_line():
    @dataclasses.dataclass
    class More(TrainConfig):
        heads: int = setting(2, "attention heads", group=MODEL, ge=1)

    parser = argparse.ArgumentParser()
    add_setting_arguments(parser, cls=More)
    assert parser.parse_args(["--heads", "0"]).heads == 0  # parsing converts; checking is check()'s
    assert More(heads=4).check().heads == 4
    with pytest.raises(TextstreamError, match=r"^--heads must be >= 1 \(got 0\)$"):
        More(heads=0).check()


FLOATS = [n for n, o in options().items() if o.kind is float]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOATS)
def test_float_settings_must_be_finite(name, value):
    with pytest.raises(TextstreamError, match=f"^{options()[name].label} must be "):
        make_config("default", **{name: value})


@pytest.mark.parametrize("overrides, message", [
    (dict(lr=0.0), r"--lr must be > 0 and finite \(got 0.0\)"),
    (dict(min_lr_ratio=2.0), r"--min-lr-ratio must be in \[0, 1\] \(got 2.0\)"),
    (dict(warmup_steps=-5), r"--warmup-steps must be >= 0 \(got -5\)"),
    (dict(time_budget=0), r"--time-budget must be > 0 minutes and finite \(got 0\)"),
    (dict(seed=-1), r"--seed must be in \[0, 4294967295\] \(got -1\)"),
    (dict(objective="both"), r"--objective must be one of sequence, next \(got 'both'\)"),
    (dict(units="abc"), r"--units must be an integer \(got 'abc'\)"),
    (dict(units=True), r"--units must be an integer \(got True\)"),
    (dict(carry_state="yes"), r"--carry-state must be true or false \(got 'yes'\)"),
    (dict(temperatures=(0.5, -1.0)), r"temperatures must be a list of numbers >= 0 and finite"),
])
def test_settings_out_of_range_or_of_the_wrong_type(overrides, message):
    with pytest.raises(TextstreamError, match=message):
        make_config("default", **overrides)


@pytest.mark.parametrize("content, message", [
    ('{"units": "abc"}', r"config.json: units must be an integer \(got 'abc'\)"),
    ("[1, 2, 3]", r"config.json: not a textstream config \(a JSON list instead of an object\)"),
    ('"units"', r"config.json: not a textstream config \(a JSON str instead of an object\)"),
    ('{"lr": NaN}', r"config.json: lr must be > 0 and finite \(got nan\)"),
    ('{"temperatures": "hot"}', r"config.json: temperatures must be a list of numbers"),
    ('{"max_vocab": 2.5}', r"config.json: max_vocab must be an integer \(got 2.5\)"),
    ('{"dropout_mask": "time"}', r"config.json: dropout_mask must be one of"),
    ('{"precision": "float16"}', r"config.json: precision must be one of auto, float32, bfloat16"),
    ('{"window_phases": "shuffled"}', r"config.json: window_phases must be one of cycle, random"),
    ('{"objective": "next", "carry_state": true}', r"config.json: --carry-state needs --objective sequence"),
    ("{not json", r"config.json: not a textstream config \("),
])
def test_a_damaged_config_json_is_one_line_naming_the_file(tmp_path, content, message):
    """Each object's fields are edited into a whole config.json (every other field as written)."""
    path = tmp_path / "config.json"
    try:
        edited = json.loads(content)
    except ValueError:
        edited = None
    if isinstance(edited, dict):
        content = json.dumps({**make_config("tiny").to_dict(), **edited})
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TextstreamError, match=message) as e:
        TrainConfig.load(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("ema"), r"\(no ema\)"),
    (lambda d: [d.pop(k) for k in ("precision", "bfloat16_speedup", "window_phases", "weight_decay", "tokens")],
     r"\(no window_phases, tokens, weight_decay, precision and 1 more\)"),
    (lambda d: d.update(step=d.pop("stride")), r"\(no stride; unknown step\)"),
    (lambda d: d.update(extra={}), r"\(unknown extra\)"),
])
def test_a_config_json_of_another_version_is_one_line_naming_the_file(tmp_path, edit, message):
    """Every setting must be there and known: a file another version wrote is refused, never guessed at."""
    d = make_config("tiny").to_dict()
    edit(d)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TextstreamError, match=message) as e:
        TrainConfig.load(path)
    assert str(e.value).startswith(f"{path}: not a config.json of this version of textstream (")
    assert "\n" not in str(e.value)


def test_preset_defaults():
    assert make_config("tiny").ema == 0.999 and make_config("seed").ema == 0.0  # the original had none
    assert make_config("default").window_phases == "cycle" and make_config("default").weight_decay == 0.0
    # the original example and the smoke-test preset compute in float32; the default is timed when a run starts
    assert (make_config("seed").precision, make_config("tiny").precision) == ("float32", "float32")
    assert make_config("default").precision == make_config("default", time_budget=5).precision == "auto"


def test_resume_may_change_the_length_and_the_samples_only():
    may = {n for n, o in options().items() if o.setting.resume}
    assert may == {"epochs", "steps", "time_budget", "sample_every", "samples", "sample_chars", "temperatures"}
    saved = make_config("tiny", steps=10)
    longer = saved.resumed({"steps": 20, "units": saved.units, "seed": None})  # same value, None: no change
    assert longer.steps == 20 and longer.epochs is None and longer.units == saved.units
    budget = saved.resumed({"time_budget": 5.0, "samples": False, "sample_every": 3})
    assert (budget.steps, budget.time_budget, budget.samples, budget.sample_every) == (None, 5.0, False, 3)
    assert saved.resumed({}) == saved
    with pytest.raises(TextstreamError, match=r"^--resume keeps the run's settings; cannot change: --units$"):
        saved.resumed({"units": 64})
    with pytest.raises(TextstreamError, match=r"cannot change: --preset, --lr, --seed$"):
        saved.resumed({"seed": 3, "lr": 0.5, "preset": "default"})
    with pytest.raises(TextstreamError, match=r"^--time-budget must be > 0 minutes and finite \(got nan\)"):
        saved.resumed({"time_budget": math.nan})
    with pytest.raises(TextstreamError, match=r"^--lr must be > 0 and finite \(got inf\)"):
        saved.resumed({"lr": math.inf})


def test_prepare_options_are_checked_once():
    assert prepare_options() == {"lowercase": False, "val_fraction": 0.05, "max_vocab": None, "tokens": "auto",
                                 "errors": "strict"}
    assert prepare_options(val_fraction=0.0, errors=None)["val_fraction"] == 0.0
    check_prepare_options(lowercase=True, val_fraction=0.1, max_vocab=3, errors="replace")
    for values, message in [(dict(val_fraction=1.0), r"--val-fraction must be in \[0, 1\) \(got 1.0\)"),
                            (dict(val_fraction=math.nan), r"--val-fraction must be in \[0, 1\)"),
                            (dict(max_vocab=0), r"--max-vocab must be >= 1 \(got 0\)"),
                            (dict(errors="ignore"), r"--errors must be one of strict, replace \(got 'ignore'\)")]:
        with pytest.raises(TextstreamError, match=message):
            check_prepare_options(**values)
        with pytest.raises(TextstreamError, match=message):
            prepare_options(**values)
    with pytest.raises(TypeError):
        check_prepare_options(units=3)
