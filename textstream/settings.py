"""Settings: dataclass fields that say how they are set (flag), checked (type, range) and resumed.

A field declared ``x: float = setting(0.1, "help", group=..., ge=0, lt=1)``
carries a ``Setting``; ``options_of(cls)`` gives each field as an ``Option``
(name, default, setting, value type), which checks a value
(``Option.problem``) and names it in messages (``Option.label``). The CLI
builds its flags from the same options (``textstream.cli.options``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Setting:
    """How one ``TrainConfig`` field is set (flag), checked (type, choices, range) and resumed.

    ``help`` may say ``{default}`` for the field's default. Numbers are checked
    against ``ge``/``gt``/``le``/``lt`` and, for floats, for finiteness.
    """

    help: str = ""
    group: str | None = None  # CLI flag group (see GROUPS); None: among the command's own options
    resume: bool = False  # whether --resume may change it (the run's length and its samples)
    choices: tuple = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    unit: str = ""  # said after the range in messages ("minutes")
    flags: tuple[str, ...] = ()  # default: --field-name; more than one: aliases
    switch: bool | None = None  # bool: a flag storing this value (--lowercase, --no-samples); None: --x/--no-x
    metavar: str | None = None
    cli: bool = True  # False: set from the library and config.json only


def setting(default: Any, help: str = "", **kw: Any) -> Any:
    """A dataclass field with its ``Setting`` (see there)."""
    return field(default=default, metadata={"setting": Setting(help=help, **kw)})


WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list of numbers"}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Option:
    """A ``TrainConfig`` field as settings see it: name, default, ``Setting``, value type."""

    name: str
    default: Any
    setting: Setting
    kind: type  # int, float, bool, str, or tuple (of floats)
    optional: bool  # None is a value (unset)

    @property
    def flags(self) -> tuple[str, ...]:
        return self.setting.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def label(self) -> str:
        """How messages name it: its flag, or its field name when it has none."""
        return self.flags[0] if self.setting.cli else self.name

    @property
    def rule(self) -> str:
        """The numeric range in words: ">= 1", "in [0, 1)", "> 0 minutes and finite"."""
        s = self.setting
        low = ("[", s.ge) if s.ge is not None else ("(", s.gt) if s.gt is not None else None
        high = ("]", s.le) if s.le is not None else (")", s.lt) if s.lt is not None else None
        if low and high:
            text = f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        elif low:
            text = f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
        elif high:
            text = f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
        else:
            text = ""
        text += f" {s.unit}" if s.unit else ""
        if self.kind in (float, tuple) and high is None:
            text += " and finite" if text else "finite"
        return text.strip()

    def _in_range(self, v: float) -> bool:
        s = self.setting
        return ((s.ge is None or v >= s.ge) and (s.gt is None or v > s.gt) and (s.le is None or v <= s.le)
                and (s.lt is None or v < s.lt) and math.isfinite(v))

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("must be ... (got ...)"), or None when it is a valid setting."""
        if value is None:
            return None if self.optional else f"must be set ({WORDS[self.kind]})"
        if self.kind is tuple:
            ok = isinstance(value, (tuple, list)) and all(_is(v, float) and self._in_range(v) for v in value)
            return None if ok else f"must be a list of numbers {self.rule} (got {value!r})"
        if not _is(value, self.kind):
            return f"must be {WORDS[self.kind]} (got {value!r})"
        if self.setting.choices and value not in self.setting.choices:
            return f"must be one of {', '.join(map(str, self.setting.choices))} (got {value!r})"
        if self.kind in (int, float) and not self._in_range(value):
            return f"must be {self.rule} (got {value})"
        return None


def _kind(hint: Any) -> tuple[type, bool]:
    """(value type, None allowed) of a field's type hint."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return _kind(inner)[0], True
    if typing.get_origin(hint) is tuple:
        return tuple, False
    return hint, False


@functools.cache
def options_of(cls: type) -> Mapping[str, Option]:
    """Every field of the dataclass ``cls`` as an ``Option``, in declaration order.

    Raises ``TypeError`` for a field declared without ``setting(...)``: every
    field must say how it is set, checked and resumed.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "setting" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is declared without setting(...): give it its help, "
                            f"group and checks")
        kind, optional = _kind(hints[f.name])
        if kind not in WORDS:
            raise TypeError(f"{cls.__name__}.{f.name}: settings do not know the type {hints[f.name]}")
        out[f.name] = Option(f.name, f.default, f.metadata["setting"], kind, optional)
    return types.MappingProxyType(out)
