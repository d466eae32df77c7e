"""Import TensorFlow and tf-keras quietly.

Every module that needs TensorFlow imports it through here, so the CUDA and
oneDNN chatter TensorFlow prints at import is silenced once, for users, before
the first import. Modules that do not need TensorFlow must not import this one.
"""
from __future__ import annotations

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR lines (cuda stubs)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras means tf_keras (Keras 2)

try:  # absl prints "WARNING: All log messages before absl::InitializeLog()" to stderr
    import absl.logging

    absl.logging.set_verbosity(absl.logging.ERROR)
except ImportError:  # pragma: no cover
    pass



def _import_quietly():
    """Import TF with file descriptor 2 pointed at a temporary file.

    TensorFlow's C++ side logs through absl before ``absl::InitializeLog`` is
    called, which no environment variable silences ("Could not find cuda
    drivers ..."). If the import fails, what it printed is replayed.
    """
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow
            import tf_keras as keras

            return tensorflow, keras
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


tf, tf_keras = _import_quietly()

tf.get_logger().setLevel(logging.ERROR)
tf.autograph.set_verbosity(0)

__all__ = ["tf", "tf_keras"]
