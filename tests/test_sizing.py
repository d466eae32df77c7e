"""The model a time budget buys: the compute tiers, the pure rule, and a run that records and keeps its choice."""
import json

import pytest

from textstream.training import setup as training
from textstream.config import TrainConfig, make_config
from textstream.errors import TextstreamError
from textstream.model.run import RunPaths
from textstream.training.schedule import lr_at
from textstream.sizing import (BFLOAT16_MIN_SPEEDUP, COMPUTE_TIERS, NOMINAL_CHARS_PER_S, PASS_DROPOUT, REFERENCE,
                               SIZED, compute_tier, pass_dropout, precision_for, sized, tier_fields)
from textstream.training.loop import train

from test_training import corpus  # noqa: F401  (the fixture)


def test_tiers_rise_with_compute_and_name_only_settings():
    for preset, tiers in COMPUTE_TIERS.items():
        minimums = [m for m, _ in tiers]
        assert minimums == sorted(minimums) and minimums[0] == 0  # every amount of compute has a tier
        assert set(tier_fields(preset)) <= set(TrainConfig.__dataclass_fields__)
    assert set(REFERENCE) <= set(TrainConfig.__dataclass_fields__)


def test_compute_tier_is_the_last_tier_reached():
    tiers = COMPUTE_TIERS["default"]
    for (low, tier), (high, _) in zip(tiers, tiers[1:] + [(float("inf"), None)]):
        assert compute_tier("default", low) == tier
        assert compute_tier("default", (low + high) / 2 if high != float("inf") else low * 10 + 1) == tier
    assert compute_tier("tiny", 1e12) == {} and compute_tier("seed", 0) == {}


def test_a_budget_leaves_the_tier_fields_to_the_rule_unless_given():
    cfg = make_config("default", time_budget=5)
    assert set(cfg.unsized) == SIZED == set(tier_fields("default"))
    assert cfg.sized_by_budget and cfg.time_budget == 5 and cfg.epochs is None
    given = make_config("default", time_budget=5, units=64, dropout=0.0)
    assert given.units == 64 and given.dropout == 0.0 and set(given.unsized) == SIZED - {"units", "dropout"}
    for cfg in (make_config("default", epochs=50), make_config("default", steps=10),
                make_config("tiny", time_budget=600), make_config("seed", time_budget=600)):
        assert not cfg.unsized
    assert make_config("default", epochs=50).units == TrainConfig.units  # no budget: the dataclass defaults


def test_sized_picks_by_speed_times_budget():
    """The same budget on a machine 3x slower buys the tier of a third of the reference characters."""
    tiers = COMPUTE_TIERS["default"]
    cfg = make_config("default", time_budget=5)
    for minimum, tier in tiers:
        speed = (minimum + 1) / 300  # chars/s that make 5 minutes reach this tier exactly
        chosen = sized(cfg, speed)
        assert all(getattr(chosen, k) == v for k, v in tier.items())
        assert chosen.probe_chars_per_s == round(speed, 1) and not chosen.unsized
    fast = sized(cfg, tiers[-1][0] / 300 * 3)
    slow = sized(cfg, tiers[-1][0] / 300 / 3)
    assert fast.units > slow.units
    # half the budget on the same machine is the same compute as the full budget at half the speed
    half = make_config("default", time_budget=2.5)
    same = {"time_budget": 5, "probe_chars_per_s": 10_000.0}
    assert sized(half, 20_000).to_dict() | same == sized(cfg, 10_000).to_dict()


def test_sized_keeps_what_the_caller_gave_and_what_is_set():
    cfg = make_config("default", time_budget=30, units=96, lr=1e-3)
    chosen = sized(cfg, 1e9)
    assert (chosen.units, chosen.lr) == (96, 1e-3)
    assert chosen.batch_size == COMPUTE_TIERS["default"][-1][1]["batch_size"]
    done = make_config("default", epochs=2)
    assert sized(done, 123.0) is done  # nothing unset: no change, no speed recorded


def test_pass_dropout_rises_with_the_passes():
    for preset, steps in PASS_DROPOUT.items():
        assert pass_dropout(preset, 0.0) == 0.0
        assert [m for m, _ in steps] == sorted(m for m, _ in steps) and [d for _, d in steps] == sorted(d for _, d in steps)
        for minimum, dropout in steps:
            assert pass_dropout(preset, minimum) == dropout and pass_dropout(preset, minimum * 0.999) < dropout
    assert pass_dropout("tiny", 1e9) == 0.0


