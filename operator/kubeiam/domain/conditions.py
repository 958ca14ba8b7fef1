"""Kubernetes conditions as plain data, and the one enum of every condition reason kube-iam sets."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

READY = "Ready"

ConditionStatus = Literal["True", "False", "Unknown"]


class Reason(StrEnum):
    """Every reason a kube-iam condition or event carries, CamelCase as the API conventions ask."""

    ACTIVE = "Active"
    DISABLED = "Disabled"
    # Credentials
    INVALID_EXPIRY = "InvalidExpiry"
    LIFETIME_EXCEEDED = "LifetimeExceeded"
    ACCOUNT_MISSING = "AccountMissing"
    ACCOUNT_DISABLED = "AccountDisabled"
    LIMIT_EXCEEDED = "LimitExceeded"
    ISSUED = "Issued"
    SECRET_CONFLICT = "SecretConflict"
    SECRET_REFUSED = "SecretRefused"
    SECRET_DELETED = "SecretDeleted"
    SECRET_REPLACED = "SecretReplaced"
    ACCOUNT_REPLACED = "AccountReplaced"
    EXPIRING_SOON = "ExpiringSoon"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    # Federation trusts
    READY = "Ready"
    ISSUER_NOT_ALLOWED = "IssuerNotAllowed"
    ISSUER_UNREACHABLE = "IssuerUnreachable"
    ISSUER_MISMATCH = "IssuerMismatch"
    JWKS_INVALID = "JwksInvalid"
    CONDITION_INVALID = "ConditionInvalid"
    CONDITION_TOO_BROAD = "ConditionTooBroad"
    RENAMEABLE_CLAIM = "RenameableClaim"
    TOO_MANY_TRUSTS = "TooManyTrusts"
    KEYS_ROTATED = "KeysRotated"
    # Token checks (`kube-iam trust check` and the token service)
    TOKEN_MALFORMED = "TokenMalformed"
    ALGORITHM_NOT_ALLOWED = "AlgorithmNotAllowed"
    UNKNOWN_KEY_ID = "UnknownKeyId"
    SIGNATURE_INVALID = "SignatureInvalid"
    TOKEN_EXPIRED = "TokenExpired"
    TOKEN_NOT_YET_VALID = "TokenNotYetValid"
    AUDIENCE_MISMATCH = "AudienceMismatch"
    SUBJECT_MISMATCH = "SubjectMismatch"
    CONDITION_FALSE = "ConditionFalse"
    CONDITION_ERROR = "ConditionError"
    TRUST_NOT_READY = "TrustNotReady"


@dataclass(frozen=True)
class Condition:
    """One condition as the controller decides it, before it meets the object's history."""

    type: str
    status: ConditionStatus
    reason: Reason
    message: str


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision: the form the API server stores and returns."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_ready(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Ready condition of a status, if it has one: the one lookup every kind uses."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == READY), None)


def parse_time(text: str) -> datetime.datetime:
    """A timestamp as the API server writes it (RFC 3339, `Z` or an offset), timezone-aware:
    the one parser every layer uses (Python 3.11's fromisoformat reads the `Z`)."""
    moment = datetime.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def merge_condition(
    existing: Sequence[Mapping[str, Any]],
    condition: Condition,
    *,
    generation: int,
    now: datetime.datetime,
) -> list[dict[str, Any]]:
    """Return the whole conditions list with `condition` set.

    lastTransitionTime moves only when the status flips, so a reason or message change is not
    reported as a transition. The whole list is returned because a merge patch replaces lists.
    """
    previous = next((c for c in existing if c.get("type") == condition.type), None)
    if previous is not None and previous.get("status") == condition.status:
        transition = previous.get("lastTransitionTime") or format_time(now)
    else:
        transition = format_time(now)
    updated = {
        "type": condition.type,
        "status": condition.status,
        "reason": str(condition.reason),
        "message": condition.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }
    others = [dict(c) for c in existing if c.get("type") != condition.type]
    return sorted([*others, updated], key=lambda c: str(c.get("type")))


def observed_status(current: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The status fields that say `generation` was seen, for a change that alters nothing else.

    An ended credential's spec may still change (its display name, say): its status stays
    what it is, and now says so of the new generation too.
    """
    return {
        "observedGeneration": generation,
        "conditions": [
            {**condition, "observedGeneration": generation}
            for condition in current.get("conditions") or []
        ],
    }


def changed_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields whose desired value differs from the current one."""
    return {key: value for key, value in desired.items() if current.get(key) != value}
