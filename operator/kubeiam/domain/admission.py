"""Who may do what: the admission rules, as pure functions over plain data.

The webhook (controllers/admission.py) gathers the facts (the request, the account, the answers
of SubjectAccessReviews) and these functions decide. Each refusal names its rule and the field,
so `kubectl` shows the person what to change or whom to ask.

The rules:
- role-catalogue: every role named must be in the organisation's catalogue (when one is set);
- allowed-scopes: an account's scope must be one organisation policy allows;
- scope-down: granting a role needs the RBAC verb `bind` on `roles.iam.kubeiam.io` for its slug;
- owners: only an account's owners, or whoever holds the verb `manage` on it, may change or
  delete the account and create, change or delete its credentials and trusts; the owners judged
  are the account's before the change, so nobody makes themselves an owner;
- account-exists: a credential or trust must name an account that exists;
- created-by: the creator stamp is the requester's on create and never changes afterwards.

Roles compose: an unset `scopedRoles` means all of the account's roles and an empty one none, so
an update that removes or widens it needs `bind` on every role its effective grant adds.
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
READ = "get"  # whoever may read an account may be told its owners
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
    CREATED_BY = "created-by"


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
    # The created-by annotation of the object as it would be stored, and as it was.
    new_creator: str | None = None
    old_creator: str | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.new_spec if self.new_spec is not None else (self.old_spec or {})

    @property
    def spec_changed(self) -> bool:
        return self.operation != Operation.UPDATE or self.new_spec != self.old_spec

    @property
    def account_name(self) -> str:
        """The account the request is about: the object itself, or the one it names."""
        if self.kind == Kind.ACCOUNT:
            return self.name
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

    roles: tuple[str, ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AccountFacts:
        metadata = body.get("metadata") or {}
        return cls.from_spec(
            str(metadata.get("name") or ""),
            body.get("spec") or {},
            deleting=bool(metadata.get("deletionTimestamp")),
        )

    @classmethod
    def from_spec(
        cls, name: str, spec: Mapping[str, Any], *, deleting: bool = False
    ) -> AccountFacts:
        owners = tuple(
            Owner(kind=str(o.get("kind") or ""), name=str(o.get("name") or ""))
            for o in spec.get("owners") or ()
        )
        roles = tuple(str(role) for role in spec.get("roles") or ())
        return cls(name=name, owners=owners, deleting=deleting, roles=roles)


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

    account: str | None = None  # the account to read: a credential's or a trust's


def _roles(spec: Mapping[str, Any] | None, key: str) -> tuple[str, ...] | None:
    """The roles listed under `key`, or None when the field is unset."""
    if spec is None or spec.get(key) is None:
        return None
    return tuple(str(role) for role in spec[key])


def _key(request: Request) -> str:
    return "roles" if request.kind == Kind.ACCOUNT else "scopedRoles"


def granted_roles(request: Request, account_roles: Collection[str] = ()) -> tuple[str, ...]:
    """The roles this request grants that were not granted before, in the order given.

    Removing a role grants nothing, and neither does re-stating one already there: a catalogue
    that shrank later must not block an unrelated edit of an old object. A credential or trust
    grants its account's roles (`account_roles`) while `scopedRoles` is unset, none of them
    when it is empty: an update that removes it grants back what the old list left out. A new
    credential or trust with no `scopedRoles` grants what its owners may hand out already, so
    only the roles it names count.
    """
    if request.operation == Operation.DELETE:
        return ()
    key = _key(request)
    new = _roles(request.new_spec, key)
    if request.operation == Operation.CREATE:
        return new or ()
    old = _roles(request.old_spec, key)
    scoped = request.kind != Kind.ACCOUNT
    before = set(account_roles if old is None and scoped else old or ())
    after = tuple(account_roles) if new is None and scoped else new or ()
    return tuple(role for role in dict.fromkeys(after) if role not in before)


def _field_of(request: Request, role: str) -> str:
    """The field that grants `role`: its entry in the list, or the list itself when unset."""
    listed = _roles(request.new_spec, _key(request)) or ()
    if role in listed:
        return f"{request.roles_field}[{listed.index(role)}]"
    return request.roles_field


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
        _field_of(request, role),
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
    """What needs an owner: changing an account's spec or deleting it; creating, deleting, or
    changing the spec of a credential or trust. Creating an account is RBAC's (and
    scope-down's) alone."""
    if request.kind == Kind.ACCOUNT and request.operation == Operation.CREATE:
        return False
    return request.spec_changed


def creator_refusal(request: Request) -> Refusal | None:
    """created-by: on create, the stamp is the requester (the mutating webhook writes it when the
    manifest leaves it out); afterwards it never changes, not even to the requester's name."""
    field = f"metadata.annotations[{CREATED_BY_ANNOTATION}]"
    who = request.requester.username or "an anonymous user"
    if request.operation == Operation.CREATE:
        if request.new_creator == (request.requester.username or None):
            return None
        if request.new_creator is None:
            return Refusal(
                Rule.CREATED_BY,
                field,
                "missing: kube-iam's mutating webhook writes it on create; is the"
                " MutatingWebhookConfiguration kube-iam registered?",
            )
        return Refusal(
            Rule.CREATED_BY,
            field,
            f"kube-iam records here who created the object; {who} may not set it to"
            f" {request.new_creator!r}: leave it out, kube-iam writes it",
        )
    if request.operation == Operation.DELETE or request.new_creator == request.old_creator:
        return None
    before = repr(request.old_creator) if request.old_creator is not None else "unset"
    after = repr(request.new_creator) if request.new_creator is not None else "unset"
    return Refusal(
        Rule.CREATED_BY,
        field,
        f"kube-iam records here who created the object; {who} may not change it from {before}"
        f" to {after}",
    )


