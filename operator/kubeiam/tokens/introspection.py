"""Token introspection (RFC 7662): is this access token active, answered from the cache.

No I/O: the caller hands in the signing keys, what the cache knows and the clock. A token is
active only if all of these hold, else the answer is exactly `{"active": false}` (RFC 7662 §2.2
says nothing of why, so nothing is said):

1. it is a JWT of ours: `typ: at+jwt`, signed ES256 by a key we publish, our `iss`;
2. it has not expired (`exp`) by the clock;
3. the credential it names (`kubeiam.io/credential_id`) is still in the cache, Active, not past
   its expiry, and still the same client;
4. that credential's account is still there, enabled, with the token's `sub` as its clientId.

A token from a token exchange names its trust (`kubeiam.io/trust_uid`) instead of a credential:
for it, step 3 is that the trust with that uid is still in the cache, of the same account, and
usable (enabled, Ready for its current generation: `exchange.unusable_because`).

So a revoked, expired or deleted credential, a disabled, not Ready or deleted trust and a
disabled or deleted account end their tokens here as soon as the watch brings the change, while
an offline verifier stops them only at `exp`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import jwt

from kubeiam.tokens import jose
from kubeiam.tokens.exchange import Trust, unusable_because
from kubeiam.tokens.grants import Account, Credential
from kubeiam.tokens.keys import ALGORITHM, SigningKeys
from kubeiam.tokens.tokens import (
    ACCOUNT_CLAIM,
    BEARER,
    CREDENTIAL_CLAIM,
    DPOP,
    NAMESPACE_CLAIM,
    TRUST_UID_CLAIM,
    TYPE,
)

INACTIVE: dict[str, Any] = {"active": False}
# What an active token's answer tells the caller (RFC 7662 §2.2), from the token's claims.
SHOWN = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "cnf")


def introspect(
    token: str,
    *,
    keys: SigningKeys,
    issuer: str,
    credential_by_id: Callable[[str], Credential | None],
    account_of: Callable[[str, str], Account | None],
    now: datetime.datetime,
    trust_by_uid: Callable[[str], Trust | None] = lambda uid: None,
) -> dict[str, Any]:
    """The RFC 7662 answer for `token`: its claims when active, else only `active: false`."""
    claims = _verified(token, keys, issuer)
    if claims is None or not _alive(claims, credential_by_id, account_of, trust_by_uid, now):
        return dict(INACTIVE)
    answer: dict[str, Any] = {"active": True}
    answer.update({name: claims[name] for name in SHOWN if name in claims})
    # RFC 9449 §6.2: a bound token's answer names its key (cnf, above) and its type.
    answer["token_type"] = DPOP if "cnf" in claims else BEARER
    return answer


def _verified(token: str, keys: SigningKeys, issuer: str) -> dict[str, Any] | None:
    """The claims of a token we signed for `issuer`; None for anything else."""
    header = jose.header(token)
    if header is None or header.get("typ") != TYPE or header.get("alg") != ALGORITHM:
        return None
    key = next((k for k in keys.published if k.kid == header.get("kid")), None)
    if key is None:
        return None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private.public_key(),
            algorithms=[ALGORITHM],
            issuer=issuer,
            # Expiry is judged by the caller's clock below; the audience is the caller's concern.
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "require": ["exp", "iat", "sub", "client_id"],
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    return claims


def _alive(
    claims: dict[str, Any],
    credential_by_id: Callable[[str], Credential | None],
    account_of: Callable[[str, str], Account | None],
    trust_by_uid: Callable[[str], Trust | None],
    now: datetime.datetime,
) -> bool:
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now.timestamp():
        return False
    if CREDENTIAL_CLAIM in claims:
        origin = _credential_alive(claims, credential_by_id, now)
    elif TRUST_UID_CLAIM in claims:
        origin = _trust_alive(claims, trust_by_uid)
    else:
        return False
    if origin is None:
        return False
    account = account_of(*origin)
    return account is not None and not account.disabled and account.client_id == claims["sub"]


def _credential_alive(
    claims: dict[str, Any],
    credential_by_id: Callable[[str], Credential | None],
    now: datetime.datetime,
) -> tuple[str, str] | None:
    """The account (namespace, name) of the token's credential while that still stands."""
    credential = credential_by_id(str(claims[CREDENTIAL_CLAIM]))
    if (
        credential is None
        or credential.state != "Active"
        or (credential.expires_at is not None and credential.expires_at <= now)
        or credential.client_id != claims.get("client_id")
        or credential.namespace != claims.get(NAMESPACE_CLAIM)
        or credential.account != claims.get(ACCOUNT_CLAIM)
    ):
        return None
    return credential.namespace, credential.account


def _trust_alive(
    claims: dict[str, Any], trust_by_uid: Callable[[str], Trust | None]
) -> tuple[str, str] | None:
    """The account (namespace, name) of the token's trust while that may still exchange."""
    trust = trust_by_uid(str(claims[TRUST_UID_CLAIM]))
    if (
        trust is None
        or unusable_because(trust) is not None
        or trust.namespace != claims.get(NAMESPACE_CLAIM)
        or trust.account != claims.get(ACCOUNT_CLAIM)
    ):
        return None
    return trust.namespace, trust.account
