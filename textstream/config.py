"""Training configuration: one dataclass whose fields say how they are set, checked and resumed.

Each ``TrainConfig`` field is declared with ``setting(default, ...)``: its help
text, CLI group, choices or numeric range, flag form, and whether ``--resume``
may change it. From that one line come the ``train`` and ``prepare`` flags
(``textstream.cli.options``), ``TrainConfig.check`` (also run on every
config.json read back), the corpus-preparation checks
(``check_prepare_options``) and the resume rule (``TrainConfig.resumed``).

No TensorFlow here: the CLI builds and checks configs before anything heavy is imported.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from textstream.claims import read_regular
from textstream.errors import TextstreamError
from textstream.settings import WORDS, Option, options_of, setting
from textstream.sizing import COMPUTE_TIERS, SIZED, tier_fields

OBJECTIVES = ("sequence", "next")
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")
ERRORS = ("strict", "replace")  # invalid UTF-8 in a source: fail with the offset, or read it as U+FFFD
DROPOUT_MASKS = ("step", "window")  # dropout's mask: a new one every step, or one per window (shared by its steps)
MATMUL_PRECISIONS = ("float32", "bfloat16")  # the operands of the LSTM's matrix products in training
PRECISIONS = ("auto", *MATMUL_PRECISIONS)  # auto: the faster of the two on this machine, chosen when a run starts
TOKENS = ("auto", "chars", "bytes")  # what an id stands for (auto: chosen from the text's characters)
# how each epoch offsets its windows (textstream.data.pipeline.window_phase): every offset once per cycle, or drawn
WINDOW_PHASES = ("cycle", "random")

# CLI flag groups, in the order ``train --help`` shows them; PREPARE's flags are also ``prepare``'s.
MODEL, DATA, OPTIMISATION, LENGTH, RUN, PREPARE = (
    "model", "data", "optimisation", "length (one of)", "run", "corpus preparation")
GROUPS = (MODEL, DATA, OPTIMISATION, LENGTH, RUN, PREPARE)
EXCLUSIVE = (LENGTH,)  # groups whose flags exclude each other

# Presets: overrides applied on top of the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The original Keras example (Deep Learning with Python, 8.1), exactly.
    "seed": dict(
        lowercase=True, layers=1, units=128, dropout=0.0, embedding=0, seq_len=60, stride=3,
        objective="next", optimizer="rmsprop", lr=0.01, clipnorm=0.0, batch_size=1024,
        warmup_steps=0, schedule="constant", epochs=60, ema=0.0, precision="float32",
    ),
    # The dataclass defaults; with a time budget, the model the budget buys on this machine
    # (textstream/sizing.py; how the tiers were chosen: docs/model.md).
    "default": dict(),
    # For tests and smoke runs: seconds on a CPU.
    "tiny": dict(layers=1, units=16, seq_len=16, batch_size=8, dropout=0.0, schedule="constant", epochs=1,
                 sample_chars=40, precision="float32"),
}

@functools.cache
def options(cls: type | None = None) -> Mapping[str, Option]:
    """Every field of ``cls`` (default ``TrainConfig``) as an ``Option``, in declaration order (``settings.options_of``)."""
    return options_of(cls or TrainConfig)


def _with_length(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given``; when it sets one of the run-length fields, the others are unset (the one given wins)."""
    out = dict(given)
    length = [name for name, o in options().items() if o.setting.group == LENGTH]
    if any(given.get(k) is not None for k in length):
        out.update({k: given.get(k) for k in length})
    return out


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes.

    Serialised to ``RUN_DIR/config.json``; ``TrainConfig.load`` reads it back (checked).
    """

    preset: str = setting("default", "seed: the original example; default: the measured best; "
                                       "tiny: a smoke test", choices=tuple(PRESETS))
    layers: int = setting(1, "stacked LSTM layers", group=MODEL, ge=1)
    units: int | None = setting(384, "LSTM width", group=MODEL, ge=1)
    dropout: float | None = setting(0.15, "dropout between LSTM layers and before the head", group=MODEL, ge=0,
                                    lt=1)
    dropout_mask: str = setting("step", "step: a new dropout mask every step (default); window: one mask per "
                                        "window, the same units dropped at all its steps (variational dropout)",
                                group=MODEL, choices=DROPOUT_MASKS)
    weight_dropout: float = setting(0.0, "in training, drop this fraction of each layer's recurrent weights "
                                         "(DropConnect: one mask per batch)", group=MODEL, ge=0, lt=1, metavar="P")
    embedding: int = setting(0, "learned embedding width (0: one-hot input)", group=MODEL, ge=0, metavar="N")
    seq_len: int | None = setting(100, "characters of input per window", group=DATA, ge=1)
    stride: int = setting(3, "characters between window starts for --objective next", group=DATA, ge=1)
    objective: str = setting("sequence", "sequence: every position predicts its next character; "
                                         "next: only the last one (the original)", group=DATA, choices=OBJECTIVES)
    batch_size: int | None = setting(32, "windows per step", group=DATA, ge=1)
    window_phases: str = setting("cycle", "how each epoch shifts where windows start: cycle (each offset once "
                                          "per --seq-len epochs; default) or random (drawn per epoch, may "
                                          "repeat)", group=DATA, choices=WINDOW_PHASES)
    carry_state: bool = setting(False, "carry the LSTM state from each window to the next one of its strip "
                                       "(truncated backpropagation through time; sequence objective)", group=DATA)
    lowercase: bool = setting(False, "lowercase the text", group=PREPARE, switch=True)
    val_fraction: float = setting(0.05, "tail fraction of the text held out for validation (default {default}; "
                                        "0 allowed)", group=PREPARE, ge=0, lt=1, metavar="F")
    max_vocab: int | None = setting(None, "keep the N-1 most frequent characters, map the rest to one "
                                          "out-of-vocabulary id", group=PREPARE, ge=1, metavar="N")
    tokens: str = setting("auto", "what an id stands for: chars (one per character), bytes (the UTF-8 bytes: "
                                  "256 ids for any script) or auto (characters while the text has few "
                                  "distinct ones, else a bounded vocabulary; default)", group=PREPARE,
                          choices=TOKENS)
    errors: str = setting("strict", "invalid UTF-8: fail with the byte offset (strict, default) or use U+FFFD "
                                    "(replace)", group=PREPARE, choices=ERRORS)
    optimizer: str = setting("adam", group=OPTIMISATION, choices=OPTIMIZERS)
    lr: float | None = setting(4e-3, "learning rate (the peak, with a schedule)", group=OPTIMISATION, gt=0)
    weight_decay: float | None = setting(0.0, "decoupled weight decay (AdamW) of the weight matrices: every step "
                                               "takes lr * D * w off each of them (0: off)", group=OPTIMISATION,
                                         ge=0, lt=1, metavar="D")
    clipnorm: float = setting(1.0, "clip gradients to this global norm (0: off)", group=OPTIMISATION, ge=0)
    warmup_steps: int = setting(0, "raise the learning rate linearly over the first N steps", group=OPTIMISATION,
                                ge=0, metavar="N")
    schedule: str = setting("cosine", "cosine: decay to lr * --min-lr-ratio over the run's planned steps or "
                                      "time budget", group=OPTIMISATION, choices=SCHEDULES)
    min_lr_ratio: float | None = setting(0.05, "cosine: decay to lr * R (the floor)", group=OPTIMISATION, ge=0, le=1,
                                         metavar="R")
    precision: str = setting("auto", "the operands of the LSTM's matrix products in training: float32, bfloat16 "
                                     "(mixed precision: about twice as fast on CPUs with bfloat16 instructions; "
                                     "sums, state and weights stay float32, inference is float32) or auto (the "
                                     "faster here, timed when a run starts; default)", group=OPTIMISATION,
                             choices=PRECISIONS)
    ema: float | None = setting(0.999, "keep a moving average of the weights, momentum M (0: off; default "
                                       "{default}, or a --time-budget run's compute tier's); validation, "
                                       "checkpoints and generation use the average",
                                group=OPTIMISATION, ge=0, lt=1, metavar="M")
    # the first one set wins: steps, then time_budget, then epochs
    epochs: int | None = setting(20, group=LENGTH, resume=True, ge=1)
    steps: int | None = setting(None, group=LENGTH, resume=True, ge=1)
    time_budget: float | None = setting(None, "train for this many minutes", group=LENGTH, resume=True, gt=0,
                                        unit="minutes", metavar="MIN")
    seed: int = setting(0, group=RUN, ge=0, le=2**32 - 1)
    sample_every: int = setting(1, "print samples every N epochs", group=RUN, resume=True, ge=1, metavar="N")
    samples: bool = setting(True, "do not print samples", group=RUN, resume=True, flags=("--no-samples",),
                            switch=False)
    sample_chars: int = setting(400, "characters per sample", resume=True, ge=1, cli=False)
    temperatures: tuple[float, ...] = setting((0.2, 0.5, 1.0, 1.2), "sampling temperatures of the samples",
                                              resume=True, ge=0, cli=False)
    probe_chars_per_s: float | None = setting(None, "the reference shape's training speed measured at the start "
                                                    "(chars/s) that sized the model", ge=0, cli=False)
    bfloat16_speedup: float | None = setting(None, "how many times faster the matrix products ran with bfloat16 "
                                                   "operands when the run started (--precision auto)", ge=0,
                                             cli=False)

    def check(self, where: str | None = None) -> "TrainConfig":
        """This config, after checking every field's type and range; raises one line naming the flag.

        ``where``: the file the values came from; messages then name it and the field.
        """
        def fail(problem: str) -> TextstreamError:
            return TextstreamError(f"{where}: {problem}" if where else problem)

        for o in options(type(self)).values():
            problem = o.problem(getattr(self, o.name))
            if problem:
                raise fail(f"{o.name if where else o.label} {problem}")
        if self.carry_state and self.objective == "next":
            raise fail("--carry-state needs --objective sequence (the original `next` objective has "
                       "overlapping windows)")
        problem = _tokens_problem(self.tokens, self.max_vocab)
        if problem:
            raise fail(problem)
        if self.unsized and not self.sized_by_budget:
            o = options(type(self))[self.unsized[0]]
            raise fail(f"{o.name if where else o.label} must be set ({WORDS[o.kind]}); only a "
                       f"--time-budget run of a preset with compute tiers ({', '.join(COMPUTE_TIERS)}) chooses it")
        return self

    @property
    def unsized(self) -> tuple[str, ...]:
        """The fields left for the compute rule to choose (None), in declaration order."""
        return tuple(name for name in options(type(self)) if name in SIZED and getattr(self, name) is None)

    @property
    def sized_by_budget(self) -> bool:
        """Whether this run's model is chosen by the compute its time budget buys (``sized``)."""
        return bool(self.time_budget) and not self.steps and self.preset in COMPUTE_TIERS

    def resumed(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        """This (saved) run's config with the settings a resume may change taken from ``overrides``.

        ``None`` values are ignored. A run's length and samples may change; any
        other setting given with a different value is refused, naming its flags.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        opts = options(type(self))
        if set(given) - set(opts):
            raise TypeError(f"not settings: {', '.join(sorted(set(given) - set(opts)))}")
        for o in opts.values():
            problem = o.problem(given[o.name]) if o.name in given else None
            if problem:  # a bad value is named as such, before any comparison
                raise TextstreamError(f"{o.label} {problem}")
        changed = [o.label for o in opts.values()
                   if o.name in given and not o.setting.resume and given[o.name] != getattr(self, o.name)]
        if changed:
            raise TextstreamError(f"--resume keeps the run's settings; cannot change: {', '.join(changed)}")
        return dataclasses.replace(self, **_with_length(given)).check()

    @property
    def window(self) -> int:
        """Characters one training example reads: the inputs plus the target after them.

        While ``seq_len`` is left to the budget (``sizing``): the longest its tiers may choose.
        """
        seq_len = self.seq_len if self.seq_len is not None else max(
            tier.get("seq_len", TrainConfig.seq_len) for _, tier in COMPUTE_TIERS[self.preset])
        return seq_len + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["temperatures"] = list(self.temperatures)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | None = None) -> "TrainConfig":
        """The checked config of a ``to_dict`` mapping: every setting present, none unknown.

        A mapping with a setting missing or one this version does not know
        was not written by it (another version of textstream, or an edit):
        one line naming the file and the fields.
        """
        what = where or "config"
        if not isinstance(d, Mapping):
            raise TextstreamError(f"{what}: not a textstream config (a JSON {type(d).__name__} instead of an object)")
        known = options(cls)
        missing = [k for k in known if k not in d]
        unknown = sorted(str(k) for k in d if k not in known)
        if missing or unknown:
            def listed(names: list[str]) -> str:
                return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            parts = ([f"no {listed(missing)}"] if missing else []) + ([f"unknown {listed(unknown)}"] if unknown else [])
            raise TextstreamError(f"{what}: not a config.json of this version of textstream ({'; '.join(parts)})")
        kwargs = dict(d)
        if isinstance(kwargs.get("temperatures"), list):
            kwargs["temperatures"] = tuple(kwargs["temperatures"])
        return cls(**kwargs).check(where)

    @classmethod
    def load(cls, path: Path | str) -> "TrainConfig":
        """The config saved in ``path`` (a run's config.json), checked like flags; problems name the file."""
        try:
            text = read_regular(path, limit=1 << 20).decode("utf-8")  # a FIFO in its place: one line, no wait
        except FileNotFoundError:
            raise TextstreamError(f"{path}: no such file") from None
        except UnicodeDecodeError as e:
            raise TextstreamError(f"{path}: not a textstream config (not UTF-8: invalid byte at offset {e.start})") \
                from None
        except OSError as e:
            raise TextstreamError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            d = json.loads(text)
        except ValueError as e:
            raise TextstreamError(f"{path}: not a textstream config ({e})") from None
        return cls.from_dict(d, where=str(path))


def _tokens_problem(tokens: Any, max_vocab: Any) -> str | None:
    """What is wrong with asking for these tokens with this --max-vocab, or None."""
    if tokens == "bytes" and max_vocab is not None:
        return ("--max-vocab does not apply to --tokens bytes (always 256 byte ids); "
                "drop one of them or pass --tokens chars")
    return None


def check_prepare_options(**values: Any) -> None:
    """Check corpus-preparation options (``lowercase``, ``val_fraction``, ``max_vocab``, ``tokens``, ``errors``).

    Raises one line naming the flag, like ``TrainConfig.check``; ``TypeError``
    for a name that is not a preparation option.
    """
    opts = options()
    for name, value in values.items():
        if name not in opts or opts[name].setting.group != PREPARE:
            raise TypeError(f"{name!r} is not a corpus-preparation option")
        problem = opts[name].problem(value)
        if problem:
            raise TextstreamError(f"{opts[name].label} {problem}")
    problem = _tokens_problem(values.get("tokens"), values.get("max_vocab"))
    if problem:
        raise TextstreamError(problem)


def prepare_options(**given: Any) -> dict[str, Any]:
    """Every corpus-preparation option: the ``given`` ones (None: unset), the defaults for the rest, checked."""
    values = {name: o.default for name, o in options().items() if o.setting.group == PREPARE}
    unknown = set(given) - set(values)
    if unknown:
        raise TypeError(f"not corpus-preparation options: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in given.items() if v is not None})
    check_prepare_options(**values)
    return values


def make_config(preset: str = TrainConfig.preset, **overrides: Any) -> TrainConfig:
    """A checked config: the preset's values (its budget tier), then every override that is not None."""
    if preset not in PRESETS:
        raise TextstreamError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update(_with_length(given))  # a run length given explicitly replaces the preset's
    cfg = TrainConfig(preset=preset, **values)
    if cfg.sized_by_budget:  # what the caller leaves unset, the compute the budget buys chooses (``sized``)
        cfg = dataclasses.replace(cfg, **{k: None for k in tier_fields(preset) if k not in given})
    return cfg.check()
