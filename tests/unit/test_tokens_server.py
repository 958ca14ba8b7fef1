"""The token endpoint's HTTP rules, without a cluster: health, bodies, forms, client methods."""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from kubeiam.domain.secret_format import credential_id, generate, secret_hash
from kubeiam.kube.key_secret import KeyRing
from kubeiam.kube.resources import CREDENTIALS, SERVICE_ACCOUNTS, TRUSTS
from kubeiam.settings import Settings, TokenSettings
from kubeiam.tokens import dpop, keys
from kubeiam.tokens.cache import Cache
from kubeiam.tokens.server import TokenService

from ..dpop_support import ProofKey

ISSUER = "https://iam.example.test/prefix"
CLIENT_ID = "pipeline@team-a.acme.iam"
ID = credential_id("uid")
SECRET = generate(ID, os.urandom)
NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def service(*, ready: bool = True) -> TokenService:
    cache = Cache()
    if ready:
        cache.replace(
            SERVICE_ACCOUNTS,
            [
                {
                    "metadata": {"namespace": "team-a", "name": "pipeline"},
                    "spec": {},
                    "status": {"clientId": CLIENT_ID},
                }
            ],
        )
        cache.replace(
            CREDENTIALS,
            [
                {
                    "metadata": {"namespace": "team-a", "name": "key"},
                    "spec": {"serviceAccountName": "pipeline"},
                    "status": {
                        "state": "Active",
                        "credentialId": ID,
                        "secretHash": secret_hash(SECRET),
                        "clientId": CLIENT_ID,
                        "expiresAt": "2027-01-01T00:00:00Z",
                        "effectiveRoles": ["storage.reader"],
                    },
                }
            ],
        )
        cache.replace(TRUSTS, [])
    settings = Settings(tokens=TokenSettings(issuer=ISSUER, max_request_bytes=1024))
    made = TokenService(settings, cache, clock=lambda: NOW)
    if ready:
        made.keys = keys.from_ring(KeyRing("k", {"k": keys.new_private_key_pem()}))
    return made


Call = Callable[[TestClient[Any, Any]], Awaitable[None]]


def run(made: TokenService, call: Call) -> None:
    async def main() -> None:
        async with TestClient(TestServer(made.app())) as client:
            await call(client)

    asyncio.run(main())


FORM = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}


def test_not_ready_until_the_cache_is_filled_and_the_key_read() -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/healthz")).status == 503
        assert (await client.post("/prefix/oauth2/token", data=FORM)).status == 503
        assert (await client.get("/prefix/oauth2/jwks")).status == 503

    run(service(ready=False), call)


def test_ready_it_grants_below_the_issuers_path() -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/healthz")).status == 200
        answer = await client.post("/prefix/oauth2/token", data=FORM)
        assert answer.status == 200
        body = await answer.json()
        assert body["scope"] == "storage.reader"
        metadata = await (await client.get("/prefix/.well-known/openid-configuration")).json()
        assert metadata["token_endpoint"] == ISSUER + "/oauth2/token"

    run(service(), call)


def test_a_dpop_proof_binds_the_token_and_discovery_names_the_algorithms() -> None:
    key = ProofKey()
    iat = int(NOW.timestamp())

    async def call(client: TestClient[Any, Any]) -> None:
        metadata = await (await client.get("/prefix/.well-known/openid-configuration")).json()
        assert metadata["dpop_signing_alg_values_supported"] == list(dpop.ALGORITHMS)
        good = key.proof(htm="POST", htu=ISSUER + "/oauth2/token", iat=iat)
        answer = await client.post("/prefix/oauth2/token", data=FORM, headers={"DPoP": good})
        assert answer.status == 200
        body = await answer.json()
        assert body["token_type"] == "DPoP"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["cnf"] == {"jkt": dpop.thumbprint(key.public_jwk())}
        # The proof's htu without the issuer's path is another URL.
        elsewhere = key.proof(htm="POST", htu="https://iam.example.test/oauth2/token", iat=iat)
        refused = await client.post("/prefix/oauth2/token", data=FORM, headers={"DPoP": elsewhere})
        assert refused.status == 400
        assert (await refused.json())["error"] == "invalid_dpop_proof"

    run(service(), call)


