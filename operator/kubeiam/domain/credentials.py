"""A credential's life: the next step from what is observed, and the status each step writes.

The decision is a chain of checks, each of which either settles the matter with a step or
passes; the controller performs the step and reports. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kubeiam.domain.conditions import (
    READY,
    Condition,
    Reason,
    find_ready,
    format_time,
    merge_condition,
    parse_time,
)
from kubeiam.domain.lifetimes import ExpiryRefused, format_duration, resolve_expiry
from kubeiam.settings import CredentialSettings


class State(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    FAILED = "Failed"


TERMINAL = frozenset({State.EXPIRED, State.REVOKED, State.FAILED})
EXPIRING_SOON = "ExpiringSoon"


@dataclass(frozen=True, slots=True)
class CredentialView:
    """The little the operator keeps in memory about every credential (an index value)."""

    namespace: str
    name: str
    uid: str
    account: str
    created_at: str
    state: str | None
    revoked: bool
    issued: bool
    expires_at: str | None
    scoped_roles: tuple[str, ...] | None = None  # None: unset, all of the account's roles
    effective_roles: tuple[str, ...] = ()
    reason: str | None = None
    warned: bool = False
    account_uid: str | None = None

    @property
    def ended(self) -> bool:
        return self.revoked or self.state in TERMINAL

    @property
    def waiting(self) -> bool:
        """Wants a slot: not issued yet and not ended."""
        return not self.issued and not self.ended

    def issued_for_another(self, account_uid: str | None) -> bool:
        """Issued, not ended, for an account of this name that is not `account_uid` (one
        deleted and created again under the name)."""
        return issued_for_another_account(
            self.account_uid if self.issued and not self.ended else None, account_uid
        )


def issued_for_another_account(recorded: str | None, account_uid: str | None) -> bool:
    """The rule for a replaced account: the account's UID recorded at issuance is not the UID
    of the account of that name now. Credentials issued before UIDs were recorded have none
    and follow the account by name, as they always did."""
    return bool(recorded and account_uid and recorded != account_uid)


def account_replaced_message(account: str) -> str:
    return (
        f"ServiceAccount {account!r} was deleted and created again: this credential was issued "
        "for the earlier one, so it ends here and never takes the new account's roles or slots."
    )


# The organisation policy a credential is decided under: the settings' credentials group.
Policy = CredentialSettings


@dataclass(frozen=True)
class Account:
    """What a credential needs to know of its account."""

    uid: str
    client_id: str | None
    disabled: bool
    roles: tuple[str, ...]
    holds_slot: bool


@dataclass(frozen=True)
class CredentialFacts:
    """Everything the next step of one credential depends on."""

    name: str
    uid: str
    generation: int
    created_at: datetime.datetime
    revoked: bool
    expires_at: datetime.datetime | None
    expires_in: str | None
    status: Mapping[str, Any]
    account: Account | None
    account_name: str
    now: datetime.datetime


# -- steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """Stay Pending for a reason that may change (the account appears, a slot frees)."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class Fail:
    """End in Failed: retrying cannot fix this."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class End:
    """End in Expired or Revoked."""

    state: State
    reason: Reason
    message: str


@dataclass(frozen=True)
class Admit:
    """Ask the account's ledger for a slot."""


@dataclass(frozen=True)
class Issue:
    """Write the Secret (once) and turn Active."""

    expires_at: datetime.datetime


@dataclass(frozen=True)
class KeepActive:
    """Issued already: only keep the status true (the Secret may have been deleted)."""

    expires_at: datetime.datetime


@dataclass(frozen=True)
class Settled:
    """Ended already; nothing may change."""


Step = Wait | Fail | End | Admit | Issue | KeepActive | Settled


def _parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    return parse_time(str(value))


def _expiry(facts: CredentialFacts, policy: Policy) -> datetime.datetime | ExpiryRefused:
    """As recorded at issuance, else as the spec resolves under the current policy.

    Once issued, the recorded expiry is the truth: it never changes, and a policy tightened
    later does not reach back to credentials issued under the old one.
    """
    recorded = _parse_time(facts.status.get("expiresAt"))
    if recorded is not None:
        return recorded
    expiry = resolve_expiry(
        created_at=facts.created_at,
        expires_at=facts.expires_at,
        expires_in=facts.expires_in,
        default_lifetime=policy.default_credential_lifetime,
        max_lifetime=policy.max_credential_lifetime,
    )
    return expiry if isinstance(expiry, ExpiryRefused) else expiry.expires_at


def resolved_expiry(facts: CredentialFacts, policy: Policy) -> datetime.datetime | None:
    """When the credential expires; None when its request is refused."""
    expiry = _expiry(facts, policy)
    return None if isinstance(expiry, ExpiryRefused) else expiry