def test_a_small_corpus_seen_often_gets_more_dropout():
    """The same compute on a corpus it will see many times: the tier's dropout, raised by ``pass_dropout``."""
    cfg = make_config("default", time_budget=5)
    minimum, raised = PASS_DROPOUT["default"][0]
    speed = COMPUTE_TIERS["default"][0][0] / 300 + 1000.0  # the first tier: 300,000 reference characters
    tier = compute_tier("default", speed * 300)
    assert tier["dropout"] < raised
    assert sized(cfg, speed).dropout == tier["dropout"]  # corpus size unknown
    assert sized(cfg, speed, train_chars=int(speed * 300 / (minimum * 0.99))).dropout == tier["dropout"] < raised
    often = sized(cfg, speed, train_chars=int(speed * 300 / (minimum * 0.99)) // 2)  # twice the passes
    assert often.dropout == raised and often.units == tier["units"]  # only the dropout moves
    given = make_config("default", time_budget=5, dropout=0.05)
    assert sized(given, speed, train_chars=10).dropout == 0.05  # the caller's value is kept
    top = COMPUTE_TIERS["default"][-1]  # the top tier: its own dropout, or more for a corpus seen very often
    most = PASS_DROPOUT["default"][-1][1]
    assert sized(cfg, top[0] / 300 + 1, train_chars=10).dropout == max(top[1]["dropout"], most)


def test_the_top_tier_raises_its_dropout_only_for_a_corpus_seen_very_often():
    """30 minutes at ~20,000 chars/s: ~18 reference passes over 2 MB keep the tier's 0.4.

    ~36 over 1 MB and ~67 over 0.54 MB get 0.5.
    """
    cfg = make_config("default", time_budget=30)
    top_minimum, top = COMPUTE_TIERS["default"][-1]
    speed = 20_000.0
    assert speed * 1800 >= top_minimum
    kinyarwanda, nietzsche = sized(cfg, speed, train_chars=2_028_000), sized(cfg, speed, train_chars=541_000)
    assert (kinyarwanda.units, nietzsche.units) == (top["units"], top["units"])
    assert kinyarwanda.dropout == top["dropout"] == 0.4
    assert nietzsche.dropout == sized(cfg, speed, train_chars=1_004_000).dropout == 0.5


def test_without_a_measurement_the_nominal_speed_decides():
    cfg = make_config("default", time_budget=5)
    assert sized(cfg, None).to_dict() == sized(cfg, NOMINAL_CHARS_PER_S).to_dict() | {"probe_chars_per_s": None}


def test_the_top_tier_keeps_a_high_learning_rate_floor():
    """The third tier's cosine ends at its own floor; the lower tiers' and runs without a budget at the default."""
    top_minimum, top = COMPUTE_TIERS["default"][-1]
    cfg = sized(make_config("default", time_budget=30), top_minimum / 1800 + 1)
    assert cfg.min_lr_ratio == top["min_lr_ratio"] > TrainConfig.min_lr_ratio
    assert lr_at(cfg, 10**6, None, progress=1.0) == pytest.approx(cfg.lr * top["min_lr_ratio"])
    assert lr_at(cfg, 0, None, progress=0.0) == pytest.approx(cfg.lr)
    assert sized(make_config("default", time_budget=5), 1.0).min_lr_ratio == TrainConfig.min_lr_ratio
    assert make_config("default", epochs=3).min_lr_ratio == TrainConfig.min_lr_ratio
    assert sized(make_config("default", time_budget=30, min_lr_ratio=0.1), 1e9).min_lr_ratio == 0.1


def test_the_top_tier_averages_the_weights_over_more_steps():
    """The third tier's --ema is its own; lower tiers and runs without a budget keep the default; a given one wins."""
    top_minimum, top = COMPUTE_TIERS["default"][-1]
    cfg = sized(make_config("default", time_budget=30), top_minimum / 1800 + 1)
    assert cfg.ema == top["ema"] > TrainConfig.ema
    assert sized(make_config("default", time_budget=5), 1.0).ema == TrainConfig.ema
    assert make_config("default", epochs=3).ema == TrainConfig.ema
    assert sized(make_config("default", time_budget=30, ema=0.0), 1e9).ema == 0.0  # off, as asked
    assert sized(make_config("default", time_budget=30, ema=0.99), 1e9).ema == 0.99
    assert make_config("seed", time_budget=30).ema == 0.0  # no tiers: the preset's own


def test_unset_fields_are_refused_outside_a_budget_run(tmp_path):
    with pytest.raises(TextstreamError, match=r"^--units must be set \(an integer\); only a --time-budget run"):
        TrainConfig(units=None).check()
    with pytest.raises(TextstreamError, match=r"--batch-size must be set"):
        TrainConfig(batch_size=None, time_budget=5, preset="tiny").check()
    d = TrainConfig(epochs=3).to_dict() | {"lr": None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(TextstreamError, match=r"config.json: lr must be set"):
        TrainConfig.load(path)


TINY_TIERS = [(0.0, dict(units=8, batch_size=4, dropout=0.0, lr=4e-3)),
              (1e6, dict(units=12, batch_size=4, dropout=0.1, lr=4e-3))]


def test_a_budget_run_records_its_choice_and_resume_keeps_it(corpus, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(COMPUTE_TIERS, "default", TINY_TIERS)
    calls = []
    monkeypatch.setattr(training, "training_speed", lambda vocab_size, **shape: calls.append(shape) or 5000.0)
    monkeypatch.setattr(training, "bfloat16_speedup", lambda: 1.87)
    run = tmp_path / "run"
    cfg = make_config("default", time_budget=0.02, seq_len=16, samples=False)  # 5000 * 1.2 s: the first tier
    assert cfg.precision == "auto"
    summary = train(cfg, [corpus], run)
    assert calls == [{**REFERENCE, "precision": "bfloat16"}] and summary.step > 0  # timed as the run will train
    saved = RunPaths(run).read_config()
    assert (saved.units, saved.batch_size, saved.dropout, saved.probe_chars_per_s) == (8, 4, 0.0, 5000.0)
    assert (saved.precision, saved.bfloat16_speedup) == ("bfloat16", 1.87)
    monkeypatch.setattr(training, "training_speed", lambda *a, **k: pytest.fail("a resume measured again"))
    monkeypatch.setattr(training, "bfloat16_speedup", lambda: pytest.fail("a resume timed the precisions again"))
    monkeypatch.setitem(COMPUTE_TIERS, "default", TINY_TIERS[::-1])  # whatever the tiers say now
    train(saved.resumed({"time_budget": 0.01}), [], run, resume=True)
    again = RunPaths(run).read_config()
    assert again.to_dict() == saved.to_dict()


def test_several_replicas_assume_the_nominal_speed(corpus, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(COMPUTE_TIERS, "default", TINY_TIERS)
    monkeypatch.setattr(training, "training_speed", lambda *a, **k: pytest.fail("measured under several replicas"))
    monkeypatch.setattr(training, "bfloat16_speedup", lambda: pytest.fail("timed under several replicas"))

    class Two:
        num_replicas_in_sync = 2

    class Corpus:
        train_chars = 10**9

        class vocab:
            size = 40

    cfg = make_config("default", time_budget=1.0, seq_len=16)
    paths = RunPaths(tmp_path / "run")
    chosen = training.size_for_budget(cfg, Corpus(), Two(), paths, resume=False)
    assert chosen.to_dict() == sized(cfg, None).to_dict() and chosen.units == 12  # 20,000 * 60 s: second tier
    # every worker would time its own machine: all train in float32
    assert training.resolve_precision(cfg, Two(), paths, resume=False).precision == "float32"


def test_precision_auto_is_bfloat16_where_it_is_clearly_faster():
    assert precision_for(None) == "float32"  # not measured (several replicas, a GPU)
    assert precision_for(0.4) == "float32"  # emulated: slower
    assert precision_for(BFLOAT16_MIN_SPEEDUP - 0.01) == "float32"
    assert precision_for(BFLOAT16_MIN_SPEEDUP) == precision_for(1.9) == "bfloat16"


@pytest.mark.parametrize("speedup, precision", [(1.9, "bfloat16"), (0.6, "float32")])
def test_a_run_resolves_precision_auto_once_and_records_it(corpus, tmp_path, monkeypatch, speedup,  # noqa: F811
                                                          precision):
    monkeypatch.setattr(training, "bfloat16_speedup", lambda: speedup)
    run = tmp_path / "run"
    train(make_config("tiny", steps=3, precision="auto", samples=False), [corpus], run)
    saved = RunPaths(run).read_config()
    assert (saved.precision, saved.bfloat16_speedup) == (precision, speedup)
    auto = saved.to_dict() | {"precision": "auto"}  # a config.json train did not write
    (run / "config.json").write_text(json.dumps(auto))
    with pytest.raises(TextstreamError, match=r"config.json: precision auto not resolved: not a config train wrote"):
        train(TrainConfig.load(run / "config.json").resumed({"steps": 6}), [], run, resume=True)


def test_explicit_precisions_are_not_timed(corpus, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(training, "bfloat16_speedup", lambda: pytest.fail("timed an explicit precision"))
    for precision in ("float32", "bfloat16"):
        train(make_config("tiny", steps=2, precision=precision, samples=False), [corpus], tmp_path / precision)
        saved = RunPaths(tmp_path / precision).read_config()
        assert (saved.precision, saved.bfloat16_speedup) == (precision, None)
