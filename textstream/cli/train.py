"""``textstream train``: turns CLI options into a config and renders the loop's events.

Progress is a rich display on stderr when stderr is a terminal, otherwise one
plain line per epoch; samples go to stdout. SIGINT/SIGTERM ask the loop to
save a checkpoint and stop. The display never stops the run: when stdout or
stderr goes away (``| head``), that stream goes quiet and training goes on to
its end (``console.Unbroken``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

from textstream.cli.options import add_setting_arguments
from textstream.config import GROUPS, RUN, TrainConfig, make_config, options
from textstream.errors import TextstreamError
from textstream.model.run import CHECKPOINTS, RunPaths
from textstream.training.distribute import STRATEGIES
from textstream.training.events import EpochEnd, Event, Finished, Notice, Prepared, Samples, Started, StepLogged

HELP = "train a model (streams windows from disk; samples after each epoch)"
DESCRIPTION = "Train a character-level LSTM. Prepares the sources first (cached)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="*", metavar="SOURCE")
    p.add_argument("-o", "--output", type=Path, metavar="RUN_DIR",
                   help="run directory (default: runs/<preset>)")
    add_setting_arguments(p, groups=(None,))  # --preset
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR exactly where it stopped")
    p.add_argument("--from", dest="resume_from", choices=CHECKPOINTS, metavar="{last,best}",
                   help="with --resume: the checkpoint to continue from (default last; best when last is damaged)")
    p.add_argument("--allow-new-data", action="store_true",
                   help="with --resume: continue even though the corpus changed since the run started (the resume "
                        "is then not exact, and best keeps the loss it had on the old validation split)")
    groups = add_setting_arguments(p, groups=GROUPS)  # a flag per TrainConfig field, in groups
    groups[RUN].add_argument("--strategy", choices=STRATEGIES,
                             help="tf.distribute strategy (default auto: mirrored when several GPUs are visible)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the flags ask for: a preset with overrides, or with --resume the run's own, resumed."""
    given = {name: getattr(args, name, None) for name in options()}
    if getattr(args, "resume_from", None) and not args.resume:
        raise TextstreamError(f"--from {args.resume_from} chooses where a resume starts: give it with --resume")
    if getattr(args, "allow_new_data", False) and not args.resume:
        raise TextstreamError("--allow-new-data lets a resume go on with a changed corpus: give it with --resume")
    if not args.resume:
        return make_config(given.pop("preset") or TrainConfig.preset, **given)
    paths = RunPaths(_run_dir(args))
    paths.check_for_training(resume=True)  # nothing to resume, or no config.json: say so before anything else
    return paths.read_config().resumed(given)


def _run_dir(args) -> Path:
    return args.output if args.output is not None else Path("runs") / (args.preset or TrainConfig.preset)


