"""Rules of a FederationTrust's status: which check decides Ready, the roles, the trust limit."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubeiam.domain.conditions import (
    READY,
    Condition,
    Reason,
    format_time,
    merge_condition,
    parse_time,
)
from kubeiam.domain.credentials import display_name, effective_roles

__all__ = [
    "IssuerCheck",
    "Problem",
    "TrustFacts",
    "TrustRank",
    "desired_status",
    "display_name",
    "effective_roles",
    "issuer_allowed",
    "over_limit",
    "ready_condition",
]


@dataclass(frozen=True)
class Problem:
    """Something that keeps a trust from working, as the Ready condition will say it."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class IssuerCheck:
    """The outcome of the last check of the issuer's discovery document and keys."""

    checked_at: datetime.datetime
    problem: Problem | None = None
    key_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustFacts:
    """What a trust's status is computed from, read off the object and the world.

    `problems` are what the operator found wrong with the spec itself, in the order a person
    should fix them (the condition, then the guard rails); `issuer` is None while no check has
    finished yet.
    """

    generation: int
    issuer_url: str
    disabled: bool
    account_name: str
    account_roles: tuple[str, ...] | None
    account_disabled: bool
    scoped_roles: tuple[str, ...] | None
    issuer_is_allowed: bool
    over_limit: bool
    max_trusts: int
    problems: tuple[Problem, ...] = ()
    issuer: IssuerCheck | None = None
    inline_keys: bool = False
    current_status: Mapping[str, Any] = field(default_factory=dict)


def issuer_allowed(issuer: str, allowed: Sequence[str]) -> bool:
    """An empty list allows every https issuer; otherwise the URL must be listed (trailing slash
    aside, which issuers disagree on)."""
    if not allowed:
        return True
    wanted = issuer.rstrip("/")
    return any(entry.rstrip("/") == wanted for entry in allowed)


@dataclass(frozen=True, order=True)
class TrustRank:
    """Where a trust stands among its account's trusts: the oldest keep their place."""

    created_at: str
    name: str
    uid: str = field(compare=False)


def over_limit(trusts: Iterable[TrustRank], limit: int) -> frozenset[str]:
    """The UIDs of the trusts beyond the first `limit`, oldest first (name breaks ties), so a
    new trust can never push out one that works already."""
    ranked = sorted(trusts)
    return frozenset(rank.uid for rank in ranked[limit:])


def ready_condition(facts: TrustFacts) -> Condition:
    """The first thing that stops the trust from working, or Ready.

    The order is what a person fixes first: the account, then the policy and the spec, then the
    switch they turned off, then the issuer, which is outside their hands.
    """

    def false(reason: Reason, message: str) -> Condition:
        return Condition(type=READY, status="False", reason=reason, message=message)

    if facts.account_roles is None:
        return false(
            Reason.ACCOUNT_MISSING,
            f"ServiceAccount {facts.account_name!r} does not exist in this namespace; the trust "
            "works once it is created.",
        )
    if not facts.issuer_is_allowed:
        return false(
            Reason.ISSUER_NOT_ALLOWED,
            f"spec.issuer {facts.issuer_url!r} is not in the organisation's allowed issuers "
            "(KUBEIAM_ALLOWED_ISSUERS); ask the platform team to allow it.",
        )
    if facts.problems:
        first = facts.problems[0]
        return false(first.reason, first.message)
    if facts.over_limit:
        return false(
            Reason.TOO_MANY_TRUSTS,
            f"ServiceAccount {facts.account_name!r} already has {facts.max_trusts} trusts, the "
            "organisation's limit (KUBEIAM_MAX_TRUSTS_PER_ACCOUNT); the oldest ones count. "
            "Delete one to make room.",
        )
    if facts.disabled:
        return false(
            Reason.DISABLED,
            "The trust is disabled (spec.disabled is true): no token is exchanged through it.",
        )
    if facts.account_disabled:
        return false(
            Reason.ACCOUNT_DISABLED,
            f"ServiceAccount {facts.account_name!r} is disabled: no token is issued for it.",
        )
    if facts.issuer is None:
        return Condition(
            type=READY,
            status="Unknown",
            reason=Reason.ISSUER_UNREACHABLE,
            message=f"The issuer {facts.issuer_url} has not been checked yet.",
        )
    if facts.issuer.problem is not None:
        return false(facts.issuer.problem.reason, facts.issuer.problem.message)
    source = "given inline in spec.jwks" if facts.inline_keys else "fetched from the issuer"
    kids = ", ".join(facts.issuer.key_ids) or "none named"
    return Condition(
        type=READY,
        status="True",
        reason=Reason.READY,
        message=(
            f"Tokens from {facts.issuer_url} that pass the audience, subject and condition "
            f"checks may act as {facts.account_name!r}; signing keys {source}: {kids}."
        ),
    )


def desired_status(
    facts: TrustFacts, *, now: datetime.datetime, recheck_after: datetime.timedelta
) -> dict[str, Any]:
    """The status the trust should have.

    `lastCheckedAt` moves only when something else changes, or when the recorded time is older
    than `recheck_after`: a restart or a routine refresh that finds the same keys costs no write.
    """
    current = facts.current_status
    condition = ready_condition(facts)
    status: dict[str, Any] = {
        "observedGeneration": facts.generation,
        "conditions": merge_condition(
            current.get("conditions") or [], condition, generation=facts.generation, now=now
        ),
        "effectiveRoles": (
            effective_roles(facts.account_roles, facts.scoped_roles)
            if facts.account_roles is not None
            else []
        ),
    }
    if facts.issuer is not None:
        status["jwksKeyIds"] = list(facts.issuer.key_ids)
        status["lastCheckedAt"] = _checked_at(current, status, facts.issuer, recheck_after)
    return status


def _checked_at(
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    check: IssuerCheck,
    recheck_after: datetime.timedelta,
) -> str:
    recorded = current.get("lastCheckedAt")
    if not recorded:
        return format_time(check.checked_at)
    unchanged = all(current.get(key) == value for key, value in desired.items())
    age = check.checked_at - parse_time(recorded)
    if unchanged and age < recheck_after:
        return str(recorded)
    return format_time(check.checked_at)


def stale(
    *,
    recorded_roles: Sequence[str] | None,
    ready_reason: str | None,
    scoped_roles: Sequence[str] | None,
    account_roles: Sequence[str],
    account_disabled: bool,
) -> bool:
    """Whether a trust's status (`recorded_roles`: its effectiveRoles) no longer follows its
    account (roles, missing, disabled), so that an account's change must reconcile it."""
    wanted = effective_roles(account_roles, scoped_roles)
    if recorded_roles is None or list(recorded_roles) != wanted:
        return True
    if ready_reason == Reason.ACCOUNT_MISSING:
        return True
    return account_disabled != (ready_reason == Reason.ACCOUNT_DISABLED)


def misplaced(ready_reason: str | None, *, over_limit: bool) -> bool:
    """Whether a trust's Ready reason is on the wrong side of its account's trust limit: Ready
    while over it, or TooManyTrusts while within it."""
    return ready_reason == (Reason.READY if over_limit else Reason.TOO_MANY_TRUSTS)
