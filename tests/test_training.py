"""Training: loss falls, exact resume, atomic checkpoints, signals, the lock, clear errors."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from textstream.cli import main
from textstream.config import TrainConfig, make_config
from textstream.errors import TextstreamError
from textstream.model.checkpoint import load_model
from textstream.training.events import Checkpointed, EpochEnd, Finished, Prepared, Samples, Started, StepLogged
from textstream.model.run import RunLock, RunPaths
from textstream.training.loop import train

WORDS = ("the cat sat on a mat while the dog ran after a red ball and the bird sang "
         "in the old tree by the river as the sun went down over the hill").split()


def write_text(path, n_lines=400, seed=0, extra=""):
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, 10)) + "." for _ in range(n_lines)]
    path.write_text("\n".join(lines) + extra + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTSTREAM_CACHE", str(tmp_path / "cache"))
    return write_text(tmp_path / "corpus.txt")


def records(run, kind):
    return RunPaths(run).read_metrics(kind)


def weights(run, which="last"):
    return [w.numpy() for w in load_model(run, which)[2].weights]


def test_cli_train_writes_a_run_and_loss_falls(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "60",
                 "--lr", "0.01", "--no-samples"]) == 0
    for name in ("config.json", "vocab.json", "data.json", "metrics.jsonl"):
        assert (run / name).exists(), name
    assert TrainConfig.load(run / "config.json").units == 16
    steps = records(run, "train")
    assert steps[-1]["step"] == 60 and steps[-1]["loss_avg"] < steps[0]["loss"] - 0.3
    end = records(run, "end")[-1]
    assert end["step"] == 60 and end["best_val_nats_per_char"] is not None
    assert list((run / "tb").iterdir())  # TensorBoard event file
    load_model(run, "best")
    load_model(run, "last")


def test_samples_after_each_epoch(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    events = []
    cfg = make_config("tiny", epochs=2, seq_len=32, batch_size=64, sample_chars=30)
    train(cfg, [corpus], run, on_event=events.append)
    samples = [e for e in events if isinstance(e, Samples)]
    assert [s.epoch for s in samples] == [1, 2]
    assert [s.temperature for s in samples[0].samples] == [0.2, 0.5, 1.0, 1.2]
    assert all(len(s.text) == 30 for s in samples[0].samples)
    assert len([e for e in events if isinstance(e, EpochEnd)]) == 2
    # the documented order (events.py): per epoch maybe "best", then "last" saved, the epoch's end, its samples
    names = " ".join(_name(e) for e in events)
    epoch = r"(StepLogged )+(Checkpointed:best )?Checkpointed:epoch EpochEnd:1 Samples "
    assert re.fullmatch(r"Prepared Started " + epoch + epoch.replace(":1", ":2") + "Finished", names), names


def _name(event):
    """An event's type, with what tells its place apart: a checkpoint's reason, an epoch's number."""
    detail = {Checkpointed: lambda e: e.why, EpochEnd: lambda e: e.number}.get(type(event))
    return type(event).__name__ + (f":{detail(event)}" if detail else "")


def test_events_of_a_run_that_stops_between_epochs(corpus, tmp_path):
    run = tmp_path / "run"
    events = []
    summary = train(make_config("tiny", steps=5, samples=False), [corpus], run, on_event=events.append)
    names = " ".join(_name(e) for e in events)
    assert re.fullmatch(r"Prepared Started (StepLogged )+Checkpointed:best Checkpointed:end EpochEnd:None Finished",
                        names), names
    assert all(isinstance(e, (Prepared, Started, StepLogged, Checkpointed, EpochEnd, Finished)) for e in events)
    assert events[-1] is summary and summary.step == 5 and summary.stop == "done"
    assert [e.step for e in events if isinstance(e, StepLogged)][-1] == 5
    assert events[1].step == 0 and events[1].total_steps == 5 and not events[1].resumed
    end = events[-2]
    assert end.best and end.val is not None and end.val.chars > 0
    assert summary.best_val_nats_per_char == end.val.nats_per_char
    # metrics.jsonl holds the same records as the events' to_dict()
    logged = RunPaths(run).read_metrics()
    assert logged[-1] == json.loads(json.dumps(summary.to_dict()))
    assert logged[-2] == end.to_dict() and logged[-2]["kind"] == "val"


@pytest.mark.parametrize("objective,dropout,mask,weight_dropout,carry,precision,decay", [
    ("sequence", 0.0, "step", 0.0, False, "float32", 0.0), ("sequence", 0.3, "step", 0.0, False, "float32", 0.0),
    ("sequence", 0.3, "window", 0.0, False, "float32", 0.0), ("sequence", 0.0, "step", 0.4, False, "float32", 0.0),
    ("next", 0.0, "step", 0.0, False, "float32", 0.0), ("sequence", 0.3, "window", 0.0, True, "float32", 0.0),
    ("sequence", 0.3, "step", 0.0, False, "bfloat16", 0.0), ("next", 0.0, "step", 0.0, False, "bfloat16", 0.0),
    ("sequence", 0.3, "step", 0.0, False, "bfloat16", 0.1)])