def decide(facts: CredentialFacts, policy: Policy) -> Step:
    """The next step for a credential. Order matters: an ended credential stays ended,
    revocation wins over everything else, and a lifetime is checked before a slot is taken."""
    current = facts.status.get("state")
    if current in TERMINAL:
        return Settled()
    if facts.revoked:
        return End(State.REVOKED, Reason.REVOKED, "Revoked by spec.revoked; it stays revoked.")
    if facts.account is not None and issued_for_another_account(
        facts.status.get("accountUid"), facts.account.uid
    ):
        message = account_replaced_message(facts.account_name)
        return End(State.REVOKED, Reason.ACCOUNT_REPLACED, message)
    expires_at = _expiry(facts, policy)
    if isinstance(expires_at, ExpiryRefused):
        return Fail(expires_at.reason, expires_at.message)
    if expires_at <= facts.now:
        return End(State.EXPIRED, Reason.EXPIRED, f"Expired at {format_time(expires_at)}.")
    if facts.status.get("secretHash"):
        return KeepActive(expires_at)
    account = facts.account
    if account is None:
        return Wait(
            Reason.ACCOUNT_MISSING,
            f"Waiting for ServiceAccount {facts.account_name!r} in this namespace to exist.",
        )
    if account.holds_slot:
        return Issue(expires_at)
    if account.disabled:
        return Wait(
            Reason.ACCOUNT_DISABLED,
            f"Waiting: ServiceAccount {facts.account_name!r} is disabled (spec.disabled).",
        )
    return Admit()


def limit_message(limit: int) -> str:
    # No queue position: it would go stale as others are admitted, and status must stay true.
    return (
        f"The account already has {limit} Active credentials, the organisation's limit of "
        f"{limit}. It becomes Active, oldest first, when a slot frees (revocation, expiry or "
        "deletion of another credential)."
    )


def secret_refused_message(secret_name: str, refusal: str, retry_seconds: float) -> str:
    """Why an admitted credential has no Secret yet; `refusal` is the status line, never the
    API server's body (it may quote the request)."""
    return (
        f"The API server refused to create Secret {secret_name!r} ({refusal}). A ResourceQuota "
        "on Secrets or an admission policy in this namespace may forbid it. The credential keeps "
        f"its slot, nothing was issued, and kube-iam tries again every {retry_seconds:g}s."
    )


def secret_conflict_message(secret_name: str, why: str) -> str:
    """Why a credential failed on a Secret of its name that kube-iam did not write."""
    return (
        f"Secret {secret_name!r} already exists and {why}; it is left untouched and nothing "
        "was issued. Choose another spec.secretName (a new credential) or remove that Secret."
    )


def effective_roles(account_roles: Sequence[str], scoped_roles: Sequence[str] | None) -> list[str]:
    """The account's roles, narrowed to `scopedRoles` when that is set: unset (None) means all of
    them, an empty list none."""
    if scoped_roles is None:
        return sorted(set(account_roles))
    return sorted(set(account_roles) & set(scoped_roles))


def display_name(spec: Mapping[str, Any], name: str) -> str:
    """What listings show for a credential or trust: spec.displayName, or else its name."""
    return str(spec.get("displayName") or name)


# -- statuses ------------------------------------------------------------------------------


def _with_ready(
    current: Mapping[str, Any],
    generation: int,
    now: datetime.datetime,
    condition: Condition,
    **fields: Any,
) -> dict[str, Any]:
    return {
        **fields,
        "observedGeneration": generation,
        "conditions": merge_condition(
            current.get("conditions") or [], condition, generation=generation, now=now
        ),
    }


def pending_status(
    current: Mapping[str, Any],
    *,
    generation: int,
    created_at: str,
    reason: Reason,
    message: str,
    now: datetime.datetime,
) -> dict[str, Any]:
    return ended_status(
        current,
        generation=generation,
        created_at=created_at,
        state=State.PENDING,
        reason=reason,
        message=message,
        now=now,
    )


@dataclass(frozen=True)
class Issuance:
    """What an issued credential's status records; the secret itself is never among it."""

    credential_id: str
    client_id: str
    secret_name: str
    secret_hash: str
    expires_at: datetime.datetime
    effective_roles: list[str]
    deletion_policy: str
    secret_uid: str
    account_uid: str


def _issued(secret_name: str, expires_at: str) -> Condition:
    message = f"Issued; the client secret is in Secret {secret_name!r} and expires at {expires_at}."
    return Condition(READY, "True", Reason.ISSUED, message)


