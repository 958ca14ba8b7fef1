"""The credentials controller's kopf handlers: decorators only, each delegating in one line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from kubeiam.controllers.credentials import audit, expiry, reconcile, triggers
from kubeiam.controllers.credentials.state import KIND, AccountKey, runtime
from kubeiam.controllers.credentials.views import IssuedSecret, issued_secret_of, view_of
from kubeiam.domain import credentials as rules
from kubeiam.kube import api, metrics
from kubeiam.kube.indices import INDICES, index
from kubeiam.kube.resources import CREDENTIALS, GROUP, SERVICE_ACCOUNTS, VERSION

# -- indices: what the operator keeps in memory, listed at start and fed by the watch -----------
# kube/indices.py says why they are not kopf's; state.Runtime.start takes them by name.


@index(CREDENTIALS)
def credentials_by_account(body: kopf.Body) -> dict[AccountKey, rules.CredentialView]:
    """Every credential by its account; also feeds the expiry schedule from the watch."""
    view = view_of(body)
    expiry.track(view)
    return {(view.namespace, view.account): view}


@index(CREDENTIALS)
def issued_secrets(body: kopf.Body) -> dict[tuple[str, str], IssuedSecret]:
    """The Secret of every issued credential, by the credential's namespace and name."""
    target = issued_secret_of(body)
    return {} if target is None else {(target.namespace, target.credential): target}


@index(SERVICE_ACCOUNTS)
def ledgers_by_account(body: kopf.Body) -> dict[AccountKey, frozenset[str]]:
    """The UIDs of the credentials holding a slot, by account."""
    ledger = (body.get("status") or {}).get("activeCredentials") or []
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return {key: frozenset(entry.get("uid", "") for entry in ledger)}


@index(SERVICE_ACCOUNTS)
def uids_by_account(body: kopf.Body) -> dict[AccountKey, str]:
    """The UID of every account: a credential issued for another of the name has ended."""
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return {key: body.metadata.uid or ""}


@index(SERVICE_ACCOUNTS)
def roles_by_account(body: kopf.Body) -> dict[AccountKey, tuple[str, ...]]:
    """The roles of every account, which its credentials' effectiveRoles must follow."""
    key = (body.metadata.namespace or "", body.metadata.name or "")
    return {key: tuple((body.get("spec") or {}).get("roles") or ())}


# -- lifecycle of the process -----------------------------------------------------------------


@kopf.on.startup()
async def start(**_: Any) -> None:
    """Connect the API client, keep the indices (filled before any credential is handled), say
    what scheduled work does, and load the proof key."""
    api.connect()
    runtime.start(INDICES.by_name(), on_due=triggers.on_due, on_audit=triggers.on_audit)
    audit.pace_from_settings()
    await triggers.load_proof_key()


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    runtime.stop_background()


# -- events of credentials and accounts -----------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, CREDENTIALS)
@kopf.on.create(GROUP, VERSION, CREDENTIALS)
@kopf.on.update(GROUP, VERSION, CREDENTIALS, field="spec")
@metrics.counts_errors(KIND)
async def reconcile_credential(body: kopf.Body, reason: str, **_: Any) -> None:
    runtime.ensure_background()
    # At start every credential is resumed at once: its Secret is left to the paced audit
    # rather than read by all of them in one burst.
    await reconcile.reconcile_until_settled(dict(body), read_secret=reason != kopf.Reason.RESUME)


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


def _added_or_modified(type: str, **_: Any) -> bool:
    return type in ("ADDED", "MODIFIED")


# Filtered before kopf invokes it: every other event of every credential would otherwise be a
# handler call and a log line (a burst's events cost the event loop that much more).
@kopf.on.event(GROUP, VERSION, CREDENTIALS, when=_deleted)
@metrics.counts_errors(KIND)
async def credential_gone(event: kopf.RawEvent, **_: Any) -> None:
    runtime.ensure_background()
    await triggers.credential_deleted(cast(Mapping[str, Any], event["object"]))


@kopf.on.event(GROUP, VERSION, SERVICE_ACCOUNTS, when=_added_or_modified)
@metrics.counts_errors("ServiceAccount")
async def account_changed(event: kopf.RawEvent, **_: Any) -> None:
    runtime.ensure_background()
    await triggers.account_changed(cast(Mapping[str, Any], event["object"]))
