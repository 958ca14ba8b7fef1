"""Secretless federation: an external token exchanged (RFC 8693) for a kube-iam access token
through a FederationTrust, against the real control plane over real HTTPS.

The HTTPS test issuer plays GitHub Actions (its claim set; a multi-tenant issuer, so every trust
on it pins a repository); the local kube-apiserver's own ServiceAccount tokens are the other
external issuer, and the same API server then accepts what the exchange issued. The token
server runs where that API server expects kube-iam's issuer. Every refusal is checked twice: the
answer (`invalid_request`, which RFC 8693 §2.2.2 names for an unacceptable subject token, with
one sentence that tells a stranger nothing) and the token server's log, which says which check
refused it, so a test cannot pass by a refusal for another reason. Each has a twin that is
accepted. Subject tokens are registered for the suite's leak scan and never printed.
"""

from __future__ import annotations

import datetime
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from kubeiam.devcluster.token_authn import ROLE_GROUP_PREFIX, USERNAME_PREFIX, TokenIssuer
from kubeiam.tokens import dpop

from ..dpop_support import ProofKey
from .conftest import ORGANIZATION
from .credentials_support import (
    ISSUED_TOKENS,
    SENT_PROOFS,
    account_manifest,
    credential_manifest,
    many,
    register_subject_token,
)
from .oidc_issuer import DEFAULT_AUDIENCE, LocalIssuer, github_claims
from .support import ClusterHandle, OperatorProcess, wait_for
from .token_support import (
    ISSUER_FOUND_TIMEOUT,
    Client,
    Kubectl,
    TokenServer,
    client_of,
    running_token_server,
)
from .token_support import verify as _verify

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ROLES = ("compute.deployer", "storage.reader")
RUNNER = "ci-runner"  # the Kubernetes ServiceAccount whose projected token is exchanged


@dataclass(frozen=True)
class Subject:
    """A subject token, shown by no repr: a failing test's traceback prints its arguments."""

    value: str = field(repr=False)


def pinned(repository: str) -> str:
    return f"claims.repository == '{repository}' && claims.ref == 'refs/heads/main'"


@dataclass
class Issuers:
    github: LocalIssuer  # GitHub-Actions-like, multi-tenant
    rotating: LocalIssuer  # rotates its keys in one test
    stranger: LocalIssuer  # no trust names it


@dataclass
class World:
    namespace: str
    pipeline: str  # the account's clientId
    other: str  # another account's clientId
    introspector: Client  # a credential, to call introspection
    server: TokenServer
    issuer: TokenIssuer


@pytest.fixture(scope="module")
def issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuers]:
    ca_dir = tmp_path_factory.mktemp("exchange-issuer-ca")
    started = Issuers(*(LocalIssuer(ca_dir=ca_dir).start() for _ in range(3)))
    # The rotating issuer's keys may be cached one second: a removed key is soon forgotten.
    started.rotating.cache_control = "max-age=1"
    try:
        yield started
    finally:
        for each in (started.github, started.rotating, started.stranger):
            each.stop()


