"""Giving freed heap memory back to the operating system after a model unloads.

llama.cpp frees a context's and a model's buffers with ``free``; glibc keeps
the freed pages in its arenas for reuse, so a server that unloads a model
would go on holding its memory (measured: 50 load/unload cycles of the
default model held ~90 MiB of anonymous memory; trimmed after each unload,
~30 MiB, flat). ``malloc_trim(0)`` returns the free pages. Elsewhere than
glibc it is not there, and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def trim_heap() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
