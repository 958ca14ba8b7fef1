"""Holds: "this key is taken until then", one answer for every worker of a token server.

Two rules of the token path need a memory shared by whoever serves a request: a DPoP proof's
`jti` is accepted once (RFC 9449 §11.1), and a credential's usage is written at most once per
interval. `Holds.take(key, until, now)` is that memory: it answers True and holds `key` until
`until` when nobody holds it at `now`, and False while somebody does. Keys are digests, never
the secrets, proofs or tokens they stand for.

`LocalHolds` serves one process. A server of several worker processes passes each worker the
same shared table instead, so the answer holds across them.
"""

from __future__ import annotations

import heapq
from typing import Protocol


class Holds(Protocol):
    def take(self, key: bytes, until: float, now: float) -> bool:
        """True (and `key` is held until `until`) when nobody holds `key` at `now`."""
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
