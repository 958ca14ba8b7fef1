"""Usage write-back: a credential's `status.lastUsedAt` and `status.lastUsedIp`, a trust's
`status.lastUsedAt`, coalesced.

Every token issued notes its use here; nothing on the token path waits for the API server.
`Coalescer` is the rule, without I/O: a credential's use is written at once when it was not
written within the interval, else it waits, replaced by any later use, until the interval since
the last write has passed. So a credential is written at most once per interval however many
tokens it gets, and the write always carries its latest use. `Writer` runs the rule on the event
loop and writes each due use as a JSON merge patch of those two fields alone: only the token
server writes them, so no resourceVersion precondition is needed and the operator's own status
writes are never fought over. A failed write is dropped (the next use writes again); a deleted
credential is forgotten.

Several workers and replicas each run a `Writer`; the interval holds for the whole server:
before writing, a writer takes a hold on the credential for the interval (`holds.Holds`, shared
by the workers of one server), and it does not write when the credential's `status.lastUsedAt`
(as its cache sees it) was written within the interval by anyone, another replica included.
Either way the use waits for the interval's end, replaced by any later one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubeiam.kube.resources import TRUSTS
from kubeiam.tokens import metrics as token_metrics
from kubeiam.tokens.holds import Holds, HoldsUnavailable

logger = logging.getLogger(__name__)

# (plural, namespace, name): a credential and a trust of the same name are two keys.
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Use:
    at: datetime.datetime
    address: str | None  # None: not known (a malformed X-Forwarded-For); the field is removed

    def status(self, *, with_address: bool = True) -> dict[str, str | None]:
        """The status fields, as the merge patch writes them (null removes a field): the time,
        and the address unless the kind has no such field (a trust)."""
        at = self.at.astimezone(datetime.UTC).replace(microsecond=0)
        fields: dict[str, str | None] = {"lastUsedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if with_address:
            fields["lastUsedIp"] = self.address
        return fields


class Coalescer:
    """Which uses to write now, and when to look again: at most one write a key an interval."""

    def __init__(self, interval: datetime.timedelta) -> None:
        self.interval = interval
        self._pending: dict[Key, Use] = {}
        self._written: dict[Key, datetime.datetime] = {}

    def note(self, key: Key, use: Use) -> None:
        """A use; a later one replaces one not written yet."""
        self._pending[key] = use

    def take(self, now: datetime.datetime) -> list[tuple[Key, Use]]:
        """The uses due now, each counted as written at `now`; the others stay pending."""
        due = [
            (key, use)
            for key, use in self._pending.items()
            if (last := self._written.get(key)) is None or now >= last + self.interval
        ]
        for key, _ in due:
            del self._pending[key]
            self._written[key] = now
        # Forget writes too old to hold anything back, so the memory stays bounded.
        for key in [k for k, at in self._written.items() if now >= at + self.interval]:
            if key not in self._pending:
                del self._written[key]
        return due

    def next_due(self) -> datetime.datetime | None:
        """When the earliest pending use falls due; None when nothing waits."""
        times = [
            self._written[key] + self.interval for key in self._pending if key in self._written
        ]
        if len(times) < len(self._pending):
            return datetime.datetime.min.replace(tzinfo=datetime.UTC)  # one is due already
        return min(times, default=None)

    def postpone(self, key: Key, use: Use, until: datetime.datetime) -> None:
        """A due use someone else's write made early: it waits until `until` (a later use that
        was noted meanwhile replaces it)."""
        self._pending.setdefault(key, use)
        self._written[key] = until - self.interval

    def forget(self, key: Key) -> None:
        self._pending.pop(key, None)
        self._written.pop(key, None)


Write = Callable[[Key, dict[str, str | None]], Awaitable[None]]
Clock = Callable[[], datetime.datetime]
LastWritten = Callable[[Key], datetime.datetime | None]


def _never(key: Key) -> datetime.datetime | None:
    return None


class Writer:
    """Runs the coalescing rule on the event loop and writes what falls due.

    `holds` is shared by the server's workers; `last_written` is the credential's
    `status.lastUsedAt` as the cache holds it (written by any worker or replica).
    """

    def __init__(
        self,
        interval: datetime.timedelta,
        write: Write,
        clock: Clock,
        *,
        holds: Holds | None = None,
        last_written: LastWritten = _never,
    ) -> None:
        self.rule = Coalescer(interval)
        self._write = write
        self._clock = clock
        self._holds = holds
        self._last_written = last_written
        self._woken = asyncio.Event()

    def note(self, key: Key, use: Use) -> None:
        self.rule.note(key, use)
        self._woken.set()

    async def run(self) -> None:
        while True:
            self._woken.clear()
            for key, use in self.rule.take(self._clock()):
                await self._one(key, use)
            due = self.rule.next_due()
            wait = None if due is None else (due - self._clock()).total_seconds()
            if wait is None or wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), timeout=wait)

    def _written_elsewhere(self, key: Key, use: Use) -> bool:
        """True (and the use postponed) when another writer wrote `key` within the interval."""
        now, interval = self._clock(), self.rule.interval
        seen = self._last_written(key)
        if seen is not None and now < seen + interval:
            self.rule.postpone(key, use, seen + interval)
            return True
        if self._holds is None:
            return False
        name = "\0".join(("usage", *key)).encode()
        try:
            taken = self._holds.take(name, (now + interval).timestamp(), now.timestamp())
        except HoldsUnavailable:
            return False  # write anyway: at worst one write more, never a use lost
        if not taken:
            self.rule.postpone(key, use, now + interval)
        return not taken

    async def _one(self, key: Key, use: Use) -> None:
        if self._written_elsewhere(key, use):
            token_metrics.USAGE_WRITES.labels("skipped").inc()
            return
        try:
            # A trust's status has no lastUsedIp: only the time is written.
            await self._write(key, use.status(with_address=key[0] != TRUSTS))
        except Exception as error:  # the API server away, the credential deleted: drop it
            token_metrics.USAGE_WRITES.labels("failed").inc()
            logger.warning(
                "Could not write the usage of %s %s/%s (%s).", *key, type(error).__name__
            )
            return
        token_metrics.USAGE_WRITES.labels("written").inc()
