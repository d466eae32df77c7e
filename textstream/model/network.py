"""The character LSTM: one model class serves training, evaluation and the step copy.

``CharLSTM.call(ids, states=None, return_state=False, training=False)`` takes
integer ids of shape ``(batch, time)``; the input encoding happens inside the
model, on the device. Without an embedding, layer 0's input projection is a
one-hot of the ids times the kernel, which is the kernel's rows for the ids:

* ``gather`` (the default without a GPU): ``tf.gather`` of the kernel rows
  (plus the bias), then the recurrence; the cost does not grow with the
  vocabulary (a ``V``-wide one-hot times a ``V x 4U`` kernel does, at every
  step). Its gradient is the dense ``(V, 4U)`` sum of the rows' gradients,
  as the one-hot product's was, so optimizers and checkpoints see no change.
* ``onehot`` (the default where a GPU is visible): the one-hot goes into
  the Keras LSTM layer, which then runs the fused cuDNN kernel; cuDNN makes
  the input projection one matrix product over all the steps of a batch,
  before its recurrence.

Both hold the same variables (the Keras LSTM layer's), so checkpoints load
either way and compute the same function. The LSTM layers keep the
arguments that make tf-keras pick the fused cuDNN kernel on a GPU (tanh,
sigmoid, no recurrent dropout, no unroll, bias on).

``precision="bfloat16"`` (mixed precision, training only): the LSTM layers'
matrix products (every input projection but layer 0's row gather, and the
recurrent product at every step) take bfloat16 operands, about twice as fast
on CPUs with bfloat16 instructions (AVX512-BF16, AMX); their results, the
gates, the cell state, the head, the gradients' sums and the weights stay
float32, and inference (validation, evaluation, generation, export) always
computes in float32.
"""
from __future__ import annotations

from textstream._tf import tf, tf_keras
from textstream.config import DROPOUT_MASKS, MATMUL_PRECISIONS, TrainConfig

layers = tf_keras.layers
INPUT_MODES = ("gather", "onehot", "auto")


