"""The model a time budget buys: compute tiers, and the pure rule that picks one from a measured speed.

A minute buys different compute on different machines (the same 1x384 LSTM
trains three times faster on one 2-core machine than on another), so a
preset tuned for minutes is wrong somewhere. Instead, a run of a preset with
compute tiers and a ``--time-budget`` leaves the tiers' fields unset (None)
unless the caller gives them (``config.make_config``); before it starts,
``train`` times a few training steps of the ``REFERENCE`` shape on this
machine (``training.update.training_speed``; the seconds count in the
budget) and ``sized`` fills the fields in from the tier that many reference
characters (speed x budget seconds) reach; over the training text's size,
those characters are the passes the run will make, which can raise the
tier's dropout (``PASS_DROPOUT``). The step is timed in the precision the
run will train in (``precision_for`` picks it first, from the measured
``training.update.bfloat16_speedup``). The chosen values and the measured
speeds are written to config.json, so resuming never measures again. No
TensorFlow here.

    cfg = make_config("default", time_budget=5)       # units, batch_size, ... None
    chosen = sized(cfg, chars_per_s=11_000)           # 11,000 * 300 = 3.3 M reference characters
    often = sized(cfg, 11_000, train_chars=300_000)   # the same over 300,000 characters, 11 passes: dropout 0.4
"""
from __future__ import annotations

import dataclasses
from typing import Any

# The shape whose training speed measures the machine (1x384, batch 32, windows of 100).
REFERENCE = dict(layers=1, units=384, batch_size=32, seq_len=100)
# (minimum reference characters, overrides): the last tier whose minimum is reached applies. Chosen on
# the training text only (docs/model.md): little compute buys a narrower, faster LSTM that sees more
# characters; much compute a wider one with more dropout and weight decay, as it sees the corpus often,
# whose learning rate stays high (its cosine ends at 0.7 of the peak): there the weights' average
# (--ema, over ~2,000 steps) does the annealing, and a low rate late in the run memorises the text.
COMPUTE_TIERS: dict[str, list[tuple[float, dict[str, Any]]]] = {
    "default": [
        (0.0, dict(units=256, batch_size=128, seq_len=16, dropout=0.1, lr=8e-3)),
        (3.5e6, dict(units=384, batch_size=128, seq_len=16, dropout=0.25, lr=8e-3)),
        (30e6, dict(units=512, batch_size=128, seq_len=16, dropout=0.4, lr=1.2e-2, weight_decay=0.02,
                    min_lr_ratio=0.7, ema=0.9995)),
    ],
}
# (minimum passes, dropout): a run that will see its training text many times (reference characters
# over training characters) needs more dropout than its tier's; the larger of the two applies.
PASS_DROPOUT: dict[str, list[tuple[float, float]]] = {
    "default": [(8.0, 0.4), (25.0, 0.5)],
}
# The least bfloat16_speedup (training.update) at which a run with --precision auto trains with bfloat16
# operands: CPUs with AVX512-BF16 or AMX reach 1.5x to 1.9x; below 1 where the CPU emulates them.
BFLOAT16_MIN_SPEEDUP = 1.3
NOMINAL_CHARS_PER_S = 20_000.0  # the reference speed assumed where none is measured (several replicas)


def tier_fields(preset: str) -> list[str]:
    """The fields ``preset``'s tiers choose (sorted; empty without tiers)."""
    return sorted({k for _, tier in COMPUTE_TIERS.get(preset, []) for k in tier})


SIZED = frozenset(k for preset in COMPUTE_TIERS for k in tier_fields(preset))


def compute_tier(preset: str, reference_chars: float) -> dict[str, Any]:
    """The overrides of ``preset``'s last tier whose minimum ``reference_chars`` reaches ({} without tiers)."""
    chosen: dict[str, Any] = {}
    for minimum, tier in COMPUTE_TIERS.get(preset, []):
        if reference_chars >= minimum:
            chosen = tier
    return dict(chosen)


def pass_dropout(preset: str, passes: float) -> float:
    """The least dropout ``passes`` over the training text call for (0.0 below every threshold)."""
    return max([d for minimum, d in PASS_DROPOUT.get(preset, []) if passes >= minimum], default=0.0)


def precision_for(speedup: float | None) -> str:
    """The precision of a run whose matrix products are ``speedup`` times faster in bfloat16 (None: not measured)."""
    return "bfloat16" if speedup is not None and speedup >= BFLOAT16_MIN_SPEEDUP else "float32"


def sized(cfg, chars_per_s: float | None, train_chars: int | None = None):
    """``cfg`` (a ``TrainConfig``) with its unset fields chosen by the compute its time budget buys.

    ``chars_per_s``: the training speed of the ``REFERENCE`` shape measured on
    this machine (None: not measured; ``NOMINAL_CHARS_PER_S`` is assumed).
    Times the budget's seconds, it is the characters that shape would see,
    which picks the tier (``compute_tier``); fields the tier does not name
    take the dataclass defaults. Over ``train_chars`` (the training split's
    size; None: unknown), it is the passes the run will make, which can raise
    the tier's dropout (``pass_dropout``). The measured speed is kept in the
    config (``probe_chars_per_s``). A config with nothing unset comes back as it is.
    """
    if not cfg.unsized:
        return cfg
    rate = NOMINAL_CHARS_PER_S if chars_per_s is None else float(chars_per_s)
    reference_chars = rate * cfg.time_budget * 60
    tier = compute_tier(cfg.preset, reference_chars)
    if train_chars and "dropout" in tier:
        tier["dropout"] = max(tier["dropout"], pass_dropout(cfg.preset, reference_chars / train_chars))
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    chosen = {k: tier.get(k, defaults[k]) for k in cfg.unsized}
    measured = None if chars_per_s is None else round(rate, 1)
    return dataclasses.replace(cfg, **chosen, probe_chars_per_s=measured).check()
