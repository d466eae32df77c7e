"""The loop's plain numbers: learning rate, length plan, meter (no TensorFlow, no clock)."""
import math

import pytest

from textstream.config import make_config
from textstream.training.schedule import Every, Meter, Plan, lr_at


def test_meter_leaves_the_compiling_steps_out_of_the_speed():
    meter = Meter(chars_per_step=100, untimed=2)
    assert meter.rate == 0.0 and meter.steady_rate is None and math.isinf(meter.eta(10))
    meter.add(4.0, 10.0)  # tracing and compiling
    assert meter.rate == 10.0 and meter.steady_rate is None  # the last step's speed until a timed one
    meter.add(3.0, 5.0)
    assert meter.rate == 20.0
    meter.add(2.0, 1.0)
    meter.add(2.0, 3.0)
    assert meter.steady_rate == 50.0 == meter.rate  # 2 timed steps, 200 chars in 4 s
    assert meter.eta(10) == 20.0
    assert meter.loss == 2.0 and meter.steps == 4


def test_meter_smooths_the_loss():
    meter = Meter(chars_per_step=1, decay=0.5)
    meter.add(4.0, 1.0)
    assert meter.loss_avg == 4.0
    meter.add(2.0, 1.0)
    assert meter.loss_avg == 3.0
    meter.add(1.0, 1.0)
    assert meter.loss_avg == 2.0 and meter.loss == 1.0


def test_plan_takes_steps_then_time_budget_then_epochs():
    steps = Plan.make(make_config("tiny", steps=30), start=10, steps_for_epochs=99)
    assert (steps.total, steps.horizon, steps.deadline) == (30, 30, None)
    assert steps.progress(123.0) is None and not steps.out_of_time(1e12)
    epochs = Plan.make(make_config("tiny", epochs=2), start=0, steps_for_epochs=99)
    assert epochs.total == 99
    budget = Plan.make(make_config("tiny", time_budget=2.0), start=5, steps_for_epochs=99, now=1000.0)
    assert budget.total is None and budget.budget_s == 120.0 and budget.deadline == 1120.0
    assert budget.horizon > 10**9
    assert budget.progress(1030.0) == 0.25 and not budget.out_of_time(1119.0) and budget.out_of_time(1120.0)


def test_time_left_counts_steps_or_the_budget():
    meter = Meter(chars_per_step=10, untimed=0)
    meter.add(1.0, 2.0)  # 5 chars/s: 2 s a step
    assert Plan(start=0, total=10).time_left(4, meter, now=0.0) == 12.0
    budget = Plan(start=0, total=None, budget_s=60.0, deadline=100.0)
    assert budget.time_left(4, meter, now=70.0) == 30.0 and budget.time_left(4, meter, now=170.0) == 0.0


def test_cosine_runs_over_the_steps_or_the_budget():
    cfg = make_config("tiny", steps=100, schedule="cosine", lr=1.0, min_lr_ratio=0.1, warmup_steps=10)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.1) and lr_at(cfg, 9, 100) == 1.0  # warm-up
    assert lr_at(cfg, 10, 100) == 1.0 and lr_at(cfg, 100, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 55, 100) == pytest.approx(0.55)
    budget = Plan(start=0, total=None, budget_s=100.0, deadline=100.0)
    assert budget.lr(cfg, 50, now=50.0) == pytest.approx(0.55)  # half the budget spent
    constant = make_config("tiny", steps=100, schedule="constant", lr=0.5)
    assert lr_at(constant, 99, 100) == 0.5


def test_every_falls_due_after_its_period():
    timer = Every(10.0)
    timer.reset(now=100.0)
    assert not timer.due(now=109.9) and timer.due(now=110.0)
    timer.reset(now=110.0)
    assert not timer.due(now=115.0)
