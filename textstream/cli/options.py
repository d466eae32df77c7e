"""Command-line flags generated from the settings of ``TrainConfig`` (``textstream.config``).

``train`` gets a flag for every field a user may set, ``prepare`` the corpus-
preparation ones. Every generated flag defaults to None ("not given"), and
parsing only turns the text into a number: choices and ranges are checked
once, by ``TrainConfig.check`` and ``config.check_prepare_options``.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable

from textstream.config import EXCLUSIVE, GROUPS, options
from textstream.settings import Option


def add_setting_arguments(parser: argparse.ArgumentParser, groups: Iterable[str | None] = (None, *GROUPS),
                          cls: type | None = None) -> dict[str | None, Any]:
    """Add the flags of the settings in ``groups`` (None: those outside any group) to ``parser``.

    Returns the argument group of each title (None: ``parser``), so a command
    can add its own flags next to the generated ones.
    """
    containers: dict[str | None, Any] = {}
    for title in groups:
        if title is None:
            containers[None] = parser
        else:
            group = parser.add_argument_group(title)
            containers[title] = group.add_mutually_exclusive_group() if title in EXCLUSIVE else group
    for option in options(cls).values():
        if option.setting.cli and option.setting.group in containers:
            containers[option.setting.group].add_argument(*option.flags, **_flag(option))
    return containers


def _flag(option: Option) -> dict:
    """``add_argument`` keywords of ``option``'s flag."""
    s = option.setting
    kw: dict = {"dest": option.name, "default": None,
                "help": s.help.replace("{default}", str(option.default)).replace("%", "%%") or None}
    if option.kind is bool:
        if s.switch is None:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.update(action="store_const", const=s.switch)
        return kw
    kw["type"] = option.kind
    if s.choices:
        kw["choices"] = s.choices
    if s.metavar:
        kw["metavar"] = s.metavar
    return kw


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (for command flags that are not config settings)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value
