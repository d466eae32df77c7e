"""tools.baselines.nanogpt: the split, the scoring plan (every validation character once), nanoGPT's schedule.

The torch-free parts run everywhere; the scoring check needs torch and a
nanoGPT checkout (the benchmark's own environment, see the tool's docstring)
and skips without them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from tools.baselines import nanogpt as nb

TEXT = "First Citizen:\r\nBefore we proceed any further, hear me speak.\r\n\r\nAll:\r\nSpeak, speak.\r\n" * 6


def contexts(plan, n_context, n_val):
    """{validation index: characters of context} from a plan, failing on a character scored twice."""
    c = min(n_context, 64)
    seen = {}
    for start, n, first in plan:
        assert 0 <= first < n <= 64
        for j in range(first, n):
            i = start + j + 1 - c
            assert i not in seen, f"validation character {i} scored twice"
            seen[i] = j + 1
    assert sorted(seen) == list(range(0 if c else 1, n_val))  # no context: character 0 cannot be predicted
    return seen


@pytest.mark.parametrize("n_val", [1, 2, 63, 64, 65, 66, 96, 97, 98, 129, 1000, 1001])
@pytest.mark.parametrize("n_context", [0, 5, 64, 500])
def test_score_plan_scores_every_validation_character_once_with_the_documented_context(n_val, n_context):
    seen = contexts(nb.score_plan(n_val, n_context), n_context, n_val)
    if n_context:
        assert seen[0] == min(n_context, 64)  # from the end of the training split
    for i, ctx in seen.items():
        if 1 <= i <= 64:
            assert ctx == i  # the first window: what context it has
        elif i > 64:
            assert 33 <= ctx <= 64


def test_load_split_is_textstreams_split_with_the_whole_files_sorted_vocabulary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(TEXT.encode())
    train, val, chars = nb.load_split(path, 0.1)
    text = TEXT.replace("\r\n", "\n")
    assert chars == sorted(set(text)) and "\r" not in chars
    assert len(val) == math.floor(len(text) * 0.1) and len(train) + len(val) == len(text)
    assert "".join(chars[i] for i in np.concatenate([train, val])) == text


def test_get_lr_is_nanogpts_warmup_then_cosine_over_iterations_or_the_budget_spent():
    cfg = nb.NanoConfig()
    assert nb.get_lr(cfg, 0, 2000, None) == pytest.approx(1e-3 / 101)
    assert nb.get_lr(cfg, 99, 2000, None) == pytest.approx(1e-3 * 100 / 101)
    assert nb.get_lr(cfg, 100, 2000, None) == pytest.approx(1e-3)
    assert nb.get_lr(cfg, 1050, 2000, None) == pytest.approx(5.5e-4)
    assert nb.get_lr(cfg, 2000, 2000, None) == pytest.approx(1e-4)
    assert nb.get_lr(cfg, 2001, 2000, None) == 1e-4
    assert nb.get_lr(cfg, 100, 100, None) == 1e-4  # decay over the warm-up alone (train.py: 0/0)
    assert nb.get_lr(cfg, 50, None, 0.9) == pytest.approx(1e-3 * 51 / 101)  # warm-up by iterations
    assert nb.get_lr(cfg, 500, None, 0.5) == pytest.approx(5.5e-4)
    assert nb.get_lr(cfg, 500, None, 1.2) == pytest.approx(1e-4)


def torch_nanogpt_and_split(tmp_path):
    """torch, the nanoGPT checkout's model module and a small split; skips without either."""
    torch = pytest.importorskip("torch", reason="the nanoGPT baseline's torch is not installed here "
                                               "(see tools/baselines/nanogpt.py for its venv)")
    directory = Path(os.environ.get("NANOGPT_DIR", nb.DEFAULT_NANOGPT_DIR))
    if not (directory / "model.py").is_file():
        pytest.skip(f"no nanoGPT checkout at {directory} (set NANOGPT_DIR)")
    nanogpt = nb.load_nanogpt(directory)
    path = tmp_path / "t.txt"
    path.write_text(TEXT * 3)
    train, val, chars = nb.load_split(path, 0.3)
    return torch, nanogpt, train, val, chars


