"""The issuers' keys as last checked: one fetch per issuer however many trusts name it, refreshed
on a schedule that honours Cache-Control and backs off while an issuer is down."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kubeiam.domain.conditions import Reason
from kubeiam.domain.trusts import IssuerCheck, Problem
from kubeiam.oidc.fetch import IssuerDocuments, IssuerError, fetch_issuer
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.jwks import JwksError, KeySet, parse_jwks
from kubeiam.oidc.refresh import next_check

logger = logging.getLogger(__name__)

# An issuer is named by its URL and, when a trust overrides discovery, the JWKS URL it gives.
IssuerKey = tuple[str, str | None]
Fetch = Callable[..., Awaitable[IssuerDocuments]]
Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Schedule:
    """How often issuers are checked: the refresh bounds and the backoff after failures."""

    refresh_min: datetime.timedelta
    refresh_max: datetime.timedelta
    retry_min: datetime.timedelta
    retry_max: datetime.timedelta


@dataclass
class _Entry:
    check: IssuerCheck | None = None
    keys: KeySet | None = None
    failures: int = 0
    due: datetime.datetime | None = None
    users: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyStore:
    """Issuer checks shared by every trust, and one task that refreshes them when due.

    Only issuers some trust still uses are refreshed; `on_refreshed` is called after each
    refresh so the trusts of that issuer can bring their status up to date.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        schedule: Schedule,
        *,
        max_keys: int,
        on_refreshed: Callable[[IssuerKey], Awaitable[None]],
        concurrency: int,
        fetch: Fetch = fetch_issuer,
        clock: Clock = _utcnow,
    ) -> None:
        self._policy = policy
        # Fetches in flight at once, first checks and refreshes alike: a slow issuer holds one
        # slot for up to the read timeout, never the others' turn.
        self._slots = asyncio.Semaphore(concurrency)
        self._schedule = schedule
        self._max_keys = max_keys
        self._on_refreshed = on_refreshed
        self._fetch = fetch
        self._clock = clock
        self._entries: dict[IssuerKey, _Entry] = {}
        self._heap: list[tuple[datetime.datetime, IssuerKey]] = []
        self._wake = asyncio.Event()

    async def check(self, key: IssuerKey, user: str) -> tuple[IssuerCheck, KeySet | None]:
        """The issuer's last check, made now if there is none yet; `user` is kept as one of the
        issuer's users until `release`d, so the issuer goes on being refreshed."""
        entry = self._entries.setdefault(key, _Entry())
        entry.users.add(user)
        async with entry.lock:
            if entry.check is None:
                await self._refresh(key, entry)
        assert entry.check is not None
        return entry.check, entry.keys

    def release(self, user: str, *, keep: IssuerKey | None = None) -> None:
        """`user` no longer needs any issuer but `keep`: issuers nobody uses stop being polled."""
        for key, entry in list(self._entries.items()):
            if key != keep:
                entry.users.discard(user)
                if not entry.users and not entry.lock.locked():
                    del self._entries[key]

    def parse_inline(
        self, document: object, *, now: datetime.datetime
    ) -> tuple[IssuerCheck, KeySet | None]:
        """Keys given in the trust itself (spec.jwks), checked the way fetched ones are."""
        try:
            keys = parse_jwks(document, max_keys=self._max_keys, source="spec.jwks")
        except JwksError as error:
            return IssuerCheck(checked_at=now, problem=Problem(error.reason, error.message)), None
        return IssuerCheck(checked_at=now, key_ids=keys.key_ids), keys

    async def run(self) -> None:
        """Refresh each issuer when it is due, forever; issuers are refreshed side by side, so
        one that answers slowly delays only itself."""
        refreshing: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    due, key = heapq.heappop(self._heap)
                    entry = self._entries.get(key)
                    if entry is None or entry.due != due:
                        continue  # forgotten, or rescheduled since
                    entry.due = None  # taken: _refresh schedules the next check
                    task = asyncio.create_task(self._refresh_due(key, entry))
                    refreshing.add(task)
                    task.add_done_callback(refreshing.discard)
                delay = (self._heap[0][0] - now).total_seconds() if self._heap else 3600.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.05))
        finally:
            for task in refreshing:
                task.cancel()

    async def _refresh_due(self, key: IssuerKey, entry: _Entry) -> None:
        async with entry.lock:
            await self._refresh(key, entry)
        try:
            await self._on_refreshed(key)
        except Exception:
            logger.exception("Updating the trusts of %s after a refresh failed", key[0])

    async def _refresh(self, key: IssuerKey, entry: _Entry) -> None:
        issuer, jwks_uri = key
        now = self._clock()
        max_age: datetime.timedelta | None = None
        try:
            async with self._slots:
                documents = await self._fetch(issuer, jwks_uri=jwks_uri, policy=self._policy)
            max_age = documents.max_age
            source = documents.jwks_uri
            keys = parse_jwks(documents.jwks, max_keys=self._max_keys, source=source)
        except (IssuerError, JwksError) as error:
            entry.failures += 1
            entry.check = IssuerCheck(checked_at=now, problem=Problem(error.reason, error.message))
            logger.warning("Checking issuer %s failed: %s", issuer, error.message)
        except Exception as error:  # never let one issuer's surprise stop the schedule
            entry.failures += 1
            message = f"Checking the issuer {issuer} failed unexpectedly ({type(error).__name__})."
            entry.check = IssuerCheck(
                checked_at=now, problem=Problem(Reason.ISSUER_UNREACHABLE, message)
            )
            logger.exception("Checking issuer %s failed unexpectedly", issuer)
        else:
            if entry.keys is not None and entry.keys.key_ids != keys.key_ids:
                logger.info("Issuer %s rotated its keys: %s", issuer, ", ".join(keys.key_ids))
            entry.failures = 0
            entry.keys = keys
            entry.check = IssuerCheck(checked_at=now, key_ids=keys.key_ids)
        if entry.check.problem is not None:
            entry.keys = None
        entry.due = next_check(
            now,
            ok=entry.check.problem is None,
            max_age=max_age,
            failures=entry.failures,
            refresh_min=self._schedule.refresh_min,
            refresh_max=self._schedule.refresh_max,
            retry_min=self._schedule.retry_min,
            retry_max=self._schedule.retry_max,
        )
        heapq.heappush(self._heap, (entry.due, key))
        self._wake.set()