class OneHot(layers.Layer):
    """ids (B, T) int -> (B, T, depth) float one-hot, computed where the model runs."""

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = int(depth)

    def call(self, ids):
        return tf.one_hot(tf.cast(ids, tf.int32), self.depth, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


@tf.custom_gradient
def kernel_rows(table, ids):
    """``table[ids]`` (== one_hot(ids) @ table), with the gradient of ``table`` as a dense sum of row gradients.

    ``tf.gather``'s own gradient is ``IndexedSlices`` with one row per id
    (duplicates included), which optimizers would apply as sparse updates.
    """
    def grad(dy):
        width = tf.shape(table)[-1]
        dense = tf.math.unsorted_segment_sum(tf.reshape(dy, [-1, width]), tf.reshape(ids, [-1]),
                                             tf.shape(table)[0])
        return dense, None

    return tf.gather(table, ids), grad


def gathered_lstm(lstm, ids, initial_state=None, recurrent=None, operands=None):
    """Run Keras LSTM layer ``lstm`` (built for one-hot input) on ``ids`` by row gather: ``(output, h, c)``.

    The same function as ``lstm(one_hot(ids))``: the input projection of step t
    is ``kernel[ids[:, t]]``, gathered for all steps at once, then
    ``lstm_recurrence`` (``operands``: see there; a gather has no product).
    """
    projected = kernel_rows(tf.convert_to_tensor(lstm.cell.kernel), tf.cast(ids, tf.int32))  # (B, T, 4U)
    return lstm_recurrence(lstm, projected, initial_state, recurrent, operands)


def product(x, kernel, operands=None):
    """``x @ kernel`` over the last axis of ``x`` (rank 2 or 3); with ``operands`` (a dtype) both are cast to it
    for the product, and the result back to ``x``'s dtype.

    Casting inside the function keeps the gradients of ``x`` and ``kernel`` in
    their own dtype (float32), so sums of them over steps and batches are not
    rounded to the operands' precision.
    """
    if operands is not None and operands != x.dtype:
        return tf.cast(product(tf.cast(x, operands), tf.cast(kernel, operands)), x.dtype)
    if x.shape.rank == 2:
        return tf.matmul(x, kernel)
    return tf.einsum("bti,ij->btj", x, kernel)


def lstm_recurrence(lstm, projected, initial_state=None, recurrent=None, operands=None):
    """Keras LSTM layer ``lstm``'s recurrence over its input projection ``projected`` (B, T, 4U): ``(output, h, c)``.

    Keras's own loop (``backend.rnn``) with tf-keras's LSTM step (the same
    sums in the same order). ``recurrent``: the recurrent kernel to use
    instead of the layer's (its weight-dropped copy in training).
    ``operands``: the dtype of the recurrent product's operands (``product``;
    None: the state's, float32).
    """
    cell = lstm.cell
    bias = tf.convert_to_tensor(cell.bias)
    if recurrent is None:
        recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
    if initial_state is None:
        zeros = tf.zeros([tf.shape(projected)[0], cell.units], projected.dtype)
        initial_state = [zeros, zeros]

    def step(x, states):
        z = tf.nn.bias_add(x + product(states[0], recurrent, operands), bias)  # Keras's order of the sums
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * states[1] + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, [h, c]

    last, outputs, (h, c) = tf_keras.backend.rnn(step, projected, list(initial_state), unroll=False,
                                                 input_length=projected.shape[1],
                                                 return_all_outputs=lstm.return_sequences)
    return (outputs if lstm.return_sequences else last), h, c


def default_input_mode() -> str:
    """``onehot`` where a GPU is visible (the cuDNN kernel), else ``gather``."""
    return "onehot" if tf.config.list_logical_devices("GPU") else "gather"


def dropped(x, rate: float, rng, *, per_window: bool):
    """``x`` with a fraction ``rate`` of its entries zeroed and the rest scaled by 1 / (1 - rate) (dropout).

    ``per_window`` (``x`` of shape (B, T, U)): one mask per window and unit,
    the same at every step, so a dropped unit is dropped for the whole window
    (variational dropout, Gal & Ghahramani 2016); otherwise a new mask for
    every entry. ``rng``: the ``tf.random.Generator`` the masks come from.
    """
    shape = tf.shape(x)
    if per_window and x.shape.rank == 3:
        shape = tf.stack([shape[0], 1, shape[2]])
    keep = rng.uniform(shape) >= rate
    return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


class CharLSTM(tf_keras.Model):
    """Input encoding (one-hot or embedding) -> stacked LSTM -> Dense logits.

    ``states`` is a list with one ``(h, c)`` pair per layer; with
    ``return_state=True`` the call returns ``(logits, new_states)``.
    ``last_only=True`` (the ``next`` objective) returns logits for the final
    position only, shape ``(B, V)``; otherwise ``(B, T, V)``. ``input_mode``
    (one-hot input only): ``gather``, ``onehot`` or ``auto`` (see the module).
    In training only, ``dropout`` drops outputs of every layer (``dropped``:
    with ``dropout_mask="window"`` the same units at every step of a window),
    ``weight_dropout`` entries of every recurrent kernel (``_dropped_recurrent``),
    and ``precision="bfloat16"`` computes the LSTM layers' matrix products
    with bfloat16 operands (see the module).
    """

    def __init__(self, vocab_size: int, *, layers_: int = 1, units: int = 128, dropout: float = 0.0,
                 dropout_mask: str = "step", weight_dropout: float = 0.0, embedding: int = 0,
                 last_only: bool = False, seed: int = 0, input_mode: str = "auto", precision: str = "float32",
                 name: str = "char_lstm"):
        super().__init__(name=name)
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES} (got {input_mode!r})")
        if precision not in MATMUL_PRECISIONS:
            raise ValueError(f"precision must be one of {MATMUL_PRECISIONS} (got {precision!r})")
        self.precision = precision
        self.vocab_size = int(vocab_size)
        self.units = int(units)
        self.last_only = bool(last_only)
        if embedding:
            self.encode = layers.Embedding(vocab_size, embedding, name="embedding")
            self.input_mode = "embedding"
        else:
            self.encode = OneHot(vocab_size, name="one_hot")
            self.input_mode = default_input_mode() if input_mode == "auto" else input_mode
        # With last_only, the top layer returns only its final output (less work per step).
        self.lstms = [
            layers.LSTM(units, return_sequences=not (last_only and i == layers_ - 1), return_state=True,
                        name=f"lstm_{i}")
            for i in range(layers_)
        ]
        if self.input_mode == "gather":
            self.lstms[0].build((None, None, self.vocab_size))  # its weights; the layer itself is not called
        self.dropout = float(dropout)
        if dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS} (got {dropout_mask!r})")
        self.dropout_mask = dropout_mask
        self.weight_dropout = float(weight_dropout)
        # Dropout masks come from a tracked generator, so its state is part of every
        # checkpoint and a resumed run draws the same masks as an uninterrupted one.
        self.rng = tf.random.Generator.from_seed(seed) if dropout or weight_dropout else None
        self.head = layers.Dense(vocab_size, name="logits")

    def call(self, ids, states=None, return_state=False, training=False):
        new_states = []
        x = ids
        operands = tf.bfloat16 if training and self.precision == "bfloat16" else None
        for i, lstm in enumerate(self.lstms):
            initial = None if states is None else list(states[i])
            recurrent = self._dropped_recurrent(lstm) if training and self.weight_dropout else None
            if i == 0 and (self.input_mode == "gather" or (operands is not None and self.input_mode == "onehot")):
                x, h, c = gathered_lstm(lstm, ids, initial, recurrent, operands)
            else:
                if i == 0:
                    x = self.encode(ids)
                if recurrent is None and operands is None:
                    x, h, c = lstm(x, initial_state=initial, training=training)
                else:  # the layer's own call (cuDNN where it can) would use its undropped float32 weights
                    projected = product(x, tf.convert_to_tensor(lstm.cell.kernel), operands)
                    x, h, c = lstm_recurrence(lstm, projected, initial, recurrent, operands)
            new_states.append((h, c))
            if training and self.dropout:
                x = dropped(x, self.dropout, self.rng, per_window=self.dropout_mask == "window")
        logits = tf.cast(self.head(x), tf.float32)
        return (logits, new_states) if return_state else logits

    def _dropped_recurrent(self, lstm):
        """``lstm``'s recurrent kernel with a fraction ``weight_dropout`` of its entries zeroed (the rest scaled).

        DropConnect on the hidden-to-hidden weights (AWD-LSTM): one mask per
        layer and batch, shared by every window and step of it, so the
        recurrence is regularised without noise on the state.
        """
        kernel = tf.convert_to_tensor(lstm.cell.recurrent_kernel)
        keep = self.rng.uniform(tf.shape(kernel)) >= self.weight_dropout
        return tf.where(keep, kernel / (1.0 - self.weight_dropout), tf.zeros_like(kernel))

    def zero_states(self, batch: int):
        z = tf.zeros([batch, self.units])
        return [(z, z) for _ in self.lstms]


