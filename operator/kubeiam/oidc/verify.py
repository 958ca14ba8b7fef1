"""Whether a token may act through a trust: the one evaluation `kube-iam trust check` runs and the
token service's exchange runs (`trust_policy`, then `judge`), from the trust's spec, the
organisation's policy and the issuer's keys."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable

from kubeiam.api import FederationTrustSpec
from kubeiam.oidc.fetch import IssuerError, fetch_issuer
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.judge import Refusal, judge, refused, trust_policy
from kubeiam.oidc.jwks import JwksError, KeySet, parse_jwks
from kubeiam.oidc.tokens import TokenVerdict
from kubeiam.settings import Settings

__all__ = ["KeySource", "Refusal", "issuer_keys", "judge", "trust_policy", "verify"]

KeySource = Callable[[FederationTrustSpec], Awaitable[KeySet]]


async def issuer_keys(spec: FederationTrustSpec, settings: Settings) -> KeySet:
    """The keys tokens of the trust must be signed with: inline, or fetched as the operator does.
    Raises `Refusal` when the issuer or its keys cannot be used."""
    try:
        if spec.jwks is not None:
            return parse_jwks(
                spec.jwks.model_dump(mode="json"),
                max_keys=settings.issuers.max_keys,
                source="spec.jwks",
            )
        documents = await fetch_issuer(
            spec.issuer, jwks_uri=spec.jwks_uri, policy=FetchPolicy.from_settings(settings.issuers)
        )
        return parse_jwks(
            documents.jwks, max_keys=settings.issuers.max_keys, source=documents.jwks_uri
        )
    except (IssuerError, JwksError) as error:
        raise refused("issuer keys", error.reason, error.message) from None


async def verify(
    token: str,
    spec: FederationTrustSpec,
    settings: Settings,
    *,
    now: datetime.datetime,
    keys: KeySource | None = None,
) -> TokenVerdict:
    """Every check, in order, stopping at the first that fails."""
    try:
        policy = trust_policy(spec, settings)
        key_set = await (keys or (lambda s: issuer_keys(s, settings)))(spec)
    except Refusal as refusal:
        return TokenVerdict(checks=(refusal.check,))
    return judge(token, spec, settings, policy=policy, key_set=key_set, now=now)
