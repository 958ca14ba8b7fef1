"""FederationTrust controller: compiles the condition, applies the guard rails, checks the issuer
and keeps the trust's status (effectiveRoles, keys, Ready) true.

Every path funnels into `reconcile`: kopf's handlers when the spec changes or the operator
starts, the key store after each issuer refresh, and account events that change what a trust
can do. Status writes are compare-and-swaps carrying the resourceVersion that was read.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from kubeiam.api import FederationTrust
from kubeiam.domain import trusts as rules
from kubeiam.domain.conditions import find_ready
from kubeiam.kube import api, events, metrics, retry, status
from kubeiam.kube.indices import Index, index
from kubeiam.kube.ownership import ensure_owned_by_account
from kubeiam.kube.resources import GROUP, SERVICE_ACCOUNTS, TRUSTS, VERSION
from kubeiam.oidc.cel.condition import compile_condition
from kubeiam.oidc.cel.errors import ConditionError
from kubeiam.oidc.guards import review_condition
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.keystore import IssuerKey, KeyStore, Schedule
from kubeiam.settings import Settings, get_settings

logger = logging.getLogger(__name__)

AccountKey = tuple[str, str]  # (namespace, account name)


@dataclass(frozen=True)
class TrustView:
    """What the controller remembers of a trust between events: small, never the whole body."""

    namespace: str
    name: str
    uid: str
    created_at: str
    issuer: IssuerKey
    scoped_roles: tuple[str, ...] | None
    effective_roles: tuple[str, ...] | None
    ready_reason: str | None

    @property
    def rank(self) -> rules.TrustRank:
        return rules.TrustRank(created_at=self.created_at, name=self.name, uid=self.uid)


def _view(body: Mapping[str, Any]) -> TrustView:
    metadata, spec, current = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    ready = find_ready(current)
    scoped = spec.get("scopedRoles")
    effective = current.get("effectiveRoles")
    return TrustView(
        namespace=metadata["namespace"],
        name=metadata["name"],
        uid=metadata["uid"],
        created_at=metadata.get("creationTimestamp", ""),
        issuer=(spec.get("issuer", ""), spec.get("jwksUri")),
        scoped_roles=tuple(scoped) if scoped is not None else None,
        effective_roles=tuple(effective) if effective is not None else None,
        ready_reason=ready.get("reason") if ready else None,
    )


def _keystore(settings: Settings) -> KeyStore:
    return KeyStore(
        FetchPolicy.from_settings(settings.issuers),
        Schedule(
            refresh_min=settings.issuers.refresh_min,
            refresh_max=settings.issuers.refresh_max,
            retry_min=settings.issuers.retry_min,
            retry_max=settings.issuers.retry_max,
        ),
        max_keys=settings.issuers.max_keys,
        on_refreshed=lambda key: _issuer_refreshed(key),
        concurrency=settings.issuers.refresh_concurrency,
    )


class _Runtime:
    """The process-wide pieces: the trust index and the shared issuer key store."""

    def __init__(self) -> None:
        self.trusts: Index[AccountKey, TrustView] | None = None
        self.keystore: KeyStore | None = None
        self.task: asyncio.Task[None] | None = None

    def store(self) -> KeyStore:
        """The key store, and its refresh task started from within a handler so that the task
        inherits kopf's context, which posting events needs."""
        if self.keystore is None:
            self.keystore = _keystore(get_settings())
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.keystore.run(), name="kube-iam issuer refresh")
        return self.keystore

    def views(self, key: AccountKey) -> list[TrustView]:
        if self.trusts is None or key not in self.trusts:
            return []
        return list(self.trusts[key])

    def all_views(self) -> list[TrustView]:
        if self.trusts is None:
            return []
        return [view for key in self.trusts for view in self.trusts[key]]


_runtime = _Runtime()
KIND = FederationTrust.names.kind


def _trusts_by_reason() -> list[tuple[tuple[str, ...], float]]:
    counts: dict[str, int] = {}
    for view in _runtime.all_views():
        reason = view.ready_reason or "Unknown"
        counts[reason] = counts.get(reason, 0) + 1
    return [((reason,), float(count)) for reason, count in sorted(counts.items())]


