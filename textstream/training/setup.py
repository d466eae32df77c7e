"""What a run needs before its first step: the token files, the precision, the model its budget buys.

``train`` (``training.loop``) calls these in order: ``prepare_corpus`` (a
resume reuses the run's prepared corpus, or prepares its sources again),
``check_same_vocab`` (a resume's ids must mean what the run's ids mean),
``check_same_data`` (its corpus must be the run's, unless
``--allow-new-data``), ``resolve_precision`` (``--precision auto``, timed here) and
``size_for_budget`` (``--time-budget``, the machine's speed measured here).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from textstream.config import TrainConfig
from textstream.data.preparation import prepare
from textstream.data.prepared import Prepared, load_prepared
from textstream.data.vocab import Vocab
from textstream.errors import TextstreamError
from textstream.model.network import default_input_mode, resolved_precision
from textstream.model.run import RunPaths
from textstream.sizing import REFERENCE, precision_for, sized
from textstream.training import events
from textstream.training.update import bfloat16_speedup, training_speed


def prepare_corpus(cfg: TrainConfig, sources: Sequence, paths: RunPaths, resume: bool, on_progress,
             emit: events.OnEvent) -> tuple[Prepared, list[str]]:
    """The token files and the sources they came from; a resume without sources reuses the run's.

    A resume whose prepared directory is gone (a cleaned cache) or damaged
    prepares the run's sources again.
    """
    if resume and not sources:
        record = paths.read_data()
        if record is None:
            raise TextstreamError(f"{paths.data}: missing; pass the run's SOURCE(s) to resume it")
        sources = record.sources
        if record.dir.exists():
            try:
                return load_prepared(record.dir), list(record.sources)
            except TextstreamError as e:
                emit(events.Notice(f"{e}; preparing the run's sources again"))
    corpus = prepare(list(sources), None, lowercase=cfg.lowercase, val_fraction=cfg.val_fraction,
                     max_vocab=cfg.max_vocab, tokens=cfg.tokens, errors=cfg.errors, min_chars=cfg.window,
                     on_progress=on_progress)
    return corpus, [str(s) for s in sources]


def resolve_precision(cfg: TrainConfig, strategy, paths: RunPaths, resume: bool) -> TrainConfig:
    """``cfg`` with ``precision`` auto replaced by the faster one here (``sizing.precision_for``), timed now.

    Several replicas (each worker would time its own machine), or a GPU
    (whose cuDNN kernel is float32), train in float32.
    """
    if cfg.precision != "auto":
        return cfg
    if resume:
        raise TextstreamError(f"{paths.config}: precision auto not resolved: not a config train wrote")
    speedup = None
    if strategy.num_replicas_in_sync == 1 and default_input_mode() == "gather":
        speedup = round(bfloat16_speedup(), 2)
    return dataclasses.replace(cfg, precision=precision_for(speedup), bfloat16_speedup=speedup)


def size_for_budget(cfg: TrainConfig, corpus: Prepared, strategy, paths: RunPaths, resume: bool) -> TrainConfig:
    """``cfg`` with the fields its time budget chooses filled in (``sizing``), measuring this machine's speed.

    Several replicas would each measure their own speed: they all assume the
    nominal one instead, so that every worker builds the same model.
    """
    if not cfg.unsized:
        return cfg
    if resume:
        raise TextstreamError(f"{paths.config}: {', '.join(cfg.unsized)} not set: not a config train wrote")
    speed = None
    if strategy.num_replicas_in_sync == 1:
        speed = training_speed(corpus.vocab.size, **REFERENCE, precision=resolved_precision(cfg))
    return sized(cfg, speed, corpus.train_chars)


def check_same_data(paths: RunPaths, vocab: Vocab, allow: bool, emit: events.OnEvent) -> None:
    """A resume's corpus must be the run's: the sha256 of its sources (``fingerprint``) as the run's vocab.json has it.

    Another corpus (the source file edited, the prepared directory replaced)
    would make the resume inexact and compare "best" across two validation
    splits: refused, unless ``allow`` (``--allow-new-data``), which goes on
    with a notice saying so. A run or a corpus that records no fingerprint
    is not checked.
    """
    old, new = paths.read_vocab().meta.get("fingerprint"), vocab.meta.get("fingerprint")
    if old is None or new is None or old == new:
        return
    what = (f"the corpus is not the one the run was trained on (its sources' sha256 is {str(new)[:12]}..., "
            f"{paths.vocab} records {str(old)[:12]}...)")
    if not allow:
        raise TextstreamError(f"{paths.root}: cannot resume: {what}; the resume would not be exact and \"best\" would "
                              f"be compared on another validation split. Restore the run's text, pass "
                              f"--allow-new-data to continue on the new one anyway, or start a new run")
    emit(events.Notice(f"{what}: continuing on the new text (--allow-new-data); the resume is not exact, and "
                       f"\"best\" keeps the loss it had on the old validation split"))


def check_same_vocab(paths: RunPaths, vocab: Vocab) -> None:
    old = paths.read_vocab()
    if old.tokens != vocab.tokens:
        raise TextstreamError(f"{paths.root}: cannot resume: the sources' tokens are {vocab.tokens}, the run's are "
                              f"{old.tokens}")
    if old.chars != vocab.chars:
        differ = sorted(set(vocab.chars) ^ set(old.chars))
        raise TextstreamError(f"{paths.root}: cannot resume: the sources' vocabulary differs from the run's "
                              f"({len(differ)} character(s) differ: {' '.join(map(repr, differ[:10]))})")
