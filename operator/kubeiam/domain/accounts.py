"""Rules of a ServiceAccount's status: its client id, its state and its Ready condition."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeiam.api import AccountState
from kubeiam.domain.conditions import READY, Condition, Reason, merge_condition


@dataclass(frozen=True)
class AccountFacts:
    """What the account's status is computed from, read off the object by the controller."""

    name: str
    namespace: str
    generation: int
    disabled: bool
    created_at: str | None
    current_status: Mapping[str, Any]


def client_id(name: str, namespace: str, organization: str) -> str:
    """The account's OAuth client id: `<name>@<namespace>.<organization>.iam`."""
    return f"{name}@{namespace}.{organization}.iam"


def account_state(disabled: bool) -> AccountState:
    return AccountState.DISABLED if disabled else AccountState.ACTIVE


def ready_condition(state: AccountState) -> Condition:
    if state is AccountState.DISABLED:
        return Condition(
            type=READY,
            status="False",
            reason=Reason.DISABLED,
            message="The account is disabled (spec.disabled is true): its credentials are kept, "
            "but no token is issued for it.",
        )
    return Condition(
        type=READY,
        status="True",
        reason=Reason.ACTIVE,
        message="The account is active and may be issued tokens.",
    )


def desired_status(
    facts: AccountFacts, *, organization: str, now: datetime.datetime
) -> dict[str, Any]:
    """The status the account should have. Fields the operator does not own here are absent:
    the ledger and `activeCredentialCount` are written only by credential admission, with a
    compare-and-swap.

    The client id, once issued, never changes: a later change of the organisation setting must
    not break the workloads that already use it.
    """
    current = facts.current_status
    state = account_state(facts.disabled)
    status: dict[str, Any] = {
        "clientId": current.get("clientId") or client_id(facts.name, facts.namespace, organization),
        "state": str(state),
        "observedGeneration": facts.generation,
        "conditions": merge_condition(
            current.get("conditions") or [],
            ready_condition(state),
            generation=facts.generation,
            now=now,
        ),
    }
    created_at = current.get("createdAt") or facts.created_at
    if created_at:
        status["createdAt"] = created_at
    return status


def state_change(current_status: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """The new state when it differs from the recorded one, including the first one recorded."""
    previous = current_status.get("state")
    new = desired.get("state")
    return str(new) if previous != new else None