def checks(request: Request, policy: Policy) -> Refusal | Checks:
    """The refusals that need no API call, else what to look up before deciding."""
    for refusal in (
        creator_refusal(request),
        catalogue_refusal(request, policy),
        scope_refusal(request, policy),
    ):
        if refusal is not None:
            return refusal
    if request.kind == Kind.ACCOUNT or not needs_owner(request):
        return Checks()
    return Checks(account=request.account_name or None)


def account_facts(request: Request, fetched: AccountFacts | None) -> AccountFacts | None:
    """The account the rules judge by: for an account itself, the object as it was before this
    request (its owners then, not the ones the request asks for); else the one read."""
    if request.kind != Kind.ACCOUNT:
        return fetched
    if request.old_spec is None:
        return None
    return AccountFacts.from_spec(request.name, request.old_spec)


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


def _object_of(request: Request) -> str:
    """What the request acts on, as the refusal names it."""
    if request.kind == Kind.ACCOUNT:
        return f"ServiceAccount '{request.name}'"
    return f"{_plural(request.kind)} of ServiceAccount '{request.account_name}'"


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
    request: Request,
    account: AccountFacts | None,
    *,
    may_manage: bool,
    show_owners: bool = True,
) -> Refusal | None:
    """owners: the account's owners, or holders of `manage` on it, and nobody else.

    A request about a credential or trust whose account is gone needs `manage`, except a
    delete: what is left of a deleted account may always be cleaned away. The owners are
    named only to whoever may read the account (`show_owners`).
    """
    if not needs_owner(request) or may_manage:
        return None
    if account is None and request.operation == Operation.DELETE:
        return None
    if account is not None and is_owner(request.requester, account.owners):
        return None
    if not show_owners:
        who = "its owners"
    elif account is not None and account.owners:
        who = f"its owners ({', '.join(f'{o.kind} {o.name}' for o in account.owners)})"
    else:
        who = "its owners (it lists none)"
    return Refusal(
        Rule.OWNERS,
        "spec.owners" if request.kind == Kind.ACCOUNT else "spec.serviceAccountName",
        f"{request.requester.username or 'an anonymous user'} may not {_verb(request.operation)}"
        f" {_object_of(request)}: only {who} or whoever holds the RBAC verb '{MANAGE}' on"
        f" {ACCOUNTS_RESOURCE}.{GROUP} '{request.account_name}' in namespace"
        f" '{request.namespace}' may",
    )


def scope_down_refusal(
    request: Request, may_bind: Mapping[str, bool], account_roles: Collection[str] = ()
) -> Refusal | None:
    """scope-down: every granted role needs `bind` on roles.iam.kubeiam.io for its slug."""
    granted = granted_roles(request, account_roles)
    missing = [role for role in granted if not may_bind.get(role, False)]
    if not missing:
        return None
    listed = ", ".join(f"'{role}'" for role in missing)
    field = _field_of(request, missing[0])
    unset = (
        "; unset spec.scopedRoles means all of the account's roles"
        if field == "spec.scopedRoles"
        else ""
    )
    return Refusal(
        Rule.SCOPE_DOWN,
        field,
        f"{request.requester.username or 'an anonymous user'} may grant only roles they hold:"
        f" granting {listed} needs the RBAC verb '{BIND}' on {ROLES_RESOURCE}.{GROUP} with that"
        f" role as resource name in namespace '{request.namespace}'{unset}",
    )


def decide(
    request: Request,
    account: AccountFacts | None,
    *,
    may_manage: bool,
    may_bind: Mapping[str, bool],
    show_owners: bool = True,
) -> Refusal | None:
    """The first refusal, in the order a person fixes things: the account, who, which roles.

    `account` is the one a credential or trust names, as read; an account's own request is
    judged by the object as it was (account_facts)."""
    account = account_facts(request, account)
    roles = account.roles if account is not None and request.kind != Kind.ACCOUNT else ()
    for refusal in (
        account_refusal(request, account),
        owner_refusal(request, account, may_manage=may_manage, show_owners=show_owners),
        scope_down_refusal(request, may_bind, roles),
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
    """What the mutating webhook writes into the created-by annotation: (whether to write, the
    value). The requester on create, and the old value on an update that left it out (a GitOps
    apply that omits it is a no-op). A value the request sets itself is left as it is, for
    the validating webhook to judge (creator_refusal): a forgery is refused, not rewritten."""
    new = (new_annotations or {}).get(CREATED_BY_ANNOTATION)
    if new is not None:
        return False, None
    if operation == Operation.CREATE:
        want = requester.username or None
    elif operation == Operation.UPDATE:
        want = (old_annotations or {}).get(CREATED_BY_ANNOTATION)
    else:
        return False, None
    return want is not None, want


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
