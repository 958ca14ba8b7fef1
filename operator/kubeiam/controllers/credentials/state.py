"""What the credentials controller keeps in memory: the indices' views, the schedule, the audit,
per-account and per-credential locks. Fed by kopf's indices; holds no rule of its own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import kopf

from kubeiam.controllers.credentials.views import IssuedSecret
from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.domain.conditions import parse_time
from kubeiam.domain.credentials import State
from kubeiam.kube import metrics, peering
from kubeiam.kube.audit import Audit
from kubeiam.kube.indices import Index
from kubeiam.kube.key_secret import KeyRing
from kubeiam.kube.scheduler import Scheduler

KIND = "ServiceAccountCredential"
AccountKey = tuple[str, str]  # (namespace, account name)
ScheduleKey = tuple[str, str, str, str]  # (what, namespace, name, uid)
# A level-triggered safety net: a nudge lost to an error (an event handler is not retried) is
# picked up within this interval, from memory, at no API cost when nothing waits.
SWEEP: ScheduleKey = ("sweep", "", "", "")
SWEEP_INTERVAL = datetime.timedelta(seconds=30)
# Secrets are not watched: a watch needs list and watch on every Secret in the cluster, which
# RBAC cannot narrow to kube-iam's, and which would hand the operator every Secret's data. An
# audit asks instead: one metadata-only GET per Active credential, paced by domain/audit_pace.py
# (a budget of checks a minute at rest, settings.secret_audit). These two set the hurried pace,
# after a start, a credential's deletion or a finding: AUDIT_RATE checks a second at most, a
# full pass in no less than AUDIT_MIN_PASS seconds (docs/credentials.md gives the bounds).
AUDIT_RATE = 20.0
AUDIT_MIN_PASS = 10.0


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Runtime:
    """The process-wide pieces the handlers share. What to do when scheduled work is due and how
    to audit one Secret are handed to `start` by the handlers: this module imports neither."""

    def __init__(self) -> None:
        self.credentials: Index[AccountKey, rules.CredentialView] | None = None
        self.issued: Index[tuple[str, str], IssuedSecret] | None = None
        self.ledgers: Index[AccountKey, frozenset[str]] | None = None
        self.roles: Index[AccountKey, tuple[str, ...]] | None = None
        self.account_uids: Index[AccountKey, str] | None = None
        # The key that proves which Secrets kube-iam wrote, loaded (or created) at start.
        self.keys: KeyRing | None = None
        self._on_due: Callable[[ScheduleKey], Awaitable[None]] | None = None
        self._on_audit: Callable[[IssuedSecret], Awaitable[None]] | None = None
        self.scheduler: Scheduler[ScheduleKey] = Scheduler(self._due)
        self.audit = Audit(
            "Secret",
            lambda: self.secrets_to_audit(),
            self._audited,
            rate=AUDIT_RATE,
            min_pass=AUDIT_MIN_PASS,
        )
        # Ended credentials whose Secret this process has seen to (deleted, or found gone).
        self.cleaned: set[str] = set()
        self.locks: dict[AccountKey, asyncio.Lock] = {}
        # One reconcile of a credential at a time in this process: its own handler and an
        # admitter issuing it would otherwise both generate, create (409) and write (Conflict).
        self.handling: dict[str, asyncio.Lock] = {}
        self.tasks_in_flight: set[asyncio.Task[None]] = set()
        self.tasks: list[asyncio.Task[None]] = []

    def start(
        self,
        indices: Mapping[str, Any],
        *,
        on_due: Callable[[ScheduleKey], Awaitable[None]],
        on_audit: Callable[[IssuedSecret], Awaitable[None]],
    ) -> None:
        """Keep the indices (kube/indices.py), given by the index functions' names, and the
        work to do when a schedule is due or a Secret is audited."""
        self.credentials = indices["credentials_by_account"]
        self.issued = indices["issued_secrets"]
        self.ledgers = indices["ledgers_by_account"]
        self.roles = indices["roles_by_account"]
        self.account_uids = indices["uids_by_account"]
        self._on_due, self._on_audit = on_due, on_audit

    async def _due(self, key: ScheduleKey) -> None:
        if self._on_due is not None:
            await self._on_due(key)

    async def _audited(self, target: IssuedSecret) -> None:
        if self._on_audit is not None:
            await self._on_audit(target)

    def ensure_background(self) -> None:
        """Start the schedule and the Secret audit from within a handler: their tasks then
        inherit kopf's context, which `kopf.event` needs to post events from them."""
        if not self.tasks or any(task.done() for task in self.tasks):
            self.stop_background()
            self.tasks = [
                asyncio.create_task(self.scheduler.run(), name="kube-iam schedule"),
                asyncio.create_task(self.audit.run(), name="kube-iam Secret audit"),
            ]
            self.scheduler.schedule(SWEEP, now() + SWEEP_INTERVAL)

    def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    def spawn(self, work: Awaitable[None]) -> None:
        """Run `work` beside the caller, kept referenced until it is done."""
        task = asyncio.ensure_future(work)
        self.tasks_in_flight.add(task)
        task.add_done_callback(self.tasks_in_flight.discard)

    def secrets_to_audit(self) -> list[IssuedSecret]:
        """Every Active credential's Secret, then (once per process) the Secret of every ended
        credential whose policy deletes it: its deletion may have been cut short by a crash."""
        if self.issued is None or peering.paused():
            return []
        targets = [target for key in self.issued for target in self.issued[key]]
        self.cleaned &= {target.uid for target in targets}
        active = [target for target in targets if not target.ended]
        leftover = [
            target
            for target in targets
            if target.ended and target.deletes_secret and target.uid not in self.cleaned
        ]
        return active + leftover

    def ledger_uids(self, key: AccountKey) -> list[frozenset[str]]:
        if self.ledgers is None or key not in self.ledgers:
            return []
        return list(self.ledgers[key])

    def accounts_to_sweep(self, limit: int) -> list[AccountKey]:
        """Accounts whose waiting credentials may have a slot by now (domain/upkeep says which)."""
        if self.credentials is None:
            return []
        return [
            key
            for key in self.credentials
            if upkeep.needs_sweep(list(self.credentials[key]), self.ledger_uids(key), limit)
        ]

    def all_views(self) -> Iterator[rules.CredentialView]:
        if self.credentials is None:
            return
        for key in self.credentials:
            yield from self.credentials[key]

    def count_by_state(self) -> Iterator[metrics.Sample]:
        """Credentials by state, as `kubectl get iamcred` shows them; New: no status yet."""
        counts = dict.fromkeys(["New", *State], 0)
        for view in self.all_views():
            state = view.state or "New"
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            yield (state,), float(count)

    def expiries(self) -> Iterator[metrics.Sample]:
        """Each credential that has not ended, at the expiry its status records."""
        for view in self.all_views():
            if view.expires_at and not view.ended:
                yield (
                    (view.namespace, view.name, view.account),
                    parse_time(view.expires_at).timestamp(),
                )

    def lock(self, key: AccountKey) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def handling_of(self, uid: str) -> AsyncIterator[bool]:
        """Hold the credential for one reconcile; yields whether another had it first (the
        body read before is then stale). The lock is forgotten once nobody waits on it."""
        lock = self.handling.setdefault(uid, asyncio.Lock())
        contended = lock.locked()
        try:
            async with lock:
                yield contended
        finally:
            if not lock.locked() and self.handling.get(uid) is lock:
                del self.handling[uid]

    def stale_roles(
        self, keys: Iterable[AccountKey] | None = None
    ) -> list[tuple[rules.CredentialView, list[str]]]:
        """Issued credentials whose effectiveRoles no longer follow their account's roles."""
        if self.credentials is None or self.roles is None:
            return []
        stale = []
        for key in self.credentials if keys is None else keys:
            if key not in self.credentials or key not in self.roles:
                continue
            roles = next(iter(self.roles[key]), ())
            account_uid = self.account_uid(key)
            # One issued for a replaced account ends (triggers.py); it never takes new roles.
            views = [v for v in self.credentials[key] if not v.issued_for_another(account_uid)]
            stale += upkeep.stale_roles(views, roles)
        return stale

    def account_uid(self, key: AccountKey) -> str | None:
        if self.account_uids is None or key not in self.account_uids:
            return None
        return next(iter(self.account_uids[key]), None)

    def issued_for_replaced_accounts(self) -> list[rules.CredentialView]:
        """Credentials still Active that were issued for an account since replaced."""
        if self.credentials is None:
            return []
        return [
            view
            for key in self.credentials
            for view in self.credentials[key]
            if view.issued_for_another(self.account_uid(key))
        ]

    def proof_keys(self) -> KeyRing:
        if self.keys is None:
            raise kopf.TemporaryError("The proof key is not loaded yet.", delay=1)
        return self.keys

    def may_hold_slot(self, key: AccountKey, uid: str) -> bool:
        """False only when the account's ledger, as last seen, does not name the credential."""
        if self.ledgers is None or key not in self.ledgers:
            return True
        return any(uid in ledger for ledger in self.ledgers[key])

    def views(self, key: AccountKey) -> list[rules.CredentialView]:
        if self.credentials is None or key not in self.credentials:
            return []
        return list(self.credentials[key])


runtime = Runtime()

metrics.gauge_from_memory(
    "kubeiam_credentials",
    "Credentials by state (New: not handled yet), from this replica's watch.",
    ["state"],
    runtime.count_by_state,
)
metrics.gauge_from_memory(
    "kubeiam_credential_expiry_timestamp_seconds",
    "When each credential that has not ended expires (Unix time), for alerts ahead of it. One "
    "series per credential: the only metric whose series grow with the number of objects.",
    ["namespace", "name", "account"],
    runtime.expiries,
)
