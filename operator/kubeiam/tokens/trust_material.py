"""What the token server needs to verify a token against a trust, beside the token: the trust's
compiled policy and its issuer's keys (`exchange.Prepared`).

The policy (`oidc.verify.trust_policy`: issuer allowed, condition compiled, guard rails) is
computed once per trust generation and kept by uid, so a CEL condition is compiled when the
trust changes, not per exchange. The keys come from the same key store the operator runs
(`oidc.keystore`): discovery and JWKS fetched through the hardened client, one fetch per issuer
however many trusts name it, refreshed on the issuer's Cache-Control within
KUBEIAM_ISSUER_REFRESH_MIN and _MAX; an inline `spec.jwks` is parsed once per generation.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable

from kubeiam.domain.trusts import IssuerCheck
from kubeiam.oidc.cel.condition import CompiledCondition
from kubeiam.oidc.fetch import fetch_issuer
from kubeiam.oidc.http import FetchPolicy
from kubeiam.oidc.judge import Refusal, trust_policy
from kubeiam.oidc.jwks import KeySet
from kubeiam.oidc.keystore import Fetch, KeyStore, Schedule
from kubeiam.oidc.tokens import Check
from kubeiam.settings import Settings
from kubeiam.tokens.exchange import Prepared, Trust

Clock = Callable[[], datetime.datetime]
Policy = tuple[CompiledCondition, Check] | Check


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _nothing(key: object) -> None:
    """The operator re-checks trusts after a refresh; the token server reads keys when asked."""


class TrustMaterial:
    """Compiled policies by trust uid and generation, and the issuers' key store."""

    def __init__(self, settings: Settings, *, fetch: Fetch = fetch_issuer, clock: Clock = _now):
        self._settings = settings
        self._clock = clock
        issuers = settings.issuers
        self.store = KeyStore(
            FetchPolicy.from_settings(issuers),
            Schedule(
                refresh_min=issuers.refresh_min,
                refresh_max=issuers.refresh_max,
                retry_min=issuers.retry_min,
                retry_max=issuers.retry_max,
            ),
            max_keys=issuers.max_keys,
            on_refreshed=_nothing,
            concurrency=issuers.refresh_concurrency,
            fetch=fetch,
            clock=clock,
        )
        # uid -> (generation, policy, inline keys): one entry a trust, replaced when it changes.
        self._by_uid: dict[str, tuple[int, Policy, KeySet | Check | None]] = {}
        self.compiled = 0  # how many policies were compiled, for the tests and the bench

    async def prepare(self, trust: Trust) -> Prepared:
        """The trust's policy and keys; a first call for an issuer waits for its first check."""
        spec = trust.spec
        assert spec is not None, "only a trust whose spec validates is prepared"
        entry = self._by_uid.get(trust.uid)
        if entry is None or entry[0] != trust.generation:
            entry = (trust.generation, self._policy(trust), self._inline(trust))
            self._by_uid[trust.uid] = entry
        _, policy, inline = entry
        if inline is not None:
            return Prepared(policy, inline)
        check, keys = await self.store.check((spec.issuer, spec.jwks_uri), trust.uid)
        return Prepared(policy, keys if keys is not None else _failed(check))

    def forget(self, live: Iterable[str]) -> None:
        """Drop what trusts no longer in the cache held; their issuers stop being refreshed."""
        keep = set(live)
        for uid in [uid for uid in self._by_uid if uid not in keep]:
            del self._by_uid[uid]
            self.store.release(uid)

    def _policy(self, trust: Trust) -> Policy:
        assert trust.spec is not None
        self.compiled += 1
        try:
            return trust_policy(trust.spec, self._settings)
        except Refusal as refusal:
            return refusal.check

    def _inline(self, trust: Trust) -> KeySet | Check | None:
        assert trust.spec is not None
        if trust.spec.jwks is None:
            return None
        check, keys = self.store.parse_inline(
            trust.spec.jwks.model_dump(mode="json"), now=self._clock()
        )
        return keys if keys is not None else _failed(check)


def _failed(check: IssuerCheck) -> Check:
    problem = check.problem
    if problem is None:  # keys None only ever comes with a problem; say so if it did not
        return Check("issuer keys", False, None, "The issuer's keys are not known.")
    return Check("issuer keys", False, problem.reason, problem.message)
