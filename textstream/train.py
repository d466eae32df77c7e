"""The training loop: streamed batches, validation, samples, checkpoints, exact resume.

    from textstream import make_config, train
    summary = train(make_config("tiny", steps=50), ["my.txt"], "runs/tiny")

The library never prints: progress goes to ``on_event(kind, info)`` (kinds:
``prepared``, ``start``, ``step``, ``epoch``, ``samples``, ``checkpoint``,
``end``) and the caller renders it. A run is a pure function of its config
and the global step: batches come from ``pipeline.Windows.batch(step)``, the
optimizer, step counter and dropout RNG live in the checkpoint, so stopping
at step N and resuming gives the same weights as never stopping.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from textstream.config import TrainConfig
from textstream.errors import Interrupted, TextstreamError
from textstream.fsutil import atomic_write_text
from textstream.run import RunLock, RunPaths

EVAL_MAX_CHARS = 200_000  # per-epoch validation cap; `textstream eval` covers the whole split
CHECKPOINT_EVERY_S = 600.0  # also save "last" this often inside long epochs
LOG_EVERY_S = 0.25

Event = Callable[[str, dict], None]


def lr_at(cfg: TrainConfig, step: int, total: int | None, progress: float | None = None) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then constant or cosine to ``lr * min_lr_ratio``.

    The cosine runs over the planned ``total`` steps, or, for a run with a time
    budget, over ``progress`` (the fraction of the budget spent).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine" and (total or progress is not None):
        t = progress if progress is not None else (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        t = min(1.0, max(0.0, t))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    return cfg.lr


def make_optimizer(cfg: TrainConfig):
    from textstream._tf import tf_keras

    kw = {"learning_rate": cfg.lr}
    if cfg.clipnorm:
        kw["global_clipnorm"] = cfg.clipnorm
    if cfg.optimizer == "adam":
        return tf_keras.optimizers.Adam(**kw)
    if cfg.optimizer == "rmsprop":
        return tf_keras.optimizers.RMSprop(**kw)
    return tf_keras.optimizers.SGD(momentum=0.9, **kw)


def _prepare(cfg: TrainConfig, sources: Sequence, paths: RunPaths, resume: bool, on_progress):
    from textstream.prepare import load_prepared, prepare

    if resume and not sources and paths.data.exists():
        saved = json.loads(paths.data.read_text(encoding="utf-8"))
        if Path(saved["dir"]).exists():
            return load_prepared(Path(saved["dir"]))
        sources = saved.get("sources", [])
    return prepare(list(sources), None, lowercase=cfg.lowercase, val_fraction=cfg.val_fraction,
                   max_vocab=cfg.max_vocab, errors=cfg.errors, min_chars=cfg.window, on_progress=on_progress)


def _check_run_dir(paths: RunPaths, resume: bool) -> None:
    has_ckpt = paths.checkpoints("last").exists() and any(paths.checkpoints("last").iterdir())
    if resume:
        if not paths.config.exists():
            raise TextstreamError(f"{paths.root}: nothing to resume (no config.json); drop --resume to start a run")
        if not has_ckpt:
            raise TextstreamError(f"{paths.root}: nothing to resume (no checkpoint yet); drop --resume to start over")
    elif has_ckpt or paths.config.exists():
        raise TextstreamError(f"{paths.root}: already holds a run; pass --resume to continue it, "
                              f"or choose another -o")


def train(cfg: TrainConfig, sources: Sequence[str | Path] = (), run_dir: str | Path = "runs/default", *,
          resume: bool = False, on_event: Event | None = None, should_stop: Callable[[], bool] | None = None,
          on_progress=None, strategy=None) -> dict:
    """Train (or with ``resume=True`` continue) the run in ``run_dir``; returns the ``end`` summary.

    With ``resume``, ``cfg`` must be the run's saved config (its length fields
    may be raised to train longer); see ``config.TrainConfig.load``.
    ``strategy``: a ``tf.distribute.Strategy`` or a name from ``distribute.STRATEGIES``.
    Under multi-worker training only the chief writes ``run_dir`` and emits events.
    """
    from textstream.distribute import is_chief, make_strategy

    if strategy is None or isinstance(strategy, str):
        strategy = make_strategy(strategy or "auto")  # before any other TensorFlow work
    chief = is_chief(strategy)
    emit = (on_event or (lambda kind, info: None)) if chief else (lambda kind, info: None)
    paths = RunPaths(Path(run_dir))
    if paths.root.exists() and not paths.root.is_dir():
        raise TextstreamError(f"{paths.root}: exists and is not a directory")
    lock = RunLock(paths) if chief else contextlib.nullcontext()
    with lock:
        if chief:
            _check_run_dir(paths, resume)
        prep = _prepare(cfg, sources, paths, resume, on_progress)
        emit("prepared", {"dir": str(prep.dir), "vocab_size": prep.vocab.size, "train_chars": prep.train_chars,
                          "val_chars": prep.val_chars, "cached": prep.cached})
        if resume:
            from textstream.vocab import Vocab

            old = Vocab.load(paths.vocab)
            if old.chars != prep.vocab.chars:
                new = sorted(set(prep.vocab.chars) ^ set(old.chars))
                raise TextstreamError(
                    f"{paths.root}: cannot resume: the sources' vocabulary differs from the run's "
                    f"({len(new)} character(s) differ: {' '.join(map(repr, new[:10]))})")
        elif chief:
            atomic_write_text(paths.config, json.dumps(cfg.to_dict(), indent=1) + "\n")
            prep.vocab.save(paths.vocab)
        if chief:
            atomic_write_text(paths.data, json.dumps({"dir": str(prep.dir), "sources": [str(s) for s in sources]},
                                                     indent=1) + "\n")
            return _Trainer(cfg, prep, paths, paths, emit, should_stop or (lambda: False), strategy).run()
        with tempfile.TemporaryDirectory(prefix="textstream-worker-") as scratch:
            return _Trainer(cfg, prep, paths, RunPaths(Path(scratch)), emit, should_stop or (lambda: False),
                            strategy).run()


class _Trainer:
    def __init__(self, cfg, prep, paths: RunPaths, out: RunPaths, emit: Event, should_stop, strategy):
        from textstream._tf import tf, tf_keras
        from textstream.model import build_model
        from textstream.pipeline import CarriedWindows, TokenFile, Windows

        self.cfg, self.prep, self.paths, self.emit, self.should_stop = cfg, prep, paths, emit, should_stop
        self.chief = out == paths  # others write checkpoints to a scratch directory, and no logs
        self.tf = tf
        self.strategy = strategy or tf.distribute.get_strategy()
        self.vocab = prep.vocab
        tokens = TokenFile(prep.train_path, self.vocab.dtype)
        if cfg.carry_state:
            self.windows = CarriedWindows(tokens, cfg.seq_len, cfg.batch_size, cfg.seed)
        else:
            self.windows = Windows(tokens, cfg.seq_len, cfg.objective, cfg.stride, cfg.seed)
        self.val = TokenFile(prep.val_path, self.vocab.dtype)
        tf_keras.utils.set_random_seed(cfg.seed)
        with self.strategy.scope():
            self.model = build_model(cfg, self.vocab.size)
            self.optimizer = make_optimizer(cfg)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_val_nats")
            # carried LSTM state of every row of the global batch: (layers, h/c, batch, units), the
            # same on every replica (each replica reads and writes its own rows)
            self.carried = tf.Variable(tf.zeros([cfg.layers, 2, cfg.batch_size, cfg.units]), trainable=False,
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                                       name="carried_state") if cfg.carry_state else None
        extra = {"carried_state": self.carried} if self.carried is not None else {}
        self.ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step,
                                        best_val_nats=self.best, **extra)
        self.last = tf.train.CheckpointManager(self.ckpt, str(out.checkpoints("last")), max_to_keep=1)
        self.best_mgr = tf.train.CheckpointManager(self.ckpt, str(out.checkpoints("best")), max_to_keep=1)
        self.writer = tf.summary.create_file_writer(str(paths.tensorboard)) if self.chief else None

    # --- pieces -----------------------------------------------------------------------------
    def _train_step_fn(self):
        tf, model, opt, strategy = self.tf, self.model, self.optimizer, self.strategy
        targets_per_step = float(self.cfg.batch_size * (1 if self.cfg.objective == "next" else self.cfg.seq_len))

        carried, cfg = self.carried, self.cfg

        def forward(x, reset):
            if carried is None:
                return model(x, training=True), None
            ctx = tf.distribute.get_replica_context()
            n = ctx.num_replicas_in_sync
            per = cfg.batch_size // n
            mine = tf.gather(tf.reshape(carried, [cfg.layers, 2, n, per, cfg.units]), ctx.replica_id_in_sync_group,
                             axis=2)
            keep = (1.0 - reset)[:, None]
            states = [(mine[i, 0] * keep, mine[i, 1] * keep) for i in range(cfg.layers)]
            logits, new = model(x, states=states, return_state=True, training=True)
            return logits, tf.stop_gradient(tf.stack([tf.stack(hc) for hc in new]))

        def replica_step(x, y, reset, stop):
            with tf.GradientTape() as tape:
                logits, new_state = forward(x, reset)
                nats = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
                loss = tf.reduce_sum(nats) / targets_per_step
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            if carried is not None:
                carried.assign(tf.distribute.get_replica_context().all_gather(new_state, axis=2))
            return loss, tf.identity(stop)

        @tf.function
        def train_step(iterator, stop):
            """One step; ``stop`` (0 or 1) is summed over replicas so every worker stops at the same step."""
            batch = next(iterator)
            x, y = batch[0], batch[1]
            reset = batch[2] if carried is not None else tf.zeros([0])
            loss, stop = strategy.run(replica_step, args=(x, y, reset, stop))
            return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, stop, axis=None))

        return train_step

    def _iterator(self, start: int, end: int):
        from textstream.pipeline import dataset

        cfg, windows, strategy = self.cfg, self.windows, self.strategy

        def make(ctx):
            return dataset(windows, cfg.batch_size, start, end, pipeline=ctx.input_pipeline_id,
                           num_pipelines=ctx.num_input_pipelines,
                           replicas_per_pipeline=ctx.num_replicas_in_sync // ctx.num_input_pipelines)

        return iter(strategy.distribute_datasets_from_function(make))

    def validation_loss(self) -> dict | None:
        from textstream.evaluate import IdStream, score, train_context

        if len(self.val) == 0:
            return None
        ctx = train_context(self.windows.tokens, self.cfg.seq_len)
        nats, chars = score(self.model, self.cfg.objective, self.cfg.seq_len, IdStream(self.val, ctx),
                            batch_size=max(8, min(self.cfg.batch_size, 256)), max_targets=EVAL_MAX_CHARS)
        if chars == 0:
            return None
        return {"val_nats_per_char": nats / chars, "val_bits_per_char": nats / chars / math.log(2), "val_chars": chars}

    def samples(self, epoch: int) -> list[dict]:
        from textstream.generate import Generator

        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, epoch])
        n = len(self.windows.tokens)
        plen = min(60, n - 1)
        start = int(rng.integers(0, n - plen))
        prime = self.vocab.decode(self.windows.tokens.read(start, plen))
        gen = Generator.from_model(self.model, self.vocab, cfg)
        temps = list(cfg.temperatures)
        texts = gen.generate([prime] * len(temps), cfg.sample_chars, temperature=temps,
                             seed=int(rng.integers(0, 2**31 - 1)))
        return [{"temperature": t, "prime": prime, "text": s} for t, s in zip(temps, texts)]

    def log(self, record: dict) -> None:
        if not self.chief:
            return
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        with self.writer.as_default(step=record["step"]):
            for k, v in record.items():
                if k not in ("kind", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tf.summary.scalar(f"{record['kind']}/{k}", v)

    def weights_digest(self) -> str:
        """sha256 of the model's weights: equal on every worker whose replicas stayed in sync."""
        import hashlib

        h = hashlib.sha256()
        for w in self.model.weights:
            h.update(np.ascontiguousarray(w.numpy()).tobytes())
        return h.hexdigest()

    def save(self, why: str) -> None:
        path = self.last.save(checkpoint_number=int(self.step.numpy()))
        self.saved_step = int(self.step.numpy())
        self.emit("checkpoint", {"path": path, "why": why, "step": int(self.step.numpy())})

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        tf, cfg = self.tf, self.cfg
        # every worker resumes from the run directory's checkpoint (the chief's; on several
        # machines RUN_DIR must be on a shared file system, or be copied, for --resume)
        restored = tf.train.latest_checkpoint(str(self.paths.checkpoints("last")))
        if restored:
            self.ckpt.restore(restored).assert_existing_objects_matched()
        start = self.saved_step = int(self.step.numpy())
        per_step = cfg.batch_size * cfg.seq_len  # characters read by the LSTM per step
        if cfg.steps:
            total = cfg.steps
        elif cfg.time_budget:
            total = None
        else:
            total = self.windows.steps_for_epochs(cfg.epochs or 1, cfg.batch_size)
        deadline = time.monotonic() + cfg.time_budget * 60 if cfg.time_budget else None
        if total is not None and start >= total:
            raise TextstreamError(f"{self.paths.root}: the run already reached step {start} of {total}; "
                                  f"pass a larger --steps or --epochs to train longer")
        self.emit("start", {"config": cfg.to_dict(), "step": start, "total_steps": total,
                            "steps_per_epoch": self.windows.count / cfg.batch_size,
                            "windows_per_epoch": self.windows.count, "resumed": bool(restored),
                            "time_budget_s": cfg.time_budget * 60 if cfg.time_budget else None})
        train_step = self._train_step_fn()
        horizon = total if total is not None else start + 10**12
        iterator = self._iterator(start, horizon)
        step = start
        t_begin = time.monotonic()
        last_log = last_ckpt = t_begin
        train_time, timed_steps, loss_ema, loss = 0.0, 0, None, float("nan")
        epoch = int(self.windows.epoch_of(step, cfg.batch_size))
        stop_reason = "done"
        interrupted = False
        while step < horizon:
            interrupted = self.should_stop()
            out_of_time = deadline is not None and time.monotonic() >= deadline
            progress = None if deadline is None else 1.0 - (deadline - time.monotonic()) / (cfg.time_budget * 60)
            lr = lr_at(cfg, step, total, progress)
            self.optimizer.learning_rate.assign(lr)
            t0 = time.monotonic()
            loss, agreed_stop = train_step(iterator, tf.constant(float(interrupted or out_of_time)))
            loss = float(loss)
            dt = time.monotonic() - t0
            if not math.isfinite(loss):
                raise TextstreamError(f"loss became {loss} at step {step + 1}; training stopped. The last good "
                                      f"checkpoint is kept in {self.paths.checkpoints('last')} "
                                      f"(try a lower --lr or a --clipnorm)")
            step += 1
            self.step.assign(step)
            if step - start > 2:  # the first steps trace and compile
                train_time += dt
                timed_steps += 1
            loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
            now = time.monotonic()
            rate = per_step * timed_steps / train_time if train_time > 0 else per_step / dt
            if now - last_log >= LOG_EVERY_S or step == horizon:
                last_log = now
                left = None
                if total is not None:
                    left = (total - step) * per_step / rate
                elif deadline is not None:
                    left = max(0.0, deadline - now)
                info = {"kind": "train", "step": step, "epoch": self.windows.epoch_of(step, cfg.batch_size),
                        "loss": loss, "loss_avg": loss_ema, "bits_per_char": loss_ema / math.log(2),
                        "chars_per_s": rate, "lr": lr, "eta_s": left, "total_steps": total}
                self.emit("step", info)
                self.log({k: v for k, v in info.items() if k not in ("eta_s", "total_steps")})
            new_epoch = int(self.windows.epoch_of(step, cfg.batch_size))
            if new_epoch > epoch:
                epoch = new_epoch
                self.end_of_epoch(epoch, step)
                last_ckpt = time.monotonic()
            elif time.monotonic() - last_ckpt >= CHECKPOINT_EVERY_S:
                self.save("periodic")
                last_ckpt = time.monotonic()
            if float(agreed_stop):
                if interrupted or not out_of_time:
                    self.save("interrupted")
                    raise Interrupted(f"stopped at step {step}; checkpoint saved in "
                                      f"{self.paths.checkpoints('last')}. Resume with: "
                                      f"textstream train --resume -o {self.paths.root}")
                stop_reason = "time budget"
                break
        if step > start and self.saved_step != step:
            self.end_of_epoch(None, step)  # final validation + checkpoint for a run that stopped mid-epoch
        wall = time.monotonic() - t_begin
        rate = per_step * timed_steps / train_time if train_time > 0 else None
        summary = {"kind": "end", "step": step, "epoch": self.windows.epoch_of(step, cfg.batch_size),
                   "loss": loss, "wall_s": wall, "stop": stop_reason,
                   "char_steps_per_s": rate,
                   "windows_per_s": rate / cfg.seq_len if rate else None,
                   "train_chars_seen": step * cfg.batch_size * (1 if cfg.objective == "next" else cfg.seq_len),
                   "best_val_nats_per_char": None if math.isinf(self.best.numpy()) else float(self.best.numpy()),
                   "weights_sha256": self.weights_digest()}
        self.log(summary)
        if self.writer is not None:
            self.writer.flush()
        self.emit("end", summary)
        return summary

    def end_of_epoch(self, epoch: int | None, step: int) -> None:
        cfg = self.cfg
        val = self.validation_loss()
        record = {"kind": "val", "step": step, "epoch": self.windows.epoch_of(step, cfg.batch_size)}
        if val:
            record.update(val)
            self.log(record)
        improved = bool(val) and val["val_nats_per_char"] < float(self.best.numpy())
        if improved:
            self.best.assign(val["val_nats_per_char"])
        self.save("epoch" if epoch is not None else "end")
        if improved:
            self.best_mgr.save(checkpoint_number=step)
            record["best"] = True
        self.emit("epoch", {**record, "number": epoch})
        if self.chief and cfg.samples and epoch is not None and epoch % cfg.sample_every == 0:
            self.emit("samples", {"epoch": epoch, "step": step, "samples": self.samples(epoch)})
