"""What the indices keep of each credential: its view, and the Secret it was issued (never the
data). Pure functions of a credential's body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from sys import intern
from typing import Any, overload

from kubeiam.domain import credentials as rules
from kubeiam.domain import upkeep
from kubeiam.domain.conditions import Reason
from kubeiam.kube.secrets import Issued
from kubeiam.settings import get_settings


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """What the Secret audit needs of one issued credential (an index value; never the data)."""

    namespace: str
    credential: str
    uid: str
    secret_name: str
    ended: bool
    deletes_secret: bool
    # What the Ready condition reports of the Secret: SecretDeleted, SecretReplaced or neither.
    reported: str | None
    secret_uid: str | None
    secret_hash: str

    def issued(self) -> Issued:
        return Issued(self.namespace, self.secret_name, self.uid, self.secret_uid, self.secret_hash)


@overload
def shared(text: str) -> str: ...
@overload
def shared(text: str | None) -> str | None: ...
def shared(text: str | None) -> str | None:
    """One copy of a text many index values repeat (a namespace, an account, a state), where
    each body parsed would otherwise give every value its own."""
    return None if text is None else intern(text)


def view_of(body: Mapping[str, Any]) -> rules.CredentialView:
    """The index value of one credential."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return rules.CredentialView(
        namespace=shared(metadata["namespace"]),
        name=metadata["name"],
        uid=metadata["uid"],
        account=shared(spec.get("serviceAccountName", "")),
        created_at=metadata.get("creationTimestamp", ""),
        state=shared(status.get("state")),
        revoked=bool(spec.get("revoked")),
        issued=bool(status.get("secretHash")),
        expires_at=status.get("expiresAt"),
        scoped_roles=None if spec.get("scopedRoles") is None else tuple(spec["scopedRoles"]),
        effective_roles=tuple(status.get("effectiveRoles") or ()),
        reason=shared(rules.ready_reason(status)),
        warned=rules.has_condition(status, rules.EXPIRING_SOON),
        account_uid=status.get("accountUid"),
    )


def reported(status: Mapping[str, Any]) -> str | None:
    """What the Ready condition reports of the Secret: SecretDeleted, SecretReplaced or None."""
    reason = rules.ready_reason(status)
    return reason if reason in (Reason.SECRET_DELETED, Reason.SECRET_REPLACED) else None


def issued_of(body: Mapping[str, Any]) -> Issued:
    """The Secret an issued credential's status records: what proves it is still ours."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return Issued(
        metadata["namespace"],
        upkeep.secret_name(metadata, spec, status),
        metadata["uid"],
        status.get("secretUid"),
        str(status.get("secretHash") or ""),
    )


def issued_secret_of(body: Mapping[str, Any]) -> IssuedSecret | None:
    """The audit's index value of one credential: None until it is issued."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    if not status.get("secretHash"):
        return None
    return IssuedSecret(
        namespace=shared(metadata["namespace"]),
        credential=metadata["name"],
        uid=metadata["uid"],
        secret_name=upkeep.secret_name(metadata, spec, status),
        ended=view_of(body).ended,
        deletes_secret=upkeep.deletion_policy(
            spec, status, get_settings().credentials.secret_deletion_policy
        )
        == "Delete",
        reported=reported(status),
        secret_uid=status.get("secretUid"),
        secret_hash=str(status.get("secretHash")),
    )
