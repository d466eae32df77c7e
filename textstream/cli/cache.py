"""``textstream cache``: what the cache holds, and removing what is not needed (no TensorFlow)."""
from __future__ import annotations

import argparse
import time

HELP = "show the cache (downloads, prepared corpora) and remove what is not needed"
DESCRIPTION = ("info (the default): every download, prepared corpus and temporary in the cache, with sizes. "
               "clean: remove the temporaries of killed processes and unfinished preparations (--all: "
               "everything). prune: clean, and remove the prepared corpora unused for --days days. "
               "Files of running processes are never removed; a removed corpus is downloaded or prepared "
               "again when needed.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.add_parser("info", help="list the cache's content with sizes (the default)")
    clean = actions.add_parser("clean", help="remove stale temporaries and unfinished preparations")
    clean.add_argument("--all", action="store_true",
                       help="also every download and prepared corpus (not while a train runs: it may still need "
                            "its prepared corpus)")
    prune = actions.add_parser("prune", help="clean, and remove prepared corpora unused for --days days")
    prune.add_argument("--days", type=float, default=30.0, metavar="N", help="default: 30")


def run(args: argparse.Namespace) -> int:
    """The handler of ``textstream cache``; returns the exit status."""
    from textstream.data import cache
    from textstream.data.sources import cache_dir
    from textstream.fsutil import format_bytes

    root = cache_dir()
    if args.action in (None, "info"):
        entries = cache.inventory(root)
        total = sum(e.size for e in entries)
        print(f"{root}: {format_bytes(total)} in {_count(entries)}")
        for e in entries:
            print(f"  {e.kind:22} {format_bytes(e.size):>11}  {_name(e.path, root)}  {e.what}{_used(e.used)}")
        removable = [e for e in entries if e.kind in cache.REMOVABLE]
        if removable:
            print(f"{format_bytes(sum(e.size for e in removable))} in {_count(removable)} of no use: "
                  f"textstream cache clean removes them")
        return 0
    if args.action == "clean":
        removed = cache.clean(root, everything=args.all)
    else:
        removed = cache.prune(root, days=args.days)
    for e in removed:
        print(f"removed {_name(e.path, root)} ({e.kind}, {format_bytes(e.size)})")
    print(f"freed {format_bytes(sum(e.size for e in removed))} ({_count(removed)}) in {root}")
    return 0


def _name(path, root) -> str:
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return rel + ("/" if path.is_dir() and not path.is_symlink() else "")


def _used(when: float | None) -> str:
    if when is None:
        return ""
    age = max(0.0, time.time() - when)
    if age < 3600:
        return f"; used {int(age // 60)} min ago"
    if age < 86400:
        return f"; used {int(age // 3600)} h ago"
    return f"; used {int(age // 86400)} days ago"


def _count(entries) -> str:
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
