"""The generation stage: single-step models, sampling, and the library's Generator and Session.

``interface`` is the step backend protocol (``StepBackend``, ``StreamBatch``,
``RowBatch``) that everything above talks to; ``step_np`` (numpy, no
TensorFlow) and ``step_tf`` (compiled TensorFlow, XLA) implement it, and
``backends`` chooses one for a run directory. ``sampling`` holds the rules
every backend follows (checks, the noise hash of seed, position and
character, stop strings); ``sampling_np`` and ``sampling_tf`` apply them.
``constraint`` maps a regex onto the vocabulary (a token DFA, for
``stream(..., regex=...)``), applied by both backends (``constrained_tf`` is
TensorFlow's sampling loop under it).
``generator`` is ``Generator`` (stream, generate, session, restore, score)
and ``Session`` (feed, sample, fork, state, save, top, sample_logprobs), with
the parts of them that have a module of their own: ``state`` (the saved
session's blob), ``probabilities`` (top alternatives and characters with
their logprobs), ``scoring`` (``Score``, scoring text and batches of texts);
``logprobs_np`` and ``logprobs_tf`` are each backend's loops for them.
``blas`` sets OpenBLAS's threads for the numpy step; ``transposed_np`` is
its loop for many streams (their state transposed, one stream per column),
which ``parallel_np`` runs as parts of the rows, one thread per core. Imports the
model and data stages and the base.
"""
