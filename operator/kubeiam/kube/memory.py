"""The process's heap: Python's objects in glibc's malloc, fewer arenas for the API client's
threads, and memory freed after a burst or a restart handed back to the OS. Elsewhere than glibc
all three do nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)

# glibc's mallopt parameter for the most arenas malloc makes (malloc.h).
M_ARENA_MAX = -8
# Python's own allocator is chosen by this variable, read once as the interpreter starts.
PYTHONMALLOC = "PYTHONMALLOC"
SYSTEM_MALLOC = "malloc"


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


def allocator_to_choose(environ: Mapping[str, str]) -> str | None:
    """The PYTHONMALLOC to restart the process under, or None to keep the one it has.

    Python's own allocator (pymalloc) hands memory back to the OS only by whole 1 MiB arenas,
    and the few objects that outlive a restart's listing or a burst are spread over all of
    them; glibc's malloc_trim hands back every free 4 KiB page (docs/performance.md, "Memory").
    A PYTHONMALLOC set by whoever started the process is theirs (`pymalloc` turns this off).
    """
    if environ.get(PYTHONMALLOC) or _glibc() is None:
        return None
    return SYSTEM_MALLOC


def use_system_malloc() -> None:
    """Run this process's own command line again, in place (same pid), with Python's objects in
    glibc's malloc, unless allocator_to_choose says to keep the allocator it has. Call it before
    the heavy imports: what was loaded so far is paid for twice."""
    chosen = allocator_to_choose(os.environ)
    if chosen is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, PYTHONMALLOC: chosen})  # noqa: S606