def resolved_precision(cfg: TrainConfig) -> str:
    """``cfg.precision``, with ``auto`` (chosen when a run starts: ``training.resolve_precision``) as float32."""
    return "float32" if cfg.precision == "auto" else cfg.precision


def build_model(cfg: TrainConfig, vocab_size: int, *, input_mode: str = "auto") -> CharLSTM:
    """The training model for ``cfg``, with its weights created (call it on ids once)."""
    model = CharLSTM(vocab_size, layers_=cfg.layers, units=cfg.units, dropout=cfg.dropout,
                     dropout_mask=cfg.dropout_mask, weight_dropout=cfg.weight_dropout,
                     embedding=cfg.embedding, last_only=cfg.objective == "next", seed=cfg.seed,
                     input_mode=input_mode, precision=resolved_precision(cfg))
    model(tf.zeros([1, 1], tf.int32))
    return model


def lstm_weights(model: CharLSTM) -> list[dict]:
    """Per layer, numpy arrays ``kernel (in, 4U)``, ``recurrent (U, 4U)``, ``bias (4U,)``.

    Gate order is Keras's: input, forget, cell, output. For layer 0 the kernel
    is already multiplied by the input encoding, so row ``v`` is what character
    id ``v`` contributes (one-hot @ kernel == kernel[v]).
    """
    out = []
    for i, lstm in enumerate(model.lstms):
        kernel, recurrent, bias = (w.numpy() for w in lstm.cell.weights)
        if i == 0 and isinstance(model.encode, layers.Embedding):
            kernel = model.encode.embeddings.numpy() @ kernel
        out.append({"kernel": kernel, "recurrent": recurrent, "bias": bias})
    return out


def head_weights(model: CharLSTM) -> tuple:
    """The Dense head as numpy ``(kernel (U, V), bias (V,))``."""
    kernel, bias = (w.numpy() for w in model.head.weights)
    return kernel, bias
