"""The training loop: streamed batches, validation, samples, checkpoints, exact resume.

    from textstream import make_config, train
    summary = train(make_config("tiny", steps=50), ["my.txt"], "runs/tiny")
    print(summary.step, summary.best_val_nats_per_char)

``train`` prepares the token files and the run directory, then ``Trainer.run``
is the loop, read top to bottom: one step, a log line now and then, at each
epoch's end validation, checkpoints and samples. The library never prints:
progress goes to ``on_event(event)`` as the dataclasses of ``events.py``.
A run is a pure function of its config and the global step: batches come from
``pipeline.Windows.batch(step)``, the optimizer, step counter and dropout RNG
live in the checkpoint, so stopping at step N and resuming gives the same
weights as never stopping. Under multi-worker training every worker runs the
loop; only the chief writes the run directory and emits events.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from textstream._tf import tf, tf_keras
from textstream.config import TrainConfig
from textstream.data.pipeline import TokenFile
from textstream.data.prepared import Prepared
from textstream.data.tokens import TokenChoice
from textstream.errors import Interrupted, NoSpace, TextstreamError
from textstream.generation.generator import Generator
from textstream.model.checkpoint import check_shapes, weights_sha256
from textstream.model.run import RunLock, RunPaths
from textstream.training import events
from textstream.training.checkpoints import Checkpoints, ResumePoint, resume_point, save_directory
from textstream.training.distribute import is_chief, make_strategy
from textstream.training.evaluation import IdStream, score, train_context
from textstream.training.metricslog import MetricsLog, NoLog
from textstream.training.runstart import NewRun
from textstream.training.schedule import Every, Meter, Plan
from textstream.training.setup import (
    check_same_data,
    check_same_vocab,
    prepare_corpus,
    resolve_precision,
    size_for_budget,
)
from textstream.training.update import (
    build_state,
    distributed_batches,
    make_train_step,
    make_windows,
)

EVAL_MAX_CHARS = 200_000  # per-epoch validation cap; `textstream eval` covers the whole split
CHECKPOINT_EVERY_S = 600.0  # also save "last" this often inside long epochs
LOG_EVERY_S = 0.25


def train(cfg: TrainConfig, sources: Sequence[str | Path] = (), run_dir: str | Path = "runs/default", *,
          resume: bool = False, resume_from: str = "last", allow_new_data: bool = False,
          on_event: events.OnEvent | None = None, should_stop: Callable[[], bool] | None = None, on_progress=None,
          strategy=None) -> events.Finished:
    """Train (or with ``resume=True`` continue) the run in ``run_dir``; returns the ``Finished`` summary.

        from textstream import make_config, train
        done = train(make_config("tiny", steps=200), ["corpus.txt"], "runs/tiny")

    Args:
        cfg: the run's settings (``make_config``). With ``resume``, the run's
            saved config (``TrainConfig.load``), whose length fields may be
            raised to train longer.
        sources: files, directories or registry names to train on; none: the
            embedded default corpus. Prepared into the cache (``prepare``).
        run_dir: the run directory; created, or continued with ``resume``.
        resume: continue from the newest checkpoint, exactly.
        resume_from: the series a resume starts from, "last" or "best" (when
            "last" is damaged; see ``training.checkpoints.resume_point``).
        allow_new_data: let a resume go on when the corpus is no longer the
            one the run was trained on (its sha256 differs from the one in
            the run's vocab.json): the resume is then not exact, and "best"
            keeps the loss it had on the old validation split. Without it,
            such a resume is refused (``setup.check_same_data``).
        on_event: called with each ``training.events`` record (progress,
            validation, samples, notices); the library itself never prints.
        should_stop: polled between steps; True saves a checkpoint and stops.
        on_progress: ``on_progress(label, done, total)`` while the token files
            are prepared.
        strategy: a ``tf.distribute.Strategy`` or a name from
            ``training.distribute.STRATEGIES`` (default "auto").

    Returns:
        ``events.Finished``: the step and epoch reached, the last loss, why it
        stopped ("done" or "time budget"), the speed, the characters seen,
        the best validation loss and the weights' sha256.

    Raises:
        TextstreamError: every problem a user can cause (bad sources, a corpus
            shorter than a window, a run directory in use or of another kind,
            a damaged checkpoint, a corpus changed since the run started, a
            token file changed during training (after saving the last good
            step), a full disk, a NaN loss), as one line. A new run that
            fails before its first checkpoint leaves nothing behind.
        Interrupted: ``should_stop`` returned True; "last" was saved first.
    """
    if strategy is None or isinstance(strategy, str):
        strategy = make_strategy(strategy or "auto")  # before any other TensorFlow work
    chief = is_chief(strategy)  # the one worker that writes the run directory and emits events
    emit = on_event if chief and on_event is not None else _ignore
    paths = RunPaths(Path(run_dir))
    paths.check_claim(resume)  # before the lock writes anything: entries' kinds, never over another kind's files
    start = NewRun(paths) if chief and not resume else None  # before the lock creates the directory
    with RunLock(paths) if chief else contextlib.nullcontext(), save_directory(paths, chief) as save_dir, \
            start.undone_on_failure() if start else contextlib.nullcontext(), contextlib.ExitStack() as stack:
        if chief:
            paths.check_for_training(resume)
            paths.remove_stale_temporaries()  # of writers killed earlier (we hold the lock)
            if not resume:
                paths.clear_attempt()  # the log of an earlier start that saved no checkpoint
        point = resume_point(paths, resume_from, chief=chief) if resume else None  # checked before any work
        if point is not None:
            check_shapes(paths, cfg, paths.read_vocab(), point.start.prefix)  # an edited size: one line, no OOM
        for notice in point.notices if point else ():
            emit(events.Notice(notice))
        corpus, sources = prepare_corpus(cfg, sources, paths, resume, on_progress, emit)
        stack.callback(corpus.hold().release)  # cache clean leaves the token files alone while the run uses them
        emit(events.Prepared(dir=str(corpus.dir), vocab_size=corpus.vocab.size, train_chars=corpus.train_chars,
                             val_chars=corpus.val_chars, cached=corpus.cached, choice=TokenChoice.of(corpus.vocab),
                             train_tokens=corpus.train_tokens, val_tokens=corpus.val_tokens))
        if resume:
            check_same_vocab(paths, corpus.vocab)  # another vocabulary: never, whatever the flags
            check_same_data(paths, corpus.vocab, allow_new_data, emit)
            if allow_new_data and chief:
                paths.write_vocab(corpus.vocab)  # the new corpus is the run's from now on
        started = time.monotonic()  # a time budget counts from here: sizing's measurement is part of it
        cfg = size_for_budget(resolve_precision(cfg, strategy, paths, resume), corpus, strategy, paths, resume)
        if not resume and chief:
            paths.write_config(cfg)
            paths.write_vocab(corpus.vocab)
        if chief:
            paths.write_data(corpus.dir, sources)
        trainer = Trainer(cfg, corpus, paths, save_dir, strategy, chief=chief, emit=emit,
                          should_stop=should_stop or (lambda: False), resume=point, started=started)
        try:
            return trainer.run()
        except NoSpace as e:
            raise e.also(trainer.after_no_space()) from None


def _ignore(event: events.Event) -> None:
    pass


class Trainer:
    """One run's loop over a prepared corpus; ``run`` trains and returns the summary."""

    def __init__(self, cfg: TrainConfig, corpus: Prepared, paths: RunPaths, save_dir: Path, strategy, *, chief: bool,
                 emit: events.OnEvent, should_stop: Callable[[], bool], resume: ResumePoint | None = None,
                 started: float | None = None):
        self.cfg, self.paths, self.strategy, self.chief = cfg, paths, strategy, chief
        self.emit, self.should_stop = emit, should_stop
        self.vocab = corpus.vocab
        self.windows = make_windows(cfg, TokenFile(corpus.train_path, self.vocab.dtype))
        self.val = TokenFile(corpus.val_path, self.vocab.dtype)
        tf_keras.utils.set_random_seed(cfg.seed)
        self.state = build_state(cfg, self.vocab.size, strategy)
        self.checkpoints = Checkpoints(self.state, save_dir, step_weights=chief)  # the chief writes ckpt-N.step.npz
        self.resumed = resume is not None
        self.last_good: str | None = None  # the newest intact checkpoint of this run: restored or saved
        if resume is not None:
            self.checkpoints.resume(resume)
            self.last_good = str(resume.start.prefix)
        self.start = self.saved_step = self.state.step_number
        self.plan = Plan.make(cfg, self.start, self.windows.steps_for_epochs(cfg.epochs or 1, cfg.batch_size),
                              now=started)
        if self.plan.total is not None and self.start >= self.plan.total:
            raise TextstreamError(f"{paths.root}: the run already reached step {self.start} of {self.plan.total}; "
                                  f"pass a larger --steps or --epochs to train longer")
        self.meter = Meter(chars_per_step=cfg.batch_size * cfg.seq_len)
        self.lr = cfg.lr
        self.train_step = make_train_step(cfg, self.state, strategy)
        self.log = MetricsLog(paths) if chief else NoLog()
        self.log_every, self.checkpoint_every = Every(LOG_EVERY_S), Every(CHECKPOINT_EVERY_S)

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> events.Finished:
        """Step to the plan's end (or a time budget); a stop request saves "last" and raises ``Interrupted``."""
        self.emit(self.started())
        batches = distributed_batches(self.strategy, self.windows, self.cfg.batch_size, self.start,
                                      self.plan.horizon)
        t_begin = time.monotonic()
        step, epoch, stop = self.start, self.epoch_number(self.start), "done"
        while step < self.plan.horizon:
            asked = self.should_stop()
            out_of_time = self.plan.out_of_time(time.monotonic())
            try:
                agreed = self.train_one(batches, step, stop=asked or out_of_time)
            except tf.errors.OpError as e:  # a batch that could not be read: the token file changed?
                self.stop_if_data_changed(step, e)
                raise
            step += 1
            if self.log_every.due() or step == self.plan.horizon:
                self.log_step(step)
            if self.epoch_number(step) > epoch:
                epoch = self.epoch_number(step)
                self.end_of_epoch(epoch, step)
            elif self.checkpoint_every.due():
                self.save("last", "periodic")
            if agreed:
                if asked or not out_of_time:
                    self.save("last", "interrupted")
                    raise Interrupted(f"stopped at step {step}; checkpoint saved in {self.paths.checkpoints('last')}. "
                                      f"Resume with: textstream train --resume -o {self.paths.root}")
                stop = "time budget"
                break
        if step > self.start and self.saved_step != step:
            self.end_of_epoch(None, step)  # a run that stopped between epochs: validate and save
        return self.finish(step, stop, time.monotonic() - t_begin)

    def train_one(self, batches, step: int, *, stop: bool) -> bool:
        """Take step ``step + 1``; True when every worker agreed to stop after it.

        ``stop`` is this worker's wish; the workers add theirs up inside the
        step, so all of them stop at the same step.
        """
        self.lr = self.plan.lr(self.cfg, step, time.monotonic())
        self.state.optimizer.learning_rate.assign(self.lr)
        t0 = time.monotonic()
        loss, agreed = self.train_step(batches, tf.constant(float(stop)))
        loss = float(loss)
        seconds = time.monotonic() - t0
        if not math.isfinite(loss):
            kept = (f"the last good checkpoint, {self.last_good}, is kept" if self.last_good else
                    "no checkpoint was saved before it")
            raise TextstreamError(f"loss became {loss} at step {step + 1}; training stopped, nothing saved after it: "
                                  f"{kept} (a new run with a lower --lr or a --clipnorm may train)")
        self.state.step.assign(step + 1)
        self.meter.add(loss, seconds)
        return bool(float(agreed))

    def end_of_epoch(self, number: int | None, step: int) -> None:
        """Validate, save "best" when the validation loss improved, then "last", then the samples.

        "best" goes first: a crash between the two saves resumes from the
        previous "last" and finds this epoch's model already in "best".
        """
        cfg = self.cfg
        self.stop_if_data_changed(step)  # before validation reads a split that may be cut short
        with self.state.averaged():  # validation, checkpoints and samples see the weights' average (--ema)
            val = self.validation()
            best = val is not None and val.nats_per_char < float(self.state.best_val_nats.numpy())
            if best:
                self.state.best_val_nats.assign(val.nats_per_char)
                self.save("best", "best")
            self.save("last", "epoch" if number is not None else "end")
            event = events.EpochEnd(number=number, step=step, epoch=self.windows.epoch_of(step, cfg.batch_size),
                                    val=val, best=best)
            if val is not None:
                self.log.write(event.to_dict())
            self.emit(event)
            if self.chief and cfg.samples and number is not None and number % cfg.sample_every == 0:
                self.emit(self.samples(number, step))

    def finish(self, step: int, stop: str, wall_s: float) -> events.Finished:
        cfg, rate = self.cfg, self.meter.steady_rate
        summary = events.Finished(
            step=step, epoch=self.windows.epoch_of(step, cfg.batch_size), loss=self.meter.loss, wall_s=wall_s,
            stop=stop, char_steps_per_s=rate, windows_per_s=rate / cfg.seq_len if rate else None,
            train_chars_seen=step * cfg.batch_size * (1 if cfg.objective == "next" else cfg.seq_len),
            best_val_nats_per_char=self.state.best, weights_sha256=weights_sha256(self.state.model))
        self.log.write(summary.to_dict())
        self.log.flush()
        self.emit(summary)
        return summary

    # --- pieces -----------------------------------------------------------------------------
    def after_no_space(self) -> str:
        """What a run stopped by a full disk tells the user: the checkpoint in force, and how to go on."""
        last = self.last_good  # restored or saved; after a resume --from best, the one in "best"
        if last is None:
            return "training stopped before its first checkpoint: free some space and start it again"
        again = " --from best" if Path(last).parent.name == "best" else ""
        return (f"training stopped; the last checkpoint, {last}, is intact: free some space, then continue with: "
                f"textstream train --resume{again} -o {self.paths.root}")

    def stop_if_data_changed(self, step: int, error: BaseException | None = None) -> None:
        """When a token file is not what it was at the start (or ``error`` names one): save the step, stop in one line.

        The state is step ``step``'s, the last good one (a batch that could
        not be read takes no step): it is saved to "last", and the error says
        how to go on (the resume prepares the run's sources again).
        """
        problem = None
        for tokens in (self.windows.tokens, self.val):
            try:
                size = os.stat(tokens.path).st_size
            except OSError:
                size = None
            if size != tokens.nbytes or (error is not None and str(tokens.path) in str(error)):
                now = "gone" if size is None else f"{size:,} bytes now"
                problem = f"{tokens.path}: changed during training ({tokens.nbytes:,} bytes at the start, {now})"
                break
        if problem is None:
            return
        if self.saved_step != step:
            self.save("last", "data changed")
        if self.last_good is None:
            raise TextstreamError(f"{problem}; training stopped before its first checkpoint: start it again")
        raise TextstreamError(f"{problem}; training stopped, step {step} saved in {self.last_good}: continue with "
                              f"textstream train --resume -o {self.paths.root} (it prepares the run's sources again)")

    def epoch_number(self, step: int) -> int:
        return int(self.windows.epoch_of(step, self.cfg.batch_size))

    def started(self) -> events.Started:
        cfg = self.cfg
        return events.Started(config=cfg.to_dict(), step=self.start, total_steps=self.plan.total,
                              steps_per_epoch=self.windows.count / cfg.batch_size,
                              windows_per_epoch=self.windows.count, resumed=self.resumed,
                              time_budget_s=self.plan.budget_s)

    def log_step(self, step: int) -> None:
        self.log_every.reset()
        event = events.StepLogged(step=step, epoch=self.windows.epoch_of(step, self.cfg.batch_size),
                                  loss=self.meter.loss, loss_avg=self.meter.loss_avg, chars_per_s=self.meter.rate,
                                  lr=self.lr, eta_s=self.plan.time_left(step, self.meter, time.monotonic()),
                                  total_steps=self.plan.total)
        self.emit(event)
        self.log.write(event.to_dict())

    def save(self, which: str, why: str) -> None:
        path = self.checkpoints.save(which)
        if which == "last":
            self.saved_step = self.state.step_number
            self.last_good = path
            self.checkpoint_every.reset()
        self.emit(events.Checkpointed(path=path, why=why, step=self.state.step_number))

    def validation(self) -> events.Validation | None:
        """The validation loss per character and per token (up to ``EVAL_MAX_CHARS`` tokens of the split).

        The split is read after the end of the training text, as its context.
        """
        if len(self.val) == 0:
            return None
        cfg = self.cfg
        t0 = time.monotonic()
        context = train_context(self.windows.tokens, cfg.seq_len)
        s = score(self.state.model, cfg.objective, cfg.seq_len, IdStream(self.val, context),
                  batch_size=max(8, min(cfg.batch_size, 256)), max_targets=EVAL_MAX_CHARS, vocab=self.vocab)
        if not s.chars:
            return None
        return events.Validation(nats_per_char=s.nats_per_char, chars=s.chars, tokens=s.tokens,
                                 nats_per_token=s.nats_per_token, seconds=time.monotonic() - t0)

    def samples(self, epoch: int, step: int) -> events.Samples:
        """Text after a prime drawn from the training text (chosen by seed and epoch), at each temperature."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch])
        n = len(self.windows.tokens)
        length = min(60, n - 1)
        ids = self.windows.tokens.read(int(rng.integers(0, n - length)), length)
        prime = self.vocab.decode(self.vocab.whole_chars(ids))
        temps = list(cfg.temperatures)
        texts = Generator.from_model(self.state.model, self.vocab, cfg).generate(
            [prime] * len(temps), cfg.sample_chars, temperature=temps, seed=int(rng.integers(0, 2**31 - 1)))
        return events.Samples(epoch=epoch, step=step,
                              samples=tuple(events.Sample(t, prime, text) for t, text in zip(temps, texts)))