def test_score_equals_scoring_each_character_alone_from_its_documented_context(tmp_path):
    torch, nanogpt, train, val, chars = torch_nanogpt_and_split(tmp_path)
    torch.manual_seed(0)
    cfg = nb.NanoConfig(n_layer=1, n_head=2, n_embd=16, eval_iters=2)
    model = nanogpt.GPT(nanogpt.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, bias=False,
                                          vocab_size=len(chars), dropout=0.0))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    result = nb.train(torch, model, optimizer, nb.Batches(torch, cfg, train, val), cfg, iters=3, seconds=None,
                      eval_interval=0, log=lambda msg: None)
    assert result.iters == 3 and result.estimate["iter"] == 3
    nats, count, ctx = nb.score(torch, model, train, val, batch=5)
    assert count == len(val) and ctx == (1, 64)
    stream = np.concatenate([train, val])
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(len(val)):
            p = len(train) + i
            k = 64 if i == 0 else (i if i <= 64 else 33 + (i - 65) % 32)
            x = torch.from_numpy(stream[p - k:p])[None]
            logits, _ = model(x)
            total -= float(torch.log_softmax(logits[0, -1].double(), -1)[stream[p]])
    assert nats == pytest.approx(total, rel=1e-5)


def test_train_keeps_the_weights_of_the_lowest_val_estimate_as_nanogpts_checkpoint(tmp_path, monkeypatch):
    torch, nanogpt, train, val, chars = torch_nanogpt_and_split(tmp_path)
    cfg = nb.NanoConfig(n_layer=1, n_head=2, n_embd=16, eval_iters=2)
    model, optimizer = nb.build(torch, nanogpt, cfg, len(chars))
    vals = iter([3.0, 1.0, 2.0, 2.5])  # estimates at iterations 0, 2, 4 and the end (5): the lowest at 2
    seen = {}

    def estimate(torch_, model_, batches, eval_iters):
        v = next(vals)
        seen[v] = {k: t.detach().clone() for k, t in model_.state_dict().items()}
        return {"train": v, "val": v}

    monkeypatch.setattr(nb, "estimate_loss", estimate)
    result = nb.train(torch, model, optimizer, nb.Batches(torch, cfg, train, val), cfg, iters=5, seconds=None,
                      eval_interval=2, log=lambda msg: None)
    assert result.best == {"iter": 2, "train": 1.0, "val": 1.0} and result.estimate["iter"] == 5
    assert all(torch.equal(result.best_state[k], seen[1.0][k]) for k in seen[1.0])
    assert not torch.equal(result.best_state["lm_head.weight"], model.state_dict()["lm_head.weight"])
    vals = iter([2.0])  # only the last estimate: the final weights, nothing kept apart
    result = nb.train(torch, model, optimizer, nb.Batches(torch, cfg, train, val), cfg, iters=2, seconds=None,
                      eval_interval=0, log=lambda msg: None)
    assert result.best["iter"] == 2 and result.best_state is None


class FakeTorch:
    """Just the thread-count calls of torch."""

    def __init__(self):
        self.threads = 2

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.threads = n


def drive(threads, step_time, steps, now=0.0):
    """Run ``steps`` fake steps, each taking ``step_time(thread count)``; return the counts used and the clock."""
    picked = []
    for _ in range(steps):
        n = threads.pick(now)
        dt = step_time(n)
        now += dt
        threads.record(n, dt, now)
        picked.append(n)
    return picked, now


def test_threads_auto_keeps_all_cores_when_they_are_faster_and_one_when_others_load_the_machine():
    torch = FakeTorch()
    idle = nb.Threads(torch, 2, auto=True, probe=4, every_s=10.0)
    picked, _ = drive(idle, lambda n: 0.03 if n == 2 else 0.05, 200)
    assert picked[:10] == [1] * 5 + [2] * 5  # probe: a settling step, then 4 timed steps of each
    assert picked[10:30] == [2] * 20 and torch.threads == 2

    busy = nb.Threads(torch, 2, auto=True, probe=4, every_s=10.0)
    picked, now = drive(busy, lambda n: 2.0 if n == 2 else 0.05, 5 + 2 + 400)
    assert picked[:7] == [1] * 5 + [2, 2]  # all cores dropped after its settling step and one slow step
    assert picked[7:207] == [1] * 200 and busy.wait == 20.0  # next probe later: it was cut short
    assert busy.used[2] < 10


def test_threads_fixed_never_changes_the_count():
    torch = FakeTorch()
    picked, _ = drive(nb.Threads(torch, 2, auto=False), lambda n: 1.0, 50)
    assert set(picked) == {2}
