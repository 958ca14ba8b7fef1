"""Access tokens as JWTs per RFC 9068: the claims a grant implies, signed ES256 with `typ: at+jwt`.

Besides the registered claims (`iss`, `sub` = the account's clientId, `aud`, `exp`, `iat`,
`jti`, `client_id`, `scope`), each token names where it came from under kube-iam's own claims:
`kubeiam.io/namespace`, `kubeiam.io/account` and `kubeiam.io/credential_id` (names with a
domain, so they collide with no registered claim). A token from an exchange (RFC 8693) names the
trust instead of a credential (`kubeiam.io/trust`, `kubeiam.io/trust_uid`) and the external
identity that presented the subject token as its actor (`act`, RFC 8693 §4.1: `iss` and `sub`).
A DPoP-bound token (RFC 9449 §6.1), of either way in, carries `cnf: {"jkt": <the key's
thumbprint>}` and is answered with `token_type: DPoP`.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from typing import Any

import jwt

from kubeiam.tokens.exchange import Exchanged
from kubeiam.tokens.grants import Grant
from kubeiam.tokens.keys import ALGORITHM, SigningKey

TYPE = "at+jwt"
BEARER = "Bearer"
DPOP = "DPoP"  # RFC 9449 §5: the token_type of a DPoP-bound token
NAMESPACE_CLAIM = "kubeiam.io/namespace"
ACCOUNT_CLAIM = "kubeiam.io/account"
CREDENTIAL_CLAIM = "kubeiam.io/credential_id"
TRUST_CLAIM = "kubeiam.io/trust"
TRUST_UID_CLAIM = "kubeiam.io/trust_uid"
ACTOR_CLAIM = "act"


@dataclass(frozen=True)
class Issued:
    """A signed token and what the token response says of it."""

    token: str
    expires_in: int
    scope: str
    token_type: str = BEARER

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return f"Issued(expires_in={self.expires_in}, scope={self.scope!r})"


def claims(
    grant: Grant | Exchanged,
    *,
    issuer: str,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
    jti: str,
) -> dict[str, Any]:
    """The token's claims: `exp` is `lifetime` from now, and never past the grant's `not_after`
    (the credential's expiry, or the exchanged subject token's `exp`)."""
    issued_at = int(now.timestamp())
    expires = int((now + lifetime).timestamp())
    if grant.not_after is not None:
        expires = min(expires, int(grant.not_after.timestamp()))
    bound = {} if grant.jkt is None else {"cnf": {"jkt": grant.jkt}}
    return {
        "iss": issuer,
        "sub": grant.account.client_id,
        "aud": grant.audience,
        "exp": expires,
        "iat": issued_at,
        "nbf": issued_at,
        "jti": jti,
        **_origin(grant),
        "scope": " ".join(grant.scopes),
        **bound,
    }


def _origin(grant: Grant | Exchanged) -> dict[str, Any]:
    """Who the token was issued to, and by which way in: a credential, or a trust."""
    if isinstance(grant, Exchanged):
        return {
            "client_id": grant.account.client_id,
            ACTOR_CLAIM: {"iss": grant.subject_issuer, "sub": grant.subject},
            NAMESPACE_CLAIM: grant.trust.namespace,
            ACCOUNT_CLAIM: grant.trust.account,
            TRUST_CLAIM: grant.trust.name,
            TRUST_UID_CLAIM: grant.trust.uid,
        }
    credential = grant.credential
    return {
        "client_id": credential.client_id,
        NAMESPACE_CLAIM: credential.namespace,
        ACCOUNT_CLAIM: credential.account,
        CREDENTIAL_CLAIM: credential.credential_id,
    }


def issue(
    grant: Grant | Exchanged,
    key: SigningKey,
    *,
    issuer: str,
    lifetime: datetime.timedelta,
    now: datetime.datetime,
) -> Issued:
    """Sign the grant's token with `key`."""
    body = claims(grant, issuer=issuer, lifetime=lifetime, now=now, jti=secrets.token_urlsafe(16))
    headers = {"typ": TYPE, "kid": key.kid}
    token = jwt.encode(body, key.private, algorithm=ALGORITHM, headers=headers)
    token_type = BEARER if grant.jkt is None else DPOP
    return Issued(token, max(0, body["exp"] - body["iat"]), body["scope"], token_type)
