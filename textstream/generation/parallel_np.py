"""Many numpy streams on several cores: the rows split into parts, each part's sampling loop on a thread of its own.

Streams never interact (a row's ids depend only on its own state, seed,
position and settings), so ``step_np.NumpyStreams`` can cut its rows into
``parts`` groups that each run the whole loop of ``k`` steps on their own
thread (``transposed_np``'s loops: sampling, feeding, scoring), with
OpenBLAS on one thread: numpy releases the GIL inside its products and
ufuncs, the parts wait for each other only to take turns between products
(``transposed_np.generate`` says why), and the results are the rows' own
whichever part they ran in. On a busy machine the threads share the cores
the scheduler gives them, where OpenBLAS's own threads spin and wait on
each other (many times slower per product). Used for sampling (constrained or
not), feeding and scoring (``score_in_parts``) of at least
``2 * MIN_ROWS`` streams; ``wide`` says when a batch takes the transposed
loop at all (one part: on this thread).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from textstream.generation import transposed_np

MIN_ROWS = 16  # streams per part at least (fewer: the loop's fixed costs outweigh the second core)
MIN_STEPS = 8  # steps per call at least (fewer: starting the threads outweighs the work)

_pool: ThreadPoolExecutor | None = None
_pool_size = 0

__all__ = ["parts_for", "wide", "generate_in_parts", "feed_in_parts", "score_in_parts"]


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def parts_for(batch: int, k: int) -> int:
    """How many parts ``batch`` streams generating ``k`` ids each are cut into (1: no threads)."""
    if k < MIN_STEPS:
        return 1
    return max(1, min(cores(), batch // MIN_ROWS))


def wide(batch: int, k: int) -> bool:
    """Whether ``batch`` streams generating ``k`` ids each take ``generate_in_parts`` (the column layout)."""
    return batch >= MIN_ROWS and k >= MIN_STEPS


def _part(streams, lo: int, hi: int):
    """A ``NumpyStreams`` over rows ``lo:hi`` of ``streams``: views, so advancing it advances them."""
    part = object.__new__(type(streams))
    part.__dict__.update(streams.__dict__)
    part.batch = hi - lo
    part.h, part.c = streams.h[:, lo:hi], streams.c[:, lo:hi]
    for name in ("seeds", "keys", "positions", "temperature", "constraint_state"):
        setattr(part, name, getattr(streams, name)[lo:hi])
    if streams.top_p is not None:
        part.top_p = streams.top_p[lo:hi]
    return part


def _threads(parts: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    if _pool is None or _pool_size < parts:
        _pool_size = max(parts, cores())
        _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="textstream-step")
    return _pool


def _bounds(batch: int, parts: int) -> list[tuple[int, int]]:
    cuts = np.linspace(0, batch, parts + 1).round().astype(int).tolist()
    return list(zip(cuts[:-1], cuts[1:]))


def generate_in_parts(streams, k: int, top: int | None = None):
    """``streams._generate(k)`` with the rows in ``parts_for`` groups, one thread each: int32 (B, k).

    Each part runs ``transposed_np``'s loop (the streams along columns; one
    part runs in the calling thread): ``generate_constrained`` under a
    constraint, ``generate_logprobs`` with ``top`` (then the result is
    ``(ids, chosen, top_ids, top_logprobs)``, joined along the rows). The
    caller holds OpenBLAS on one thread (``blas.one_blas_thread``) around the call.
    """
    if top is not None:
        loop = lambda part, k_, turn=None: transposed_np.generate_logprobs(part, k_, top, turn)  # noqa: E731
    else:
        loop = transposed_np.generate if streams.constraint is None else transposed_np.generate_constrained
    parts = parts_for(streams.batch, k)
    if parts == 1:
        return loop(streams, k)
    pool = _threads(parts)
    turn = threading.Lock()  # the parts take turns between their products (transposed_np.generate says why)
    futures = [pool.submit(loop, _part(streams, a, b), k, turn)
               for a, b in _bounds(streams.batch, parts)]
    return _joined([f.result() for f in futures])


def _joined(results: list):
    """The parts' results (arrays, or tuples of arrays) joined along the rows."""
    if isinstance(results[0], tuple):
        return tuple(np.concatenate(column, axis=0) for column in zip(*results))
    return np.concatenate(results, axis=0)


def feed_in_parts(model, h: np.ndarray, c: np.ndarray, ids: np.ndarray) -> None:
    """``transposed_np.feed`` of ``ids`` (B, T) in ``parts_for`` groups of rows; ``h``, ``c`` advanced in place."""
    _rows_in_parts(transposed_np.feed, model, h, c, ids)


def score_in_parts(model, h: np.ndarray, c: np.ndarray, ids: np.ndarray, top: int | None):
    """``transposed_np.score`` of ``ids`` (B, T) in ``parts_for`` groups of rows, its results joined along the rows."""
    return _rows_in_parts(transposed_np.score, model, h, c, ids, top)


def _rows_in_parts(loop, model, h: np.ndarray, c: np.ndarray, ids: np.ndarray, *args):
    """``loop(model, h, c, ids, *args, turn)`` on ``parts_for`` groups of rows, one thread each (1: this thread).

    ``h``, ``c`` (layers, B, units) are advanced in place through views. The
    caller holds OpenBLAS on one thread.
    """
    parts = parts_for(*ids.shape)
    if parts == 1:
        return loop(model, h, c, ids, *args)
    pool, turn = _threads(parts), threading.Lock()
    futures = [pool.submit(loop, model, h[:, a:b], c[:, a:b], ids[a:b], *args, turn)
               for a, b in _bounds(len(ids), parts)]
    results = [f.result() for f in futures]
    return None if results[0] is None else _joined(results)
