"""Token exchange (RFC 8693) without a cluster: the decision's order and refusals, the claims of
an exchanged token, introspection of it, the trust view the cache keeps, the policy compiled once
per generation, and a trust's usage kept apart from a credential's."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import logging
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from kubeiam.api import FederationTrustSpec
from kubeiam.kube.key_secret import KeyRing
from kubeiam.settings import Settings, TokenSettings
from kubeiam.tokens import exchange, keys, tokens, usage
from kubeiam.tokens.cache import Cache, trust_view
from kubeiam.tokens.exchange import Candidates, Denied, Exchanged, ExchangeRequest, Trust
from kubeiam.tokens.grants import Account, Error
from kubeiam.tokens.introspection import introspect
from kubeiam.tokens.trust_material import TrustMaterial

from .test_tokens_server import run as serve_one
from .test_tokens_server import service

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
ISSUER = "https://iam.example.test"
EXTERNAL = "https://ci.example.test"
AUDIENCE = "sts.kubeiam.test"
HOUR = datetime.timedelta(hours=1)
GITHUB = "https://token.actions.githubusercontent.com"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [{**RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"}]}
SETTINGS = Settings(tokens=TokenSettings(issuer=ISSUER))
ACCOUNT = Account("team-a", "pipeline", "pipeline@team-a.acme.iam", disabled=False)
SIGNING = keys.from_ring(KeyRing(active="k1", keys={"k1": keys.new_private_key_pem()}))
JWT = exchange.JWT_TYPE


def trust_body(
    name: str = "ci",
    *,
    generation: int = 1,
    ready: str = "True",
    observed: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": name, "uid": f"uid-{name}",
                     "generation": generation},
        "spec": {
            "serviceAccountName": "pipeline",
            "issuer": EXTERNAL,
            "audiences": [AUDIENCE],
            "condition": 'claims.repository == "acme/api"',
            "jwks": JWKS,
            **spec,
        },
        "status": {
            "effectiveRoles": ["compute.deployer", "storage.reader"],
            "conditions": [
                {"type": "Ready", "status": ready,
                 "observedGeneration": generation if observed is None else observed}
            ],
        },
    }  # fmt: skip


TRUST = trust_view(trust_body())


def subject(key: rsa.RSAPrivateKey = KEY, *, lifetime: int = 600, **claims: Any) -> str:
    body = {
        "iss": EXTERNAL,
        "sub": "repo:acme/api:ref:refs/heads/main",
        "aud": AUDIENCE,
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + lifetime,
        "repository": "acme/api",
        **claims,
    }
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def request(token: str, **fields: Any) -> ExchangeRequest:
    return ExchangeRequest(
        **{"client_id": ACCOUNT.client_id, "subject_token": token, "subject_token_type": JWT,
           **fields}
    )  # fmt: skip


def run(
    asked: ExchangeRequest,
    *,
    trusts: list[Trust] | None = None,
    account: Account | None = ACCOUNT,
) -> Exchanged | Denied:
    chosen = [TRUST] if trusts is None else trusts
    tried = exchange.candidates(
        asked,
        account_by_client_id=lambda cid: account if account and cid == account.client_id else None,
        trusts_of=lambda _: chosen,
        own_issuer=ISSUER,
    )
    if isinstance(tried, Denied):
        return tried
    material = TrustMaterial(SETTINGS, clock=lambda: NOW)

    async def prepare() -> dict[str, exchange.Prepared]:
        return {
            t.uid: await material.prepare(t)
            for t in tried.trusts
            if exchange.unusable_because(t) is None
        }

    prepared = asyncio.run(prepare())
    return exchange.decide(asked, tried, prepared=prepared, settings=SETTINGS, now=NOW)


def refused(outcome: Exchanged | Denied) -> Denied:
    assert isinstance(outcome, Denied), outcome
    return outcome


def test_the_pinned_repositorys_token_is_exchanged_for_the_trusts_roles() -> None:
    outcome = run(request(subject()))
    assert isinstance(outcome, Exchanged)
    assert outcome.trust == TRUST
    assert outcome.scopes == ("compute.deployer", "storage.reader")
    assert outcome.subject == "repo:acme/api:ref:refs/heads/main"
    assert outcome.subject_issuer == EXTERNAL
    assert outcome.audience == ISSUER
    assert outcome.not_after == NOW + datetime.timedelta(seconds=600)


@pytest.mark.parametrize(
    ("asked", "cause"),
    [
        (request(subject(), subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
         "subject_token_type"),
        (request("a" * 40_000), "subject token size"),
        (request(subject(), client_id="stranger@team-a.acme.iam"), "no account"),
        (request("not-a-jwt"), "not a JWT"),
        (request(subject(iss="https://other.example.test")), "no trust of team-a/pipeline"),
        (request(subject(iss=ISSUER)), "kube-iam's own"),
        (request(subject(STRANGER)), "signature"),
        (request(subject(aud="someone-else")), "audience"),
        (request(subject(lifetime=-3600)), "lifetime"),
        (request(subject(nbf=int(NOW.timestamp()) + 3600)), "lifetime"),
        (request(subject(repository="acme/other")), "condition"),
    ],
)  # fmt: skip
def test_each_refusal_is_invalid_request_and_names_its_cause(
    asked: ExchangeRequest, cause: str
) -> None:
    denied = refused(run(asked))
    assert denied.refusal.error == Error.INVALID_REQUEST
    assert cause in denied.cause
    assert asked.subject_token not in denied.cause + denied.refusal.description


@pytest.mark.parametrize(
    ("trust", "cause"),
    [
        (trust_view(trust_body(disabled=True)), "disabled"),
        (trust_view(trust_body(ready="False")), "not Ready"),
        (trust_view(trust_body(generation=2, observed=1)), "not Ready"),
        (trust_view(trust_body(condition="claims.sub != ''", issuer=GITHUB)), "ConditionTooBroad"),
    ],
)  # fmt: skip
def test_a_trust_that_may_not_be_used_admits_nothing(trust: Trust, cause: str) -> None:
    token = subject(iss=trust.issuer)
    assert cause in refused(run(request(token), trusts=[trust])).cause


def test_a_disabled_account_exchanges_nothing() -> None:
    denied = refused(run(request(subject()), account=dataclasses.replace(ACCOUNT, disabled=True)))
    assert "disabled" in denied.cause
    assert denied.refusal == exchange.NOT_ACCEPTED


def test_the_address_allowlist_applies_after_the_token_is_verified() -> None:
    fenced = trust_view(trust_body(allowSourceCidrs=["10.0.0.0/8"]))
    inside = request(subject(), client_address=ipaddress.ip_address("10.1.2.3"))
    outside = request(subject(), client_address=ipaddress.ip_address("192.0.2.1"))
    assert isinstance(run(inside, trusts=[fenced]), Exchanged)
    assert "allowSourceCidrs" in refused(run(outside, trusts=[fenced])).cause


def test_scope_narrows_the_trusts_roles_and_cannot_widen_them() -> None:
    narrowed = run(request(subject(), scope="storage.reader"))
    assert isinstance(narrowed, Exchanged)
    assert narrowed.scopes == ("storage.reader",)
    wider = refused(run(request(subject(), scope="storage.reader cluster.admin")))
    assert wider.refusal.error == Error.INVALID_SCOPE
    target = refused(run(request(subject(), audience="https://elsewhere.example")))
    assert target.refusal.error == Error.INVALID_TARGET


def test_the_first_trust_by_name_that_accepts_wins() -> None:
    other_repo = trust_view(trust_body("a-other", condition='claims.repository == "acme/x"'))
    outcome = run(request(subject()), trusts=[TRUST, other_repo])
    assert isinstance(outcome, Exchanged)
    assert outcome.trust.name == "ci"


def test_the_exchanged_tokens_claims_name_the_trust_and_the_external_subject() -> None:
    outcome = run(request(subject()))
    assert isinstance(outcome, Exchanged)
    body = tokens.claims(outcome, issuer=ISSUER, lifetime=HOUR, now=NOW, jti="j")
    assert body == {
        "iss": ISSUER,
        "sub": ACCOUNT.client_id,
        "aud": ISSUER,
        "exp": int(NOW.timestamp()) + 600,  # the subject token's exp, before the hour is up
        "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()),
        "jti": "j",
        "client_id": ACCOUNT.client_id,
        "act": {"iss": EXTERNAL, "sub": "repo:acme/api:ref:refs/heads/main"},
        "kubeiam.io/namespace": "team-a",
        "kubeiam.io/account": "pipeline",
        "kubeiam.io/trust": "ci",
        "kubeiam.io/trust_uid": "uid-ci",
        "scope": "compute.deployer storage.reader",
    }


def _introspect(token: str, trust: Trust | None, account: Account | None = ACCOUNT) -> bool:
    answer = introspect(
        token,
        keys=SIGNING,
        issuer=ISSUER,
        credential_by_id=lambda _: None,
        account_of=lambda ns, name: account if (ns, name) == ("team-a", "pipeline") else None,
        now=NOW,
        trust_by_uid=lambda uid: trust if trust is not None and uid == trust.uid else None,
    )
    return bool(answer["active"])


def test_introspection_ends_an_exchanged_token_with_its_trust_or_account() -> None:
    outcome = run(request(subject()))
    assert isinstance(outcome, Exchanged)
    token = tokens.issue(outcome, SIGNING.active, issuer=ISSUER, lifetime=HOUR, now=NOW).token
    assert _introspect(token, TRUST)
    assert not _introspect(token, None)  # deleted
    assert not _introspect(token, trust_view(trust_body(disabled=True)))
    assert not _introspect(token, trust_view(trust_body(ready="False")))
    assert not _introspect(token, dataclasses.replace(TRUST, namespace="team-b"))
    assert not _introspect(token, TRUST, dataclasses.replace(ACCOUNT, disabled=True))
    assert not _introspect(token, TRUST, None)


def test_the_cache_finds_the_account_by_client_id_and_its_trusts() -> None:
    cache = Cache()
    cache.replace(
        "serviceaccounts",
        [{"metadata": {"namespace": "team-a", "name": "pipeline"},
          "status": {"clientId": ACCOUNT.client_id}}],
    )  # fmt: skip
    cache.replace("federationtrusts", [trust_body(), trust_body("other", serviceAccountName="x")])
    account = cache.account_by_client_id(ACCOUNT.client_id)
    assert account == ACCOUNT
    assert [t.name for t in cache.trusts_of(account)] == ["ci"]
    assert cache.trust_by_uid("uid-ci") == TRUST
    cache.apply("federationtrusts", "DELETED", trust_body())
    assert cache.trusts_of(account) == []
    assert cache.trust_by_uid("uid-ci") is None
    cache.apply("serviceaccounts", "DELETED", {"metadata": {"namespace": "team-a",
                                                           "name": "pipeline"}})  # fmt: skip
    assert cache.account_by_client_id(ACCOUNT.client_id) is None


def test_the_condition_is_compiled_once_per_trust_generation() -> None:
    material = TrustMaterial(SETTINGS, clock=lambda: NOW)

    async def main() -> None:
        for _ in range(5):
            await material.prepare(TRUST)
        assert material.compiled == 1
        changed = trust_view(trust_body(generation=2, condition='claims.repository == "acme/x"'))
        prepared = await material.prepare(changed)
        assert material.compiled == 2
        assert not isinstance(prepared.policy, exchange.Check)

    asyncio.run(main())


def test_a_deleted_trusts_policy_is_forgotten_and_compiled_afresh_if_it_returns() -> None:
    material = TrustMaterial(SETTINGS, clock=lambda: NOW)

    async def main() -> None:
        await material.prepare(TRUST)
        material.forget({TRUST.uid})
        await material.prepare(TRUST)
        assert material.compiled == 1  # still there: kept
        material.forget(set())
        await material.prepare(TRUST)
        assert material.compiled == 2  # forgotten, then compiled again

    asyncio.run(main())


def test_a_trust_and_a_credential_of_one_name_are_coalesced_apart() -> None:
    rule = usage.Coalescer(datetime.timedelta(seconds=60))
    credential_key = ("serviceaccountcredentials", "team-a", "ci")
    trust_key = ("federationtrusts", "team-a", "ci")
    rule.note(credential_key, usage.Use(NOW, "10.0.0.1"))
    rule.note(trust_key, usage.Use(NOW, "10.0.0.1"))
    assert sorted(key for key, _ in rule.take(NOW)) == sorted([credential_key, trust_key])
    assert usage.Use(NOW, "10.0.0.1").status(with_address=False) == {
        "lastUsedAt": "2026-12-07T12:00:00Z"
    }


def test_spec_and_readiness_are_read_from_the_trust() -> None:
    assert TRUST.ready
    assert TRUST.spec == FederationTrustSpec.model_validate(trust_body()["spec"])
    assert TRUST.effective_roles == ("compute.deployer", "storage.reader")
    assert trust_view(trust_body(audiences="not a list")).spec is None
    assert Candidates(ACCOUNT, EXTERNAL, (TRUST,)).trusts == (TRUST,)


EXCHANGE_FORM = {
    "grant_type": exchange.GRANT_TYPE,
    "client_id": "pipeline@team-a.acme.iam",
    "subject_token": "a.b.c",
    "subject_token_type": JWT,
}


@pytest.mark.parametrize(
    ("change", "headers", "says"),
    [
        ({"subject_token": None}, {}, "subject_token parameter is missing"),
        ({"subject_token_type": None}, {}, "subject_token_type parameter is missing"),
        ({"client_id": None}, {}, "client_id parameter is missing"),
        ({"client_secret": "kiam_x"}, {}, "no client secret"),
        ({}, {"Authorization": "Basic eDp5"}, "no client secret"),
        ({"actor_token": "a.b.c", "actor_token_type": JWT}, {}, "Actor tokens"),
        ({"audience": ISSUER, "resource": ISSUER}, {}, "not both"),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, {},
         "requested_token_type"),
        ({}, {}, "not accepted by any trust"),
    ],
)  # fmt: skip
def test_the_token_endpoint_refuses_a_malformed_exchange_before_any_lookup(
    change: dict[str, str | None], headers: dict[str, str], says: str
) -> None:
    form = {**EXCHANGE_FORM, **change}
    data = {name: value for name, value in form.items() if value is not None}

    async def call(client: Any) -> None:
        answer = await client.post("/prefix/oauth2/token", data=data, headers=headers)
        assert answer.status == 400
        body = await answer.json()
        assert body["error"] == "invalid_request"
        assert says in body["error_description"]

    serve_one(service(), call)


def test_refused_exchanges_are_logged_once_a_minute_per_kind_at_info_the_rest_at_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of bad subject tokens cannot flood the log; each line says why, never the token."""
    from kubeiam.tokens import server
    from kubeiam.tokens.refusal_log import RefusalLog

    monkeypatch.setattr(server, "_REFUSALS", RefusalLog())
    token = subject()

    async def call(client: Any) -> None:
        for client_id in ("nobody@team-a.acme.iam", "nobody@team-a.acme.iam", "pipeline@x"):
            form = {**EXCHANGE_FORM, "client_id": client_id, "subject_token": token}
            assert (await client.post("/prefix/oauth2/token", data=form)).status == 400

    with caplog.at_level(logging.DEBUG, logger="kubeiam.tokens.server"):
        serve_one(service(), call)
    lines = [r for r in caplog.records if r.getMessage().startswith("Refused a token exchange")]
    assert [r.levelno for r in lines] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    assert all("no account has this client id" in r.getMessage() for r in lines)
    assert all(token not in r.getMessage() for r in caplog.records)
