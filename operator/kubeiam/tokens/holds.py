"""Holds: "this key is taken until then", one answer for every worker of a token server.

Two rules of the token path need a memory shared by whoever serves a request: a DPoP proof's
`jti` is accepted once (RFC 9449 §11.1), and a credential's usage is written at most once per
interval. `Holds.take(key, until, now)` is that memory: it answers True and holds `key` until
`until` when nobody holds it at `now`, and False while somebody does. Keys are digests, never
the secrets, proofs or tokens they stand for.

`LocalHolds` serves one process. A server of several worker processes passes each worker the
same `SharedHolds` instead, so the answer holds across them. A `take` may raise
`HoldsUnavailable` when it cannot answer (a full shared table): each rule fails in its own safe
direction (usage writes anyway, at worst once more; a DPoP proof is refused, never replayed).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import heapq
import multiprocessing.context
import os
import struct
from collections.abc import Iterator
from typing import Any, Protocol


class Holds(Protocol):
    def take(self, key: bytes, until: float, now: float) -> bool:
        """True (and `key` is held until `until`) when nobody holds `key` at `now`; raises
        `HoldsUnavailable` when it cannot tell."""
        ...


class LocalHolds:
    """Holds of one process, forgotten once they end; at most `capacity` held at once (the
    oldest-ending give way first, which only makes a key easier to take, never a rule
    stricter)."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._until: dict[bytes, float] = {}
        self._ends: list[tuple[float, bytes]] = []

    def take(self, key: bytes, until: float, now: float) -> bool:
        self._forget(now)
        held = self._until.get(key)
        if held is not None and held > now:
            return False
        self._until[key] = until
        heapq.heappush(self._ends, (until, key))
        while len(self._until) > self.capacity:
            self._pop()
        return True

    def __len__(self) -> int:
        return len(self._until)

    def _forget(self, now: float) -> None:
        while self._ends and self._ends[0][0] <= now:
            self._pop()

    def _pop(self) -> None:
        until, key = heapq.heappop(self._ends)
        if self._until.get(key) == until:
            del self._until[key]


class HoldsUnavailable(Exception):
    """No answer: the table has no room near the key, or its lock stayed held (a worker died
    inside `take`). The caller decides in its rule's safe direction (docs/tokens.md)."""


_DIGEST = 16  # bytes of BLAKE2b kept a key: collisions are out of reach, the key is not kept
_SLOT = struct.Struct(f"<{_DIGEST}sd")  # digest, held until (Unix seconds; 0: never used)
_HEADER = struct.Struct("<q")  # the pid holding the lock, 0 when none does
_PROBES = 64  # slots looked at from a key's home slot before the table counts as full there
LOCK_SECONDS = 2.0


class SharedHolds:
    """Holds shared by the worker processes of one server: a fixed table in shared memory.

    `capacity` slots of a 16-byte digest and an end time, found by linear probing from the
    digest's home slot, under one process-shared lock. An ended hold's slot is reused. Its size
    never grows; when the `_PROBES` slots from a key's home are all held and none is the key's,
    `take` raises `HoldsUnavailable` rather than evict a live hold (an evicted DPoP `jti` could
    be replayed). Made in the parent before the workers start; passed to them as an argument
    of `multiprocessing` (spawn pickles the shared array and the lock, nothing else).
    """

    def __init__(self, capacity: int, context: multiprocessing.context.BaseContext) -> None:
        if capacity < 1:
            raise ValueError("SharedHolds needs at least one slot")
        self.capacity = capacity
        self._array = context.RawArray(ctypes.c_char, _HEADER.size + capacity * _SLOT.size)
        self._lock = context.Lock()
        self._view = memoryview(self._array).cast("B")

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "array": self._array, "lock": self._lock}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.capacity, self._array, self._lock = state["capacity"], state["array"], state["lock"]
        self._view = memoryview(self._array).cast("B")

    def take(self, key: bytes, until: float, now: float) -> bool:
        digest = hashlib.blake2b(key, digest_size=_DIGEST).digest()
        home = int.from_bytes(digest[:8], "little") % self.capacity
        with self._locked():
            free: int | None = None
            for probe in range(min(_PROBES, self.capacity)):
                offset = _HEADER.size + ((home + probe) % self.capacity) * _SLOT.size
                held, held_until = _SLOT.unpack_from(self._view, offset)
                if held_until == 0:
                    # Never used, so no key lies past it: each key took the first free slot.
                    free = offset if free is None else free
                    break
                if held == digest:
                    if held_until > now:
                        return False
                    free = offset  # the key's own ended hold: renew it in place
                    break
                if free is None and held_until <= now:
                    free = offset
            if free is None:
                raise HoldsUnavailable("no free slot near this key: the holds table is full")
            _SLOT.pack_into(self._view, free, digest, until)
            return True

    def held(self, now: float) -> int:
        """How many holds have not ended at `now` (a scan: for tests and metrics only)."""
        with self._locked():
            return sum(
                1
                for slot in range(self.capacity)
                if _SLOT.unpack_from(self._view, _HEADER.size + slot * _SLOT.size)[1] > now
            )

    def recover(self, pid: int) -> bool:
        """Release the lock if process `pid`, now dead, died holding it; True if it had."""
        if _HEADER.unpack_from(self._view, 0)[0] != pid:
            return False
        _HEADER.pack_into(self._view, 0, 0)
        self._lock.release()
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=LOCK_SECONDS):
            raise HoldsUnavailable("the holds table's lock stayed held")
        _HEADER.pack_into(self._view, 0, os.getpid())
        try:
            yield
        finally:
            _HEADER.pack_into(self._view, 0, 0)
            self._lock.release()