# Computed from the index when scraped, like the credentials gauge: it cannot drift. The reason
# set is the bounded Reason enum.
metrics.gauge_from_memory(
    "kubeiam_trusts",
    "FederationTrusts by the reason of their Ready condition (Ready when they work).",
    ["reason"],
    _trusts_by_reason,
)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- the index and kopf's handlers -------------------------------------------------------------


@index(TRUSTS)
def trusts_by_account(body: kopf.Body) -> dict[AccountKey, TrustView]:
    """Every trust by its account: for the per-account limit and for account changes."""
    view = _view(body)
    return {(view.namespace, str((body.get("spec") or {}).get("serviceAccountName", ""))): view}


@kopf.on.startup()
async def start(**_: Any) -> None:
    _runtime.trusts = trusts_by_account


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if _runtime.task is not None:
        _runtime.task.cancel()


# A spec change is announced (warnings about the condition are posted once, when it changes);
# a restart only re-checks, silently, and writes nothing when nothing changed.
@kopf.on.create(GROUP, VERSION, TRUSTS)
@kopf.on.update(GROUP, VERSION, TRUSTS, field="spec")
@metrics.counts_errors(KIND)
async def trust_changed(body: kopf.Body, **_: Any) -> None:
    await reconcile_until_settled(body, announce=True)


@kopf.on.resume(GROUP, VERSION, TRUSTS)
@metrics.counts_errors(KIND)
async def trust_resumed(body: kopf.Body, **_: Any) -> None:
    await reconcile_until_settled(body, announce=False)


@kopf.on.event(GROUP, VERSION, TRUSTS)
@metrics.counts_errors(KIND)
async def trust_event(event: kopf.RawEvent, **_: Any) -> None:
    """A trust created or deleted moves its siblings over or under the per-account limit; a
    deleted one also stops its issuer's polling if no other trust uses it."""
    kind = event["type"]
    if kind not in ("ADDED", "DELETED"):
        return
    body = event["object"]
    metadata, spec = body["metadata"], body.get("spec") or {}
    if kind == "DELETED" and _runtime.keystore is not None:
        _runtime.keystore.release(metadata["uid"])
    views = _runtime.views((metadata["namespace"], spec.get("serviceAccountName", "")))
    over = rules.over_limit(
        [view.rank for view in views], get_settings().trusts.max_trusts_per_account
    )
    for view in views:
        misplaced = rules.misplaced(view.ready_reason, over_limit=view.uid in over)
        if view.uid != metadata["uid"] and misplaced:
            await _reconcile_by_name(view)


@kopf.on.event(GROUP, VERSION, SERVICE_ACCOUNTS)
@metrics.counts_errors(KIND)
async def account_event(event: kopf.RawEvent, **_: Any) -> None:
    """An account created, deleted, disabled or given other roles changes what its trusts do.

    The initial listing (type None) is skipped: at start every trust is resumed anyway. Most
    account events are ledger writes by the credentials controller; only trusts whose status no
    longer follows the account are reconciled.
    """
    kind = event["type"]
    if kind is None:
        return
    body = event["object"]
    metadata, spec = body["metadata"], body.get("spec") or {}
    key = (metadata["namespace"], metadata["name"])
    roles = tuple(spec.get("roles") or ())
    disabled = bool(spec.get("disabled"))
    for view in _runtime.views(key):
        stale = rules.stale(
            recorded_roles=view.effective_roles,
            ready_reason=view.ready_reason,
            scoped_roles=view.scoped_roles,
            account_roles=roles,
            account_disabled=disabled,
        )
        if kind != "MODIFIED" or stale:
            await _reconcile_by_name(view)


async def _issuer_refreshed(key: IssuerKey) -> None:
    for view in _runtime.all_views():
        if view.issuer == key:
            await _reconcile_by_name(view)