class TrainDisplay:
    """Renders ``train``'s events: a live rich line on a terminal, plain lines otherwise."""

    def __init__(self, console, live: bool, before_start=None):
        self.console, self.live = console, live
        self.before_start = before_start  # closes the preparation progress bars
        self.progress = None
        self.task = None
        self.last: StepLogged | None = None  # the newest step, for the epoch lines
        self.unit = "char"  # what the training loss is per: a character, or a byte with byte tokens

    @functools.singledispatchmethod
    def __call__(self, event: Event) -> None:
        """Render one event (those without a rendering, such as ``Checkpointed``, show nothing)."""

    @__call__.register
    def _prepared(self, event: Prepared) -> None:
        if self.before_start is not None:
            self.before_start()
        how = "cached" if event.cached else "prepared"
        ids = ""
        if event.choice is not None and event.choice.tokens == "bytes":
            self.unit = "byte"
            ids = f" ({event.train_tokens:,} + {event.val_tokens:,} bytes)"
        self.console.print(f"[dim]corpus {how}: {event.train_chars:,} train + {event.val_chars:,} val "
                           f"characters{ids}, {event.vocab_size} symbols ({event.dir})[/dim]")
        if event.choice is not None:
            self.console.print(event.choice.line(), markup=False, highlight=False)

    @__call__.register
    def _notice(self, event: Notice) -> None:
        self.console.print(event.message, style="yellow", markup=False, highlight=False)

    @__call__.register
    def _started(self, event: Started) -> None:
        c = event.config
        total = event.total_steps
        what = f"{total:,} steps" if total else f"{event.time_budget_s / 60:g} min"
        model = [f"{c['layers']}x LSTM({c['units']})", f"seq {c['seq_len']}", f"objective {c['objective']}",
                 f"batch {c['batch_size']}", f"{c['optimizer']} lr {c['lr']:g}" + (
                     f" (cosine to {c['min_lr_ratio']:g}x)" if c.get("schedule") == "cosine" else ""),
                 f"dropout {c['dropout']:g}" + (f" (a mask per {c['dropout_mask']})" if c['dropout'] else "")]
        if c.get("weight_decay"):
            model.append(f"weight decay {c['weight_decay']:g}")
        if c.get("weight_dropout"):
            model.append(f"weight dropout {c['weight_dropout']:g}")
        if c.get("ema"):
            model.append(f"weights' average {c['ema']:g}")
        if c.get("precision") == "bfloat16":
            model.append("bfloat16 products")
        self.console.print(
            f"[bold]{'resuming' if event.resumed else 'training'}[/bold] preset {c['preset']}: "
            f"{', '.join(model)}; {what} ({event.steps_per_epoch:.1f} steps/epoch), from step {event.step:,}")
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]:>6.2f}"), BarColumn(),
                TextColumn("step {task.completed:,.0f}"),
                TextColumn("loss {task.fields[loss]:.3f} ({task.fields[bpc]:.3f} bits/" + self.unit + ")"),
                TextColumn("{task.fields[rate]:,.0f} chars/s"), TextColumn("ETA {task.fields[eta]}"),
                console=self.console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("train", total=total, completed=event.step, epoch=0.0,
                                               loss=float("nan"), bpc=float("nan"), rate=0.0, eta="?")

    @__call__.register
    def _step(self, event: StepLogged) -> None:
        self.last = event
        if self.progress is None:
            return
        eta = "?" if event.eta_s is None else _fmt_s(event.eta_s)
        self.progress.update(self.task, completed=event.step, epoch=event.epoch, loss=event.loss_avg,
                             bpc=event.bits_per_char, rate=event.chars_per_s, eta=eta)

    @__call__.register
    def _epoch_end(self, event: EpochEnd) -> None:
        val = ""
        if event.val is not None:
            per_token = f" ({event.val.bits_per_token:.4f} bits/{self.unit})" if self.unit != "char" else ""
            val = f"  val {event.val.bits_per_char:.4f} bits/char{per_token}{' (best)' if event.best else ''}"
        label = f"epoch {event.number}" if event.number is not None else "end"
        last = self.last
        loss = f"  loss {last.loss_avg:.4f}  {last.chars_per_s:,.0f} chars/s" if last else ""
        self.console.print(f"{label:>9}  step {event.step:,}{loss}{val}")

    @__call__.register
    def _samples(self, event: Samples) -> None:
        out = sys.stdout
        for s in event.samples:
            shown = s.prime[-40:].replace("\n", "\\n")
            out.write(f"\n--- epoch {event.epoch}, temperature {s.temperature:g}, "
                      f"after \"...{shown}\":\n{s.prime}{s.text}\n")
        out.flush()

    @__call__.register
    def _finished(self, event: Finished) -> None:
        self.close()
        best = event.best_val_nats_per_char
        best = f", best val {best / 0.6931471805599453:.4f} bits/char" if best is not None else ""
        rate = f", {event.char_steps_per_s:,.0f} chars/s" if event.char_steps_per_s else ""
        self.console.print(f"finished at step {event.step:,} ({event.stop}) in {_fmt_s(event.wall_s)}"
                           f"{rate}{best}")

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _fmt_s(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run(args: argparse.Namespace) -> int:
    from textstream.cli.console import unbroken_output

    cfg = config_from_args(args)
    with unbroken_output():  # a reader that goes away stops the display, never the run
        return _train(args, cfg)


def _train(args: argparse.Namespace, cfg: TrainConfig) -> int:
    from textstream.cli.console import ProgressUI
    from textstream.cli.console import console as _console

    run_dir = _run_dir(args)
    console = _console()
    ui = ProgressUI()
    display = TrainDisplay(console, live=sys.stderr.isatty(), before_start=ui.close)
    try:
        with stop_requests(lambda: console.print("[yellow]stopping: saving a checkpoint...[/yellow]")) as stop:
            from textstream.training.loop import train

            train(cfg, args.sources, run_dir, resume=args.resume, resume_from=args.resume_from or "last",
                  allow_new_data=args.allow_new_data, on_event=display, should_stop=stop.is_set, on_progress=ui,
                  strategy=args.strategy)
    except Exception as e:
        lost = _lost_worker(e)
        if lost is None:
            raise
        raise TextstreamError(lost) from None
    finally:
        ui.close()
        display.close()
    return 0


def _lost_worker(e: BaseException) -> str | None:
    """The one line for a cluster that lost a worker (TensorFlow's collective ops aborted), else None."""
    import tensorflow as tf

    if not isinstance(e, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)):
        return None
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return (f"the training cluster lost contact with a worker ({first[:200]}); every worker must run the same "
            "command with its own TF_CONFIG: start them again (with --resume once a checkpoint exists)")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HARD_STOP_GRACE_S = 2.0  # after a second signal, how long the main thread has to stop on its own


@contextlib.contextmanager
def stop_requests(on_first: Callable[[], None]) -> Iterator[threading.Event]:
    """An event set by the first SIGINT/SIGTERM (the loop saves a checkpoint and stops); a second one ends the process.

    Python runs signal handlers in the main thread between bytecodes, so while
    TensorFlow holds it (compiling, or one long step: minutes with absurd
    windows) neither signal would be seen. The C-level handler also writes
    each signal to a wakeup pipe that a watcher thread reads: on the second,
    if the main thread has not stopped within ``HARD_STOP_GRACE_S``, the
    process exits at once with 128 + the signal (as a kill would: the run
    resumes from its last checkpoint; stale temporaries are removed then).
    """
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        stop.set()
        on_first()

    old = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    old_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    done = threading.Event()  # set once the main thread has left: then nothing is forced
    watcher = threading.Thread(target=_hard_stop_on_second, args=(read_end, done), daemon=True,
                               name="stop-watcher")
    watcher.start()
    try:
        yield stop
    finally:
        done.set()
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(write_end)  # the watcher reads end-of-file and returns
        watcher.join(timeout=1.0)
        os.close(read_end)


def _hard_stop_on_second(read_end: int, done: threading.Event) -> None:
    seen = 0
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in STOP_SIGNALS:
                seen += 1
                if seen >= 2:
                    if done.wait(HARD_STOP_GRACE_S):  # the main thread's KeyboardInterrupt came first
                        return
                    os.write(2, b"textstream: stopped at once (a second signal while TensorFlow was busy); "
                                b"--resume continues from the last checkpoint\n")
                    os._exit(128 + signum)
