"""The character LSTM: one model class serves training, evaluation and the step copy.

``CharLSTM.call(ids, states=None, return_state=False, training=False)`` takes
integer ids of shape ``(batch, time)``; the one-hot (or embedding lookup)
happens inside the model, on the device. The LSTM layers keep the arguments
that make tf-keras pick the fused cuDNN kernel on a GPU (tanh, sigmoid, no
recurrent dropout, no unroll, bias on).
"""
from __future__ import annotations

from textstream._tf import tf, tf_keras
from textstream.config import TrainConfig

layers = tf_keras.layers


class OneHot(layers.Layer):
    """ids (B, T) int -> (B, T, depth) float one-hot, computed where the model runs."""

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = int(depth)

    def call(self, ids):
        return tf.one_hot(tf.cast(ids, tf.int32), self.depth, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


class CharLSTM(tf_keras.Model):
    """Input encoding (one-hot or embedding) -> stacked LSTM -> Dense logits.

    ``states`` is a list with one ``(h, c)`` pair per layer; with
    ``return_state=True`` the call returns ``(logits, new_states)``.
    ``last_only=True`` (the ``next`` objective) returns logits for the final
    position only, shape ``(B, V)``; otherwise ``(B, T, V)``.
    """

    def __init__(self, vocab_size: int, *, layers_: int = 1, units: int = 128, dropout: float = 0.0,
                 embedding: int = 0, last_only: bool = False, seed: int = 0, name: str = "char_lstm"):
        super().__init__(name=name)
        self.vocab_size = int(vocab_size)
        self.units = int(units)
        self.last_only = bool(last_only)
        if embedding:
            self.encode = layers.Embedding(vocab_size, embedding, name="embedding")
        else:
            self.encode = OneHot(vocab_size, name="one_hot")
        # With last_only, the top layer returns only its final output (less work per step).
        self.lstms = [
            layers.LSTM(units, return_sequences=not (last_only and i == layers_ - 1), return_state=True,
                        name=f"lstm_{i}")
            for i in range(layers_)
        ]
        self.dropout = float(dropout)
        # Dropout masks come from a tracked generator, so its state is part of every
        # checkpoint and a resumed run draws the same masks as an uninterrupted one.
        self.rng = tf.random.Generator.from_seed(seed) if dropout else None
        self.head = layers.Dense(vocab_size, name="logits")

    def call(self, ids, states=None, return_state=False, training=False):
        x = self.encode(ids)
        new_states = []
        for i, lstm in enumerate(self.lstms):
            x, h, c = lstm(x, initial_state=None if states is None else list(states[i]), training=training)
            new_states.append((h, c))
            if training and self.rng is not None:
                keep = self.rng.uniform(tf.shape(x)) >= self.dropout
                x = tf.where(keep, x / (1.0 - self.dropout), tf.zeros_like(x))
        logits = tf.cast(self.head(x), tf.float32)
        return (logits, new_states) if return_state else logits

    def zero_states(self, batch: int):
        z = tf.zeros([batch, self.units])
        return [(z, z) for _ in self.lstms]


def build_model(cfg: TrainConfig, vocab_size: int) -> CharLSTM:
    """The training model for ``cfg``, with its weights created (call it on ids once)."""
    model = CharLSTM(vocab_size, layers_=cfg.layers, units=cfg.units, dropout=cfg.dropout,
                     embedding=cfg.embedding, last_only=cfg.objective == "next", seed=cfg.seed)
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
