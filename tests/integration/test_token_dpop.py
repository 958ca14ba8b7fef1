"""DPoP (RFC 9449) at the real token server, over real HTTPS, against the real control plane.

A credential with `requireDpop: true` gets no token without a valid proof, each broken proof is
refused with `invalid_dpop_proof`, and a valid one binds the token to its key (`cnf.jkt`, the
RFC 7638 thumbprint as another JOSE implementation computes it), verified with PyJWT from
discovery alone. Proofs are signed with PyJWT as a client would; every proof sent is registered
with the suite's leak scan, and none may reach the token server's log.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import ssl
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests

from ..dpop_support import ProofKey
from .credentials_support import (
    ISSUED_TOKENS,
    SENT_PROOFS,
    account_manifest,
    credential_manifest,
)
from .metrics_support import Page
from .support import ClusterHandle, OperatorProcess
from .token_support import (
    Client,
    TokenServer,
    client_of,
    namespace_with,
    token_server_on_loopback,
    verify,
)


@dataclass
class World:
    namespace: str
    bound: Client  # requireDpop: true
    plain: Client  # requireDpop unset


@pytest.fixture(scope="module")
def token_server(
    cluster: ClusterHandle,
    session_operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TokenServer]:
    settings = {
        "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
        "KUBEIAM_TOKEN_DPOP_MAX_AGE": "60",
        "KUBEIAM_TOKEN_DPOP_CLOCK_SKEW": "5",
        "KUBEIAM_TOKEN_USAGE_INTERVAL": "3600",
    }
    directory = tmp_path_factory.mktemp("token-server-dpop")
    with token_server_on_loopback(
        cluster,
        session_operator,
        directory,
        log_name="token-server-dpop.log",
        settings=lambda issuer: settings,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(
    cluster: ClusterHandle,
    session_operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TokenServer, TokenServer]]:
    """Two more replicas, each its own process and port, both asking for server nonces."""
    settings = {"KUBEIAM_TOKEN_ADDRESS": "127.0.0.1", "KUBEIAM_TOKEN_DPOP_NONCES": "true"}
    with contextlib.ExitStack() as stack:
        first, second = (
            stack.enter_context(
                token_server_on_loopback(
                    cluster,
                    session_operator,
                    tmp_path_factory.mktemp(f"token-server-dpop-{name}"),
                    log_name=f"token-server-dpop-{name}.log",
                    settings=lambda issuer: settings,
                )
            )
            for name in ("a", "b")
        )
        yield first, second


@pytest.fixture(scope="module")
def world(cluster: ClusterHandle, token_server: TokenServer) -> Iterator[World]:
    with namespace_with(
        cluster,
        "t-token-dpop",
        [
            account_manifest("pipeline"),
            credential_manifest("bound", "pipeline", requireDpop=True),
            credential_manifest("plain", "pipeline"),
        ],
    ) as namespace:
        yield World(
            namespace,
            bound=client_of(cluster, namespace, "bound"),
            plain=client_of(cluster, namespace, "plain"),
        )


def _form(client: Client) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
    }


def _proof(server: TokenServer, signer: ProofKey | None = None, **changes: Any) -> str:
    """A proof for this server's token endpoint, now, with `changes`; remembered for the scan."""
    fields: dict[str, Any] = {"htm": "POST", "htu": server.token_url, "iat": int(time.time())}
    fields.update(changes)
    proof = (signer or ProofKey()).proof(**fields)
    SENT_PROOFS.add(proof)
    return proof


def _ask(server: TokenServer, client: Client, *proofs: str) -> requests.Response:
    headers = {"DPoP": proofs[0]} if proofs else {}
    return server.post(_form(client), headers=headers)


def _refused(answer: requests.Response, error: str = "invalid_dpop_proof") -> str:
    assert answer.status_code == 400, answer.status_code
    body: dict[str, Any] = answer.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    description: str = body["error_description"]
    return description


