"""The LiteRT (TFLite) file: the step graph's ``initial_state``, ``step`` and ``vocabulary`` signatures.

Converted from the SavedModel of ``textstream.export.graph`` with
``tf.lite.TFLiteConverter`` using builtin ops only (no TensorFlow ops inside,
so the standalone ``ai-edge-litert`` interpreter runs it). ``generate`` is not
converted: its in-graph sampler hashes with unsigned 32- and 64-bit integer
arithmetic that LiteRT's builtin ops do not have; a LiteRT consumer samples
from ``step``'s logits itself.

``quantize``: ``float16`` stores the weights as float16 (half the size;
computed in float32), ``dynamic`` stores them as int8 with per-channel
scales and quantises activations on the fly (a quarter of the size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from textstream._tf import tf
from textstream.export.graph import write_savedmodel

SIGNATURES = ("initial_state", "step", "vocabulary")


def convert(savedmodel: Path, quantize: str | None = None) -> bytes:
    """The ``.tflite`` bytes of a step-graph SavedModel (``quantize``: None, "float16" or "dynamic")."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=list(SIGNATURES))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range (int8 weights)
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def write_litert(dest: Path, model, vocab_info: Mapping[str, object], vocab_file: Path, *,
                 quantize: str | None = None, scratch: Path) -> None:
    """Write the ``.tflite`` file of ``model`` (a ``CharLSTM``) to ``dest``, via a SavedModel in ``scratch``."""
    write_savedmodel(scratch, model, vocab_info, vocab_file)
    dest.write_bytes(convert(scratch, quantize))
