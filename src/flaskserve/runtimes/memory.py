"""Hands back to the operating system the memory a model load used and freed.

Loading a model makes large temporaries that are freed once it is built (ONNX Runtime parses
the whole protobuf before it builds the session's weights; skops reads its zip; scikit-learn
imports hundreds of modules). glibc keeps freed memory in the process's heap for reuse rather
than returning it: without this, a worker serving the default models keeps about 20 MiB it
no longer uses (docs/benchmarks.md, "Memory per worker"). `malloc_trim(0)` returns the heap's
free pages; it takes a few milliseconds, once per model loaded. Where the C library has no
`malloc_trim` (musl, macOS) this does nothing.

`return_large_blocks` keeps large blocks out of the heap for good: glibc serves a request of at
least `M_MMAP_THRESHOLD` bytes with its own mapping, unmapped when freed, but raises that
threshold (up to 32 MiB) each time such a block is freed, after which those blocks land in the
heap and stay there. ONNX Runtime's arena, shrunk after each run (runtimes/onnx.py), frees
blocks of that size; a fixed threshold makes them go back to the OS.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

#: glibc's `mallopt` parameter number of the mmap threshold (malloc.h `M_MMAP_THRESHOLD`).
M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes get their own mapping, returned to the OS when freed.
LARGE_BLOCK = 1 << 20


@functools.cache
def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at `LARGE_BLOCK` (once per process); whether it could."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; whether the C library could (and did) give any."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim
