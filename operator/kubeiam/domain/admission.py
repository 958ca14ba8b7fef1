"""Who may do what: the admission rules, as pure functions over plain data.

The webhook (controllers/admission.py) gathers the facts (the request, the account, the answers
of SubjectAccessReviews) and these functions decide. Each refusal names its rule and the field,
so `kubectl` shows the person what to change or whom to ask.

The rules:
- role-catalogue: every role named must be in the organisation's catalogue (when one is set);
- allowed-scopes: an account's scope must be one organisation policy allows;
- scope-down: granting a role needs the RBAC verb `bind` on `roles.iam.kubeiam.io` for its slug;
- owners: only an account's owners, or whoever holds the verb `manage` on it, may create, change
  or delete its credentials and trusts;
- account-exists: a credential or trust must name an account that exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ROLES_RESOURCE = "roles"
ACCOUNTS_RESOURCE = "serviceaccounts"
BIND = "bind"
MANAGE = "manage"
GROUP = "iam.kubeiam.io"
# Stamped by the mutating webhook on create, kept by it on update; the operator copies it into
# status.createdBy. An annotation because the webhook that sees the request cannot write status,
# and the replica that reconciles the object may not be the one that admitted it.
CREATED_BY_ANNOTATION = "iam.kubeiam.io/created-by"


class Kind(StrEnum):
    ACCOUNT = "ServiceAccount"
    CREDENTIAL = "ServiceAccountCredential"
    TRUST = "FederationTrust"


class Operation(StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class Rule(StrEnum):
    ROLE_CATALOGUE = "role-catalogue"
    ALLOWED_SCOPES = "allowed-scopes"
    SCOPE_DOWN = "scope-down"
    OWNERS = "owners"
    ACCOUNT_EXISTS = "account-exists"


@dataclass(frozen=True)
class Requester:
    """Who sent the request, as the API server authenticated them."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_userinfo(cls, userinfo: Mapping[str, Any]) -> Requester:
        extra = userinfo.get("extra") or {}
        return cls(
            username=str(userinfo.get("username") or ""),
            uid=str(userinfo.get("uid") or ""),
            groups=tuple(str(group) for group in userinfo.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(str(x) for x in v)) for k, v in extra.items())),
        )


@dataclass(frozen=True)
class Policy:
    """The organisation's admission policy. An empty catalogue is not enforced."""

    role_catalogue: frozenset[str] = frozenset()
    allowed_scopes: frozenset[str] = frozenset({"organization", "project"})


@dataclass(frozen=True)
class Request:
    """One admission request, reduced to what the rules read."""

    kind: Kind
    operation: Operation
    namespace: str
    name: str
    requester: Requester
    new_spec: Mapping[str, Any] | None = None
    old_spec: Mapping[str, Any] | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.new_spec if self.new_spec is not None else (self.old_spec or {})

    @property
    def spec_changed(self) -> bool:
        return self.operation != Operation.UPDATE or self.new_spec != self.old_spec

    @property
    def account_name(self) -> str:
        return str(self.spec.get("serviceAccountName") or "")

    @property
    def roles_field(self) -> str:
        return "spec.roles" if self.kind == Kind.ACCOUNT else "spec.scopedRoles"


@dataclass(frozen=True)
class Owner:
    kind: str  # User or Group
    name: str


@dataclass(frozen=True)
class AccountFacts:
    """The account a credential or trust names, as read at admission."""

    name: str
    owners: tuple[Owner, ...] = ()
    deleting: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AccountFacts:
        spec = body.get("spec") or {}
        owners = tuple(
            Owner(kind=str(o.get("kind") or ""), name=str(o.get("name") or ""))
            for o in spec.get("owners") or ()
        )
        metadata = body.get("metadata") or {}
        return cls(
            name=str(metadata.get("name") or ""),
            owners=owners,
            deleting=bool(metadata.get("deletionTimestamp")),
        )


@dataclass(frozen=True)
class Refusal:
    rule: Rule
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (rule: {self.rule})"


@dataclass(frozen=True)
class Checks:
    """What the webhook must find out from the API server before it can decide."""

    account: str | None = None  # the account to read
    bind_roles: tuple[str, ...] = ()  # the roles whose `bind` to review


def _roles(spec: Mapping[str, Any] | None, key: str) -> tuple[str, ...]:
    if spec is None:
        return ()
    return tuple(str(role) for role in spec.get(key) or ())