def _granted(answer: requests.Response, token_type: str) -> str:
    assert answer.status_code == 200, answer.json().get("error")
    body: dict[str, Any] = answer.json()
    ISSUED_TOKENS.add(body["access_token"])
    assert body["token_type"] == token_type
    token: str = body["access_token"]
    return token


def _rfc7638(key: ProofKey) -> str:
    """The key's thumbprint as Authlib computes it (not our code)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # authlib.jose, still maintained
        from authlib.jose import JsonWebKey

        thumbprint: str = JsonWebKey.import_key(key.public_jwk()).thumbprint()
        return thumbprint


# -- granted -------------------------------------------------------------------------------------


def test_a_valid_proof_gets_a_token_bound_to_its_keys_thumbprint(
    token_server: TokenServer, world: World
) -> None:
    discovery = token_server.get("/.well-known/openid-configuration").json()
    assert "ES256" in discovery["dpop_signing_alg_values_supported"]
    assert "none" not in discovery["dpop_signing_alg_values_supported"]
    key = ProofKey()
    token = _granted(_ask(token_server, world.bound, _proof(token_server, key)), "DPoP")
    claims = verify(token_server, token, token_server.issuer)
    assert claims["cnf"] == {"jkt": _rfc7638(key)}
    assert claims["sub"] == world.bound.client_id


def test_a_proof_binds_the_token_of_a_credential_that_does_not_require_one(
    token_server: TokenServer, world: World
) -> None:
    key = ProofKey("EdDSA")
    token = _granted(_ask(token_server, world.plain, _proof(token_server, key)), "DPoP")
    assert verify(token_server, token, token_server.issuer)["cnf"] == {"jkt": _rfc7638(key)}


def test_a_credential_without_require_dpop_still_gets_a_bearer_token_without_a_proof(
    token_server: TokenServer, world: World
) -> None:
    token = _granted(_ask(token_server, world.plain), "Bearer")
    assert "cnf" not in verify(token_server, token, token_server.issuer)


def test_introspection_shows_the_bound_tokens_key_and_type(
    token_server: TokenServer, world: World
) -> None:
    key = ProofKey()
    token = _granted(_ask(token_server, world.bound, _proof(token_server, key)), "DPoP")
    form = {"token": token, "client_id": world.plain.client_id, "client_secret": world.plain.secret}
    answer = requests.post(
        token_server.issuer + "/oauth2/introspect",
        data=form,
        verify=str(token_server.ca),
        timeout=10,
    )
    assert answer.status_code == 200, answer.status_code
    body = answer.json()
    assert body["active"] is True
    assert body["cnf"] == {"jkt": _rfc7638(key)}
    assert body["token_type"] == "DPoP"


# -- refused ---------------------------------------------------------------------------------------


def test_require_dpop_without_a_proof_gets_no_token(
    token_server: TokenServer, world: World
) -> None:
    assert "requires a DPoP proof" in _refused(_ask(token_server, world.bound))


def test_a_proof_with_alg_none_is_refused(token_server: TokenServer, world: World) -> None:
    claims = {"jti": secrets.token_urlsafe(8), "htm": "POST", "htu": token_server.token_url}
    unsigned = jwt.encode(
        {**claims, "iat": int(time.time())},
        None,
        algorithm="none",
        headers={"typ": "dpop+jwt", "jwk": ProofKey().public_jwk()},
    )
    SENT_PROOFS.add(unsigned)
    assert "alg must be one of" in _refused(_ask(token_server, world.bound, unsigned))


def test_a_proof_with_hs256_is_refused(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server, key=secrets.token_bytes(32), alg="HS256")
    assert "alg must be one of" in _refused(_ask(token_server, world.bound, proof))


def test_a_private_key_in_jwk_is_refused(token_server: TokenServer, world: World) -> None:
    key = ProofKey()
    proof = _proof(token_server, key, header={"jwk": key.private_jwk()})
    assert "private members" in _refused(_ask(token_server, world.bound, proof))


def test_a_proof_for_another_method_is_refused(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server, htm="GET")
    assert "htm" in _refused(_ask(token_server, world.bound, proof))


def test_a_proof_for_another_url_is_refused(token_server: TokenServer, world: World) -> None:
    # The same server's introspection endpoint: a proof made for it gets no token.
    proof = _proof(token_server, htu=token_server.issuer + "/oauth2/introspect")
    assert "htu" in _refused(_ask(token_server, world.bound, proof))


def test_a_proof_too_old_is_refused(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server, iat=int(time.time()) - 120)
    assert "seconds old" in _refused(_ask(token_server, world.bound, proof))


def test_a_proof_from_the_future_is_refused(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server, iat=int(time.time()) + 120)
    assert "in the future" in _refused(_ask(token_server, world.bound, proof))


def test_the_same_proof_twice_gets_one_token(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server)
    _granted(_ask(token_server, world.bound, proof), "DPoP")
    assert "used before" in _refused(_ask(token_server, world.bound, proof))


def test_a_proof_signed_by_another_key_is_refused(token_server: TokenServer, world: World) -> None:
    proof = _proof(token_server, key=ProofKey().private)
    assert "signature does not verify" in _refused(_ask(token_server, world.bound, proof))


def test_a_clients_key_the_server_already_knows_still_needs_its_private_half(
    token_server: TokenServer, world: World
) -> None:
    # The server keeps keys read from accepted proofs (dpop.KEY_CACHE_SIZE): an attacker who
    # copies the jwk of a client whose proofs were accepted, and signs with a key of its own,
    # is refused all the same. Several accepted proofs first, so every worker has read the key.
    client = ProofKey()
    for _ in range(4):
        _granted(_ask(token_server, world.bound, _proof(token_server, client)), "DPoP")
    forged = _proof(token_server, client, key=ProofKey().private)
    assert "signature does not verify" in _refused(_ask(token_server, world.bound, forged))


def test_two_dpop_headers_are_refused(token_server: TokenServer, world: World) -> None:
    parts = urllib.parse.urlsplit(token_server.token_url)
    context = ssl.create_default_context(cafile=str(token_server.ca))
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port, context=context, timeout=10
    )
    body = urllib.parse.urlencode(_form(world.bound)).encode()
    try:
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("DPoP", _proof(token_server))
        connection.putheader("DPoP", _proof(token_server))
        connection.endheaders(body)
        answer = connection.getresponse()
        status, refusal = answer.status, json.loads(answer.read())
    finally:
        connection.close()
    assert status == 400, status
    assert refusal["error"] == "invalid_dpop_proof", refusal
    assert "exactly one DPoP header" in refusal["error_description"]


# -- server nonces (§8) and replicas ---------------------------------------------------------------


def test_with_nonces_a_proof_without_one_gets_a_nonce_that_another_replica_accepts(
    replicas: tuple[TokenServer, TokenServer], world: World
) -> None:
    first, second = replicas
    key = ProofKey()
    asked = _ask(first, world.bound, _proof(first, key))
    assert "nonce" in _refused(asked, "use_dpop_nonce")
    nonce = asked.headers["DPoP-Nonce"]
    # The second replica's own URL is its htu; the nonce is the first replica's.
    answer = _ask(second, world.bound, _proof(second, key, claims={"nonce": nonce}))
    token = _granted(answer, "DPoP")
    assert "DPoP-Nonce" in answer.headers
    assert verify(second, token, second.issuer)["cnf"] == {"jkt": _rfc7638(key)}


def test_with_nonces_a_forged_nonce_is_use_dpop_nonce(
    replicas: tuple[TokenServer, TokenServer], world: World
) -> None:
    first, _ = replicas
    slot = int(time.time()) // 60
    proof = _proof(first, claims={"nonce": f"{slot}.{'A' * 24}"})
    _refused(_ask(first, world.bound, proof), "use_dpop_nonce")


def test_the_same_key_and_jti_at_another_replica_get_only_a_token_bound_to_that_key(
    token_server: TokenServer, replicas: tuple[TokenServer, TokenServer], world: World
) -> None:
    """RFC 9449 §11.1: replicas share no replay memory (docs/tokens.md says so); what a replay
    to another replica yields is useless without the private key."""
    first, second = replicas
    key = ProofKey()
    nonce = _ask(first, world.bound, _proof(first, key)).headers["DPoP-Nonce"]
    # Both replicas serve the same issuer in a real deployment; here each has its own URL, so
    # the "same" proof is one per URL with the same jti, key and nonce.
    jti = secrets.token_urlsafe(16)
    proofs = [_proof(s, key, jti=jti, claims={"nonce": nonce}) for s in (first, second)]
    tokens = [
        _granted(_ask(s, world.bound, p), "DPoP") for s, p in zip(replicas, proofs, strict=True)
    ]
    assert "used before" in _refused(_ask(first, world.bound, proofs[0]))
    for server, token in zip(replicas, tokens, strict=True):
        assert verify(server, token, server.issuer)["cnf"] == {"jkt": _rfc7638(key)}


# -- what the server counted and wrote -----------------------------------------------------------


def _scrape(cluster: ClusterHandle, server: TokenServer, name: str) -> Page:
    """The server's metrics page, kept where the suite's leak scan reads."""
    page = Page(requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text)
    kept = cluster.log_dir / "metrics" / f"{name}.prom"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(page.text)
    return page


def test_refused_proofs_are_counted_by_their_error_code(
    cluster: ClusterHandle,
    token_server: TokenServer,
    replicas: tuple[TokenServer, TokenServer],
    world: World,
) -> None:
    refused = "kubeiam_token_requests_refused_total"
    before = _scrape(cluster, token_server, "token-server-dpop").value(
        refused, error="invalid_dpop_proof"
    )
    _refused(_ask(token_server, world.bound))  # requireDpop, no proof
    after = _scrape(cluster, token_server, "token-server-dpop")
    assert after.value(refused, error="invalid_dpop_proof") == before + 1
    first = replicas[0]
    before = _scrape(cluster, first, "token-server-dpop-a").value(refused, error="use_dpop_nonce")
    _refused(_ask(first, world.bound, _proof(first)), "use_dpop_nonce")  # no nonce
    after = _scrape(cluster, first, "token-server-dpop-a")
    assert after.value(refused, error="use_dpop_nonce") == before + 1


def test_the_token_server_logs_hold_no_proof_no_secret_and_no_token(
    token_server: TokenServer, replicas: tuple[TokenServer, TokenServer], world: World
) -> None:
    assert len(SENT_PROOFS) >= 10, "the tests above must have sent proofs"
    log = "\n".join(server.log() for server in (token_server, *replicas))
    # By its code, in the INFO form (with the description) or the DEBUG one: each worker
    # process paces its own lines, so which form a given refusal took depends on the worker.
    assert "Refused a token request: invalid_dpop_proof" in log
    assert "Refused a token request: use_dpop_nonce" in log
    proofs_found = sum(1 for proof in SENT_PROOFS if proof in log)
    assert proofs_found == 0, f"{proofs_found} DPoP proofs in the token servers' logs"
    # A proof's signature alone is as telling as the proof.
    signatures = [proof.rsplit(".", 1)[1] for proof in SENT_PROOFS]
    signatures_found = sum(1 for signature in signatures if signature and signature in log)
    assert signatures_found == 0, f"{signatures_found} proof signatures in the logs"
    assert world.bound.secret not in log, "a client secret is in a token server's log"
    assert world.plain.secret not in log, "a client secret is in a token server's log"
    tokens_found = sum(1 for token in ISSUED_TOKENS if token in log)
    assert tokens_found == 0, f"{tokens_found} tokens in the token servers' logs"
