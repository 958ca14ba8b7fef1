"""The client_credentials decision (RFC 6749 §4.4) over plain data: grant a token, or say why not.

No I/O: the caller hands in what the cache knows and the clock. The order is the point:

1. the secret's format and checksum, before any lookup (a typo or a scanner's find costs nothing);
2. the credential, found in O(1) by the id embedded in the secret;
3. the client id it claims, then the secret's hash, compared in constant time;
4. only then, to the holder of the secret, what stands in the way: the credential's state and
   expiry (by the clock, not waiting for the operator to mark it Expired), its account, and the
   client's address when the credential has `allowSourceCidrs` (`client_address` says which
   address that is when proxies stand in between);
5. the scope (a subset of the credential's effectiveRoles, else all of them) and the audience
   (from the allowlist; the issuer when none is asked);
6. DPoP (`bind`): the key of the request's checked proof binds the token; a credential with
   `requireDpop` gets none without one.

A refusal carries an RFC 6749 §5.2 (or RFC 8707, RFC 9449) error code and a description that
never quotes the request.
"""

from __future__ import annotations

import dataclasses
import datetime
import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from kubeiam.domain.secret_format import parse, secret_hash

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Error(StrEnum):
    """The error codes of RFC 6749 §5.2, RFC 8707 §2 and RFC 9449 §5 the token endpoint answers."""

    INVALID_REQUEST = "invalid_request"
    INVALID_CLIENT = "invalid_client"
    INVALID_GRANT = "invalid_grant"
    UNAUTHORIZED_CLIENT = "unauthorized_client"
    UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
    INVALID_SCOPE = "invalid_scope"
    INVALID_TARGET = "invalid_target"
    # RFC 9449 §5: a token request without a valid DPoP proof where one is needed.
    INVALID_DPOP_PROOF = "invalid_dpop_proof"
    # RFC 9449 §8: the proof must carry a nonce from the server (sent in DPoP-Nonce).
    USE_DPOP_NONCE = "use_dpop_nonce"


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
    # spec.allowSourceCidrs; None: any address (an empty list admits none).
    allow_source_cidrs: tuple[Network, ...] | None = None
    # spec.requireDpop: no token without a valid DPoP proof (RFC 9449).
    require_dpop: bool = False


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
    client_address: Address | None = None  # None: not known (then no allowlist admits it)

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
    jkt: str | None = None  # the DPoP key's thumbprint the token is bound to (cnf.jkt)


@dataclass(frozen=True)
class Refusal:
    error: Error
    description: str


_UNKNOWN_CLIENT = Refusal(Error.INVALID_CLIENT, "Client authentication failed.")


def authenticate(
    request: TokenRequest,
    *,
    credential_by_id: Callable[[str], Credential | None],
    account_of: Callable[[str, str], Account | None],
    now: datetime.datetime,
) -> tuple[Credential, Account] | Refusal:
    """Steps 1 to 4: the client's credential and account, or why it may not act as them.

    The token endpoint and the introspection endpoint authenticate their caller with this.
    """
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
    if not address_allowed(request.client_address, credential.allow_source_cidrs):
        return Refusal(
            Error.INVALID_CLIENT, "The client's address is not allowed for this credential."
        )
    return credential, account


def decide(
    request: TokenRequest,
    *,
    credential_by_id: Callable[[str], Credential | None],
    account_of: Callable[[str, str], Account | None],
    allowed_audiences: tuple[str, ...],
    now: datetime.datetime,
) -> Grant | Refusal:
    """Grant the request, or refuse it with the first reason, in the order the module states."""
    client = authenticate(
        request, credential_by_id=credential_by_id, account_of=account_of, now=now
    )
    if isinstance(client, Refusal):
        return client
    credential, account = client
    scopes = scopes_of(request.scope, credential.effective_roles)
    if isinstance(scopes, Refusal):
        return scopes
    audience = request.audience or allowed_audiences[0]
    if audience not in allowed_audiences:
        return Refusal(Error.INVALID_TARGET, "The audience asked for is not allowed.")
    return Grant(credential, account, scopes, audience, credential.expires_at)


def bind(grant: Grant, jkt: str | None) -> Grant | Refusal:
    """Step 6: the grant bound to the key of the request's checked DPoP proof (dpop.check), or
    refused when its credential requires one and none was sent.

    RFC 9449 §5.2 says a client registered with `dpop_bound_access_tokens` (what requireDpop is
    here) MUST be refused a token without a proof, but names no code for it; §5 answers a
    token request whose proof is not valid with `invalid_dpop_proof`, and a missing proof is
    not a valid one, so that is the code (one a DPoP client already handles).
    """
    if jkt is None:
        if grant.credential.require_dpop:
            return Refusal(Error.INVALID_DPOP_PROOF, "This credential requires a DPoP proof.")
        return grant
    return dataclasses.replace(grant, jkt=jkt)


def address_allowed(address: Address | None, cidrs: tuple[Network, ...] | None) -> bool:
    """Whether `address` is inside one of `cidrs`; no list admits any address, even unknown."""
    if cidrs is None:
        return True
    if address is None:
        return False
    address = _unmapped(address)
    return any(address.version == net.version and address in net for net in cidrs)


def client_address(
    peer: str | None, forwarded_for: list[str], trusted_proxies: tuple[Network, ...]
) -> Address | None:
    """The client's address: the peer's, or the rightmost untrusted X-Forwarded-For hop.

    `forwarded_for` holds every X-Forwarded-For header's value in order. It counts only when the
    peer is a trusted proxy; then its hops are read from the right (the hop the proxy itself saw)
    and the first that is not a trusted proxy is the client, since anything left of it may be
    forged by that client. All hops trusted: the leftmost. A malformed hop where one is read
    makes the address unknown (None), which no allowlist admits.
    """
    direct = _address(peer)
    if direct is None:
        return None
    if not forwarded_for or not _trusted(direct, trusted_proxies):
        return direct
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    address: Address | None = direct
    for hop in reversed(hops):
        address = _address(hop)
        if address is None or not _trusted(address, trusted_proxies):
            return address
    return address


def _trusted(address: Address, proxies: tuple[Network, ...]) -> bool:
    return address_allowed(address, proxies) if proxies else False


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        return _unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


def _unmapped(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:10.0.0.1, a dual-stack socket's view) as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def scopes_of(asked: str | None, roles: tuple[str, ...]) -> tuple[str, ...] | Refusal:
    """The roles asked for with `scope`, each one of `roles`; none asked: all of `roles`."""
    if asked is None or not asked.strip():
        return roles
    wanted = tuple(dict.fromkeys(asked.split()))  # in the order asked, once each
    if any(scope not in roles for scope in wanted):
        return Refusal(Error.INVALID_SCOPE, "The scope asked for exceeds the credential's roles.")
    return wanted
