"""Reconciling one credential: read the world, ask domain/ for the step, hand the step to its
writer (ledger.py, issuing.py, ending.py, audit.py); and filling the slots a settle freed.

Every path that admits credentials ends here: the ledger returns whom it admitted, and this
module issues them, so no writer calls back into the reconciler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubeiam.api import ServiceAccountCredential
from kubeiam.controllers.credentials import audit, ending, expiry, issuing, ledger
from kubeiam.controllers.credentials.state import (
    KIND,
    AccountKey,
    now,
    runtime,
)
from kubeiam.domain import credentials as rules
from kubeiam.domain.conditions import Reason, observed_status, parse_time
from kubeiam.domain.credentials import State
from kubeiam.domain.limit import LedgerEntry
from kubeiam.kube import api, faults, ownership, retry, status
from kubeiam.kube.logs import about
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.settings import get_settings

logger = logging.getLogger(__name__)


async def reconcile_until_settled(
    body: Mapping[str, Any],
    *,
    read_secret: bool = True,
    account: Mapping[str, Any] | None = None,
) -> None:
    """Reconcile; when another writer got there first, read the credential again and retry.

    Without `read_secret`, an issued credential's Secret is taken to be as its status says
    (the audit checks it soon); with it, one metadata GET checks. `account`, if given, is the
    account as just read or written; a retry reads it again.
    """
    given = [account]

    async def step(current: Mapping[str, Any]) -> None:
        fresh_account, given[0] = given[0], None
        await reconcile(current, read_secret=read_secret, account=fresh_account)

    async with runtime.handling_of(body["metadata"]["uid"]) as waited:
        # Another reconcile of this credential ran meanwhile: the body read before is stale.
        if waited:
            given[0] = None
        await retry.until_settled(
            body, step, api.get_credential, what="credential", read_first=waited
        )


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
    policy = settings.credentials
    credential = ServiceAccountCredential.model_validate(body)
    metadata = body["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata["uid"]
    account_key = (namespace, credential.spec.service_account_name)
    account_body = None
    # An account given is looked at even for an issued credential: it may replace the one the
    # credential was issued for.
    facts = _facts(body, credential, account, holds_slot=_holds_slot(account, uid))
    step = rules.decide(facts, policy)
    if isinstance(step, rules.Admit | rules.Issue | rules.Wait):
        # Only now is the account needed: a settled credential costs no read at start-up.
        account_body = dict(account) if account is not None else await api.get_account(*account_key)
        if account_body is not None:
            body = await ownership.ensure_owned_by_account(CREDENTIALS, body, account_body)
            faults.crash_point("after-owner-reference")
        facts = _facts(body, credential, account_body, holds_slot=_holds_slot(account_body, uid))
        step = rules.decide(facts, policy)

    if isinstance(step, rules.Wait | rules.Admit):
        expires_at = rules.resolved_expiry(facts, policy)
        if expires_at is not None:
            expiry.track_waiting(namespace, name, uid, expires_at)
    if isinstance(step, rules.Settled):
        body = await status.write(
            CREDENTIALS, body, observed_status(body.get("status") or {}, facts.generation)
        )
        await issue_settled(await ending.finish(body, just_ended=False, read_secret=read_secret))
    elif isinstance(step, rules.End):
        due = rules.resolved_expiry(facts, policy)
        await _end(body, step.state, step.reason, step.message, expired_at=due)
    elif isinstance(step, rules.Fail):
        await _end(body, State.FAILED, step.reason, step.message)
    elif isinstance(step, rules.KeepActive):
        await audit.keep_active(body, read_secret=read_secret)
    elif isinstance(step, rules.Wait):
        await issuing.write_pending(body, step.reason, step.message)
    elif isinstance(step, rules.Admit):
        settlement = await settle(account_key, issue_except=uid, account=account_body)
        if uid not in settlement.holders:
            message = rules.limit_message(policy.max_active_credentials)
            await issuing.write_pending(body, Reason.LIMIT_EXCEEDED, message)
        elif settlement.account is not None:
            # Admitted: issue now, with the account as the ledger write returned it. The
            # credential is as read (the ledger lives on the account); if it changed meanwhile,
            # the status write meets a Conflict and the credential is read again.
            await reconcile(body, account=settlement.account)
    elif isinstance(step, rules.Issue):
        assert account_body is not None
        conflict = await issuing.issue(body, credential, account_body, step.expires_at, settings)
        if conflict is not None:
            await _end(body, State.FAILED, Reason.SECRET_CONFLICT, conflict.message)


async def _end(
    body: Mapping[str, Any], state: State, reason: Reason, message: str, **more: Any
) -> None:
    await issue_settled(await ending.end(body, state, reason, message, **more))


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
        created_at=parse_time(metadata["creationTimestamp"]),
        revoked=bool(spec.revoked),
        expires_at=spec.expires_at,
        expires_in=spec.expires_in,
        status=body.get("status") or {},
        account=account,
        account_name=spec.service_account_name,
        now=now(),
    )


def _holds_slot(account_body: Mapping[str, Any] | None, uid: str) -> bool:
    if account_body is None:
        return False
    entries = (account_body.get("status") or {}).get("activeCredentials") or []
    return any(entry.get("uid") == uid for entry in entries)


# -- filling slots ------------------------------------------------------------------------------


async def settle(
    key: AccountKey,
    *,
    ended: Iterable[str] = (),
    issue_except: str | None = None,
    adopt_orphans: bool = False,
    account: Mapping[str, Any] | None = None,
) -> ledger.Settlement:
    """Settle the account's ledger, then issue whom it admitted (but `issue_except`, whose own
    reconcile is the caller). With `adopt_orphans`, also holders not issued yet: another
    process may have admitted them and died before issuing."""
    settlement = await ledger.settle(key, ended=ended, account=account, caller=issue_except)
    to_issue = list(settlement.admitted)
    if adopt_orphans:
        unissued = {view.uid for view in runtime.views(key) if view.waiting}
        to_issue += [e for e in settlement.ledger if e.uid in unissued and e not in to_issue]
    await _issue_all(key[0], [e for e in to_issue if e.uid != issue_except], settlement.account)
    return settlement


async def issue_settled(settlement: ledger.Settlement) -> None:
    """Issue whom a settle admitted, with the account as the ledger write returned it."""
    if settlement.admitted and settlement.account is not None:
        namespace = settlement.account["metadata"]["namespace"]
        await _issue_all(namespace, settlement.admitted, settlement.account)


async def _issue_all(
    namespace: str, entries: Iterable[LedgerEntry], account: Mapping[str, Any] | None = None
) -> None:
    for entry in entries:
        if entry.uid in runtime.handling:
            # Its own reconcile is under way here: it finds its slot, or it is looked at
            # again once done, without holding up this one (no waiting on each other).
            runtime.spawn(_issue_when_free(namespace, entry))
            continue
        body = await api.get_credential(namespace, entry.name)
        if body is not None and body["metadata"]["uid"] == entry.uid:
            await _issue_admitted(body, account)


async def _issue_when_free(namespace: str, entry: LedgerEntry) -> None:
    """Issue an admitted credential after the reconcile that holds it, with a fresh read."""
    async with runtime.handling_of(entry.uid):
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