def _service_account_issuer(cluster: ClusterHandle) -> tuple[str, dict[str, Any]]:
    """The local API server's ServiceAccount issuer and its JWKS, as the API server serves them."""
    discovery = json.loads(
        cluster.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout
    )
    jwks = json.loads(cluster.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
    return str(discovery["issuer"]), jwks


@pytest.fixture(scope="module")
def issuer_env(cluster: ClusterHandle, issuers: Issuers, issuer: TokenIssuer) -> dict[str, str]:
    """What a platform team would give both the operator (test_trusts' `trust_operator` runs
    it with these) and the token server: the test CA trusted (never verification off),
    loopback allowed explicitly, the allowed issuers."""
    service_accounts, _ = _service_account_issuer(cluster)
    return {
        "KUBEIAM_ORGANIZATION": ORGANIZATION,
        "KUBEIAM_ISSUER_CA_BUNDLE": str(issuers.github.ca_bundle),
        "KUBEIAM_ISSUER_ALLOWED_NETWORKS": json.dumps(["127.0.0.0/8", "::1/128"]),
        "KUBEIAM_ALLOWED_ISSUERS": json.dumps(
            [
                issuers.github.url,
                issuers.rotating.url,
                issuers.stranger.url,
                issuer.url,
                service_accounts,
            ]
        ),
        "KUBEIAM_MULTI_TENANT_ISSUERS": json.dumps([issuers.github.url]),
        "KUBEIAM_ISSUER_REFRESH_MIN": "1",
        "KUBEIAM_ISSUER_RETRY_MIN": "1",
        "KUBEIAM_ISSUER_RETRY_MAX": "2",
    }


@pytest.fixture(scope="module")
def token_server(
    cluster: ClusterHandle,
    trust_operator: OperatorProcess,
    issuer: TokenIssuer,
    issuer_env: dict[str, str],
) -> Iterator[TokenServer]:
    """The token server where the API server expects kube-iam's issuer, under its own
    ServiceAccount when the suite has one (so RBAC decides whether it may write trust usage)."""
    kubeconfig = cluster.token_server_kubeconfig or cluster.operator_kubeconfig
    assert kubeconfig is not None  # trust_operator skipped otherwise
    with running_token_server(
        cluster,
        kubeconfig=kubeconfig,
        issuer=issuer.url,
        ca=Path(issuer.ca_file),
        log_name="token-server-exchange.log",
        # Refusals are paced at INFO; each one's cause is at DEBUG at least, which the tests
        # read (and the leak scan then reads the DEBUG lines too).
        verbose=True,
        settings={
            **issuer_env,
            "KUBEIAM_TOKEN_PORT": str(issuer.port),
            "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
            "KUBEIAM_TOKEN_CERT_DIR": issuer.cert_dir,
            "KUBEIAM_TOKEN_AUDIENCES": json.dumps([issuer.url, issuer.audience]),
            # Room for a subject token past its own cap, so that cap is what refuses it.
            "KUBEIAM_TOKEN_MAX_REQUEST_BYTES": "65536",
        },
    ) as server:
        yield server


def trust_manifest(
    name: str, issuer_url: str, condition: str, account: str = "pipeline", **spec: Any
) -> str:
    return json.dumps(
        {
            "apiVersion": "iam.kubeiam.io/v1alpha1",
            "kind": "FederationTrust",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": account,
                "issuer": issuer_url,
                "audiences": [DEFAULT_AUDIENCE],
                "condition": condition,
                **spec,
            },
        }
    )


@pytest.fixture(scope="module")
def world(
    cluster: ClusterHandle, issuers: Issuers, token_server: TokenServer, issuer: TokenIssuer
) -> Iterator[World]:
    namespace = f"t-token-exchange-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    service_accounts, api_jwks = _service_account_issuer(cluster)
    github = issuers.github.url
    try:
        cluster.apply(
            many(
                [
                    account_manifest("pipeline"),
                    account_manifest("other"),
                    credential_manifest("introspector", "pipeline"),
                    trust_manifest("gh", github, pinned("acme/api")),
                    trust_manifest("toggle", github, pinned("acme/toggle")),
                    trust_manifest("doomed", github, pinned("acme/doomed")),
                    trust_manifest("widened", github, pinned("acme/widened")),
                    trust_manifest(
                        "fenced", github, pinned("acme/fenced"), allowSourceCidrs=["192.0.2.0/24"]
                    ),
                    trust_manifest("rotating", issuers.rotating.url, "claims.sub == 'deploy'"),
                    # A trust on kube-iam's own issuer, with its published keys: what an
                    # attacker would set up to re-exchange kube-iam tokens and extend them.
                    trust_manifest(
                        "self",
                        issuer.url,
                        "claims.sub != ''",
                        audiences=[issuer.url],
                        jwks=token_server.get("/oauth2/jwks").json(),
                    ),
                    trust_manifest(
                        "cluster",
                        service_accounts,
                        f"claims.sub == 'system:serviceaccount:{namespace}:{RUNNER}'",
                        jwks=api_jwks,
                    ),
                    trust_manifest("other-gh", github, pinned("acme/other"), account="other"),
                ]
            ),
            namespace,
        )
        trusts = ("gh", "toggle", "doomed", "widened", "fenced", "rotating", "self", "cluster")
        for name in (*trusts, "other-gh"):
            cluster.wait_condition("iamtrust", name, namespace)
        yield World(
            namespace,
            pipeline=_client_id(cluster, namespace, "pipeline"),
            other=_client_id(cluster, namespace, "other"),
            introspector=client_of(cluster, namespace, "introspector"),
            server=token_server,
            issuer=issuer,
        )
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _client_id(cluster: ClusterHandle, namespace: str, account: str) -> str:
    def probe() -> str | None:
        body = cluster.get("iamsa", account, namespace) or {}
        return (body.get("status") or {}).get("clientId")

    return wait_for(probe, what=f"account {account}'s clientId")


