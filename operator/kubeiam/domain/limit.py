"""The active limit: which credentials of an account hold a slot, and who is admitted next.

The ledger of slot holders lives in the account's status and is only ever replaced by a
compare-and-swap on the API server, so two operator processes cannot both fill the last slot.
A ledger entry is dropped only when its credential is known to have ended (or to be gone): a
stale view of the world may delay an admission, but never admits one credential too many.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Contender:
    """A credential that wants a slot, ordered oldest first (creation time, then name)."""

    created_at: str
    name: str
    uid: str


@dataclass(frozen=True)
class LedgerEntry:
    """One slot holder, by name for a person and by UID so a re-created name is not confused."""

    name: str
    uid: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "uid": self.uid}


@dataclass(frozen=True)
class AdmissionPlan:
    """The ledger to write, and what changed against the one that was read."""

    ledger: tuple[LedgerEntry, ...]
    admitted: tuple[LedgerEntry, ...]
    released: tuple[LedgerEntry, ...]

    @property
    def changed(self) -> bool:
        return bool(self.admitted or self.released)


def admission_order(waiting: Collection[Contender]) -> list[Contender]:
    return sorted(waiting)


def plan_admission(
    ledger: Sequence[LedgerEntry],
    *,
    waiting: Collection[Contender],
    ended: Collection[str],
    limit: int,
) -> AdmissionPlan:
    """Release the entries of ended credentials (by UID), then admit the oldest waiting ones.

    A waiting credential already in the ledger keeps its slot and is not admitted twice.
    """
    kept = tuple(entry for entry in ledger if entry.uid not in ended)
    released = tuple(entry for entry in ledger if entry.uid in ended)
    holders = {entry.uid for entry in kept}
    free = max(limit - len(kept), 0)
    candidates = [
        c for c in admission_order(waiting) if c.uid not in holders and c.uid not in ended
    ]
    admitted = tuple(LedgerEntry(c.name, c.uid) for c in candidates[:free])
    return AdmissionPlan(ledger=kept + admitted, admitted=admitted, released=released)
