"""The token-exchange decision (RFC 8693) for FederationTrusts over plain data: grant, or why not.

No I/O: the caller hands in what the cache knows, each trust's compiled policy and its issuer's
keys (`Prepared`, which the caller gets for the `candidates` only), and the clock. In this order:

1. the request's shape: `subject_token_type` is a JWT or an ID token, the subject token is at
   most `MAX_TOKEN_LENGTH` long (refused before any decoding);
2. the account named by `client_id` (its `status.clientId`), present and enabled;
3. the token's unverified `iss` only chooses which of the account's trusts to try; a token of
   kube-iam itself is never a subject (no re-exchange that would extend a token's life);
4. each trust on that issuer, by name: it must be enabled and Ready for its current generation
   (the operator judged this very spec), then the token is verified by `oidc.judge.judge`,
   exactly the checks `kube-iam trust check` runs (algorithm from the key, signature, `iss`,
   lifetime with leeway, `aud`, `sub`, the CEL condition, the guard rails), then the trust's
   `allowSourceCidrs`; the first trust that accepts wins;
5. `scope` (a subset of the trust's `effectiveRoles`, else all of them) and the audience (from
   the allowlist), as for client_credentials.

Every refusal of steps 2 to 4 is the same `invalid_request` answer (RFC 8693 §2.2.2 names that
code for a subject token that is invalid or unacceptable by policy): the caller proved nothing
yet, so it learns nothing of which accounts or trusts exist. `cause` says what failed, for the
log only; it names checks and reasons, never the token.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from kubeiam.api import FederationTrustSpec
from kubeiam.oidc import judge
from kubeiam.oidc.cel.condition import CompiledCondition
from kubeiam.oidc.jwks import KeySet
from kubeiam.oidc.tokens import MAX_TOKEN_LENGTH, Check
from kubeiam.settings import Settings
from kubeiam.tokens.grants import (
    Account,
    Address,
    Error,
    Network,
    Refusal,
    address_allowed,
    scopes_of,
)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = (JWT_TYPE, ID_TOKEN_TYPE)

NOT_ACCEPTED = Refusal(
    Error.INVALID_REQUEST, "The subject token is not accepted by any trust of this client."
)


@dataclass(frozen=True)
class Trust:
    """What the token-exchange grant needs of a FederationTrust: its spec, as the verifier reads
    it, and whether the operator last judged this generation Ready, with the roles it found."""

    namespace: str
    name: str
    account: str
    issuer: str
    disabled: bool
    uid: str = ""
    generation: int = 0
    # The spec as the API defines it; None when it does not validate (then nothing is accepted).
    spec: FederationTrustSpec | None = field(default=None, compare=False, repr=False)
    # Ready=True for this very generation: a spec the operator has not judged yet is not used.
    ready: bool = False
    effective_roles: tuple[str, ...] = ()
    allow_source_cidrs: tuple[Network, ...] | None = None


@dataclass(frozen=True)
class ExchangeRequest:
    """A token-exchange request's parameters (RFC 8693 §2.1) and the client's address."""

    client_id: str
    subject_token: str
    subject_token_type: str
    scope: str | None = None
    audience: str | None = None
    client_address: Address | None = None

    def __repr__(self) -> str:  # never show the subject token, even in a traceback
        return f"ExchangeRequest(client_id={self.client_id!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class Prepared:
    """What verifying a token against one trust needs that is not in the token: the trust's
    compiled policy (`judge.trust_policy`, once per generation) and its issuer's keys. Either
    is a failed `Check` when the trust cannot be used (a condition refused, an issuer down)."""

    policy: tuple[CompiledCondition, Check] | Check
    keys: KeySet | Check


@dataclass(frozen=True)
class Exchanged:
    """What the token will say: the account, the roles, the audience, which trust admitted it
    and whom it admitted (the subject token's `iss` and `sub`), and when it must end."""

    account: Account
    trust: Trust
    subject_issuer: str
    subject: str
    scopes: tuple[str, ...]
    audience: str
    not_after: datetime.datetime | None  # the subject token's exp: no token outlives it
    jkt: str | None = None  # the DPoP key's thumbprint the token is bound to (cnf.jkt)


@dataclass(frozen=True)
class Denied:
    """A refusal, and what caused it for the log (never the token): `cause` in detail (which
    trusts, which checks), `kind` in one of a few fixed words, by which the log is paced."""

    refusal: Refusal
    cause: str
    kind: str


@dataclass(frozen=True)
class Candidates:
    """The account a request names and its trusts on the subject token's (unverified) issuer."""

    account: Account
    issuer: str
    trusts: tuple[Trust, ...]


def candidates(
    request: ExchangeRequest,
    *,
    account_by_client_id: Callable[[str], Account | None],
    trusts_of: Callable[[Account], list[Trust]],
    own_issuer: str,
) -> Candidates | Denied:
    """Steps 1 to 3: the trusts to try (by name), or why there is none."""
    if request.subject_token_type not in SUBJECT_TOKEN_TYPES:
        return Denied(
            Refusal(
                Error.INVALID_REQUEST,
                "The subject_token_type must be urn:ietf:params:oauth:token-type:jwt or "
                "urn:ietf:params:oauth:token-type:id_token.",
            ),
            "subject_token_type",
            "subject_token_type",
        )
    if len(request.subject_token) > MAX_TOKEN_LENGTH:
        return Denied(
            Refusal(
                Error.INVALID_REQUEST,
                f"The subject token is longer than {MAX_TOKEN_LENGTH} characters.",
            ),
            "subject token size",
            "size",
        )
    account = account_by_client_id(request.client_id)
    if account is None:
        return Denied(NOT_ACCEPTED, "no account has this client id", "unknown client")
    if account.disabled:
        cause = f"account {account.namespace}/{account.name} is disabled"
        return Denied(NOT_ACCEPTED, cause, "account disabled")
    issuer = _unverified_issuer(request.subject_token)
    if issuer is None:
        return Denied(NOT_ACCEPTED, "the subject token is not a JWT with an iss", "not a JWT")
    if issuer == own_issuer:
        return Denied(NOT_ACCEPTED, "the subject token is kube-iam's own", "own token")
    trusts = tuple(
        sorted(
            (trust for trust in trusts_of(account) if trust.issuer == issuer),
            key=lambda trust: trust.name,
        )
    )
    if not trusts:
        return Denied(
            NOT_ACCEPTED,
            f"no trust of {account.namespace}/{account.name} on {issuer[:100]!r}",
            "no trust on the issuer",
        )
    return Candidates(account, issuer, trusts)


def decide(
    request: ExchangeRequest,
    tried: Candidates,
    *,
    prepared: Mapping[str, Prepared],
    settings: Settings,
    now: datetime.datetime,
) -> Exchanged | Denied:
    """Steps 4 and 5 over the candidates: `prepared` holds, by uid, what each usable trust needs
    to verify a token (a trust missing from it is not tried)."""
    causes: list[str] = []
    for trust in tried.trusts:
        admitted = _through(request, trust, prepared.get(trust.uid), settings, now)
        if isinstance(admitted, str):
            causes.append(f"trust {trust.namespace}/{trust.name}: {admitted}")
            continue
        scopes = scopes_of(request.scope, trust.effective_roles)
        if isinstance(scopes, Refusal):
            return Denied(
                Refusal(Error.INVALID_SCOPE, "The scope asked for exceeds the trust's roles."),
                f"trust {trust.namespace}/{trust.name}: scope",
                "scope",
            )
        allowed = settings.tokens.allowed_audiences()
        audience = request.audience or allowed[0]
        if audience not in allowed:
            return Denied(
                Refusal(Error.INVALID_TARGET, "The audience asked for is not allowed."),
                f"trust {trust.namespace}/{trust.name}: audience",
                "audience",
            )
        return Exchanged(
            account=tried.account,
            trust=trust,
            subject_issuer=tried.issuer,
            subject=str(admitted.get("sub", "")),
            scopes=scopes,
            audience=audience,
            not_after=_expiry(admitted),
        )
    return Denied(NOT_ACCEPTED, "; ".join(causes), "no trust accepted")


def _through(
    request: ExchangeRequest,
    trust: Trust,
    ready: Prepared | None,
    settings: Settings,
    now: datetime.datetime,
) -> Mapping[str, Any] | str:
    """The subject token's claims if `trust` admits it, else why not."""
    unusable = unusable_because(trust)
    if unusable is not None or trust.spec is None:
        return unusable or "its spec does not validate"
    if ready is None:
        return "its policy and keys are not prepared"
    if isinstance(ready.policy, Check):
        return f"{ready.policy.name} {ready.policy.reason}"
    if isinstance(ready.keys, Check):
        return f"{ready.keys.name} {ready.keys.reason}"
    verdict = judge.judge(
        request.subject_token,
        trust.spec,
        settings,
        policy=ready.policy,
        key_set=ready.keys,
        now=now,
    )
    failure = verdict.failure
    if not verdict.accepted or verdict.claims is None:
        return "not accepted" if failure is None else f"{failure.name} {failure.reason}"
    if not address_allowed(request.client_address, trust.allow_source_cidrs):
        return "the client's address is outside allowSourceCidrs"
    return verdict.claims


def unusable_because(trust: Trust) -> str | None:
    """Why no token may come through `trust` now (None: it may): disabled, a spec that does not
    validate, or not Ready for its current generation (the operator's verdict on this spec)."""
    if trust.disabled:
        return "disabled"
    if trust.spec is None:
        return "its spec does not validate"
    if not trust.ready:
        return "not Ready for its current generation"
    return None


def _unverified_issuer(token: str) -> str | None:
    """The token's `iss`, unverified: it only picks which trusts to try, each of which verifies
    the token (its `iss` included) with the issuer's keys."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) and issuer else None


def _expiry(claims: Mapping[str, Any]) -> datetime.datetime | None:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return datetime.datetime.fromtimestamp(exp, datetime.UTC)
