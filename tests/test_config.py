"""Presets, budget tiers and validation: the config a command line turns into."""
import pytest

from textstream.config import BUDGET_TIERS, PRESETS, TrainConfig, make_config
from textstream.errors import TextstreamError


def test_default_preset_is_the_dataclass_defaults():
    assert PRESETS["default"] == {}
    cfg = make_config()
    assert (cfg.layers, cfg.units, cfg.objective, cfg.epochs) == (1, TrainConfig.units, "sequence", 20)


def test_default_preset_grows_with_the_time_budget():
    minimum, tier = BUDGET_TIERS["default"][-1]
    short = make_config("default", time_budget=minimum / 3)
    long = make_config("default", time_budget=minimum)
    assert short.units == TrainConfig.units and short.time_budget == minimum / 3 and short.epochs is None
    assert all(getattr(long, k) == v for k, v in tier.items())
    assert make_config("default", epochs=50).units == TrainConfig.units  # tiers follow budgets only
    # the caller's own settings win over the tier
    assert make_config("default", time_budget=minimum, units=64, dropout=0.0).units == 64


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