# -- requests as a CI job makes them ------------------------------------------------------------


def exchange(
    world: World,
    token: Subject,
    client_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> Any:
    register_subject_token(token.value)
    return world.server.post(
        {
            "grant_type": GRANT,
            "client_id": client_id or world.pipeline,
            "subject_token": token.value,
            "subject_token_type": JWT_TYPE,
            **extra,
        },
        headers=headers,
    )


def accepted(
    world: World,
    token: Subject,
    client_id: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: str,
) -> Any:
    answer = exchange(world, token, client_id, headers, **extra)
    assert answer.status_code == 200, answer.json()
    body = answer.json()
    ISSUED_TOKENS.add(body["access_token"])
    return body


def refused(
    world: World, token: Subject, cause: str, client_id: str | None = None, **extra: str
) -> None:
    """Refused `invalid_request`, and the token server's log says `cause` refused it."""
    before = len(world.server.log())
    answer = exchange(world, token, client_id, **extra)
    assert answer.status_code == 400, answer.status_code
    assert answer.json()["error"] == "invalid_request", answer.json()
    assert token.value not in answer.text, "the answer quotes the subject token"

    def logged() -> str | None:
        tail = world.server.log()[before:]
        line = next((ln for ln in tail.splitlines() if "Refused a token exchange" in ln), None)
        return line if line and cause in line else None

    wait_for(logged, timeout=10, what=f"the log to say the exchange was refused for {cause!r}")


def introspect(world: World, token: str) -> bool:
    answer = requests.post(
        world.issuer.url + "/oauth2/introspect",
        data={
            "token": token,
            "client_id": world.introspector.client_id,
            "client_secret": world.introspector.secret,
        },
        verify=world.issuer.ca_file,
        timeout=10,
    )
    assert answer.status_code == 200, answer.status_code
    return bool(answer.json()["active"])


def github(issuers: Issuers, repository: str = "acme/api", **claims: Any) -> Subject:
    return Subject(issuers.github.mint(github_claims(repository, **claims)))


# -- accepted -----------------------------------------------------------------------------------


def test_the_pinned_repositorys_token_is_exchanged_as_soon_as_the_trust_turns_ready(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    """A new trust: wait for Ready, then exchange at once; the token is verified from
    discovery alone by PyJWT and names the trust and the external subject."""
    cluster.apply(
        trust_manifest("fresh", issuers.github.url, pinned("acme/fresh")), world.namespace
    )
    cluster.wait_condition("iamtrust", "fresh", world.namespace)
    ready_at = time.monotonic()
    token = github(issuers, "acme/fresh")
    answers: list[int] = []

    def exchanged() -> dict[str, Any] | None:
        answer = exchange(world, token)
        answers.append(answer.status_code)
        return answer.json() if answer.status_code == 200 else None

    body = wait_for(exchanged, timeout=30, interval=0.05, what="the exchange to be accepted")
    print(f"accepted {time.monotonic() - ready_at:.3f}s after kubectl saw Ready, "
          f"after {len(answers)} request(s)")  # fmt: skip
    ISSUED_TOKENS.add(body["access_token"])
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["scope"] == " ".join(ROLES)

    discovery = world.server.get("/.well-known/openid-configuration").json()
    assert GRANT in discovery["grant_types_supported"]
    claims = _verify(world.server, body["access_token"], world.issuer.url)
    subject = jwt.decode(token.value, options={"verify_signature": False})
    trust = cluster.get("iamtrust", "fresh", world.namespace) or {}
    assert claims["sub"] == claims["client_id"] == world.pipeline
    assert claims["act"] == {"iss": issuers.github.url, "sub": subject["sub"]}
    assert claims["kubeiam.io/trust"] == "fresh"
    assert claims["kubeiam.io/trust_uid"] == trust["metadata"]["uid"]
    assert claims["kubeiam.io/account"] == "pipeline"
    assert "kubeiam.io/credential_id" not in claims
    # The subject token lives 10 minutes: the exchanged one does not outlive it.
    assert claims["exp"] <= subject["exp"]
    assert introspect(world, body["access_token"])

    def last_used() -> str | None:
        status = (cluster.get("iamtrust", "fresh", world.namespace) or {}).get("status") or {}
        return status.get("lastUsedAt")

    wait_for(last_used, what="the trust's status.lastUsedAt")


def test_scope_narrows_the_trusts_roles_and_cannot_widen_them(
    world: World, issuers: Issuers
) -> None:
    assert accepted(world, github(issuers), scope="storage.reader")["scope"] == "storage.reader"
    answer = exchange(world, github(issuers), scope="storage.reader cluster.admin")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_scope"


def test_a_dpop_proof_binds_the_exchanged_token_and_is_good_once(
    world: World, issuers: Issuers
) -> None:
    """RFC 9449 on the exchange as on client_credentials: a proof binds the token to its key
    (cnf.jkt, token_type DPoP); the same proof again is a replay and gets nothing."""
    key = ProofKey()
    proof = key.proof(htm="POST", htu=world.server.token_url, iat=int(time.time()))
    SENT_PROOFS.add(proof)
    body = accepted(world, github(issuers), headers={"DPoP": proof})
    assert body["token_type"] == "DPoP"
    claims = _verify(world.server, body["access_token"], world.server.issuer)
    assert claims["cnf"] == {"jkt": dpop.thumbprint(key.public_jwk())}
    replayed = exchange(world, github(issuers), headers={"DPoP": proof})
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_dpop_proof"


def test_an_id_token_type_is_accepted_and_any_other_type_refused(
    world: World, issuers: Issuers
) -> None:
    accepted(world, github(issuers), subject_token_type=ID_TOKEN_TYPE)
    refused(world, github(issuers), "subject_token_type", subject_token_type=ACCESS_TOKEN_TYPE)
    refused(
        world,
        github(issuers),
        "subject_token_type",
        subject_token_type="urn:ietf:params:oauth:token-type:saml2",
    )


# -- the refusal matrix ---------------------------------------------------------------------


def test_a_token_from_another_issuer_is_refused(world: World, issuers: Issuers) -> None:
    accepted(world, github(issuers))
    # Its own issuer, which no trust names.
    refused(world, Subject(issuers.stranger.mint(github_claims())), "no trust of")
    # Signed by the stranger's key but claiming GitHub's issuer and GitHub's key id.
    forged = Subject(
        issuers.stranger.mint(
            {**github_claims(), "iss": issuers.github.url}, kid=issuers.github.kid()
        )
    )
    refused(world, forged, "signature SignatureInvalid")


def test_a_token_for_another_audience_is_refused(world: World, issuers: Issuers) -> None:
    accepted(world, github(issuers, aud=DEFAULT_AUDIENCE))
    other = github(issuers, aud="https://elsewhere.example")
    refused(world, other, "audience AudienceMismatch")


def test_an_expired_token_is_refused(world: World, issuers: Issuers) -> None:
    ok = issuers.github.mint(github_claims(), lifetime=datetime.timedelta(seconds=30))
    accepted(world, Subject(ok))
    expired = Subject(issuers.github.mint(github_claims(), lifetime=-datetime.timedelta(minutes=5)))
    refused(world, expired, "lifetime TokenExpired")


def test_a_token_valid_only_beyond_the_leeway_is_refused(world: World, issuers: Issuers) -> None:
    now = int(time.time())
    accepted(world, github(issuers, nbf=now + 30))  # within the 60 s leeway
    refused(world, github(issuers, nbf=now + 600), "lifetime TokenNotYetValid")


def test_alg_none_is_refused(world: World, issuers: Issuers) -> None:
    unsigned = Subject(issuers.github.mint_none(github_claims()))
    refused(world, unsigned, "algorithm AlgorithmNotAllowed")


def test_hs256_keyed_with_the_issuers_public_key_is_refused(world: World, issuers: Issuers) -> None:
    forged = Subject(issuers.github.mint_hs256_with_public_key(github_claims()))
    refused(world, forged, "algorithm AlgorithmNotAllowed")


def test_an_unknown_kid_is_refused(world: World, issuers: Issuers) -> None:
    accepted(world, github(issuers))
    unknown = Subject(issuers.github.mint(github_claims(), kid="no-such-key"))
    refused(world, unknown, "key UnknownKeyId")


def test_a_kid_removed_from_the_jwks_is_refused(world: World, issuers: Issuers) -> None:
    rotating = issuers.rotating
    before = Subject(rotating.mint({"sub": "deploy"}))
    accepted(world, before)
    rotating.rotate()
    # Once the token server has the new keys (a token of a new key is accepted), the old kid
    # is no longer among them. Each worker process refreshes the issuer's keys on its own
    # schedule and a new connection may reach either, so every one must have: the old token
    # refused on a dozen connections in a row.
    after = Subject(rotating.mint({"sub": "deploy"}))
    wait_for(
        lambda: (
            exchange(world, after).status_code == 200
            and all(exchange(world, before).status_code == 400 for _ in range(12))
        ),
        timeout=60,
        what="every worker of the token server to read the rotated JWKS",
    )
    refused(world, before, "key UnknownKeyId")


def test_a_condition_that_evaluates_false_is_refused(world: World, issuers: Issuers) -> None:
    refused(world, github(issuers, ref="refs/heads/feature"), "condition ConditionFalse")
    refused(world, github(issuers, "acme/api-fork"), "condition ConditionFalse")


def test_a_trust_of_another_account_is_refused(world: World, issuers: Issuers) -> None:
    token = github(issuers, "acme/other")
    accepted(world, token, client_id=world.other)
    refused(world, github(issuers, "acme/other"), "condition ConditionFalse")


def test_an_access_token_of_kube_iam_itself_is_no_subject(world: World, issuers: Issuers) -> None:
    """Even through a trust on kube-iam's own issuer with its own keys: no re-exchange that
    would extend a token's life."""
    own = Subject(accepted(world, github(issuers))["access_token"])
    refused(world, own, "kube-iam's own")


def test_an_address_outside_the_trusts_allowlist_is_refused(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    refused(world, github(issuers, "acme/fenced"), "outside allowSourceCidrs")
    cluster.kubectl(
        "patch", "iamtrust", "fenced", "-n", world.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"allowSourceCidrs": ["127.0.0.0/8"]}}),
    )  # fmt: skip
    wait_for(
        lambda: exchange(world, github(issuers, "acme/fenced")).status_code == 200,
        what="the fence to admit loopback once the trust is Ready again",
    )