def test_resume_is_exact(corpus, tmp_path, objective, dropout, mask, weight_dropout, carry, precision, decay):
    cfg = dict(objective=objective, dropout=dropout, dropout_mask=mask, weight_dropout=weight_dropout, layers=2,
               samples=False, carry_state=carry, precision=precision, weight_decay=decay)
    straight, split = tmp_path / "straight", tmp_path / "split"
    whole = train(make_config("tiny", steps=24, **cfg), [corpus], straight)
    train(make_config("tiny", steps=12, **cfg), [corpus], split)
    resumed = TrainConfig.load(split / "config.json")
    resumed.steps = 24
    assert resumed.ema  # the default: checkpoints hold the weights' average, and the training weights beside it
    again = train(resumed, [], split, resume=True)
    assert RunPaths(split).read_data().sources == (str(corpus),)  # a resume keeps the run's sources
    for a, b in zip(weights(straight), weights(split)):  # the averages
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert again.weights_sha256 == whole.weights_sha256  # the training weights


def test_weight_decay_shrinks_the_weight_matrices_only():
    """One step with --weight-decay D: each matrix ends lr * D * w below the same step without it; vectors equal."""
    import tensorflow as tf
    import tf_keras
    from textstream.training.update import build_state, make_train_step
    strategy = tf.distribute.get_strategy()
    ids = tf.random.stateless_uniform([8, 17], [1, 2], maxval=12, dtype=tf.int32)
    after = {}
    for decay in (0.0, 0.3):
        cfg = make_config("tiny", steps=1, ema=0.0, lr=0.05, weight_decay=decay)
        tf_keras.utils.set_random_seed(7)
        state = build_state(cfg, 12, strategy)
        before = [w.numpy() for w in state.model.trainable_variables]
        make_train_step(cfg, state, strategy)(iter(tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:]))),
                                              tf.constant(0.0))
        after[decay] = [w.numpy() for w in state.model.trainable_variables]
    shapes = [w.ndim for w in before]
    assert 1 in shapes and 2 in shapes  # the LSTM's and the head's kernels and biases
    for w0, plain, decayed in zip(before, after[0.0], after[0.3]):
        expected = plain - 0.05 * 0.3 * w0 if w0.ndim >= 2 else plain
        np.testing.assert_allclose(decayed, expected, rtol=1e-5, atol=1e-6)


def test_the_weight_average_follows_the_weights_with_a_warm_up():
    """After t steps, average = m * average + (1 - m) * weights with m = min(ema, (1 + t) / (10 + t))."""
    import tensorflow as tf
    from textstream.training.update import build_state, make_train_step
    cfg = make_config("tiny", steps=2, ema=0.2)
    strategy = tf.distribute.get_strategy()
    state = build_state(cfg, 12, strategy)
    train_step = make_train_step(cfg, state, strategy)
    ids = tf.random.stateless_uniform([cfg.batch_size, cfg.seq_len + 1], [1, 2], maxval=12, dtype=tf.int32)
    batches = iter(tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat())
    average = [w.numpy() for w in state.model.trainable_variables]  # it starts at the initial weights
    for t, m in ((1, 2 / 11), (2, 0.2)):  # then the warm-up's 3/12 is above ema=0.2: the cap
        train_step(batches, tf.constant(0.0))
        state.step.assign(t)
        now = [w.numpy() for w in state.model.trainable_variables]
        average = [m * a + (1 - m) * w for a, w in zip(average, now)]
        for a, b in zip(average, state.shadow):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6)
        assert not all(np.allclose(a, w) for a, w in zip(average, now))


def test_checkpoints_hold_the_average_and_resume_the_training_weights(corpus, tmp_path):
    from textstream.training.checkpoints import Checkpoints, resume_point
    from textstream.training.update import build_state
    import tensorflow as tf
    run = tmp_path / "run"
    summary = train(make_config("tiny", steps=8, samples=False), [corpus], run)
    cfg, vocab = TrainConfig.load(run / "config.json"), RunPaths(run).read_vocab()
    state = build_state(cfg, vocab.size, tf.distribute.get_strategy())
    Checkpoints(state, run / "checkpoints").resume(resume_point(RunPaths(run)))
    saved = [w.numpy() for w in load_model(run, "last")[2].trainable_variables]  # what readers load
    for a, b in zip(saved, state.shadow):  # the average, kept aside while training goes on
        np.testing.assert_array_equal(a, b.numpy())
    from textstream.model.checkpoint import weights_sha256
    assert weights_sha256(state.model) == summary.weights_sha256  # the training weights, back in the model
    assert not all(np.array_equal(a, w.numpy()) for a, w in zip(saved, state.model.trainable_variables))
    with state.averaged():
        for a, w in zip(saved, state.model.trainable_variables):
            np.testing.assert_array_equal(a, w.numpy())


