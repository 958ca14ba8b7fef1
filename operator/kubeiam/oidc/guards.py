"""Guard rails on trust conditions: a trust on a shared issuer must pin its tenant, by id if it can.

A multi-tenant issuer (GitHub Actions, gitlab.com, HCP Terraform, Google, Buildkite) signs
tokens for every customer with the same key: a trust whose condition does not fix the
repository, project or organisation trusts all of them. What "pins" means, on the condition's
shape (oidc/cel/shape.py):

- An atom pins claim `c` when it requires `c` to equal a fixed value:
  `claims.c == "v"`, `"v" == claims.c`, `claims["c"] == "v"`, `claims.c in ["v", "w"]` (a list
  of literals only), with each value a non-empty string or an integer; and
  `claims.c.startsWith("p")` when `p` has a "/" after at least one character, so the prefix
  fixes a whole owner or group path segment ("acme/" fixes the owner acme; "acme" would also
  admit "acme-evil/app"). What such a prefix fixes is the owner, so on `repository` it counts
  as pinning `repository_owner`, and on `project_path` as pinning `namespace_path`: the rename
  warning then asks for the owner's id, not the repository's.
- Nothing else pins: `!=`, `has()`, `matches()`, `endsWith()`, `contains()`, comparisons with
  another claim, macros, and anything under `!` (a negation says what a token is not).
- `a && b` holds only when both hold, so it pins what either side pins; `a || b` can hold
  through either side, so it pins only what both pin; `c ? a : b` can hold as `c && a` or as
  `!c && b`. A literal `false` can never hold and so pins vacuously.

The analysis keeps, for each way the condition can be true, the set of claims that way pins
(only a handful of labels are tracked at once, so the sets stay tiny): the trust is pinned when
every way pins a tenant claim. The rename warning uses the same analysis with the name claim
and its id claim as the labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from kubeiam.domain.conditions import Reason
from kubeiam.oidc.cel.condition import CompiledCondition
from kubeiam.oidc.cel.shape import (
    Choice,
    Claim,
    Compare,
    Logical,
    Method,
    Node,
    Not,
    Value,
    ValueList,
)
from kubeiam.oidc.cel.tree import FIELD

__all__ = ["ID_TWINS", "Finding", "is_pinned", "review_condition"]

# Claims that name something a person can rename, or delete and create again under the same name
# for someone else, and the immutable id the same issuers put beside them.
ID_TWINS: Final = {
    "repository": "repository_id",
    "repository_owner": "repository_owner_id",
    "project_path": "project_id",
    "namespace_path": "namespace_id",
    "terraform_organization_name": "terraform_organization_id",
    "organization_slug": "organization_id",
}
_RENAMED: Final = {
    "repository": "repository",
    "repository_owner": "owner (user or organisation)",
    "project_path": "project",
    "namespace_path": "group or namespace",
    "terraform_organization_name": "organisation",
    "organization_slug": "organisation",
}
# A path prefix ending in "/" fixes the owner part of these claims, not the whole claim.
_OWNER_OF_PATH: Final = {"repository": "repository_owner", "project_path": "namespace_path"}
# What the known shared issuers mint tokens for, and the claims that name their tenants.
_TENANCY: Final = {
    "https://token.actions.githubusercontent.com": (
        "every GitHub repository",
        ("repository", "repository_id", "repository_owner", "repository_owner_id"),
    ),
    "https://gitlab.com": (
        "every project on gitlab.com",
        ("project_path", "project_id", "namespace_path", "namespace_id"),
    ),
    "https://app.terraform.io": (
        "every HCP Terraform organisation",
        ("terraform_organization_id", "terraform_organization_name", "terraform_workspace_id"),
    ),
    "https://accounts.google.com": ("every Google account", ("sub", "hd")),
    "https://agent.buildkite.com": (
        "every Buildkite organisation",
        ("organization_slug", "organization_id"),
    ),
}
# Tenant claims that do not name the tenant on one issuer: a GitHub organisation may customise
# its subject to leave the repository and owner out, so equal subjects can come from anyone.
_NOT_A_TENANT: Final = {"https://token.actions.githubusercontent.com": frozenset({"sub"})}

# Each way a condition can be true, as the set of labels that way pins.
Ways = frozenset[frozenset[str]]
_NEVER: Final[Ways] = frozenset()
_UNPINNED: Final[Ways] = frozenset({frozenset()})


@dataclass(frozen=True)
class Finding:
    """What the guard rails say about a condition; `refuses` makes the trust not Ready."""

    reason: Reason
    message: str
    refuses: bool


def review_condition(
    condition: CompiledCondition,
    *,
    issuer: str,
    multi_tenant_issuers: Sequence[str],
    tenant_claims: Sequence[str],
) -> list[Finding]:
    """The guard rails' findings on a compiled condition for this issuer; empty when all is well.

    A refusing ConditionTooBroad when the issuer is multi-tenant and some way the condition can
    be true pins no tenant claim; a RenameableClaim warning for each name claim that some way
    pins without its id twin.
    """
    findings: list[Finding] = []
    expression = condition.expression
    normal = _normal(issuer)
    if normal in {_normal(url) for url in multi_tenant_issuers}:
        excluded = _NOT_A_TENANT.get(normal, frozenset())
        tenants = [claim for claim in tenant_claims if claim not in excluded]
        if not _pinned(expression, frozenset(tenants)):
            findings.append(_too_broad(issuer, normal, expression, tenants))
    for name, twin in ID_TWINS.items():
        ways = _ways(expression, {name: "name", twin: "id"})
        if any("name" in way and "id" not in way for way in ways):
            findings.append(
                Finding(
                    Reason.RENAMEABLE_CLAIM,
                    f"{FIELD}: claims.{name} is a name that can change hands: a renamed"
                    f" {_RENAMED[name]}, or one deleted and created again under the same name"
                    f" by someone else, would be trusted; require claims.{twin} to equal its"
                    " id as well.",
                    refuses=False,
                )
            )
    return findings


def is_pinned(condition: CompiledCondition, claims: Sequence[str]) -> bool:
    """Whether every way the condition can be true requires one of `claims` to be fixed."""
    return _pinned(condition.expression, frozenset(claims))


def _pinned(expression: Node, claims: frozenset[str]) -> bool:
    return all(_ways(expression, dict.fromkeys(claims, "pinned")))


def _too_broad(issuer: str, normal: str, expression: Node, tenant_claims: Sequence[str]) -> Finding:
    audience, known = _TENANCY.get(normal, ("many tenants alike", ()))
    suggested = [claim for claim in known if claim in tenant_claims] or list(tenant_claims)
    compared = sorted({claim for claim in _atoms(expression) if claim in tenant_claims})
    if not suggested:
        found = "no tenant claims are configured"
    elif compared:
        found = (
            f"it compares {', '.join(compared)} to a fixed value, but not on every way it can"
            " be true"
        )
    else:
        found = "found none"
    example = next((claim for claim in suggested if claim.endswith("_id")), None)
    hint = f', as in claims.{example} == "123456"' if example else ""
    return Finding(
        Reason.CONDITION_TOO_BROAD,
        f"{FIELD}: {issuer} issues tokens to {audience}; the condition must require one of the"
        f" claims {', '.join(suggested) or '(none)'} to equal a fixed value ({found}){hint}.",
        refuses=True,
    )


def _normal(url: str) -> str:
    """An issuer URL as compared here: scheme and host in lower case, no trailing slash."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _ways(node: Node, labels: Mapping[str, str]) -> Ways:
    """Each way `node` can be true, as the labels (of pinned claims) that way pins."""
    if isinstance(node, Logical):
        left, right = _ways(node.left, labels), _ways(node.right, labels)
        if node.operator == "||":
            return left | right
        return frozenset(a | b for a in left for b in right)
    if isinstance(node, Choice):
        condition = _ways(node.condition, labels)
        then = _ways(node.then, labels)
        return frozenset(a | b for a in condition for b in then) | _ways(node.otherwise, labels)
    if isinstance(node, Value) and node.value is False:
        return _NEVER
    if isinstance(node, Compare) and node.operator == "in" and node.right == ValueList(()):
        return _NEVER
    claim = _pin(node)
    if claim is not None and claim in labels:
        return frozenset({frozenset({labels[claim]})})
    return _UNPINNED  # Not, Opaque, and atoms that pin nothing tracked


