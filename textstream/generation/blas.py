"""OpenBLAS's thread count, set for the duration of a block (``one_blas_thread``). No TensorFlow here.

The numpy step backend (``step_np``) runs its small products on one thread:
spreading a (1 x 384) @ (384 x 1600) product over the cores costs far more
than it saves, and on a loaded 2-core machine it made each product 30 times
slower. The count is the whole process's setting, restored after the block.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["one_blas_thread", "blas_threads"]


class _BlasThreads:
    """Get/set OpenBLAS's thread count through its C API, if numpy's BLAS is a loaded OpenBLAS (else nothing).

    Found the way threadpoolctl finds it: the shared objects mapped into this
    process (Linux), the ``[scipy_]openblas_{get,set}_num_threads[64_]`` symbols.
    """

    def __init__(self):
        self.get = self.set = None
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
        except OSError:
            return
        if not paths:
            return
        import ctypes  # only where there is an OpenBLAS to talk to

        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        set_.argtypes, set_.restype, get.restype = [ctypes.c_int], None, ctypes.c_int
                        self.get, self.set = get, set_
                        return


_blas: _BlasThreads | None = None


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """OpenBLAS on ``n`` threads inside the block (the whole process's setting; restored after)."""
    global _blas
    if _blas is None:
        _blas = _BlasThreads()
    if _blas.set is None:
        yield
        return
    before = _blas.get()
    if before == n:
        yield
        return
    _blas.set(n)
    try:
        yield
    finally:
        _blas.set(before)


def one_blas_thread() -> contextlib.AbstractContextManager:
    """OpenBLAS on one thread inside the block (``blas_threads(1)``)."""
    return blas_threads(1)
