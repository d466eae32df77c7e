"""The parts of one training step: optimizer, windows, the model's state, the compiled step, the batches.

``training.Trainer`` puts them together; each is built for a ``TrainConfig``
and, where it matters, a ``tf.distribute`` strategy.
"""
from __future__ import annotations

import time

import numpy as np

from textstream._tf import tf, tf_keras
from textstream.config import TrainConfig
from textstream.data.pipeline import CarriedWindows, TokenFile, Windows, dataset
from textstream.model.network import build_model, product
from textstream.training.checkpoints import TrainState


def make_optimizer(cfg: TrainConfig, variables=()):
    """``cfg``'s optimizer, not yet built, for ``variables`` (the ones it will update).

    With ``weight_decay`` (decoupled, as AdamW: ``w -= lr * weight_decay * w``
    before each update) only the weight matrices decay: the vectors among
    ``variables`` (biases) are excluded, as nanoGPT's AdamW does.
    """
    kw = {"learning_rate": cfg.lr}
    if cfg.weight_decay:
        kw["weight_decay"] = cfg.weight_decay
    if cfg.clipnorm:
        kw["global_clipnorm"] = cfg.clipnorm
    if cfg.optimizer == "adam":
        optimizer = tf_keras.optimizers.Adam(**kw)
    elif cfg.optimizer == "rmsprop":
        optimizer = tf_keras.optimizers.RMSprop(**kw)
    else:
        optimizer = tf_keras.optimizers.SGD(momentum=0.9, **kw)
    if cfg.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
    return optimizer


def make_windows(cfg: TrainConfig, tokens: TokenFile) -> Windows | CarriedWindows:
    if cfg.carry_state:
        return CarriedWindows(tokens, cfg.seq_len, cfg.batch_size, cfg.seed, cfg.window_phases)
    return Windows(tokens, cfg.seq_len, cfg.objective, cfg.stride, cfg.seed, cfg.window_phases)


def build_state(cfg: TrainConfig, vocab_size: int, strategy) -> TrainState:
    """The model, its optimizer and the counters, created in ``strategy``'s scope."""
    with strategy.scope():
        model = build_model(cfg, vocab_size)
        optimizer = make_optimizer(cfg, model.trainable_variables)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        best = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_val_nats")
        carried = None
        if cfg.carry_state:
            # the carried LSTM state of every row of the global batch: (layers, h/c, batch, units), the
            # same on every replica (each replica reads and writes its own rows)
            carried = tf.Variable(tf.zeros([cfg.layers, 2, cfg.batch_size, cfg.units]), trainable=False,
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, name="carried_state")
        shadow = None
        if cfg.ema:  # the weights' moving average, starting at the initial weights
            shadow = [tf.Variable(w.read_value(), trainable=False, name=f"shadow_{i}")
                      for i, w in enumerate(model.trainable_variables)]
    return TrainState(model, optimizer, step, best, carried, shadow)