def _pin(node: Node) -> str | None:
    """The claim an atom requires to equal a fixed value, if it is such an atom."""
    if isinstance(node, Compare):
        if node.operator == "==":
            for side, other in ((node.left, node.right), (node.right, node.left)):
                if isinstance(side, Claim) and isinstance(other, Value) and _fixed(other):
                    return side.name
        if (
            node.operator == "in"
            and isinstance(node.left, Claim)
            and isinstance(node.right, ValueList)
            and all(_fixed(item) for item in node.right.items)
        ):
            return node.left.name
    if (
        isinstance(node, Method)
        and node.name == "startsWith"
        and isinstance(node.target, Claim)
        and len(node.args) == 1
        and isinstance(prefix := node.args[0], Value)
        and isinstance(prefix.value, str)
        and prefix.value.find("/") >= 1
    ):
        return _OWNER_OF_PATH.get(node.target.name, node.target.name)
    return None


def _fixed(value: Value) -> bool:
    """A value a claim can be pinned to: a non-empty string or an integer."""
    if isinstance(value.value, bool):
        return False
    return isinstance(value.value, int) or (isinstance(value.value, str) and value.value != "")


def _atoms(node: Node) -> Iterator[str]:
    """Every claim some atom pins, wherever it stands (negated, or in one branch only)."""
    if isinstance(node, Logical):
        yield from _atoms(node.left)
        yield from _atoms(node.right)
    elif isinstance(node, Choice):
        for part in (node.condition, node.then, node.otherwise):
            yield from _atoms(part)
    elif isinstance(node, Not):
        yield from _atoms(node.operand)
    else:
        claim = _pin(node)
        if claim is not None:
            yield claim
