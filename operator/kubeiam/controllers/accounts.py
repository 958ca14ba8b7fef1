"""ServiceAccount controller: keeps status (client id, state, Ready) true to the spec."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import kopf

from kubeiam.domain.accounts import AccountFacts, desired_status, state_change
from kubeiam.domain.conditions import find_ready
from kubeiam.kube import api, events, metrics, retry, status
from kubeiam.kube.resources import GROUP, SERVICE_ACCOUNTS, VERSION
from kubeiam.settings import get_settings


# Resume covers objects that exist when the operator starts; update reacts to spec changes only,
# so a GitOps tool writing its own labels or annotations does not wake the controller.
@kopf.on.resume(GROUP, VERSION, SERVICE_ACCOUNTS)
@kopf.on.create(GROUP, VERSION, SERVICE_ACCOUNTS)
@kopf.on.update(GROUP, VERSION, SERVICE_ACCOUNTS, field="spec")
@metrics.counts_errors("ServiceAccount")
async def reconcile_account(body: kopf.Body, **_: Any) -> None:
    await retry.until_settled(dict(body), reconcile, api.get_account, what="account")


async def reconcile(body: Mapping[str, Any]) -> None:
    """Compute the account's status from its spec and write what differs."""
    metadata, spec = body["metadata"], body.get("spec") or {}
    current = body.get("status") or {}
    facts = AccountFacts(
        name=metadata["name"],
        namespace=metadata["namespace"],
        generation=int(metadata.get("generation", 1)),
        disabled=bool(spec.get("disabled", False)),
        created_at=metadata.get("creationTimestamp"),
        current_status=current,
    )
    desired = desired_status(
        facts, organization=get_settings().organization, now=datetime.datetime.now(datetime.UTC)
    )
    written = await status.write(SERVICE_ACCOUNTS, body, desired)
    new_state = state_change(current, desired)
    if new_state is not None:
        # The Ready condition's message says what the state means for the account's credentials.
        ready = find_ready(desired) or {}
        events.post(
            written,
            "Normal",
            new_state,
            f"The account is now {new_state}. {ready.get('message', '')}",
        )
