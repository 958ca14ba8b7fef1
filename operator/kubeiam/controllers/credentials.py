"""ServiceAccountCredential controller: admission under the active limit, exactly-once issuance,
expiry and revocation.

Every path funnels into `reconcile`, which reads the credential, asks domain/ for the next step
and performs it. Writes that could race another operator process are compare-and-swaps on the
API server: the credential's status, and the ledger of active slots in its account's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from kubeiam.api import ServiceAccountCredential
from kubeiam.domain import credentials as rules
from kubeiam.domain.admission import with_created_by
from kubeiam.domain.conditions import READY, Reason, format_time, observed_status
from kubeiam.domain.credentials import State
from kubeiam.domain.limit import Contender, LedgerEntry, plan_admission
from kubeiam.domain.secret_format import credential_id
from kubeiam.kube import api, events, faults, metrics, ownership, peering
from kubeiam.kube.audit import Audit
from kubeiam.kube.logs import about
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, VERSION
from kubeiam.kube.scheduler import Scheduler
from kubeiam.kube.secrets import (
    SecretRequest,
    Taken,
    delete_owned,
    secret_state,
    write_once,
)
from kubeiam.settings import Settings, get_settings

logger = logging.getLogger(__name__)

KIND = "ServiceAccountCredential"
AccountKey = tuple[str, str]  # (namespace, account name)
ScheduleKey = tuple[str, str, str, str]  # (what, namespace, name, uid)
_LEDGER_ATTEMPTS = 20
# A level-triggered safety net: a nudge lost to an error (an event handler is not retried) is
# picked up within this interval, from memory, at no API cost when nothing waits.
SWEEP: ScheduleKey = ("sweep", "", "", "")
SWEEP_INTERVAL = datetime.timedelta(seconds=30)
# How soon an admitted credential whose Secret the API server refused (a quota, a policy) tries
# again; its Ready condition says why meanwhile.
SECRET_RETRY = 10.0
# Secrets are not watched: a watch needs list and watch on every Secret in the cluster, which
# RBAC cannot narrow to kube-iam's, and which would hand the operator every Secret's data. An
# audit asks instead: one metadata-only GET per Active credential, AUDIT_RATE a second at most,
# a full pass at most every AUDIT_MIN_PASS seconds. A deleted Secret is reported within
# max(AUDIT_MIN_PASS, Active credentials / AUDIT_RATE) seconds (10s up to 200 credentials,
# 50s for 1,000), and the API server's load stays bounded however many there are.
AUDIT_RATE = 20.0
AUDIT_MIN_PASS = 10.0
# While kopf's peering pauses this replica, the active one does the work: scheduled work is
# looked at again this often, and done here only if this replica is active again by then.
PAUSED_RECHECK = datetime.timedelta(seconds=5)

ISSUANCE_SECONDS = metrics.histogram(
    "kubeiam_credential_issuance_seconds",
    "From a credential's creation (creationTimestamp, whole seconds) to its Secret written "
    "and its status Active. waited: whether it was Pending first (no slot, account missing or "
    "disabled), which then counts in the time.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600, 86400),
    labels=["waited"],
)
SWEEPS = metrics.counter(
    "kubeiam_credential_sweeps",
    "Completed sweeps over accounts whose waiting credentials may have a slot by now.",
)
EXPIRY_LATENESS_SECONDS = metrics.histogram(
    "kubeiam_credential_expiry_lateness_seconds",
    "From a credential's expiry to its status saying Expired.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)


@dataclass(frozen=True)
class IssuedSecret:
    """What the Secret audit needs of one issued credential (an index value; never the data)."""

    namespace: str
    credential: str
    uid: str
    secret_name: str
    ended: bool
    deletes_secret: bool
    reported_deleted: bool


class _Runtime:
    """The process-wide pieces the handlers share: indices, the schedule, per-account locks."""

    def __init__(self) -> None:
        self.credentials: kopf.Index[AccountKey, rules.CredentialView] | None = None
        self.issued: kopf.Index[tuple[str, str], IssuedSecret] | None = None
        self.ledgers: kopf.Index[AccountKey, frozenset[str]] | None = None
        self.roles: kopf.Index[AccountKey, tuple[str, ...]] | None = None
        self.scheduler: Scheduler[ScheduleKey] = Scheduler(lambda key: _scheduled(key))
        self.audit = Audit(
            "Secret",
            lambda: self.secrets_to_audit(),
            lambda target: _audit_secret_counted(target),
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

    def ensure_background(self) -> None:
        """Start the schedule and the Secret audit from within a handler: their tasks then
        inherit kopf's context, which `kopf.event` needs to post events from them."""
        if not self.tasks or any(task.done() for task in self.tasks):
            self.stop_background()
            self.tasks = [
                asyncio.create_task(self.scheduler.run(), name="kube-iam schedule"),
                asyncio.create_task(self.audit.run(), name="kube-iam Secret audit"),
            ]
            self.scheduler.schedule(SWEEP, _now() + SWEEP_INTERVAL)

    def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks = []

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

    def accounts_to_sweep(self, limit: int) -> list[AccountKey]:
        """Accounts with waiting credentials whose ledger, as last seen, has room, or names
        one of them (admitted, not issued: its admitter may have died)."""
        if self.credentials is None:
            return []
        found = []
        for key in self.credentials:
            views = list(self.credentials[key])
            waiting = {view.uid for view in views if view.waiting}
            live = {view.uid for view in views if not view.ended}
            ledgers = list(self.ledgers[key]) if self.ledgers and key in self.ledgers else []
            for ledger in ledgers:
                room = waiting and len(ledger) < limit
                if room or ledger & waiting or ledger - live:
                    found.append(key)
                    break
        return found

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
                expires_at = datetime.datetime.fromisoformat(view.expires_at.replace("Z", "+00:00"))
                yield (view.namespace, view.name, view.account), expires_at.timestamp()

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
            for view in self.credentials[key]:
                wanted = rules.effective_roles(roles, view.scoped_roles)
                if view.issued and not view.ended and list(view.effective_roles) != wanted:
                    stale.append((view, wanted))
        return stale

    def may_hold_slot(self, key: AccountKey, uid: str) -> bool:
        """False only when the account's ledger, as last seen, does not name the credential."""
        if self.ledgers is None or key not in self.ledgers:
            return True
        return any(uid in ledger for ledger in self.ledgers[key])

    def views(self, key: AccountKey) -> list[rules.CredentialView]:
        if self.credentials is None or key not in self.credentials:
            return []
        return list(self.credentials[key])