async def _reconcile_by_name(view: TrustView) -> None:
    body = await api.get_trust(view.namespace, view.name)
    if body is not None and body["metadata"]["uid"] == view.uid:
        await reconcile_until_settled(body, announce=False)


# -- the reconciler ----------------------------------------------------------------------------


async def reconcile_until_settled(body: Mapping[str, Any], *, announce: bool) -> None:
    """Reconcile; when another writer got there first, read the trust again and retry."""

    async def step(current: Mapping[str, Any]) -> None:
        await reconcile(current, announce=announce)

    await retry.until_settled(body, step, api.get_trust, what="trust")


async def reconcile(body: Mapping[str, Any], *, announce: bool) -> None:
    """Read the trust and its account, decide (domain/), write what differs, report."""
    settings = get_settings()
    trust = FederationTrust.model_validate(body)
    spec, metadata = trust.spec, body["metadata"]
    namespace, uid = metadata["namespace"], metadata["uid"]
    account_body = await api.get_account(namespace, spec.service_account_name)
    if account_body is not None:
        body = await ensure_owned_by_account(TRUSTS, body, account_body)
    account_spec = (account_body or {}).get("spec") or {}

    problems: list[rules.Problem] = []
    try:
        condition = compile_condition(spec.condition)
    except ConditionError as error:
        problems.append(rules.Problem(error.reason, error.message))
    else:
        findings = review_condition(
            condition,
            issuer=spec.issuer,
            multi_tenant_issuers=settings.trusts.multi_tenant_issuers,
            tenant_claims=settings.trusts.tenant_claims,
        )
        problems.extend(rules.Problem(f.reason, f.message) for f in findings if f.refuses)
        if announce:
            for finding in findings:
                if not finding.refuses:
                    events.post(body, "Warning", str(finding.reason), finding.message)

    allowed = rules.issuer_allowed(spec.issuer, settings.trusts.allowed_issuers)
    key = (namespace, spec.service_account_name)
    ranks = [view.rank for view in _runtime.views(key)]
    if uid not in {rank.uid for rank in ranks}:
        ranks.append(_view(body).rank)  # the index lags a just-created trust
    over = uid in rules.over_limit(ranks, settings.trusts.max_trusts_per_account)

    store = _runtime.store()
    check = None
    # A disallowed issuer is never contacted, nor is one behind a trust that is switched off.
    if allowed and not spec.disabled:
        if spec.jwks is not None:
            store.release(uid)
            check, _ = store.parse_inline(spec.jwks.model_dump(mode="json"), now=_now())
        else:
            issuer_key = (spec.issuer, spec.jwks_uri)
            store.release(uid, keep=issuer_key)
            check, _ = await store.check(issuer_key, uid)
    else:
        store.release(uid)

    facts = rules.TrustFacts(
        generation=int(metadata.get("generation", 1)),
        issuer_url=spec.issuer,
        disabled=spec.disabled,
        account_name=spec.service_account_name,
        account_roles=tuple(account_spec.get("roles") or ()) if account_body else None,
        account_disabled=bool(account_spec.get("disabled")),
        scoped_roles=tuple(spec.scoped_roles) if spec.scoped_roles is not None else None,
        issuer_is_allowed=allowed,
        over_limit=over,
        max_trusts=settings.trusts.max_trusts_per_account,
        problems=tuple(problems),
        issuer=check,
        inline_keys=spec.jwks is not None,
        current_status=body.get("status") or {},
    )
    await _write(body, facts, recheck_after=settings.issuers.refresh_max)


async def _write(
    body: Mapping[str, Any], facts: rules.TrustFacts, *, recheck_after: datetime.timedelta
) -> None:
    current = facts.current_status
    desired = rules.desired_status(facts, now=_now(), recheck_after=recheck_after)
    written = await status.write(TRUSTS, body, desired)
    before = find_ready(current)
    after = find_ready(desired)
    if after is not None and (before is None or before.get("reason") != after.get("reason")):
        kind: events.EventType = "Normal" if after.get("status") == "True" else "Warning"
        events.post(written, kind, str(after.get("reason")), str(after.get("message")))
