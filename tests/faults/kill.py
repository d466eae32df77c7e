"""The ``kill`` family: training killed with SIGKILL at random moments, resumed each time.

Checked: every launch started at the last checkpoint on disk (never from
step 0 when there is one, never a step back), the checkpoint on disk never
went back, ``--resume`` on a directory without a checkpoint says so, and the
final weights equal an uninterrupted run's.
"""
from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.harness import NEUTRAL, Call, Drill, Row, end_record, family, last_step, started_at


@family("kill")
def kill_family(drill: Drill) -> list[Row]:
    """SIGKILL ``--kills`` times at random moments, resume each time, compare with an uninterrupted run."""
    reference = drill.work / "kill-reference"
    epochs = ["--epochs", str(drill.args.kill_epochs)]
    call = drill.cli(drill.train_argv(reference, resume=False, extra=epochs))
    want = end_record(reference)
    if call.rc != 0 or want is None:
        return [Row("kill", "reference run", "trains", False, f"exit {call.rc}: {(call.lines or ['?'])[-1]}")]
    steps_per_s = want["step"] / max(want["wall_s"], 1e-3)
    epoch_s = want["step"] / drill.args.kill_epochs / steps_per_s
    rng = random.Random(drill.args.seed)
    rows: list[Row] = []
    run, launches = drill.work / "kill-run", 0
    while launches < drill.args.kills + 20:
        launches += 1
        before = last_step(run)
        if before is None and run.exists():
            rows.append(nothing_to_resume(drill, run, launches))
        kill_after = None  # seconds after training starts; the first kill lands before the first checkpoint
        if drill.kills < drill.args.kills:
            left = (want["step"] - (before or 0)) / steps_per_s
            kill_after = rng.uniform(0, 0.9 * epoch_s) if drill.kills == 0 else rng.uniform(0, left)
        got, status = one_launch(drill, run, launches, before, kill_after, epochs)
        rows += got
        if status != "killed":  # finished, or failed: the same command would fail the same way
            break
    got = end_record(run) or {}
    same = got.get("weights_sha256") == want["weights_sha256"] and got.get("step") == want["step"]
    rows.append(Row("kill", f"after {drill.kills} kills, {launches} launches", "final weights == uninterrupted run's",
                    same, f"step {got.get('step')}, sha256 {str(got.get('weights_sha256'))[:12]} vs "
                          f"step {want['step']}, {want['weights_sha256'][:12]}",
                    None if same else "final weights differ from the uninterrupted run's"))
    return rows


def one_launch(drill: Drill, run: Path, n: int, before: int | None, kill_after: float | None,
               extra: list[str]) -> tuple[list[Row], str]:
    """Start ``train`` (``--resume`` once there is a checkpoint); SIGKILL it ``kill_after`` s into training.

    Training starts when the process says "from step N" (after TensorFlow's
    import, the corpus, the model and the restore). Returns the rows and
    what became of the launch: "killed", "finished" or "failed".
    """
    argv = drill.train_argv(run, resume=before is not None, extra=extra)
    with tempfile.NamedTemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "textstream", *map(str, argv)], stdout=subprocess.DEVNULL,
                                stderr=err, text=True, env=drill.env, cwd=NEUTRAL)
        killed = False
        if kill_after is not None:
            deadline = time.monotonic() + 300
            while proc.poll() is None and started_at(Path(err.name).read_text()) is None and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                killed = True
                drill.kills += 1
        proc.wait(timeout=600)
        err.seek(0)
        call = Call(proc.returncode, "", err.read())
    after = last_step(run)
    start = started_at(call.err)
    what = f"launch {n}: " + (f"killed {kill_after:.2f} s into training" if killed else "to the end")
    expected = before or 0
    problems, regression = [], None
    if start is not None and start != expected:
        problems.append(f"started at step {start}, the last checkpoint was {before}")
        regression = "a resume started elsewhere than the last checkpoint" if start < expected else None
    if before is not None and (after is None or after < before):
        problems.append(f"the last checkpoint went from step {before} to {after}")
        regression = "a checkpoint was lost"
    if not killed and (call.rc != 0 or "finished at step" not in call.err):
        problems.append(f"exit {call.rc}: {(call.lines or ['?'])[-1][:160]}")
    if call.loud():
        problems.append(call.loud())
    outcome = f"started at {start if start is not None else '-'}, checkpoint {before} -> {after}"
    return [Row("kill", what, "resumes at the last checkpoint", not problems, "; ".join(problems) or outcome,
                regression)], "killed" if killed else "finished" if call.rc == 0 else "failed"


def nothing_to_resume(drill: Drill, run: Path, n: int) -> Row:
    """``--resume`` on a directory that holds no checkpoint yet: one line saying so, exit 2, nothing changed."""
    call = drill.cli(drill.train_argv(run, resume=True))
    ok = call.rc == 2 and len(call.lines) == 1 and "nothing to resume" in call.err and not call.loud()
    return Row("kill", f"launch {n}: no checkpoint yet", "--resume says there is nothing to resume", ok,
               f"exit {call.rc}: {(call.lines or ['?'])[-1][:160]}")