def active_status(
    current: Mapping[str, Any],
    *,
    generation: int,
    created_at: str,
    issuance: Issuance,
    now: datetime.datetime,
) -> dict[str, Any]:
    return _with_ready(
        current,
        generation,
        now,
        _issued(issuance.secret_name, format_time(issuance.expires_at)),
        state=str(State.ACTIVE),
        createdAt=created_at,
        credentialId=issuance.credential_id,
        clientId=issuance.client_id,
        secretName=issuance.secret_name,
        secretHash=issuance.secret_hash,
        expiresAt=format_time(issuance.expires_at),
        effectiveRoles=issuance.effective_roles,
        secretDeletionPolicy=issuance.deletion_policy,
        secretUid=issuance.secret_uid,
        accountUid=issuance.account_uid,
    )


def issued_status(
    current: Mapping[str, Any],
    *,
    generation: int,
    created_at: str,
    issuance: Issuance,
    warning_lead: datetime.timedelta,
    now: datetime.datetime,
) -> tuple[dict[str, Any], bool]:
    """The status of a credential just issued, and whether it is already within the warning
    lead of its expiry: then the ExpiringSoon condition is in the same write, not one after."""
    status = active_status(
        current, generation=generation, created_at=created_at, issuance=issuance, now=now
    )
    if warning_time(issuance.expires_at, warning_lead) > now:
        return status, False
    warned = expiring_soon({**current, **status}, generation=generation, lead=warning_lead, now=now)
    return {**status, **warned}, True


# Why an issued credential's Secret is not as issued, by reason; {name} is the Secret's name.
_SECRET_PROBLEMS = {
    Reason.SECRET_DELETED: (
        "Secret {name} was deleted. It is not re-created: the client secret is shown only once. "
        "Revoke this credential and create a new one."
    ),
    Reason.SECRET_REPLACED: (
        "Secret {name} is not the Secret kube-iam wrote: it was deleted and another was created "
        "under its name. kube-iam does not trust or touch it; the client secret it holds is not "
        "this credential's. Revoke this credential and create a new one."
    ),
}


def _secret_problem(
    current: Mapping[str, Any], reason: Reason, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """Still Active (the secret still works where it was copied), but its Secret is not as
    issued: Ready False, saying why."""
    message = _SECRET_PROBLEMS[reason].format(name=repr(current.get("secretName")))
    return _with_ready(current, generation, now, Condition(READY, "False", reason, message))


def secret_deleted_status(
    current: Mapping[str, Any], *, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    return _secret_problem(current, Reason.SECRET_DELETED, generation, now)


def secret_replaced_status(
    current: Mapping[str, Any], *, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    return _secret_problem(current, Reason.SECRET_REPLACED, generation, now)


def issued_ready_status(
    current: Mapping[str, Any], *, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """The Ready condition of an issued credential whose Secret is in place."""
    issued = _issued(str(current.get("secretName")), str(current.get("expiresAt")))
    return _with_ready(current, generation, now, issued)


def secret_status(
    current: Mapping[str, Any], found: str, *, generation: int, now: datetime.datetime
) -> dict[str, Any]:
    """The status an issued credential's Secret, as found (present, absent, replaced), implies."""
    if found == "present":
        return issued_ready_status(current, generation=generation, now=now)
    reason = Reason.SECRET_DELETED if found == "absent" else Reason.SECRET_REPLACED
    return _secret_problem(current, reason, generation, now)


def ended_status(
    current: Mapping[str, Any],
    *,
    generation: int,
    created_at: str,
    state: State,
    reason: Reason,
    message: str,
    now: datetime.datetime,
) -> dict[str, Any]:
    """A status whose Ready is False: ended (Expired, Revoked, Failed) or, for Pending, waiting."""
    return _with_ready(
        current,
        generation,
        now,
        Condition(READY, "False", reason, message),
        state=str(state),
        createdAt=created_at,
    )


def expiring_soon(
    current: Mapping[str, Any], *, generation: int, lead: datetime.timedelta, now: datetime.datetime
) -> dict[str, Any]:
    """The condition that records the expiry warning, so it is given once."""
    message = (
        f"Expires at {current.get('expiresAt')}, within the warning lead time of "
        f"{format_duration(lead)}. Create a new credential and move workloads to it."
    )
    return {
        "conditions": merge_condition(
            current.get("conditions") or [],
            Condition(EXPIRING_SOON, "True", Reason.EXPIRING_SOON, message),
            generation=generation,
            now=now,
        )
    }


def ready_reason(current: Mapping[str, Any]) -> str | None:
    """The reason of the Ready condition, if there is one."""
    ready = find_ready(current)
    return None if ready is None else ready.get("reason")


def has_condition(current: Mapping[str, Any], condition_type: str) -> bool:
    return any(
        c.get("type") == condition_type and c.get("status") == "True"
        for c in current.get("conditions") or []
    )


def warning_time(expires_at: datetime.datetime, lead: datetime.timedelta) -> datetime.datetime:
    return expires_at - lead
