"""Whether a token may act through a trust: the one evaluation `kube-iam trust check` runs and the
token service will run, from the trust's spec, the organisation's policy and the issuer's keys."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubeiam.api import FederationTrustSpec
from kubeiam.domain.conditions import Reason
from kubeiam.domain.trusts import issuer_allowed
from kubeiam.oidc.cel.condition import CompiledCondition, compile_condition
from kubeiam.oidc.cel.errors import ConditionError
from kubeiam.oidc.fetch import IssuerError, fetch_issuer
from kubeiam.oidc.guards import review_condition
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.jwks import JwksError, KeySet, parse_jwks
from kubeiam.oidc.tokens import Check, TokenVerdict, TrustTerms, evaluate_token
from kubeiam.settings import Settings

KeySource = Callable[[FederationTrustSpec], Awaitable[KeySet]]


@dataclass(frozen=True)
class Refusal(Exception):
    """The trust cannot be used at all, whatever the token: the check that says why."""

    check: Check


def _refused(name: str, reason: Reason, message: str) -> Refusal:
    return Refusal(Check(name=name, passed=False, reason=reason, message=message))


def trust_policy(spec: FederationTrustSpec, settings: Settings) -> tuple[CompiledCondition, Check]:
    """The checks on the trust itself that the operator's Ready condition also makes: the issuer
    is allowed, the condition compiles and passes the guard rails. Raises `Refusal`."""
    if not issuer_allowed(spec.issuer, settings.trusts.allowed_issuers):
        raise _refused(
            "trust",
            Reason.ISSUER_NOT_ALLOWED,
            f"The issuer {spec.issuer} is not in KUBEIAM_ALLOWED_ISSUERS.",
        )
    if spec.disabled:
        raise _refused("trust", Reason.DISABLED, "The trust is disabled (spec.disabled is true).")
    try:
        condition = compile_condition(spec.condition)
    except ConditionError as error:
        raise _refused("trust", error.reason, error.message) from None
    findings = review_condition(
        condition,
        issuer=spec.issuer,
        multi_tenant_issuers=settings.trusts.multi_tenant_issuers,
        tenant_claims=settings.trusts.tenant_claims,
    )
    for finding in findings:
        if finding.refuses:
            raise _refused("trust", finding.reason, finding.message)
    return condition, Check(
        name="trust",
        passed=True,
        reason=None,
        message="The issuer is allowed and the condition compiles and pins what it must.",
    )


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
        raise _refused("issuer keys", error.reason, error.message) from None


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
        condition, policy_check = trust_policy(spec, settings)
        key_set = await (keys or (lambda s: issuer_keys(s, settings)))(spec)
    except Refusal as refusal:
        return TokenVerdict(checks=(refusal.check,))
    keys_check = Check(
        name="issuer keys",
        passed=True,
        reason=None,
        message=f"{len(key_set.keys)} signing keys: {', '.join(key_set.key_ids) or 'no kid'}.",
    )
    terms = TrustTerms(
        issuer=spec.issuer,
        audiences=tuple(spec.audiences),
        subject=spec.subject,
        condition=condition,
        disabled=spec.disabled,
    )
    verdict = evaluate_token(token, terms, key_set, now=now, leeway=settings.trusts.token_leeway)
    return TokenVerdict(checks=(policy_check, keys_check, *verdict.checks), claims=verdict.claims)
