"""Choosing a ``tf.distribute`` strategy, and which worker may write.

    auto         MirroredStrategy when several GPUs are visible, else the default strategy
    one          the default strategy (one device)
    mirrored     MirroredStrategy over the visible GPUs (or CPU devices)
    multiworker  MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable
    tpu          TPUStrategy, where a TPU cluster resolver answers

Every worker runs the same training loop; only the chief writes the run
directory, prints samples and logs. The others save their checkpoints to a
temporary directory that is removed (all workers must take part in a save).
"""
from __future__ import annotations

import json
import os

from textstream.errors import TextstreamError

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")


def make_strategy(name: str = "auto"):
    """The strategy called ``name``. Create it before any other TensorFlow work."""
    from textstream._tf import tf  # here, so that the CLI reads STRATEGIES without loading TensorFlow

    if name not in STRATEGIES:
        raise TextstreamError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise TextstreamError("--strategy multiworker needs the TF_CONFIG environment variable "
                                  "(cluster and task); see docs/scale-out.md")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError as e:
            raise TextstreamError(f"TF_CONFIG is not valid JSON ({e})") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise TextstreamError(f"--strategy tpu: no TPU answered ({str(e).splitlines()[0]})") from None
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        # over the GPUs; without any, over the (logical) CPU devices
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """True on the worker that owns the run directory (always, without multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0
                                                         and "chief" not in resolver.cluster_spec().as_dict())
