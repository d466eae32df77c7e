"""The training model rebuilt from standard Keras layers only, for a ``.keras`` file any tf-keras loads.

``CharLSTM`` is a subclassed model with a custom ``OneHot`` layer: saving it
as it is would need textstream (its registered classes) to load it back. The
functional model here has the same weights and the same logits, built from
stock ``tf_keras`` layers, so ``tf_keras.models.load_model`` reads it with no
custom objects:

    ids (batch, time) int32
      -> one_hot: Embedding(V, V), frozen identity   (or embedding: the run's learned Embedding(V, E))
      -> lstm_0 .. lstm_{L-1}: LSTM(units, return_sequences, return_state), each followed by
         Dropout(rate) when the run trained with dropout
      -> logits: Dense(V)                             -> (batch, time, V); (batch, V) for ``next`` runs

The one-hot is an identity ``Embedding`` with ``trainable=False``: row v is
the one-hot vector of id v, so the lookup equals ``tf.one_hot`` exactly; it
costs V*V floats (a few KB for a character vocabulary; 256 KB for 256 byte
tokens). ``return_state=True`` lets a Keras user call a layer with
``initial_state`` and get the state back (stateful generation). Dropout uses
Keras's own masks (textstream's training draws them from its checkpointed
generator); inference is identical. The model is compiled with the run's
optimizer at its peak learning rate and sparse cross-entropy on logits, so
``model.fit(ids, next_ids)`` fine-tunes it as it stands.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from textstream._tf import tf_keras
from textstream.config import TrainConfig
from textstream.training.update import make_optimizer

layers = tf_keras.layers


def functional_model(model, cfg: TrainConfig):
    """A ``tf_keras.Model`` of standard layers with the weights and logits of ``model`` (a ``CharLSTM``)."""
    vocab_size, n_layers = model.vocab_size, len(model.lstms)
    ids = tf_keras.Input((None,), dtype="int32", name="ids")
    if cfg.embedding:
        encode = layers.Embedding(vocab_size, cfg.embedding, name="embedding")
    else:
        encode = layers.Embedding(vocab_size, vocab_size, embeddings_initializer="identity", trainable=False,
                                  name="one_hot")
    x = encode(ids)
    lstms = []
    for i in range(n_layers):
        lstm = layers.LSTM(model.units, return_sequences=not (model.last_only and i == n_layers - 1),
                           return_state=True, name=f"lstm_{i}")
        x, _, _ = lstm(x)
        lstms.append(lstm)
        if model.dropout:
            x = layers.Dropout(model.dropout, name=f"dropout_{i}")(x)
    head = layers.Dense(vocab_size, name="logits")
    out = tf_keras.Model(ids, head(x), name="textstream_char_lstm")
    if cfg.embedding:
        encode.set_weights(model.encode.get_weights())
    else:
        encode.set_weights([np.eye(vocab_size, dtype=np.float32)])
    for mine, theirs in zip(lstms, model.lstms):
        mine.set_weights(theirs.get_weights())
    head.set_weights(model.head.get_weights())
    out.compile(optimizer=make_optimizer(cfg, out.trainable_variables),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return out


def write_keras(dest: Path, model, cfg: TrainConfig, vocab_file: Path) -> None:
    """Write directory ``dest`` (must not exist): ``model.keras`` (see ``functional_model``) and ``vocab.json``."""
    dest.mkdir()
    functional_model(model, cfg).save(str(dest / "model.keras"))
    shutil.copyfile(vocab_file, dest / "vocab.json")
