"""The process's C heap (glibc's malloc): fewer arenas for the API client's threads, and memory
freed after a burst handed back to the OS. Elsewhere than glibc both do nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

# glibc's mallopt parameter for the most arenas malloc makes (malloc.h).
M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl has neither; glibc has both.
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def limit_arenas(count: int) -> bool:
    """At most `count` malloc arenas from now on (0: glibc's own limit, 8 per core). Each
    thread that allocates gets an arena of its own, up to the limit, and an arena keeps what a
    burst freed in it: with 32 API threads that is tens of MB held for nothing."""
    libc = _glibc()
    if libc is None or count <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Hand the heap's free memory back to the OS (malloc_trim(0)); True if some was."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
