"""A trained model and the files that hold it: the network, the run directory, checkpoints, step weights.

``network`` builds the ``CharLSTM`` (ids -> LSTM layers -> logits);
``run`` is the run directory (paths, lock, the one reader and writer of its
files); ``runcheck`` checks its entries before they are read (no links,
regular files only) and what a new run may be written into; ``series``
reads a checkpoint series without TensorFlow; ``checkpoint`` verifies a
checkpoint and loads a model from it;
``stepweights`` is the single-step model's weights and their
TensorFlow-free file beside each checkpoint. Imports the data stage and
the base modules; writing checkpoints is the training stage's.
"""
