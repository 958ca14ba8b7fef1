"""The credentials controller's upkeep decisions, as pure functions over what it keeps in memory:
which accounts a sweep settles, who contends for a slot, which waiting credentials an account's
change outdates, whose roles are stale, when expiry and its warning are due, which Secret a
credential has and what happens to it when the credential ends."""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeiam.domain.conditions import Reason, parse_time
from kubeiam.domain.credentials import CredentialView, effective_roles, warning_time
from kubeiam.domain.limit import Contender


def secret_name(
    metadata: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
) -> str:
    """The credential's Secret: as issued (status), else as asked (spec; a revocation may have
    overtaken the status write), else the credential's own name."""
    return str(status.get("secretName") or spec.get("secretName") or metadata["name"])


def deletion_policy(spec: Mapping[str, Any], status: Mapping[str, Any], default: str) -> str:
    """What happens to the Secret when the credential ends: as recorded at issuance, else as the
    spec asks, else the organisation's default."""
    return str(status.get("secretDeletionPolicy") or spec.get("secretDeletionPolicy") or default)


def contenders(
    views: Collection[CredentialView], *, gone: Collection[str], account_disabled: bool
) -> list[Contender]:
    """Who asks for a slot: the waiting credentials that have not ended; none at all while the
    account is disabled (a disabled account admits nobody, and keeps whom it admitted)."""
    if account_disabled:
        return []
    return [
        Contender(v.created_at, v.name, v.uid) for v in views if v.waiting and v.uid not in gone
    ]


def room_beside_replaced(
    views: Collection[CredentialView], *, gone: Collection[str], account_uid: str, limit: int
) -> int:
    """The account's limit less the credentials still Active for an earlier account of its
    name (deleted and created again): they are being ended, and count until they are."""
    outgoing = sum(1 for v in views if v.uid not in gone and v.issued_for_another(account_uid))
    return max(0, limit - outgoing)


def needs_sweep(
    views: Sequence[CredentialView], ledgers: Sequence[frozenset[str]], limit: int
) -> bool:
    """Whether the account's ledger, as last seen, has room for a waiting credential, names a
    waiting one (admitted, not issued: its admitter may have died), or names one that ended."""
    waiting = {view.uid for view in views if view.waiting}
    live = {view.uid for view in views if not view.ended}
    for ledger in ledgers:
        room = bool(waiting) and len(ledger) < limit
        if room or ledger & waiting or ledger - live:
            return True
    return False


def stale_roles(
    views: Sequence[CredentialView], account_roles: Sequence[str]
) -> list[tuple[CredentialView, list[str]]]:
    """Issued credentials whose effectiveRoles no longer follow the account's roles, with the
    roles they should have."""
    stale = []
    for view in views:
        wanted = effective_roles(account_roles, view.scoped_roles)
        if view.issued and not view.ended and list(view.effective_roles) != wanted:
            stale.append((view, wanted))
    return stale


def outdated_by_account(
    waiting: Sequence[CredentialView], *, account_disabled: bool, holders: Collection[str]
) -> list[CredentialView]:
    """Waiting credentials whose condition names the account's old state (missing, disabled, or
    anything but disabled once it is), and that the ledger did not just admit."""
    stale = {Reason.ACCOUNT_MISSING} | (set() if account_disabled else {Reason.ACCOUNT_DISABLED})
    return [
        view
        for view in waiting
        if view.uid not in holders
        and (view.reason in stale or (account_disabled and view.reason != Reason.ACCOUNT_DISABLED))
    ]


@dataclass(frozen=True)
class ExpirySchedule:
    """When a credential's expiry and its warning are due; None: not scheduled (cancelled)."""

    expire_at: datetime.datetime | None
    warn_at: datetime.datetime | None


def expiry_schedule(
    view: CredentialView, *, lead: datetime.timedelta, now: datetime.datetime
) -> ExpirySchedule | None:
    """The schedule an issued credential needs; None when there is nothing to change (no
    expiry recorded yet: a waiting credential's expiry is scheduled by its reconcile)."""
    if view.ended:
        return ExpirySchedule(None, None)
    if not view.expires_at:
        return None
    expires_at = parse_time(view.expires_at)
    if view.warned:
        return ExpirySchedule(expires_at, None)
    return ExpirySchedule(expires_at, max(warning_time(expires_at, lead), now))
