"""ServiceAccount controller: keeps status (client id, state, Ready) true to the spec."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from kubeiam.domain.accounts import AccountFacts, desired_status, state_change
from kubeiam.domain.admission import with_created_by
from kubeiam.kube import events, metrics
from kubeiam.kube.resources import GROUP, SERVICE_ACCOUNTS, VERSION
from kubeiam.kube.status import stage_status
from kubeiam.settings import get_settings


# Resume covers objects that exist when the operator starts; update reacts to spec changes only,
# so a GitOps tool writing its own labels or annotations does not wake the controller.
@kopf.on.resume(GROUP, VERSION, SERVICE_ACCOUNTS)
@kopf.on.create(GROUP, VERSION, SERVICE_ACCOUNTS)
@kopf.on.update(GROUP, VERSION, SERVICE_ACCOUNTS, field="spec")
@metrics.counts_errors("ServiceAccount")
def reconcile_account(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Compute the account's status from its spec and write what differs."""
    current = dict(body.status)
    facts = AccountFacts(
        name=body.metadata.name or "",
        namespace=body.metadata.namespace or "",
        generation=int(body.metadata.get("generation", 1)),
        disabled=bool(body.spec.get("disabled", False)),
        created_at=body.metadata.get("creationTimestamp"),
        current_status=current,
    )
    desired = with_created_by(
        desired_status(
            facts,
            organization=get_settings().organization,
            now=datetime.datetime.now(datetime.UTC),
        ),
        body.metadata.annotations,
        current,
    )
    stage_status(patch, current, desired)
    new_state = state_change(current, desired)
    if new_state is not None:
        # The Ready condition's message says what the state means for the account's credentials.
        ready = next(c for c in desired["conditions"] if c["type"] == "Ready")
        events.post(
            body, "Normal", new_state, f"The account is now {new_state}. {ready['message']}"
        )