_runtime = _Runtime()

metrics.gauge_from_memory(
    "kubeiam_credentials",
    "Credentials by state (New: not handled yet), from this replica's watch.",
    ["state"],
    _runtime.count_by_state,
)
metrics.gauge_from_memory(
    "kubeiam_credential_expiry_timestamp_seconds",
    "When each credential that has not ended expires (Unix time), for alerts ahead of it. One "
    "series per credential: the only metric whose series grow with the number of objects.",
    ["namespace", "name", "account"],
    _runtime.expiries,
)


def _policy(settings: Settings) -> rules.Policy:
    return rules.Policy(
        default_lifetime=settings.credentials.default_credential_lifetime,
        max_lifetime=settings.credentials.max_credential_lifetime,
        secret_deletion_policy=settings.credentials.secret_deletion_policy,
        max_active=settings.credentials.max_active_credentials,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _view(body: Mapping[str, Any]) -> rules.CredentialView:
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return rules.CredentialView(
        namespace=metadata["namespace"],
        name=metadata["name"],
        uid=metadata["uid"],
        account=spec.get("serviceAccountName", ""),
        created_at=metadata.get("creationTimestamp", ""),
        state=status.get("state"),
        revoked=bool(spec.get("revoked")),
        issued=bool(status.get("secretHash")),
        expires_at=status.get("expiresAt"),
        scoped_roles=None if spec.get("scopedRoles") is None else tuple(spec["scopedRoles"]),
        effective_roles=tuple(status.get("effectiveRoles") or ()),
        reason=rules.ready_reason(status),
        warned=rules.has_condition(status, rules.EXPIRING_SOON),
    )


# -- indices: what the operator keeps in memory, rebuilt from the initial list at start -------


@kopf.index(GROUP, VERSION, CREDENTIALS)
async def credentials_by_account(
    body: kopf.Body, **_: Any
) -> dict[AccountKey, rules.CredentialView]:
    """Every credential by its account; also feeds the expiry schedule from the watch."""
    _runtime.ensure_background()
    view = _view(body)
    _track_expiry(view)
    return {(view.namespace, view.account): view}


@kopf.index(GROUP, VERSION, CREDENTIALS)
def issued_secrets(body: kopf.Body, **_: Any) -> dict[tuple[str, str], IssuedSecret]:
    """The Secret of every issued credential, by the credential's namespace and name."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    if not status.get("secretHash"):
        return {}
    target = IssuedSecret(
        namespace=metadata["namespace"],
        credential=metadata["name"],
        uid=metadata["uid"],
        secret_name=_secret_name(metadata, spec, status),
        ended=_view(body).ended,
        deletes_secret=_deletion_policy(spec, status) == "Delete",
        reported_deleted=rules.ready_reason(status) == Reason.SECRET_DELETED,
    )
    return {(target.namespace, target.credential): target}


@kopf.index(GROUP, VERSION, SERVICE_ACCOUNTS)
def ledgers_by_account(body: kopf.Body, **_: Any) -> dict[AccountKey, frozenset[str]]:
    """The UIDs of the credentials holding a slot, by account."""
    status: Mapping[str, Any] = body.get("status") or {}
    ledger = status.get("activeCredentials") or []
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return {key: frozenset(entry.get("uid", "") for entry in ledger)}


@kopf.index(GROUP, VERSION, SERVICE_ACCOUNTS)
def roles_by_account(body: kopf.Body, **_: Any) -> dict[AccountKey, tuple[str, ...]]:
    """The roles of every account, which its credentials' effectiveRoles must follow."""
    spec: Mapping[str, Any] = body.get("spec") or {}
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return {key: tuple(spec.get("roles") or ())}


def _track_expiry(view: rules.CredentialView) -> None:
    """Issued credentials are scheduled from here; waiting ones by `reconcile`."""
    keys = (
        ("expire", view.namespace, view.name, view.uid),
        ("warn", view.namespace, view.name, view.uid),
    )
    if view.ended:
        for key in keys:
            _runtime.scheduler.cancel(key)
        return
    if not view.expires_at:
        return
    expires_at = datetime.datetime.fromisoformat(view.expires_at.replace("Z", "+00:00"))
    _runtime.scheduler.schedule(keys[0], expires_at)
    if view.warned:
        _runtime.scheduler.cancel(keys[1])
        return
    warn_at = rules.warning_time(expires_at, get_settings().credentials.expiry_warning_lead)
    _runtime.scheduler.schedule(keys[1], max(warn_at, _now()))


# -- lifecycle of the process -----------------------------------------------------------------


@kopf.on.startup()
async def start(**kwargs: Any) -> None:
    """Connect the API client, keep the (still filling) indices, start the schedule."""
    api.connect()
    # kopf hands every index to every handler by its function's name.
    _runtime.credentials = kwargs["credentials_by_account"]
    _runtime.issued = kwargs["issued_secrets"]
    _runtime.ledgers = kwargs["ledgers_by_account"]
    _runtime.roles = kwargs["roles_by_account"]


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    _runtime.stop_background()


# -- handlers ---------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, CREDENTIALS)
@kopf.on.create(GROUP, VERSION, CREDENTIALS)
@kopf.on.update(GROUP, VERSION, CREDENTIALS, field="spec")
@metrics.counts_errors(KIND)
async def reconcile_credential(body: kopf.Body, reason: str, **_: Any) -> None:
    # At start every credential is resumed at once: its Secret is left to the paced audit
    # rather than read by all of them in one burst.
    await reconcile_until_settled(dict(body), read_secret=reason != kopf.Reason.RESUME)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


# Filtered before kopf invokes it: every other event of every credential would otherwise be a
# handler call and a log line (a burst's events cost the event loop that much more).
@kopf.on.event(GROUP, VERSION, CREDENTIALS, when=_deleted)
@metrics.counts_errors(KIND)
async def credential_gone(event: kopf.RawEvent, **_: Any) -> None:
    """A deleted credential frees its slot at once; its Secret goes with it (owner reference)."""
    if event["type"] != "DELETED":
        return
    view = _view(cast(Mapping[str, Any], event["object"]))
    await settle_account((view.namespace, view.account), ended={view.uid})


@kopf.on.event(GROUP, VERSION, SERVICE_ACCOUNTS)
@metrics.counts_errors("ServiceAccount")
async def account_changed(event: kopf.RawEvent, **_: Any) -> None:
    """An account that appears, is enabled or changes roles may move its credentials on."""
    if event["type"] not in ("ADDED", "MODIFIED"):
        return
    account = event["object"]
    key = (account["metadata"]["namespace"], account["metadata"]["name"])
    status = account.get("status") or {}
    views = _runtime.views(key)
    ledger = status.get("activeCredentials") or []
    count_true = status.get("activeCredentialCount") == len(ledger)
    waiting = [v for v in views if v.waiting]
    holders: set[str] = set()
    if waiting or not count_true:
        holders = await settle_account(key)
    # Waiting credentials whose condition names the account's old state say the new one.
    disabled = bool((account.get("spec") or {}).get("disabled"))
    stale = {Reason.ACCOUNT_MISSING} | (set() if disabled else {Reason.ACCOUNT_DISABLED})
    for view in waiting:
        outdated = view.reason in stale or (disabled and view.reason != Reason.ACCOUNT_DISABLED)
        if outdated and view.uid not in holders:
            await _reconcile_by_name(view)
    # The role index already holds this event's roles: kopf indexes before it calls handlers.
    for view, roles in _runtime.stale_roles([key]):
        await _refresh_roles(view, roles)


@metrics.counts_errors(KIND)
async def _audit_secret_counted(target: IssuedSecret) -> None:
    await _audit_secret(target)


async def _audit_secret(target: IssuedSecret) -> None:
    """One metadata GET: is the Secret where the credential's condition says it is?

    A deleted Secret is not re-created, but its credential's condition must say so; an ended
    credential's Secret that its policy deletes and that is still there is deleted.
    """
    if target.ended:
        if target.uid not in _runtime.cleaned:
            await _remove_secret(
                target.namespace, target.credential, target.uid, target.secret_name
            )
        return
    present = await secret_state(target.namespace, target.secret_name, target.uid) == "present"
    if present != target.reported_deleted:
        return
    body = await api.get_credential(target.namespace, target.credential)
    if body is not None and body["metadata"]["uid"] == target.uid:
        await reconcile_until_settled(body)


# -- the reconciler ---------------------------------------------------------------------------


async def reconcile_until_settled(
    body: Mapping[str, Any],
    *,
    attempts: int = 5,
    read_secret: bool = True,
    account: Mapping[str, Any] | None = None,
) -> None:
    """Reconcile; when another writer got there first, read the credential again and retry.

    Without `read_secret`, an issued credential's Secret is taken to be as its status says
    (the audit checks it soon); with it, one metadata GET checks. `account`, if given, is the
    account as just read or written; a retry reads it again.
    """
    metadata = body["metadata"]
    async with _runtime.handling_of(metadata["uid"]) as waited:
        for attempt in range(attempts):
            if attempt or waited:
                # Another writer (or this process's other reconcile) got there first.
                account = None
                fresh = await api.get_credential(metadata["namespace"], metadata["name"])
                if fresh is None or fresh["metadata"]["uid"] != metadata["uid"]:
                    return
                body = fresh
            try:
                await reconcile(body, read_secret=read_secret, account=account)
                return
            except api.Gone:
                return
            except api.Conflict:
                continue
    raise kopf.TemporaryError("The credential kept changing while it was handled.", delay=1)


async def reconcile(
    body: Mapping[str, Any],
    *,
    read_secret: bool = True,
    account: Mapping[str, Any] | None = None,
) -> None:
    """Bring one credential one step closer to where its spec and the world say it should be.

    `account` spares the read of the account when the caller has it fresh: the ledger write
    that admitted this credential returned it. Every write that depends on it is a
    compare-and-swap, so a stale copy costs a retry, never a wrong write.
    """
    settings = get_settings()
    credential = ServiceAccountCredential.model_validate(body)
    metadata = body["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = credential.spec
    account_key = (namespace, spec.service_account_name)
    account_body = None
    facts = _facts(body, credential, None, holds_slot=False)
    step = rules.decide(facts, _policy(settings))
    if isinstance(step, rules.Admit | rules.Issue | rules.Wait):
        # Only now is the account needed: a settled credential costs no read at start-up.
        account_body = (
            dict(account)
            if account is not None
            else await api.get_account(namespace, spec.service_account_name)
        )
        if account_body is not None:
            body = await ownership.ensure_owned_by_account(CREDENTIALS, body, account_body)
            faults.crash_point("after-owner-reference")
        holds = _holds_slot(account_body, uid)
        facts = _facts(body, credential, account_body, holds_slot=holds)
        step = rules.decide(facts, _policy(settings))

    if isinstance(step, rules.Wait | rules.Admit):
        # A waiting credential still expires on time, without ever being issued.
        expiry = rules.resolved_expiry(facts, _policy(settings))
        if expiry is not None:
            _runtime.scheduler.schedule(("expire", namespace, name, uid), expiry)
    if isinstance(step, rules.Settled):
        status = body.get("status") or {}
        body = await _write_status(body, observed_status(status, facts.generation))
        await _finish_ended(body, just_ended=False, read_secret=read_secret)
        return
    if isinstance(step, rules.End):
        due = rules.resolved_expiry(facts, _policy(settings))
        await _end(body, step.state, step.reason, step.message, expired_at=due)
        return
    if isinstance(step, rules.Fail):
        await _end(body, State.FAILED, step.reason, step.message)
        return
    if isinstance(step, rules.KeepActive):
        await _keep_active(body, read_secret=read_secret)
        return
    if isinstance(step, rules.Wait):
        await _write_pending(body, step.reason, step.message)
        return
    if isinstance(step, rules.Admit):
        holders, latest = await _settle(account_key, issue_except=uid, account=account_body)
        if uid in holders:
            # Admitted: issue now, with the account as the ledger write returned it. The
            # credential is as read (the ledger lives on the account); if it changed meanwhile,
            # the status write meets a Conflict and the credential is read again.
            if latest is not None:
                await reconcile(body, account=latest)
            return
        message = rules.limit_message(settings.credentials.max_active_credentials)
        await _write_pending(body, Reason.LIMIT_EXCEEDED, message)
        return
    if isinstance(step, rules.Issue):
        assert account_body is not None
        await _issue(body, credential, account_body, step.expires_at, settings)


def _facts(
    body: Mapping[str, Any],
    credential: ServiceAccountCredential,
    account_body: Mapping[str, Any] | None,
    *,
    holds_slot: bool,
) -> rules.CredentialFacts:
    metadata = body["metadata"]
    account = None
    if account_body is not None:
        account_spec = account_body.get("spec") or {}
        account = rules.Account(
            uid=account_body["metadata"]["uid"],
            client_id=(account_body.get("status") or {}).get("clientId"),
            disabled=bool(account_spec.get("disabled")),
            roles=tuple(account_spec.get("roles") or ()),
            holds_slot=holds_slot,
        )
    spec = credential.spec
    return rules.CredentialFacts(
        name=metadata["name"],
        uid=metadata["uid"],
        generation=int(metadata.get("generation", 1)),
        created_at=datetime.datetime.fromisoformat(
            metadata["creationTimestamp"].replace("Z", "+00:00")
        ),
        revoked=bool(spec.revoked),
        expires_at=spec.expires_at,
        expires_in=spec.expires_in,
        status=body.get("status") or {},
        account=account,
        account_name=spec.service_account_name,
        now=_now(),
    )


def _holds_slot(account_body: Mapping[str, Any] | None, uid: str) -> bool:
    if account_body is None:
        return False
    ledger = (account_body.get("status") or {}).get("activeCredentials") or []
    return any(entry.get("uid") == uid for entry in ledger)


async def _write_status(body: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """CAS-write what differs; `api.Conflict` if the credential changed since `body`."""
    current = body.get("status") or {}
    # The first write of a credential's status also records who created it.
    desired = with_created_by(desired, body["metadata"].get("annotations"), current)
    desired["displayName"] = rules.display_name(body.get("spec") or {}, body["metadata"]["name"])
    changes = {k: v for k, v in desired.items() if current.get(k) != v}
    if not changes:
        return dict(body)
    metadata = body["metadata"]
    return await api.patch_status(
        CREDENTIALS,
        metadata["namespace"],
        metadata["name"],
        metadata["resourceVersion"],
        changes,
    )


async def _write_pending(body: Mapping[str, Any], reason: Reason, message: str) -> None:
    metadata = body["metadata"]
    status = body.get("status") or {}
    new = rules.pending_status(
        status,
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        reason=reason,
        message=message,
        now=_now(),
    )
    previous_reason = rules.ready_reason(status)
    written = await _write_status(body, new)
    if previous_reason != str(reason):
        events.post(written, "Normal", str(reason), message)


async def _issue(
    body: Mapping[str, Any],
    credential: ServiceAccountCredential,
    account_body: Mapping[str, Any],
    expires_at: datetime.datetime,
    settings: Settings,
) -> None:
    metadata = body["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    spec = credential.spec
    account_status = account_body.get("status") or {}
    client_id = account_status.get("clientId")
    if not client_id:
        raise kopf.TemporaryError("The account has no client id yet.", delay=1)
    template = spec.secret_template
    secret_name = spec.secret_name or name
    request = SecretRequest(
        namespace=namespace,
        name=secret_name,
        credential=name,
        credential_uid=uid,
        credential_id=credential_id(uid),
        account=spec.service_account_name,
        client_id=client_id,
        token_url=settings.credentials.token_url,
        expires_at=expires_at,
        keys=(template.keys.resolved() if template and template.keys else _default_keys()),
        labels=(template.labels or {}) if template else {},
        annotations=(template.annotations or {}) if template else {},
    )
    try:
        outcome = await write_once(request)
    except api.Refused as refusal:
        if refusal.status >= 500 or refusal.status == http.HTTPStatus.TOO_MANY_REQUESTS:
            raise  # the API server's own trouble: retried with kopf's backoff, not reported
        message = rules.secret_refused_message(secret_name, _status_line(refusal), SECRET_RETRY)
        await _write_pending(body, Reason.SECRET_REFUSED, message)
        raise SecretRefusedError(refusal.status) from None
    if isinstance(outcome, Taken):
        message = (
            f"Secret {secret_name!r} already exists and belongs to {outcome.owner}; it is left "
            "untouched. Choose another spec.secretName (a new credential) or remove that Secret."
        )
        await _end(body, State.FAILED, Reason.SECRET_CONFLICT, message)
        return
    faults.crash_point("after-secret-created")
    issuance = rules.Issuance(
        credential_id=request.credential_id,
        client_id=client_id,
        secret_name=secret_name,
        secret_hash=outcome.secret_hash,
        expires_at=expires_at,
        effective_roles=rules.effective_roles(
            (account_body.get("spec") or {}).get("roles") or [], spec.scoped_roles
        ),
        deletion_policy=str(
            spec.secret_deletion_policy or settings.credentials.secret_deletion_policy
        ),
    )
    new, warned = rules.issued_status(
        body.get("status") or {},
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        issuance=issuance,
        warning_lead=settings.credentials.expiry_warning_lead,
        now=_now(),
    )
    written = await _write_status(body, new)
    faults.crash_point("after-status-written")
    waited = (body.get("status") or {}).get("state") == State.PENDING
    ISSUANCE_SECONDS.labels(waited=str(waited).lower()).observe(
        _seconds_since(metadata["creationTimestamp"])
    )
    events.post(
        written,
        "Normal",
        str(Reason.ISSUED),
        f"Issued; the client secret is in Secret {secret_name!r}, expiring at "
        f"{format_time(expires_at)}.",
    )
    if warned:
        _post_expiry_warning(written)
    _track_expiry(_view(written))


class SecretRefusedError(kopf.TemporaryError):
    """Retried by kopf after SECRET_RETRY; `status` labels it in the reconcile error metric."""

    def __init__(self, status: int) -> None:
        super().__init__(f"The API server refused the Secret (HTTP {status}).", delay=SECRET_RETRY)
        self.status = status


def _status_line(refusal: api.Refused) -> str:
    try:
        return f"HTTP {refusal.status} {http.HTTPStatus(refusal.status).phrase}"
    except ValueError:
        return f"HTTP {refusal.status}"


def _post_expiry_warning(body: Mapping[str, Any]) -> None:
    expires_at = (body.get("status") or {}).get("expiresAt")
    events.post(
        body,
        "Warning",
        str(Reason.EXPIRING_SOON),
        f"Expires at {expires_at}; create a new credential and rotate to it.",
    )


def _seconds_since(timestamp: str) -> float:
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return max(0.0, (_now() - then).total_seconds())


def _default_keys() -> dict[str, str]:
    from kubeiam.api.credential import DEFAULT_SECRET_KEYS

    return dict(DEFAULT_SECRET_KEYS)


async def _keep_active(body: Mapping[str, Any], *, read_secret: bool) -> None:
    """An issued credential: its Ready condition follows whether its Secret is still there."""
    metadata = body["metadata"]
    status = body.get("status") or {}
    generation = int(metadata.get("generation", 1))
    secret_name = status.get("secretName", "")
    if read_secret:
        present = await secret_state(metadata["namespace"], secret_name, metadata["uid"]) == (
            "present"
        )
    else:
        present = rules.ready_reason(status) != Reason.SECRET_DELETED
    if present:
        new = rules.issued_ready_status(status, generation=generation, now=_now())
    else:
        new = rules.secret_deleted_status(status, generation=generation, now=_now())
    was_ready = rules.has_condition(status, READY)
    written = await _write_status(body, new)
    if not present and was_ready:
        events.post(
            written,
            "Warning",
            str(Reason.SECRET_DELETED),
            f"Secret {status.get('secretName')!r} was deleted; it is not re-created.",
        )
    _track_expiry(_view(written))


async def _reconcile_by_name(view: rules.CredentialView) -> None:
    body = await api.get_credential(view.namespace, view.name)
    if body is not None and body["metadata"]["uid"] == view.uid:
        await reconcile_until_settled(body)


async def _refresh_roles(view: rules.CredentialView, roles: list[str]) -> None:
    """The account's roles changed: an issued credential's effectiveRoles follow."""
    body = await api.get_credential(view.namespace, view.name)
    if body is None or body["metadata"]["uid"] != view.uid:
        return
    await _write_status(body, {"effectiveRoles": roles})


async def _end(
    body: Mapping[str, Any],
    state: State,
    reason: Reason,
    message: str,
    *,
    expired_at: datetime.datetime | None = None,
) -> None:
    """Record the end first (the slot is then certainly no longer used), then clean up."""
    metadata = body["metadata"]
    new = rules.ended_status(
        body.get("status") or {},
        generation=int(metadata.get("generation", 1)),
        created_at=metadata["creationTimestamp"],
        state=state,
        reason=reason,
        message=message,
        now=_now(),
    )
    written = await _write_status(body, new)
    if state is State.EXPIRED and expired_at is not None:
        EXPIRY_LATENESS_SECONDS.observe(max(0.0, (_now() - expired_at).total_seconds()))
    events.post(written, "Warning" if state is State.FAILED else "Normal", str(reason), message)
    await _finish_ended(written, just_ended=True, read_secret=True)


async def _finish_ended(body: Mapping[str, Any], *, just_ended: bool, read_secret: bool) -> None:
    """Idempotent clean-up of an ended credential: free its slot, apply the deletion policy.

    A credential that ended long ago is looked up in the ledger index first, and its Secret
    left to the audit without `read_secret`, so that a restart over many of them costs no
    burst of API calls.
    """
    metadata = body["metadata"]
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    uid = metadata["uid"]
    key = (metadata["namespace"], spec.get("serviceAccountName", ""))
    if just_ended or _runtime.may_hold_slot(key, uid):
        await settle_account(key, ended={uid})
    if _deletion_policy(spec, status) == "Delete" and (just_ended or read_secret):
        secret_name = _secret_name(metadata, spec, status)
        await _remove_secret(metadata["namespace"], metadata["name"], uid, secret_name)


def _deletion_policy(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    return str(
        status.get("secretDeletionPolicy")
        or spec.get("secretDeletionPolicy")
        or get_settings().credentials.secret_deletion_policy
    )


def _secret_name(
    metadata: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> str:
    # The spec names the Secret too: a revocation may have overtaken the status write.
    return str(status.get("secretName") or spec.get("secretName") or metadata["name"])


async def _remove_secret(namespace: str, credential: str, uid: str, secret_name: str) -> None:
    """Delete an ended credential's own Secret, if it is still there, and say so."""
    removed = await delete_owned(namespace, secret_name, uid)
    # Seen to: the audit need not look at this credential's Secret again.
    _runtime.cleaned.add(uid)
    if removed:
        events.post(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ServiceAccountCredential",
                "metadata": {"namespace": namespace, "name": credential, "uid": uid},
            },
            "Normal",
            "SecretRemoved",
            f"Deleted Secret {secret_name!r}, as secretDeletionPolicy Delete says.",
        )


# -- the account's ledger of active slots --------------------------------------------------------


async def settle_account(
    key: AccountKey,
    *,
    ended: Iterable[str] = (),
    issue_except: str | None = None,
    adopt_orphans: bool = False,
) -> set[str]:
    """Bring the account's ledger up to date: release ended holders, admit the oldest waiting.

    Returns the UIDs holding a slot afterwards. The write is a compare-and-swap on the
    account's resourceVersion, retried on conflict, so concurrent writers never over-admit.
    Credentials admitted here are issued right after, outside the lock. With `adopt_orphans`,
    so are holders that are not issued yet: another process may have admitted them and died
    before issuing.
    """
    holders, _account = await _settle(
        key, ended=ended, issue_except=issue_except, adopt_orphans=adopt_orphans
    )
    return holders


async def _settle(
    key: AccountKey,
    *,
    ended: Iterable[str] = (),
    issue_except: str | None = None,
    adopt_orphans: bool = False,
    account: Mapping[str, Any] | None = None,
) -> tuple[set[str], dict[str, Any] | None]:
    """`settle_account`, starting from `account` if given (read a moment ago: the ledger
    write is a compare-and-swap on its resourceVersion, so a stale one is read again); also
    returns the account as last read or written."""
    namespace, account_name = key
    if not account_name:
        return set(), None
    known_ended = set(ended)
    async with _runtime.lock(key):
        admitted, ledger, latest = await _update_ledger(key, known_ended, account)
    to_issue = list(admitted)
    if adopt_orphans:
        unissued = {view.uid for view in _runtime.views(key) if view.waiting}
        to_issue += [e for e in ledger if e.uid in unissued and e not in admitted]
    for entry in to_issue:
        if entry.uid == issue_except:
            continue
        if entry.uid in _runtime.handling:
            # Its own reconcile is under way here: it finds its slot, or it is looked at
            # again once done, without holding up this one (no waiting on each other).
            task = asyncio.create_task(_issue_when_free(namespace, entry))
            _runtime.tasks_in_flight.add(task)
            task.add_done_callback(_runtime.tasks_in_flight.discard)
            continue
        body = await api.get_credential(namespace, entry.name)
        if body is not None and body["metadata"]["uid"] == entry.uid:
            await _issue_admitted(body, latest)
    return {entry.uid for entry in ledger}, latest


async def _issue_when_free(namespace: str, entry: LedgerEntry) -> None:
    """Issue an admitted credential after the reconcile that holds it, with a fresh read."""
    async with _runtime.handling_of(entry.uid):
        pass
    body = await api.get_credential(namespace, entry.name)
    if body is not None and body["metadata"]["uid"] == entry.uid:
        await _issue_admitted(body, None)


async def _issue_admitted(body: Mapping[str, Any], account: Mapping[str, Any] | None) -> None:
    try:
        await reconcile_until_settled(body, account=account)
    except Exception:
        # Its own handler (or the next one to look) finishes the job.
        metadata = body["metadata"]
        logger.info(
            "Issuing %s/%s is deferred.",
            metadata["namespace"],
            metadata["name"],
            extra=about(KIND, metadata["namespace"], metadata["name"], metadata["uid"]),
        )


async def _update_ledger(
    key: AccountKey, ended: set[str], given: Mapping[str, Any] | None = None
) -> tuple[tuple[LedgerEntry, ...], tuple[LedgerEntry, ...], dict[str, Any] | None]:
    """Admit and release in the account's ledger; the admitted, the ledger, and the account
    as written (or as read, when nothing changed)."""
    namespace, account_name = key
    limit = get_settings().credentials.max_active_credentials
    for attempt in range(_LEDGER_ATTEMPTS):
        if attempt == 0 and given is not None:
            account: dict[str, Any] | None = dict(given)
        else:
            account = await api.get_account(namespace, account_name)
        if account is None:
            return (), (), None
        status = account.get("status") or {}
        ledger = [
            LedgerEntry(entry["name"], entry["uid"])
            for entry in status.get("activeCredentials") or []
        ]
        views = {view.uid: view for view in _runtime.views(key)}
        gone = ended | {uid for uid, view in views.items() if view.state in rules.TERMINAL}
        gone |= await _confirm_ended(
            [e for e in ledger if e.uid not in views and e.uid not in gone], namespace
        )
        disabled = bool((account.get("spec") or {}).get("disabled"))
        waiting = (
            []
            if disabled
            else [
                Contender(view.created_at, view.name, view.uid)
                for view in views.values()
                if view.waiting and view.uid not in gone
            ]
        )
        plan = plan_admission(ledger, waiting=waiting, ended=gone, limit=limit)
        # The index may lag: a candidate it shows waiting may have ended meanwhile. Ask the
        # API server about each one about to be admitted, and plan again without the ended.
        while plan.admitted and (stale := await _confirm_ended(list(plan.admitted), namespace)):
            gone |= stale
            waiting = [c for c in waiting if c.uid not in gone]
            plan = plan_admission(ledger, waiting=waiting, ended=gone, limit=limit)
        count = len(plan.ledger)
        if not plan.changed and status.get("activeCredentialCount") == count:
            return (), plan.ledger, account
        try:
            written = await api.patch_status(
                SERVICE_ACCOUNTS,
                namespace,
                account_name,
                account["metadata"]["resourceVersion"],
                {
                    "activeCredentials": [entry.as_dict() for entry in plan.ledger],
                    "activeCredentialCount": count,
                },
            )
        except api.Gone:
            return (), (), None
        except api.Conflict:
            # The account read (or given) was stale: read it again at once the first time.
            if attempt:
                await asyncio.sleep(min(0.05 * attempt, 0.5))
            continue
        if plan.admitted:
            faults.crash_point("after-admission")
        return plan.admitted, plan.ledger, written
    raise kopf.TemporaryError("The account's ledger kept changing; trying again.", delay=1)


async def _confirm_ended(entries: list[LedgerEntry], namespace: str) -> set[str]:
    """Ledger entries this process has not seen: ended only if the API server says so."""
    confirmed = set()
    for entry in entries:
        body = await api.get_credential(namespace, entry.name)
        if (
            body is None
            or body["metadata"]["uid"] != entry.uid
            or (body.get("status") or {}).get("state") in rules.TERMINAL
        ):
            confirmed.add(entry.uid)
    return confirmed


# -- scheduled work: expiry and its warning -----------------------------------------------------


@metrics.counts_errors(KIND)
async def _scheduled(key: ScheduleKey) -> None:
    if peering.paused():
        _runtime.scheduler.schedule(key, _now() + PAUSED_RECHECK)
        return
    try:
        await _run_scheduled(key)
    except api.Gone:
        return
    except (kopf.TemporaryError, api.Conflict):
        # Someone wrote the credential meanwhile: look again shortly, with a fresh read.
        _runtime.scheduler.schedule(key, _now() + datetime.timedelta(seconds=0.5))


async def _run_scheduled(key: ScheduleKey) -> None:
    what, namespace, name, uid = key
    if what == "sweep":
        _runtime.scheduler.schedule(SWEEP, _now() + SWEEP_INTERVAL)
        for account in _runtime.accounts_to_sweep(
            get_settings().credentials.max_active_credentials
        ):
            try:
                await settle_account(account, adopt_orphans=True)
            except Exception:
                logger.exception(
                    "Settling %s/%s failed; the next sweep tries again.",
                    *account,
                    extra=about("ServiceAccount", *account),
                )
        for view, roles in _runtime.stale_roles():
            try:
                await _refresh_roles(view, roles)
            except Exception:
                logger.exception(
                    "Updating the roles of %s/%s failed.",
                    view.namespace,
                    view.name,
                    extra=about(KIND, view.namespace, view.name, view.uid),
                )
        SWEEPS.inc()
        return
    body = await api.get_credential(namespace, name)
    if body is None or body["metadata"]["uid"] != uid:
        return
    status = body.get("status") or {}
    if status.get("state") in rules.TERMINAL:
        # Ended, perhaps by an earlier run of this job whose clean-up failed: finish it.
        await _finish_ended(body, just_ended=True, read_secret=True)
        return
    if what == "expire":
        await reconcile_until_settled(body)
        return
    if status.get("state") == State.ACTIVE and not rules.has_condition(status, rules.EXPIRING_SOON):
        lead = get_settings().credentials.expiry_warning_lead
        written = await _write_status(
            body,
            rules.expiring_soon(
                status, generation=int(body["metadata"].get("generation", 1)), lead=lead, now=_now()
            ),
        )
        _post_expiry_warning(written)