def test_a_subject_token_over_the_size_cap_is_refused(world: World, issuers: Issuers) -> None:
    accepted(world, github(issuers, padding="x" * 20_000))
    huge = github(issuers, padding="x" * 40_000)
    refused(world, huge, "subject token size")


# -- what stops exchanges, and ends earlier tokens ---------------------------------------------


def test_a_disabled_trust_stops_exchanges_and_ends_its_tokens(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    earlier = accepted(world, github(issuers, "acme/toggle"))["access_token"]
    assert introspect(world, earlier)
    cluster.kubectl(
        "patch", "iamtrust", "toggle", "-n", world.namespace, "--type=merge",
        "-p", '{"spec": {"disabled": true}}',
    )  # fmt: skip
    changed = time.monotonic()
    wait_for(
        lambda: exchange(world, github(issuers, "acme/toggle")).status_code == 400,
        interval=0.05,
        what="exchanges through the disabled trust to stop",
    )
    print(f"refused {time.monotonic() - changed:.3f}s after kubectl patch returned")
    refused(world, github(issuers, "acme/toggle"), "disabled")
    wait_for(lambda: not introspect(world, earlier), what="the earlier token to turn inactive")


def test_a_deleted_trust_stops_exchanges_and_ends_its_tokens(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    earlier = accepted(world, github(issuers, "acme/doomed"))["access_token"]
    assert introspect(world, earlier)
    cluster.kubectl("delete", "iamtrust", "doomed", "-n", world.namespace)
    wait_for(lambda: not introspect(world, earlier), what="the earlier token to turn inactive")
    refused(world, github(issuers, "acme/doomed"), "condition ConditionFalse")


def test_a_trust_no_longer_ready_stops_exchanges_and_ends_its_tokens(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    """Its condition widened to pin no repository: the operator turns it Ready=False
    (ConditionTooBroad), although the new condition itself would admit the token."""
    earlier = accepted(world, github(issuers, "acme/widened"))["access_token"]
    cluster.kubectl(
        "patch", "iamtrust", "widened", "-n", world.namespace, "--type=merge",
        "-p", json.dumps({"spec": {"condition": "claims.ref == 'refs/heads/main'"}}),
    )  # fmt: skip
    wait_for(lambda: not introspect(world, earlier), what="the earlier token to turn inactive")
    refused(world, github(issuers, "acme/widened"), "widened: not Ready")


def test_a_disabled_account_stops_exchanges_through_its_trusts_and_ends_their_tokens(
    cluster: ClusterHandle, world: World, issuers: Issuers
) -> None:
    earlier = accepted(world, github(issuers, "acme/other"), client_id=world.other)
    assert introspect(world, earlier["access_token"])
    cluster.kubectl(
        "patch", "iamsa", "other", "-n", world.namespace, "--type=merge",
        "-p", '{"spec": {"disabled": true}}',
    )  # fmt: skip
    wait_for(
        lambda: not introspect(world, earlier["access_token"]),
        what="the earlier token to turn inactive",
    )
    refused(world, github(issuers, "acme/other"), "is disabled", client_id=world.other)


# -- workload identity: the local API server's own ServiceAccount tokens --------------------


def test_a_projected_service_account_token_becomes_a_kube_iam_token_the_api_server_accepts(
    cluster: ClusterHandle, world: World, kubectl: Kubectl
) -> None:
    """A Pod-like process holds its ServiceAccount token (TokenRequest, as the kubelet projects
    it), exchanges it through the trust on the API server's own issuer, and uses the result
    against that same API server as the account."""
    namespace = world.namespace
    cluster.kubectl("create", "serviceaccount", RUNNER, "-n", namespace)
    cluster.kubectl("create", "serviceaccount", "intruder", "-n", namespace)

    def projected(name: str) -> Subject:
        token = cluster.kubectl(
            "create", "token", name, "-n", namespace, f"--audience={DEFAULT_AUDIENCE}",
            "--duration=10m",
        ).stdout.strip()  # fmt: skip
        return Subject(token)

    body = accepted(world, projected(RUNNER), audience=world.issuer.audience)
    user = wait_for(
        lambda: kubectl.whoami(body["access_token"]),
        timeout=ISSUER_FOUND_TIMEOUT,
        interval=1.0,
        what="the API server to accept the exchanged token",
    )
    trust = cluster.get("iamtrust", "cluster", namespace) or {}
    assert user["username"] == USERNAME_PREFIX + world.pipeline
    assert {ROLE_GROUP_PREFIX + role for role in ROLES} <= set(user["groups"])
    assert user["uid"] == trust["metadata"]["uid"]
    # Another ServiceAccount of the same cluster is not the one the trust names.
    refused(world, projected("intruder"), "condition ConditionFalse")
