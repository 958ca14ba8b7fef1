"""What sets a credential's reconcile going besides its own events: a credential deleted (its
slot freed), an account changed (waiting credentials move on, roles follow), scheduled work due
(expiry, its warning, the sweep) and the Secret audit."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import kopf

from kubeiam.controllers.credentials import audit, ending, expiry
from kubeiam.controllers.credentials.reconcile import (
    issue_settled,
    reconcile_until_settled,
    settle,
)
from kubeiam.controllers.credentials.state import (
    KIND,
    SWEEP,
    SWEEP_INTERVAL,
    ScheduleKey,
    now,
    runtime,
)
from kubeiam.controllers.credentials.views import IssuedSecret
from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.kube import api, memory, metrics, peering, status
from kubeiam.kube.key_secret import KeySecretError, load_or_create
from kubeiam.kube.logs import about
from kubeiam.kube.resources import CREDENTIALS
from kubeiam.settings import get_settings

logger = logging.getLogger(__name__)

# While kopf's peering pauses this replica, the active one does the work: scheduled work is
# looked at again this often, and done here only if this replica is active again by then.
PAUSED_RECHECK = 5.0

# The Secret in the operator's namespace that holds the key proving which Secrets it wrote.
PROOF_KEY_SECRET = "kube-iam-secret-proof-key"

SWEEPS = metrics.counter(
    "kubeiam_credential_sweeps",
    "Completed sweeps over accounts whose waiting credentials may have a slot by now.",
)


async def credential_deleted(body: Mapping[str, Any]) -> None:
    """A deleted credential frees its slot at once; its Secret goes with it (owner reference)."""
    audit.hurry()
    metadata, spec = body["metadata"], body.get("spec") or {}
    key = (metadata["namespace"], spec.get("serviceAccountName", ""))
    await settle(key, ended={metadata["uid"]})


async def account_changed(account: Mapping[str, Any]) -> None:
    """An account that appears, is enabled or changes roles may move its credentials on."""
    key = (account["metadata"]["namespace"], account["metadata"]["name"])
    # Credentials issued for an earlier account of this name end before anything is admitted.
    for view in runtime.views(key):
        if view.issued_for_another(account["metadata"]["uid"]):
            await _reconcile_with_account(view, account)
    current = account.get("status") or {}
    entries = current.get("activeCredentials") or []
    count_true = current.get("activeCredentialCount") == len(entries)
    waiting = [view for view in runtime.views(key) if view.waiting]
    holders: set[str] = set()
    if waiting or not count_true:
        holders = (await settle(key)).holders
    # Waiting credentials whose condition names the account's old state say the new one.
    disabled = bool((account.get("spec") or {}).get("disabled"))
    for view in upkeep.outdated_by_account(waiting, account_disabled=disabled, holders=holders):
        await reconcile_by_name(view)
    # The role index already holds this event's roles: it is fed before kopf sees the event.
    for view, roles in runtime.stale_roles([key]):
        await _refresh_roles(view, roles)


async def reconcile_by_name(view: rules.CredentialView) -> None:
    body = await api.get_credential(view.namespace, view.name)
    if body is not None and body["metadata"]["uid"] == view.uid:
        await reconcile_until_settled(body)


async def _reconcile_with_account(
    view: rules.CredentialView, account: Mapping[str, Any] | None = None
) -> None:
    """Reconcile an issued credential against its account (read now unless given): one issued
    for an account since replaced under its name ends."""
    body = await api.get_credential(view.namespace, view.name)
    if body is None or body["metadata"]["uid"] != view.uid:
        return
    if account is None:
        account = await api.get_account(view.namespace, view.account)
    await reconcile_until_settled(body, account=account)


async def _refresh_roles(view: rules.CredentialView, roles: list[str]) -> None:
    """The account's roles changed: an issued credential's effectiveRoles follow."""
    body = await api.get_credential(view.namespace, view.name)
    if body is None or body["metadata"]["uid"] != view.uid:
        return
    await status.write(CREDENTIALS, body, {"effectiveRoles": roles})


@metrics.counts_errors(KIND)
async def on_due(key: ScheduleKey) -> None:
    """Scheduled work is due (expiry, its warning, the sweep): do it, or look again soon."""
    if peering.paused():
        runtime.scheduler.schedule(key, now() + _seconds(PAUSED_RECHECK))
        return
    try:
        await _run_due(key)
    except api.Gone:
        return
    except (kopf.TemporaryError, api.Conflict):
        # Someone wrote the credential meanwhile: look again shortly, with a fresh read.
        runtime.scheduler.schedule(key, now() + _seconds(0.5))


async def _run_due(key: ScheduleKey) -> None:
    what, namespace, name, uid = key
    if what == "sweep":
        await _sweep()
        return
    body = await api.get_credential(namespace, name)
    if body is None or body["metadata"]["uid"] != uid:
        return
    if (body.get("status") or {}).get("state") in rules.TERMINAL:
        # Ended, perhaps by an earlier run of this job whose clean-up failed: finish it.
        await issue_settled(await ending.finish(body, just_ended=True, read_secret=True))
    elif what == "expire":
        await reconcile_until_settled(body)
    else:
        await expiry.warn(body)


async def _sweep() -> None:
    """The safety net: settle every account whose ledger, as last seen, leaves someone waiting
    for no reason, and bring stale effectiveRoles up to date."""
    runtime.scheduler.schedule(SWEEP, now() + SWEEP_INTERVAL)
    limit = get_settings().credentials.max_active_credentials
    for account in runtime.accounts_to_sweep(limit):
        try:
            await settle(account, adopt_orphans=True)
        except Exception:
            logger.exception(
                "Settling %s/%s failed; the next sweep tries again.",
                *account,
                extra=about("ServiceAccount", *account),
            )
    for view in runtime.issued_for_replaced_accounts():
        await _logged(
            _reconcile_with_account(view), "Ending {} issued for a replaced account", view
        )
    for view, roles in runtime.stale_roles():
        await _logged(_refresh_roles(view, roles), "Updating the roles of {}", view)
    if get_settings().memory.trim:
        # What a burst freed goes back to the OS within a sweep of it (kube/memory.py).
        memory.trim()
    SWEEPS.inc()


@metrics.counts_errors(KIND)
async def on_audit(target: IssuedSecret) -> None:
    """Audit one issued Secret; a credential whose Secret is not as its condition says is
    reconciled, which says so."""
    await audit.audit_secret(target, reconcile_until_settled)


def _seconds(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=seconds)


async def _logged(work: Awaitable[None], doing: str, view: rules.CredentialView) -> None:
    """One item of the sweep: a failure is logged and left to the next sweep."""
    try:
        await work
    except Exception:
        logger.exception(
            doing.format(f"{view.namespace}/{view.name}") + " failed; the next sweep tries again.",
            extra=about(KIND, view.namespace, view.name, view.uid),
        )


async def load_proof_key() -> None:
    """Load (or, first of all replicas, create) the key that proves which Secrets kube-iam
    wrote. A handler without it waits rather than issue a Secret it could not prove."""
    try:
        runtime.keys = await load_or_create(
            get_settings().operator_namespace,
            PROOF_KEY_SECRET,
            purpose="Proves which credential Secrets kube-iam wrote (HMAC-SHA256).",
        )
    except KeySecretError as error:
        raise kopf.PermanentError(str(error)) from None