def make_train_step(cfg: TrainConfig, state: TrainState, strategy):
    """The compiled step ``train_step(batches, stop) -> (loss, stop summed over replicas)``."""
    model, opt, carried = state.model, state.optimizer, state.carried_state
    targets_per_step = float(cfg.batch_size * (1 if cfg.objective == "next" else cfg.seq_len))

    def forward(x, reset):
        if carried is None:
            return model(x, training=True), None
        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync
        mine = tf.gather(tf.reshape(carried, [cfg.layers, 2, n, cfg.batch_size // n, cfg.units]),
                         ctx.replica_id_in_sync_group, axis=2)
        keep = (1.0 - reset)[:, None]
        states = [(mine[i, 0] * keep, mine[i, 1] * keep) for i in range(cfg.layers)]
        logits, new = model(x, states=states, return_state=True, training=True)
        return logits, tf.stop_gradient(tf.stack([tf.stack(hc) for hc in new]))

    def replica_step(x, y, reset, stop):
        with tf.GradientTape() as tape:
            logits, new_state = forward(x, reset)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)) / targets_per_step
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        if carried is not None:
            carried.assign(tf.distribute.get_replica_context().all_gather(new_state, axis=2))
        return loss, tf.identity(stop)

    def update_average():
        """``average <- m * average + (1 - m) * weights``, m = min(ema, (1 + t) / (10 + t)) after t steps.

        The momentum's warm-up (as ``tf.train.ExponentialMovingAverage``'s
        ``num_updates``) lets a short run's average follow its weights.
        """
        t = tf.cast(state.step, tf.float32) + 1.0
        m = tf.minimum(tf.constant(cfg.ema, tf.float32), (1.0 + t) / (10.0 + t))
        for mean, weight in zip(state.shadow, model.trainable_variables):
            mean.assign(m * mean + (1.0 - m) * weight)

    @tf.function
    def train_step(batches, stop):
        """One step; ``stop`` (0 or 1) is summed over replicas so every worker stops at the same step."""
        batch = next(batches)
        reset = batch[2] if carried is not None else tf.zeros([0])
        loss, stop = strategy.run(replica_step, args=(batch[0], batch[1], reset, stop))
        if state.shadow is not None:
            update_average()
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, stop, axis=None))

    return train_step


def distributed_batches(strategy, windows, batch_size: int, start: int, end: int):
    """An iterator over the global batches of steps ``[start, end)``, each worker reading its own shards."""
    def make(ctx):
        return dataset(windows, batch_size, start, end, pipeline=ctx.input_pipeline_id,
                       num_pipelines=ctx.num_input_pipelines,
                       replicas_per_pipeline=ctx.num_replicas_in_sync // ctx.num_input_pipelines)

    return iter(strategy.distribute_datasets_from_function(make))


def bfloat16_speedup(units: int = 384, batch: int = 128, steps: int = 16, repeats: int = 5) -> float:
    """How many times faster the recurrence's matrix product runs with bfloat16 operands than float32, here, now.

    Times ``steps`` chained products of a ``(batch, units)`` state with a
    ``(units, 4 units)`` kernel (the reference shape's recurrence, float32
    results), the fastest of ``repeats`` runs for each; about 0.3 s. Where
    the CPU lacks bfloat16 instructions the ratio is below 1.
    """
    state = tf.random.stateless_uniform([batch, units], [1, 2], minval=-1.0, maxval=1.0)
    kernel = tf.random.stateless_normal([units, 4 * units], [3, 4], stddev=units ** -0.5)

    def seconds(operands) -> float:
        @tf.function
        def chain(h):
            for _ in range(steps):
                h = tf.tanh(product(h, kernel, operands)[:, :units])
            return h

        chain(state).numpy()  # trace and warm up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            chain(state).numpy()
            best = min(best, time.perf_counter() - t0)
        return best

    return seconds(None) / seconds(tf.bfloat16)


def training_speed(vocab_size: int, *, seconds: float = 2.0, **shape) -> float:
    """Characters per second of the training step (``make_train_step``) of this shape here, now.

    ``shape``: ``TrainConfig`` fields (``sizing.REFERENCE``: layers, units,
    batch_size, seq_len; ``precision``, float32 unless given), dropout off, no distribution. One batch of random
    ids, repeated; the first two steps (tracing, compiling, settling) are not
    timed, then steps run until ``seconds`` have passed (at least two).
    """
    cfg = TrainConfig(**{"precision": "float32", **shape}, dropout=0.0)
    strategy = tf.distribute.get_strategy()
    train_step = make_train_step(cfg, build_state(cfg, vocab_size, strategy), strategy)
    ids = tf.random.stateless_uniform([cfg.batch_size, cfg.seq_len + 1], [0, 0], maxval=vocab_size, dtype=tf.int32)
    batches = iter(tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat())
    go = tf.constant(0.0)
    train_step(batches, go), train_step(batches, go)
    n, t0 = 0, time.monotonic()
    while n < 2 or time.monotonic() - t0 < seconds:
        float(train_step(batches, go)[0])
        n += 1
    return n * cfg.batch_size * cfg.seq_len / (time.monotonic() - t0)
