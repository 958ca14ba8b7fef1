"""The AuthenticationConfiguration that makes a kube-apiserver accept kube-iam's access tokens.

Pure: the document is built from the issuer, the audience and the CA; the control plane writes
it to a file and passes it with `--authentication-config`. docs/tokens.md shows the same
document for a user's own cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

API_VERSION = "apiserver.config.k8s.io/v1"
# What an identity from a kube-iam token is called at the API server: `kube-iam:<clientId>`, in
# groups `kube-iam:role:<role>`. Prefixed so no token can claim `system:` names or a group
# another authenticator hands out.
USERNAME_PREFIX = "kube-iam:"
ROLE_GROUP_PREFIX = "kube-iam:role:"


@dataclass(frozen=True)
class TokenIssuer:
    """Where the local control plane expects kube-iam's token server, recorded at `up`."""

    url: str  # https://127.0.0.1:<port>, the token server's KUBEIAM_TOKEN_ISSUER
    port: int
    audience: str  # the audience a token must carry for this API server
    cert_dir: str  # tls.crt and tls.key for the token server (KUBEIAM_TOKEN_CERT_DIR)
    ca_file: str  # the CA that signed them, which the API server trusts for this issuer


# The uid is the way in: the credential's id, or for a token from a token exchange (which names
# no credential) the trust's uid. A `claim` mapping would refuse every exchanged token; optional
# fields (`[?...]`) because a plain index of a missing claim is an error, and `value()` of none
# refuses a token that names neither.
UID_EXPRESSION = "claims[?'kubeiam.io/credential_id'].or(claims[?'kubeiam.io/trust_uid']).value()"


def _cel_string(value: str) -> str:
    # The prefixes are constants of this module; refuse anything that would need escaping.
    if "'" in value or "\\" in value:
        raise ValueError("a CEL string literal here may hold neither ' nor \\")
    return f"'{value}'"


def groups_expression(prefix: str = ROLE_GROUP_PREFIX) -> str:
    """CEL turning the space-separated `scope` claim into prefixed groups; no scope, no group."""
    return (
        "has(claims.scope) ? claims.scope.split(' ')"
        f".filter(r, r != '').map(r, {_cel_string(prefix)} + r) : []"
    )


def authentication_config(issuer: str, audience: str, ca_pem: str) -> dict[str, Any]:
    """One JWT authenticator for kube-iam's issuer: the username is the token's `sub` (the
    account's clientId), the groups its roles, and `extra` says which credential it came from."""
    return {
        "apiVersion": API_VERSION,
        "kind": "AuthenticationConfiguration",
        "jwt": [
            {
                "issuer": {
                    "url": issuer,
                    "audiences": [audience],
                    "certificateAuthority": ca_pem,
                },
                "claimValidationRules": [
                    # RFC 9068 tokens always name their client; a token without one is not ours.
                    {
                        "expression": "has(claims.client_id) && claims.client_id == claims.sub",
                        "message": "the token's client_id must be its subject",
                    }
                ],
                "claimMappings": {
                    "username": {"claim": "sub", "prefix": USERNAME_PREFIX},
                    "groups": {"expression": groups_expression()},
                    "uid": {"expression": UID_EXPRESSION},
                    "extra": [
                        {
                            "key": "kubeiam.io/namespace",
                            "valueExpression": "claims['kubeiam.io/namespace']",
                        },
                        {
                            "key": "kubeiam.io/account",
                            "valueExpression": "claims['kubeiam.io/account']",
                        },
                    ],
                },
            }
        ],
    }