def test_carried_state_is_the_state_after_the_rows_text(corpus, tmp_path):
    """With (practically) frozen weights, the state carried after 5 steps is the LSTM's state after
    reading each row's 5 consecutive windows in one go, from a zero state."""
    import tensorflow as tf

    from textstream.data.pipeline import CarriedWindows, TokenFile
    from textstream.data.prepared import load_prepared

    run = tmp_path / "run"
    cfg = make_config("tiny", steps=5, layers=2, carry_state=True, optimizer="sgd", lr=1e-30, samples=False)
    train(cfg, [corpus], run)
    prep = load_prepared(RunPaths(run).prepared_dir())
    strips = CarriedWindows(TokenFile(prep.train_path, prep.vocab.dtype), cfg.seq_len, cfg.batch_size, cfg.seed)
    text = np.concatenate([strips.batch(k, cfg.batch_size)[0] for k in range(5)], axis=1)
    assert text.shape == (cfg.batch_size, 5 * cfg.seq_len)
    _, _, model = load_model(run, "last")
    _, states = model(text, return_state=True)
    want = np.stack([np.stack([h.numpy(), c.numpy()]) for h, c in states])
    ckpt = tf.train.latest_checkpoint(str(RunPaths(run).checkpoints("last")))
    carried = tf.train.load_checkpoint(ckpt).get_tensor("carried_state/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_allclose(carried, want, atol=1e-5)


def test_crash_during_checkpoint_write_keeps_the_previous_one(corpus, tmp_path):
    run = tmp_path / "run"
    train(make_config("tiny", steps=10, samples=False), [corpus], run)
    before = weights(run)
    last = RunPaths(run).checkpoints("last")
    # what a kill -9 in the middle of writing checkpoint 20 leaves behind: partial files, old state file
    data = next(last.glob("ckpt-10.data-*"))
    (last / "ckpt-20.data-00000-of-00001").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    (last / "ckpt-20.index").write_bytes(b"\x00garbage")
    for a, b in zip(before, weights(run)):
        np.testing.assert_array_equal(a, b)
    cfg = TrainConfig.load(run / "config.json")
    cfg.steps = 12
    assert train(cfg, [], run, resume=True).step == 12


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(corpus, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "textstream", "train", str(corpus), "-o", str(run),
                             "--preset", "tiny", "--steps", "1000000", "--no-samples"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and records(run, "train")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "--resume" in err and "stopped at step" in err
    step = int(err.split("stopped at step ")[1].split(";")[0])
    assert RunPaths(run).checkpoints("last").joinpath(f"ckpt-{step}.index").exists()


BUSY_MAIN_THREAD = """
import sys
import tensorflow as tf
from textstream.cli.train import stop_requests

@tf.function
def spin():  # minutes in one TensorFlow call: no Python signal handler runs meanwhile
    return tf.while_loop(lambda i: i < 10 ** 12, lambda i: i + 1, [tf.constant(0, tf.int64)])

with stop_requests(lambda: print("first", flush=True)):
    print("busy", flush=True)
    spin()
"""


def test_a_second_signal_stops_even_while_tensorflow_holds_the_main_thread(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", BUSY_MAIN_THREAD], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout.readline() == "busy\n"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # the first asks the loop to stop; it cannot see it yet, and nothing is forced
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 30
    assert err.strip().splitlines()[-1] == ("textstream: stopped at once (a second signal while TensorFlow was busy); "
                                            "--resume continues from the last checkpoint")
    assert "Traceback" not in err


def test_second_train_into_a_run_in_use_is_refused(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(RunPaths(run)):
        assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "in use by another textstream process" in err and err.count("\n") == 1


def test_existing_run_needs_resume(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config("tiny", steps=2, samples=False), [corpus], run)
    assert main(["train", str(corpus), "-o", str(run), "--preset", "tiny", "--steps", "4"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_resume_with_a_changed_vocabulary_is_refused(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config("tiny", steps=2, samples=False), [corpus], run)
    other = write_text(tmp_path / "other.txt", extra=" Zebra! Quokka?")
    assert main(["train", str(other), "-o", str(run), "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "vocabulary differs" in err and "'Z'" in err


def test_resume_refuses_to_change_the_model(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(make_config("tiny", steps=2, samples=False), [corpus], run)
    assert main(["train", "-o", str(run), "--resume", "--units", "64"]) == 2
    assert "cannot change: --units" in capsys.readouterr().err


def test_resume_without_a_run(tmp_path, capsys):
    assert main(["train", "-o", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_diverging_loss_stops_with_an_error_and_keeps_the_last_checkpoint(corpus, tmp_path):
    run = tmp_path / "run"
    train(make_config("tiny", steps=3, samples=False), [corpus], run)
    good = weights(run)
    cfg = TrainConfig.load(run / "config.json")
    cfg.steps, cfg.lr, cfg.clipnorm = 400, 1e38, 0.0
    with pytest.raises(TextstreamError, match="loss became"):
        train(cfg, [], run, resume=True)
    for a, b in zip(good, weights(run)):
        np.testing.assert_array_equal(a, b)


def test_time_budget_stops_the_run(corpus, tmp_path):
    summary = train(make_config("tiny", time_budget=0.05, samples=False), [corpus], tmp_path / "run")
    assert summary.stop == "time budget" and summary.step > 0
