"""tf.distribute on the CPU: MirroredStrategy over two logical devices, two multi-worker processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_training import write_text

ROOT = Path(__file__).resolve().parents[1]

MIRRORED = """
import json, sys
from textstream._tf import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from textstream.config import make_config
from textstream.training.distribute import make_strategy
from textstream.training.events import StepLogged
from textstream.training.loop import train
strategy = make_strategy("mirrored")
losses = []
summary = train(make_config("tiny", steps=40, lr=0.01, samples=False), [sys.argv[1]], sys.argv[2],
                strategy=strategy, on_event=lambda e: losses.append(e.loss) if isinstance(e, StepLogged) else None)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "first": losses[0], "last": summary.loss}))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_devices_trains(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt")
    env = {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", MIRRORED, str(corpus), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["last"] < result["first"] - 0.3


def run_workers(tmp_path, corpus, run, steps, resume=False):
    cmd = [sys.executable, "-m", "tools.dev.run_multiworker", str(corpus), "-o", str(run),
           "--workers", "2", "--steps", str(steps), "--timeout", "240"] + (["--resume"] if resume else [])
    env = {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_workers_stay_in_sync_and_resume(tmp_path):
    from textstream.generation.generator import Generator

    corpus = write_text(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    report = run_workers(tmp_path, corpus, run, 20)
    assert report["steps"] == [20, 20] and report["weights_equal"]
    # only the chief wrote the run directory; its checkpoint serves generation on one CPU
    assert sorted(p.name for p in (run / "checkpoints" / "last").iterdir() if p.name.startswith("ckpt-20"))
    text = Generator.load(run, checkpoint="last").generate(["the "], 20, seed=1)[0]
    assert len(text) == 20
    report = run_workers(tmp_path, corpus, run, 30, resume=True)
    assert report["steps"] == [30, 30] and report["weights_equal"]


CARRY = """
import sys
import numpy as np
from textstream._tf import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from textstream.config import make_config
from textstream.training.distribute import make_strategy
from textstream.model.checkpoint import load_model
from textstream.training.loop import train
cfg = dict(steps=12, layers=2, carry_state=True, lr=0.01, samples=False)
train(make_config("tiny", **cfg), [sys.argv[1]], sys.argv[2] + "/one", strategy=make_strategy("one"))
train(make_config("tiny", **cfg), [sys.argv[1]], sys.argv[2] + "/two", strategy=make_strategy("mirrored"))
a, b = (load_model(sys.argv[2] + d, "last")[2].weights for d in ("/one", "/two"))
print(max(float(np.abs(x.numpy() - y.numpy()).max()) for x, y in zip(a, b)))
"""


@pytest.mark.slow
def test_carried_state_under_mirrored_strategy_matches_one_device(tmp_path):
    """Each replica carries its own rows' state: two replicas train the same weights as one device."""
    corpus = write_text(tmp_path / "corpus.txt")
    env = {**os.environ, "TEXTSTREAM_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", CARRY, str(corpus), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4
