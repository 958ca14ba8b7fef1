"""The client_credentials decision (RFC 6749 §4.4) over plain data: grant a token, or say why not.

No I/O: the caller hands in what the cache knows and the clock. The order is the point:

1. the secret's format and checksum, before any lookup (a typo or a scanner's find costs nothing);
2. the credential, found in O(1) by the id embedded in the secret;
3. the client id it claims, then the secret's hash, compared in constant time;
4. only then, to the holder of the secret, what stands in the way: the credential's state and
   expiry (by the clock, not waiting for the operator to mark it Expired), its account;
5. the scope (a subset of the credential's effectiveRoles, else all of them) and the audience
   (from the allowlist; the issuer when none is asked).

A refusal carries an RFC 6749 §5.2 (or RFC 8707) error code and a description that never quotes
the request.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from kubeiam.domain.secret_format import parse, secret_hash


class Error(StrEnum):
    """The error codes of RFC 6749 §5.2 and RFC 8707 §2 the token endpoint answers with."""

    INVALID_REQUEST = "invalid_request"
    INVALID_CLIENT = "invalid_client"
    INVALID_GRANT = "invalid_grant"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    INVALID_SCOPE = "invalid_scope"
    INVALID_TARGET = "invalid_target"


@dataclass(frozen=True)
class Credential:
    """What the token path needs of a ServiceAccountCredential (never its body)."""

    namespace: str
    name: str
    account: str
    credential_id: str
    client_id: str
    secret_hash: str
    state: str
    expires_at: datetime.datetime | None
    effective_roles: tuple[str, ...]


@dataclass(frozen=True)
class Account:
    """What the token path needs of a ServiceAccount."""

    namespace: str
    name: str
    client_id: str
    disabled: bool


@dataclass(frozen=True)
class TokenRequest:
    """A client_credentials request, its client already taken from the body or Basic."""

    client_id: str
    client_secret: str
    scope: str | None = None
    audience: str | None = None

    def __repr__(self) -> str:  # never show the secret, even in a traceback
        return f"TokenRequest(client_id={self.client_id!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class Grant:
    """What the token will say: who, which roles, for whom, until when."""

    credential: Credential
    account: Account
    scopes: tuple[str, ...]
    audience: str
    not_after: datetime.datetime | None  # the credential's expiry: no token outlives it


@dataclass(frozen=True)
class Refusal:
    error: Error
    description: str


_UNKNOWN_CLIENT = Refusal(Error.INVALID_CLIENT, "Client authentication failed.")


def decide(
    request: TokenRequest,
    *,
    credential_by_id: Callable[[str], Credential | None],
    account_of: Callable[[str, str], Account | None],
    allowed_audiences: tuple[str, ...],
    now: datetime.datetime,
) -> Grant | Refusal:
    """Grant the request, or refuse it with the first reason, in the order the module states."""
    parsed = parse(request.client_secret)
    if parsed is None or not parsed.checksum_ok:
        return _UNKNOWN_CLIENT
    credential = credential_by_id(parsed.credential_id)
    if credential is None or not hmac.compare_digest(
        request.client_id.encode(), credential.client_id.encode()
    ):
        return _UNKNOWN_CLIENT
    if not hmac.compare_digest(
        secret_hash(request.client_secret).encode(), credential.secret_hash.encode()
    ):
        return _UNKNOWN_CLIENT
    # From here on the caller has proven it holds this credential's secret.
    if credential.state != "Active":
        return Refusal(Error.INVALID_CLIENT, "The credential is not active.")
    if credential.expires_at is not None and credential.expires_at <= now:
        return Refusal(Error.INVALID_CLIENT, "The credential has expired.")
    account = account_of(credential.namespace, credential.account)
    if account is None:
        return Refusal(Error.INVALID_CLIENT, "The credential's account does not exist.")
    if account.disabled:
        return Refusal(Error.UNAUTHORIZED_CLIENT, "The account is disabled.")
    scopes = _scopes(request.scope, credential.effective_roles)
    if isinstance(scopes, Refusal):
        return scopes
    audience = request.audience or allowed_audiences[0]
    if audience not in allowed_audiences:
        return Refusal(Error.INVALID_TARGET, "The audience asked for is not allowed.")
    return Grant(credential, account, scopes, audience, credential.expires_at)


def _scopes(asked: str | None, roles: tuple[str, ...]) -> tuple[str, ...] | Refusal:
    if asked is None or not asked.strip():
        return roles
    wanted = tuple(dict.fromkeys(asked.split()))  # in the order asked, once each
    if any(scope not in roles for scope in wanted):
        return Refusal(Error.INVALID_SCOPE, "The scope asked for exceeds the credential's roles.")
    return wanted
