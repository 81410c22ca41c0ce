"""Hands back to the operating system the memory a model load used and freed.

Loading a model makes large temporaries that are freed once it is built (ONNX Runtime parses
the whole protobuf before it builds the session's weights; skops reads its zip; scikit-learn
imports hundreds of modules). glibc keeps freed memory in the process's heap for reuse rather
than returning it, so a worker serving the default models kept about 20 MiB it no longer used
(docs/benchmarks.md, "Memory per worker"). `malloc_trim(0)` returns the heap's free pages; it
takes a few milliseconds, once per model loaded. Where the C library has no `malloc_trim`
(musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


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