def test_with_nonces_on_the_server_hands_out_a_nonce_and_takes_it_back() -> None:
    made = service()
    made.settings = made.settings.model_copy(update={"dpop_nonces": True})
    key = ProofKey()
    iat = int(NOW.timestamp())
    url = ISSUER + "/oauth2/token"

    async def call(client: TestClient[Any, Any]) -> None:
        first = key.proof(htm="POST", htu=url, iat=iat)
        asked = await client.post("/prefix/oauth2/token", data=FORM, headers={"DPoP": first})
        assert asked.status == 400
        assert (await asked.json())["error"] == "use_dpop_nonce"
        nonce = asked.headers["DPoP-Nonce"]
        again = key.proof(htm="POST", htu=url, iat=iat, claims={"nonce": nonce})
        answer = await client.post("/prefix/oauth2/token", data=FORM, headers={"DPoP": again})
        assert answer.status == 200
        assert (await answer.json())["token_type"] == "DPoP"
        assert "DPoP-Nonce" in answer.headers

    run(made, call)


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 256):
        yield b"a" * 256


@pytest.mark.parametrize(
    ("send", "status", "error"),
    [
        # A body of undeclared length (chunked) is cut off once it grows past the bound.
        (
            lambda c: c.post(
                "/prefix/oauth2/token",
                data=_chunks(4096),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            413,
            None,
        ),
        (lambda c: c.post("/prefix/oauth2/token", data={**FORM, "pad": "x" * 2048}), 413, None),
        (
            lambda c: c.post(
                "/prefix/oauth2/token",
                data=b"grant_type=client_credentials&grant_type=client_credentials",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post("/prefix/oauth2/token", data={"client_id": CLIENT_ID}),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post(
                "/prefix/oauth2/token",
                data=FORM,
                headers={
                    "Authorization": "Basic "
                    + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
                },
            ),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post(
                "/prefix/oauth2/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": "Bearer x"},
            ),
            401,
            "invalid_client",
        ),
        (
            lambda c: c.post("/prefix/oauth2/token", data={"grant_type": "client_credentials"}),
            400,
            "invalid_client",
        ),
        (
            lambda c: c.post(
                "/prefix/oauth2/token", data={**FORM, "audience": ISSUER, "resource": ISSUER}
            ),
            400,
            "invalid_request",
        ),
        (
            lambda c: c.post(
                "/prefix/oauth2/token",
                data=b"\xff\xfe",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            400,
            "invalid_request",
        ),
    ],
    ids=[
        "chunked-oversize",
        "declared-oversize",
        "parameter-twice",
        "no-grant-type",
        "basic-and-body",
        "not-basic",
        "no-client",
        "audience-and-resource",
        "not-utf8",
    ],
)
def test_requests_the_endpoint_refuses(send: Any, status: int, error: str | None) -> None:
    async def call(client: TestClient[Any, Any]) -> None:
        answer = await send(client)
        assert answer.status == status
        if error is not None:
            body = await answer.json()
            assert body["error"] == error
            assert SECRET not in body["error_description"]
        if status == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Basic ")

    run(service(), call)


def test_introspection_answers_an_authenticated_caller_from_the_cache() -> None:
    made = service()

    async def call(client: TestClient[Any, Any]) -> None:
        token = (await (await client.post("/prefix/oauth2/token", data=FORM)).json())[
            "access_token"
        ]
        caller = {"client_id": CLIENT_ID, "client_secret": SECRET}
        url = "/prefix/oauth2/introspect"
        answer = await client.post(url, data={**caller, "token": token})
        assert answer.status == 200
        assert answer.headers["Cache-Control"] == "no-store"
        body = await answer.json()
        assert body["active"] is True
        assert body["scope"] == "storage.reader"
        assert (await (await client.post(url, data={**caller, "token": "x"})).json()) == {
            "active": False
        }
        missing = await client.post(url, data=caller)
        assert (await missing.json())["error"] == "invalid_request"
        stranger = await client.post(url, data={"token": token})
        assert (await stranger.json())["error"] == "invalid_client"
        metadata = await (await client.get("/prefix/.well-known/openid-configuration")).json()
        assert metadata["introspection_endpoint"] == ISSUER + "/oauth2/introspect"

    run(made, call)


def test_an_issued_token_notes_its_use_for_write_back() -> None:
    noted: list[tuple[tuple[str, str], Any]] = []

    class Notes:
        def note(self, key: tuple[str, str], use: Any) -> None:
            noted.append((key, use))

    made = service()
    made.usage = Notes()  # type: ignore[assignment]

    async def call(client: TestClient[Any, Any]) -> None:
        assert (await client.post("/prefix/oauth2/token", data=FORM)).status == 200
        assert (
            await client.post("/prefix/oauth2/token", data={**FORM, "client_secret": "x"})
        ).status == 400

    run(made, call)
    assert [key for key, _ in noted] == [("serviceaccountcredentials", "team-a", "key")]
    assert noted[0][1].at == NOW
    assert noted[0][1].address == "127.0.0.1"
