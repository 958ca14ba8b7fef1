"""Whether a token may act through a trust, once the issuer's keys are in hand: the trust's own
checks (`trust_policy`) and the token's (`judge`). No I/O: `verify` (what `kube-iam trust check`
runs) fetches the keys and calls these; the token server calls them with the policy it compiled
once per trust generation and the keys its key store holds."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from kubeiam.api import FederationTrustSpec
from kubeiam.domain.conditions import Reason
from kubeiam.domain.trusts import issuer_allowed
from kubeiam.oidc.cel.condition import CompiledCondition, compile_condition
from kubeiam.oidc.cel.errors import ConditionError
from kubeiam.oidc.guards import review_condition
from kubeiam.oidc.jwks import KeySet
from kubeiam.oidc.tokens import Check, TokenVerdict, TrustTerms, evaluate_token
from kubeiam.settings import Settings


@dataclass(frozen=True)
class Refusal(Exception):
    """The trust cannot be used at all, whatever the token: the check that says why."""

    check: Check


def refused(name: str, reason: Reason, message: str) -> Refusal:
    return Refusal(Check(name=name, passed=False, reason=reason, message=message))


def trust_policy(spec: FederationTrustSpec, settings: Settings) -> tuple[CompiledCondition, Check]:
    """The checks on the trust itself that the operator's Ready condition also makes: the issuer
    is allowed, the condition compiles and passes the guard rails. Raises `Refusal`."""
    if not issuer_allowed(spec.issuer, settings.trusts.allowed_issuers):
        raise refused(
            "trust",
            Reason.ISSUER_NOT_ALLOWED,
            f"The issuer {spec.issuer} is not in KUBEIAM_ALLOWED_ISSUERS.",
        )
    if spec.disabled:
        raise refused("trust", Reason.DISABLED, "The trust is disabled (spec.disabled is true).")
    try:
        condition = compile_condition(spec.condition)
    except ConditionError as error:
        raise refused("trust", error.reason, error.message) from None
    findings = review_condition(
        condition,
        issuer=spec.issuer,
        multi_tenant_issuers=settings.trusts.multi_tenant_issuers,
        tenant_claims=settings.trusts.tenant_claims,
    )
    for finding in findings:
        if finding.refuses:
            raise refused("trust", finding.reason, finding.message)
    return condition, Check(
        name="trust",
        passed=True,
        reason=None,
        message="The issuer is allowed and the condition compiles and pins what it must.",
    )


def judge(
    token: str,
    spec: FederationTrustSpec,
    settings: Settings,
    *,
    policy: tuple[CompiledCondition, Check],
    key_set: KeySet,
    now: datetime.datetime,
) -> TokenVerdict:
    """The token's checks, once the trust's policy (`trust_policy`) and its issuer's keys are in
    hand: what `verify` runs after fetching them, and what the token server runs with the policy
    it compiled once per trust generation and the keys its key store holds. No I/O."""
    condition, policy_check = policy
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