def granted_roles(request: Request) -> tuple[str, ...]:
    """The roles this request grants that were not granted before, in the order given.

    Removing a role grants nothing, and neither does re-stating one already there: a catalogue
    that shrank later must not block an unrelated edit of an old object.
    """
    if request.operation == Operation.DELETE:
        return ()
    key = "roles" if request.kind == Kind.ACCOUNT else "scopedRoles"
    before = set(_roles(request.old_spec, key)) if request.operation == Operation.UPDATE else set()
    return tuple(role for role in _roles(request.new_spec, key) if role not in before)


def _index_of(request: Request, role: str) -> int:
    key = "roles" if request.kind == Kind.ACCOUNT else "scopedRoles"
    return list(_roles(request.new_spec, key)).index(role)


def catalogue_refusal(request: Request, policy: Policy) -> Refusal | None:
    """role-catalogue: each granted role must be one the organisation defines."""
    if not policy.role_catalogue:
        return None
    unknown = [role for role in granted_roles(request) if role not in policy.role_catalogue]
    if not unknown:
        return None
    role = unknown[0]
    close = difflib.get_close_matches(role, sorted(policy.role_catalogue), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    others = f" (and {', '.join(repr(r) for r in unknown[1:])})" if len(unknown) > 1 else ""
    return Refusal(
        Rule.ROLE_CATALOGUE,
        f"{request.roles_field}[{_index_of(request, role)}]",
        f"role '{role}'{others} is not in the organisation's role catalogue{hint}",
    )


def scope_refusal(request: Request, policy: Policy) -> Refusal | None:
    """allowed-scopes: an account's scope, when set or changed, must be allowed by policy."""
    if request.kind != Kind.ACCOUNT or request.operation == Operation.DELETE:
        return None
    scope = str((request.new_spec or {}).get("scope") or "")
    if request.operation == Operation.UPDATE and scope == (request.old_spec or {}).get("scope"):
        return None
    if not scope or scope in policy.allowed_scopes:
        return None
    allowed = ", ".join(sorted(policy.allowed_scopes)) or "none"
    return Refusal(
        Rule.ALLOWED_SCOPES,
        "spec.scope",
        f"scope '{scope}' is not allowed by organisation policy (allowed: {allowed})",
    )


def needs_owner(request: Request) -> bool:
    """Credentials and trusts: creating, deleting, or changing the spec needs an owner."""
    return request.kind != Kind.ACCOUNT and request.spec_changed


def checks(request: Request, policy: Policy) -> Refusal | Checks:
    """The refusals that need no API call, else what to look up before deciding."""
    for refusal in (catalogue_refusal(request, policy), scope_refusal(request, policy)):
        if refusal is not None:
            return refusal
    account = request.account_name if needs_owner(request) else None
    return Checks(account=account or None, bind_roles=granted_roles(request))


def is_owner(requester: Requester, owners: Iterable[Owner]) -> bool:
    """Whether the requester is one of the owners: a User by name, a Group by membership."""
    for owner in owners:
        if owner.kind == "User" and owner.name == requester.username:
            return True
        if owner.kind == "Group" and owner.name in requester.groups:
            return True
    return False


def _verb(operation: Operation) -> str:
    return {Operation.CREATE: "create", Operation.UPDATE: "change", Operation.DELETE: "delete"}[
        operation
    ]


def _plural(kind: Kind) -> str:
    return "credentials" if kind == Kind.CREDENTIAL else "trusts"


def account_refusal(request: Request, account: AccountFacts | None) -> Refusal | None:
    """account-exists: a new credential or trust must name an account that exists and stays."""
    if request.kind == Kind.ACCOUNT or request.operation != Operation.CREATE:
        return None
    if account is None:
        return Refusal(
            Rule.ACCOUNT_EXISTS,
            "spec.serviceAccountName",
            f"ServiceAccount '{request.account_name}' does not exist in namespace"
            f" '{request.namespace}'; create the account first",
        )
    if account.deleting:
        return Refusal(
            Rule.ACCOUNT_EXISTS,
            "spec.serviceAccountName",
            f"ServiceAccount '{request.account_name}' in namespace '{request.namespace}' is being"
            " deleted",
        )
    return None


def owner_refusal(
    request: Request, account: AccountFacts | None, *, may_manage: bool
) -> Refusal | None:
    """owners: the account's owners, or holders of `manage` on it, and nobody else.

    A request about a credential or trust whose account is gone needs `manage`, except a
    delete: what is left of a deleted account may always be cleaned away.
    """
    if not needs_owner(request) or may_manage:
        return None
    if account is None and request.operation == Operation.DELETE:
        return None
    if account is not None and is_owner(request.requester, account.owners):
        return None
    owners = ", ".join(f"{o.kind} {o.name}" for o in account.owners) if account else ""
    who = f"its owners ({owners})" if owners else "its owners (it lists none)"
    return Refusal(
        Rule.OWNERS,
        "spec.serviceAccountName",
        f"{request.requester.username or 'an anonymous user'} may not {_verb(request.operation)}"
        f" {_plural(request.kind)} of ServiceAccount '{request.account_name}': only {who} or"
        f" whoever holds the RBAC verb '{MANAGE}' on {ACCOUNTS_RESOURCE}.{GROUP}"
        f" '{request.account_name}' in namespace '{request.namespace}' may",
    )


def scope_down_refusal(request: Request, may_bind: Mapping[str, bool]) -> Refusal | None:
    """scope-down: every granted role needs `bind` on roles.iam.kubeiam.io for its slug."""
    missing = [role for role in granted_roles(request) if not may_bind.get(role, False)]
    if not missing:
        return None
    listed = ", ".join(f"'{role}'" for role in missing)
    return Refusal(
        Rule.SCOPE_DOWN,
        f"{request.roles_field}[{_index_of(request, missing[0])}]",
        f"{request.requester.username or 'an anonymous user'} may grant only roles they hold:"
        f" granting {listed} needs the RBAC verb '{BIND}' on {ROLES_RESOURCE}.{GROUP} with that"
        f" role as resource name in namespace '{request.namespace}'",
    )


def decide(
    request: Request,
    account: AccountFacts | None,
    *,
    may_manage: bool,
    may_bind: Mapping[str, bool],
) -> Refusal | None:
    """The first refusal, in the order a person fixes things: the account, who, which roles."""
    for refusal in (
        account_refusal(request, account),
        owner_refusal(request, account, may_manage=may_manage),
        scope_down_refusal(request, may_bind),
    ):
        if refusal is not None:
            return refusal
    return None


def role_warnings(request: Request, account_roles: Collection[str]) -> list[str]:
    """scopedRoles the account does not hold narrow to nothing: worth a warning, not a refusal,
    since the account may be given the role later."""
    if request.kind == Kind.ACCOUNT or request.operation == Operation.DELETE:
        return []
    extra = [role for role in granted_roles(request) if role not in account_roles]
    if not extra:
        return []
    return [
        f"spec.scopedRoles: ServiceAccount '{request.account_name}' does not hold"
        f" {', '.join(repr(r) for r in extra)}; tokens will not carry"
        f" {'it' if len(extra) == 1 else 'them'} unless the account is given"
        f" {'it' if len(extra) == 1 else 'them'}"
    ]


def stamped_annotation(
    operation: Operation,
    requester: Requester,
    new_annotations: Mapping[str, str] | None,
    old_annotations: Mapping[str, str] | None,
) -> tuple[bool, str | None]:
    """What the created-by annotation must be: (whether to write it, the value or None to
    remove it). Set from the requester on create, whatever the manifest said; on update, kept
    as it was, so nobody can forge or drop it (a GitOps apply that omits it is a no-op)."""
    new = (new_annotations or {}).get(CREATED_BY_ANNOTATION)
    if operation == Operation.CREATE:
        want: str | None = requester.username or None
    elif operation == Operation.UPDATE:
        want = (old_annotations or {}).get(CREATED_BY_ANNOTATION)
    else:
        return False, None
    return (new != want), want


def created_by(annotations: Mapping[str, str] | None, status: Mapping[str, Any]) -> str | None:
    """status.createdBy to write: set once, from the admission stamp; never rewritten."""
    if status.get("createdBy"):
        return None
    stamp = (annotations or {}).get(CREATED_BY_ANNOTATION)
    return stamp or None


def with_created_by(
    desired: Mapping[str, Any], annotations: Mapping[str, str] | None, current: Mapping[str, Any]
) -> dict[str, Any]:
    """The desired status, plus createdBy when it is not recorded yet."""
    result = dict(desired)
    value = created_by(annotations, current)
    if value is not None:
        result["createdBy"] = value
    return result
