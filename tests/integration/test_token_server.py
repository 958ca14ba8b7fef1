"""The token server against the real control plane, over real HTTPS: `kube-iam token-server`.

One namespace for the module holds the accounts and credentials every test asks about; the
token server runs as a process of its own under its own ServiceAccount's token (deploy/'s
kube-iam-token-server, so RBAC decides what it may read), with a
serving certificate from a CA made by devcluster/certs.py. Tokens are verified with PyJWT from
discovery alone (discovery -> jwks_uri -> PyJWKClient). No secret or token reaches an assertion
message, and none reaches the token server's log (the last test; the suite's leak scan reads the
same log).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from kubeiam.devcluster import install
from kubeiam.domain.conditions import parse_time
from kubeiam.domain.secret_format import checksum, credential_id, generate
from kubeiam.tokens.keys import SIGNING_KEY_SECRET

from .credentials_support import (
    ISSUED_TOKENS,
    account_manifest,
    credential_manifest,
    many,
    revoke,
    wait_state,
)
from .metrics_support import Page
from .support import ClusterHandle, OperatorProcess, wait_for
from .token_support import Client, TokenServer, client_of, namespace_with, token_server_on_loopback
from .token_support import verify as _verify

OTHER_AUDIENCE = "https://api.kubeiam.test"
# The token server believes X-Forwarded-For only from this address; the test client connects
# from 127.0.0.1 (no proxy) or binds 127.0.0.2 to play the proxy.
PROXY = "127.0.0.2"
ROLES = ("compute.deployer", "storage.reader")


@dataclass
class World:
    namespace: str
    good: Client
    other: Client  # a credential of another account
    revoked: Client
    disabled: Client  # a credential of a disabled account
    deleted: Client  # a credential deleted after its secret was read
    short: Client  # a credential that expires before a token's lifetime ends
    short_expiry: str
    loopback: Client  # allowSourceCidrs: loopback, IPv4 and IPv6
    remote: Client  # allowSourceCidrs: 192.0.2.0/24 (TEST-NET-1), never the test client itself
    remote_v6: Client  # allowSourceCidrs: 2001:db8::/32
    fade_revoke: Client  # introspection: revoked by its test
    fade_delete: Client  # introspection: deleted by its test
    fade_off: Client  # introspection: its account "fading" disabled by its test
    used: Client  # usage write-back: no other test uses it


@pytest.fixture(scope="module")
def token_server(
    cluster: ClusterHandle,
    session_operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TokenServer]:
    def settings(issuer: str) -> dict[str, str]:
        return {
            # Every address of both families (asyncio binds one socket a family for ""), so a client
            # can come from 127.0.0.1 or from ::1 ("localhost" may name only 127.0.0.1).
            "KUBEIAM_TOKEN_ADDRESS": "",
            "KUBEIAM_TOKEN_AUDIENCES": json.dumps([issuer, OTHER_AUDIENCE]),
            "KUBEIAM_TOKEN_MAX_REQUEST_BYTES": "4096",
            "KUBEIAM_TOKEN_TRUSTED_PROXIES": json.dumps([f"{PROXY}/32"]),
            # Longer than the module runs: a use held back is never written while a test looks.
            "KUBEIAM_TOKEN_USAGE_INTERVAL": "3600",
        }

    directory = tmp_path_factory.mktemp("token-server")
    with token_server_on_loopback(
        cluster, session_operator, directory, log_name="token-server.log", settings=settings
    ) as server:
        yield server


@pytest.fixture(scope="module")
def world(cluster: ClusterHandle, token_server: TokenServer) -> Iterator[World]:
    with namespace_with(
        cluster,
        "t-token-server",
        [
            account_manifest("pipeline"),
            account_manifest("other"),
            account_manifest("switched-off"),
            credential_manifest("key", "pipeline"),
            credential_manifest("ended", "pipeline"),
            credential_manifest("other-key", "other"),
            credential_manifest("off-key", "switched-off"),
            credential_manifest("deleted", "pipeline", secretDeletionPolicy="Retain"),
            credential_manifest("short", "other", expiresIn="30m"),
            credential_manifest(
                "loopback", "pipeline", allowSourceCidrs=["127.0.0.0/24", "::1/128"]
            ),
            credential_manifest("remote", "pipeline", allowSourceCidrs=["192.0.2.0/24"]),
            credential_manifest("remote6", "other", allowSourceCidrs=["2001:db8::/32"]),
            account_manifest("watched"),
            account_manifest("fading"),
            credential_manifest("fade-revoke", "watched"),
            credential_manifest("fade-delete", "watched"),
            credential_manifest("used", "watched"),
            credential_manifest("fade-off", "fading"),
        ],
    ) as namespace:
        found = World(
            namespace,
            good=client_of(cluster, namespace, "key"),
            other=client_of(cluster, namespace, "other-key"),
            revoked=client_of(cluster, namespace, "ended"),
            disabled=client_of(cluster, namespace, "off-key"),
            deleted=client_of(cluster, namespace, "deleted"),
            short=client_of(cluster, namespace, "short"),
            short_expiry=wait_state(cluster, namespace, "short", "Active")["status"]["expiresAt"],
            loopback=client_of(cluster, namespace, "loopback"),
            remote=client_of(cluster, namespace, "remote"),
            remote_v6=client_of(cluster, namespace, "remote6"),
            fade_revoke=client_of(cluster, namespace, "fade-revoke"),
            fade_delete=client_of(cluster, namespace, "fade-delete"),
            fade_off=client_of(cluster, namespace, "fade-off"),
            used=client_of(cluster, namespace, "used"),
        )
        revoke(cluster, namespace, "ended")
        cluster.kubectl("delete", "iamcred", "deleted", "-n", namespace, "--wait=true")
        cluster.kubectl(
            "patch",
            "iamsa",
            "switched-off",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"spec":{"disabled":true}}',
        )
        wait_state(cluster, namespace, "ended", "Revoked")
        yield found


def _form(client: Client, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.secret,
        **extra,
    }


def _basic(client: Client) -> tuple[str, str]:
    # RFC 6749 §2.3.1: each part form-encoded before Basic joins them.
    return urllib.parse.quote_plus(client.client_id), urllib.parse.quote_plus(client.secret)


def _token(answer: requests.Response) -> str:
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    ISSUED_TOKENS.add(body["access_token"])
    token: str = body["access_token"]
    return token


def _refused(answer: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.status_code
    body: dict[str, Any] = answer.json()
    assert body["error"] == error, body
    assert "access_token" not in body
    return body


# -- discovery and the keys ------------------------------------------------------------------------


def test_discovery_names_the_endpoints_and_the_jwks_may_be_cached(
    token_server: TokenServer,
) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        metadata = token_server.get(path).json()
        assert metadata["issuer"] == token_server.issuer
        assert metadata["token_endpoint"] == token_server.token_url
        assert metadata["grant_types_supported"] == [
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ]
        assert "client_secret_post" in metadata["token_endpoint_auth_methods_supported"]
    jwks = token_server.get("/oauth2/jwks")
    assert jwks.headers["Cache-Control"] == "public, max-age=300"
    (key,) = jwks.json()["keys"]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["alg"] == "ES256"
    assert "d" not in key


def test_the_operator_created_the_signing_key_secret_once(
    cluster: ClusterHandle, token_server: TokenServer
) -> None:
    columns = (
        "custom-columns=I:.immutable,T:.type,K:.metadata.annotations.iam\\.kubeiam\\.io/purpose"
    )
    shown = cluster.kubectl(
        "get", "secret", SIGNING_KEY_SECRET, "-n", install.NAMESPACE, "--no-headers", "-o", columns
    ).stdout.split(maxsplit=2)
    assert shown[0] == "false"  # rotated in place (test_key_rotation.py)
    assert shown[1] == "iam.kubeiam.io/operator-keys"
    assert shown[2].startswith("Signs the token server's access tokens")
    kid = token_server.get("/oauth2/jwks").json()["keys"][0]["kid"]
    assert f"active key {kid}" in token_server.log()


# -- tokens granted --------------------------------------------------------------------------------


def test_a_credential_gets_a_token_with_client_secret_post_that_verifies_from_discovery(
    token_server: TokenServer, world: World
) -> None:
    token = _token(token_server.post(_form(world.good)))
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = _verify(token_server, token, token_server.issuer)
    assert claims["sub"] == world.good.client_id
    assert claims["client_id"] == world.good.client_id
    assert claims["scope"].split() == list(ROLES)
    assert claims["kubeiam.io/namespace"] == world.namespace
    assert claims["kubeiam.io/account"] == "pipeline"
    assert claims["exp"] - claims["iat"] == 3600


def test_a_credential_gets_a_token_with_http_basic_for_a_scope_and_an_audience(
    token_server: TokenServer, world: World
) -> None:
    form = {"grant_type": "client_credentials", "scope": ROLES[1], "audience": OTHER_AUDIENCE}
    answer = token_server.post(form, auth=_basic(world.good))
    claims = _verify(token_server, _token(answer), OTHER_AUDIENCE)
    assert claims["scope"] == ROLES[1]
    assert answer.json()["scope"] == ROLES[1]


def test_a_token_never_outlives_its_credential(token_server: TokenServer, world: World) -> None:
    claims = _verify(
        token_server, _token(token_server.post(_form(world.short))), token_server.issuer
    )
    assert claims["exp"] == int(parse_time(world.short_expiry).timestamp())
    assert claims["exp"] - claims["iat"] < 3600


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
def test_an_oauth_client_library_gets_a_token_from_the_mounted_values(
    token_server: TokenServer, world: World, method: str
) -> None:
    """Authlib's client_credentials flow, as a user's program would run it."""
    session = OAuth2Session(
        world.good.client_id,
        world.good.secret,
        token_endpoint_auth_method=method,
        scope=ROLES[0],
    )
    fetched = session.fetch_token(
        token_server.token_url, grant_type="client_credentials", verify=str(token_server.ca)
    )
    ISSUED_TOKENS.add(fetched["access_token"])
    claims = _verify(token_server, fetched["access_token"], token_server.issuer)
    assert claims["scope"] == ROLES[0]
    assert fetched["token_type"] == "Bearer"


# -- refusals --------------------------------------------------------------------------------------


def test_a_wrong_secret_is_invalid_client(token_server: TokenServer, world: World) -> None:
    guessed = generate(credential_id("no-such-uid"), os.urandom)
    answer = token_server.post(_form(Client(world.good.client_id, guessed)))
    _refused(answer, 400, "invalid_client")


def test_a_wrong_secret_over_basic_is_401_with_www_authenticate(
    token_server: TokenServer, world: World
) -> None:
    guessed = Client(world.good.client_id, generate(credential_id("no-such-uid"), os.urandom))
    answer = token_server.post({"grant_type": "client_credentials"}, auth=_basic(guessed))
    _refused(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")


def test_a_secret_whose_checksum_fails_is_invalid_client(
    token_server: TokenServer, world: World
) -> None:
    last = world.good.secret[-1]
    broken = world.good.secret[:-1] + ("A" if last != "A" else "B")
    answer = token_server.post(_form(Client(world.good.client_id, broken)))
    _refused(answer, 400, "invalid_client")


def test_this_credentials_id_with_another_credentials_random_part_is_invalid_client(
    token_server: TokenServer, world: World
) -> None:
    """A forger can compute the CRC; the hash still tells the secrets apart."""
    own_id = world.good.secret.split("_")[1]
    body = f"kiam_{own_id}_{world.other.secret.split('_')[2][:-6]}"
    answer = token_server.post(_form(Client(world.good.client_id, body + checksum(body))))
    _refused(answer, 400, "invalid_client")


def test_another_credentials_secret_with_this_client_id_is_invalid_client(
    token_server: TokenServer, world: World
) -> None:
    answer = token_server.post(_form(Client(world.good.client_id, world.other.secret)))
    _refused(answer, 400, "invalid_client")


def test_a_revoked_credential_is_refused(token_server: TokenServer, world: World) -> None:
    def refused() -> list[requests.Response]:
        # In a list: a Response with an error status is falsy, which wait_for reads as "not yet".
        answer = token_server.post(_form(world.revoked))
        return [answer] if answer.status_code != 200 else []

    (answer,) = wait_for(refused, what="the revocation to reach the token server")
    assert _refused(answer, 400, "invalid_client")["error_description"] == (
        "The credential is not active."
    )


def test_a_disabled_accounts_credential_is_refused(token_server: TokenServer, world: World) -> None:
    def refused() -> list[requests.Response]:
        answer = token_server.post(_form(world.disabled))
        return [answer] if answer.status_code != 200 else []

    (answer,) = wait_for(refused, what="the disabled account to reach the token server")
    _refused(answer, 400, "unauthorized_client")


def test_a_deleted_credential_is_refused(token_server: TokenServer, world: World) -> None:
    def refused() -> list[requests.Response]:
        answer = token_server.post(_form(world.deleted))
        return [answer] if answer.status_code != 200 else []

    (answer,) = wait_for(refused, what="the deletion to reach the token server")
    _refused(answer, 400, "invalid_client")


def test_a_credential_past_its_expiry_is_refused_while_its_status_still_says_active(
    cluster: ClusterHandle,
    token_server: TokenServer,
    session_operator: OperatorProcess,
    namespace: str,
) -> None:
    """The token server reads the clock, not the operator's verdict: with the operator stopped,
    nothing marks the credential Expired, and still no token is issued past its expiry."""
    cluster.apply(
        many([account_manifest("pipeline"), credential_manifest("brief", expiresIn="30s")]),
        namespace,
    )
    brief = client_of(cluster, namespace, "brief")
    status = wait_state(cluster, namespace, "brief", "Active")["status"]
    expires = parse_time(status["expiresAt"])
    session_operator.stop()
    try:
        wait_for(
            lambda: datetime.datetime.now(datetime.UTC) > expires,
            timeout=45,
            what="the credential's expiry to pass",
        )
        answer = token_server.post(_form(brief))
        body = _refused(answer, 400, "invalid_client")
        assert body["error_description"] == "The credential has expired."
        assert wait_state(cluster, namespace, "brief", "Active", timeout=1)
    finally:
        session_operator.start()


def test_a_scope_beyond_the_effective_roles_is_invalid_scope(
    token_server: TokenServer, world: World
) -> None:
    answer = token_server.post(_form(world.good, scope=f"{ROLES[0]} cluster.admin"))
    _refused(answer, 400, "invalid_scope")


def test_an_audience_not_allowed_is_invalid_target(token_server: TokenServer, world: World) -> None:
    answer = token_server.post(_form(world.good, audience="https://elsewhere.kubeiam.test"))
    _refused(answer, 400, "invalid_target")


def test_an_oversized_body_is_413_unread(token_server: TokenServer, world: World) -> None:
    answer = token_server.post(_form(world.good, padding="x" * 8192))
    assert answer.status_code == 413


def test_a_body_that_is_not_a_form_is_invalid_request(
    token_server: TokenServer, world: World
) -> None:
    answer = requests.post(
        token_server.token_url,
        data=json.dumps(_form(world.good)),
        headers={"Content-Type": "application/json"},
        verify=str(token_server.ca),
        timeout=10,
    )
    _refused(answer, 400, "invalid_request")


def test_another_grant_type_is_unsupported_grant_type(
    token_server: TokenServer, world: World
) -> None:
    answer = token_server.post(_form(world.good, grant_type="password"))
    _refused(answer, 400, "unsupported_grant_type")


# -- client addresses: allowSourceCidrs and X-Forwarded-For ----------------------------------------


def _post_from(
    server: TokenServer, source: str, form: dict[str, str], forwarded_for: str | None = None
) -> tuple[int, dict[str, Any]]:
    """A token request over HTTPS from `source` (a loopback address bound as the client's),
    to the server's IPv6 loopback when `source` is IPv6."""
    parts = urllib.parse.urlsplit(server.token_url)
    context = ssl.create_default_context(cafile=str(server.ca))
    host = "::1" if ":" in source else parts.hostname or ""
    connection = http.client.HTTPSConnection(
        host, parts.port, source_address=(source, 0), context=context, timeout=10
    )
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    try:
        connection.request("POST", parts.path, urllib.parse.urlencode(form), headers)
        answer = connection.getresponse()
        body: dict[str, Any] = json.loads(answer.read())
        if "access_token" in body:
            ISSUED_TOKENS.add(body["access_token"])
        return answer.status, body
    finally:
        connection.close()


def _granted(answer: tuple[int, dict[str, Any]]) -> None:
    assert answer[0] == 200, answer[1].get("error")
    assert "access_token" in answer[1]


def _address_refused(answer: tuple[int, dict[str, Any]]) -> None:
    assert answer[0] == 400, answer[0]
    assert answer[1]["error"] == "invalid_client", answer[1]
    assert "access_token" not in answer[1]


def test_a_client_inside_allow_source_cidrs_gets_a_token(
    token_server: TokenServer, world: World
) -> None:
    _granted(_post_from(token_server, "127.0.0.1", _form(world.loopback)))
    # A header from a client that is no proxy changes nothing: its own address counts.
    _granted(_post_from(token_server, "127.0.0.1", _form(world.loopback), "192.0.2.5"))
    _granted(_post_from(token_server, "::1", _form(world.loopback)))


def test_a_client_outside_allow_source_cidrs_is_invalid_client(
    token_server: TokenServer, world: World
) -> None:
    _address_refused(_post_from(token_server, "127.0.0.1", _form(world.remote)))
    _address_refused(_post_from(token_server, "127.0.0.1", _form(world.remote_v6)))
    _address_refused(_post_from(token_server, "::1", _form(world.remote_v6)))
    _address_refused(_post_from(token_server, "::1", _form(world.remote)))


def test_a_forged_x_forwarded_for_from_a_client_that_is_no_proxy_is_ignored(
    token_server: TokenServer, world: World
) -> None:
    _address_refused(_post_from(token_server, "127.0.0.1", _form(world.remote), "192.0.2.5"))
    _address_refused(_post_from(token_server, "127.0.0.1", _form(world.remote_v6), "2001:db8::7"))
    _address_refused(_post_from(token_server, "::1", _form(world.remote_v6), "2001:db8::7"))


def test_a_trusted_proxys_x_forwarded_for_names_the_client(
    token_server: TokenServer, world: World
) -> None:
    _granted(_post_from(token_server, PROXY, _form(world.remote), "192.0.2.5"))
    _granted(_post_from(token_server, PROXY, _form(world.remote_v6), "2001:db8::7"))
    # The rightmost hop that is no proxy is the client; a hop left of it may be forged.
    _address_refused(
        _post_from(token_server, PROXY, _form(world.remote), "192.0.2.5, 198.51.100.1")
    )
    _granted(_post_from(token_server, PROXY, _form(world.remote), "198.51.100.1, 192.0.2.5"))
    # Through the proxy from outside the loopback list.
    _address_refused(_post_from(token_server, PROXY, _form(world.loopback), "192.0.2.5"))


# -- introspection (RFC 7662) ---------------------------------------------------------------------


def _introspect(
    server: TokenServer, token: str, caller: Client, *, basic: bool = False
) -> requests.Response:
    url = server.issuer + "/oauth2/introspect"
    if basic:
        return requests.post(
            url, data={"token": token}, auth=_basic(caller), verify=str(server.ca), timeout=10
        )
    form = {"token": token, "client_id": caller.client_id, "client_secret": caller.secret}
    return requests.post(url, data=form, verify=str(server.ca), timeout=10)


def _active(server: TokenServer, token: str, caller: Client) -> bool:
    answer = _introspect(server, token, caller)
    assert answer.status_code == 200, answer.status_code
    assert answer.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = answer.json()
    if not body["active"]:
        assert body == {"active": False}
    return bool(body["active"])


def test_discovery_names_the_introspection_endpoint(token_server: TokenServer) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        document = token_server.get(path).json()
        assert document["introspection_endpoint"] == token_server.issuer + "/oauth2/introspect"
        assert set(document["introspection_endpoint_auth_methods_supported"]) == {
            "client_secret_post",
            "client_secret_basic",
        }


def test_an_active_token_is_introspected_with_its_claims_by_post_and_basic(
    token_server: TokenServer, world: World
) -> None:
    token = _token(token_server.post(_form(world.good, scope="storage.reader")))
    claims = _verify(token_server, token, token_server.issuer)
    for basic in (False, True):
        answer = _introspect(token_server, token, world.other, basic=basic)
        assert answer.status_code == 200, answer.status_code
        body = answer.json()
        assert body == {
            "active": True,
            "scope": "storage.reader",
            "client_id": world.good.client_id,
            "sub": claims["sub"],
            "aud": token_server.issuer,
            "iss": token_server.issuer,
            "exp": claims["exp"],
            "iat": claims["iat"],
            "token_type": "Bearer",
        }


def test_introspection_refuses_a_caller_that_does_not_authenticate(
    token_server: TokenServer, world: World
) -> None:
    token = _token(token_server.post(_form(world.good)))
    wrong = Client(world.other.client_id, world.good.secret)
    _refused(_introspect(token_server, token, wrong), 400, "invalid_client")
    answer = _introspect(token_server, token, wrong, basic=True)
    assert _refused(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    bare = requests.post(
        token_server.issuer + "/oauth2/introspect",
        data={"token": token},
        verify=str(token_server.ca),
        timeout=10,
    )
    _refused(bare, 400, "invalid_client")
    # A revoked credential cannot introspect either.
    _refused(_introspect(token_server, token, world.revoked), 400, "invalid_client")


def test_a_forged_or_foreign_token_is_inactive(token_server: TokenServer, world: World) -> None:
    token = _token(token_server.post(_form(world.good)))
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["scope"] = "cluster.admin"
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert not _active(token_server, f"{header}.{forged_payload}.{signature}", world.other)
    assert not _active(token_server, "not-a-token", world.other)
    assert not _active(token_server, token[: len(token) // 2], world.other)


def _ends(
    cluster: ClusterHandle, server: TokenServer, world: World, client: Client, end: list[str]
) -> None:
    token = _token(server.post(_form(client)))
    assert _active(server, token, world.other)
    cluster.kubectl(*end, "-n", world.namespace)
    wait_for(
        lambda: not _active(server, token, world.other) or None,
        what="the token to turn inactive",
    )


def test_revoking_the_credential_turns_its_earlier_token_inactive(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    _ends(
        cluster,
        token_server,
        world,
        world.fade_revoke,
        ["patch", "iamcred", "fade-revoke", "--type=merge", "-p", '{"spec":{"revoked":true}}'],
    )


def test_deleting_the_credential_turns_its_earlier_token_inactive(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    _ends(cluster, token_server, world, world.fade_delete, ["delete", "iamcred", "fade-delete"])


def test_disabling_the_account_turns_its_earlier_token_inactive(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    _ends(
        cluster,
        token_server,
        world,
        world.fade_off,
        ["patch", "iamsa", "fading", "--type=merge", "-p", '{"spec":{"disabled":true}}'],
    )


# -- usage write-back --------------------------------------------------------------------------


def _metric(server: TokenServer, name: str, **labels: str) -> float:
    page = Page(requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text)
    return page.value(name, **labels)


def test_many_tokens_in_a_row_write_the_credentials_usage_once(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    def used() -> dict[str, Any] | None:
        body = cluster.get("iamcred", "used", world.namespace)
        assert body is not None
        return body if (body.get("status") or {}).get("lastUsedAt") else None

    assert (cluster.get("iamcred", "used", world.namespace) or {})["status"].get(
        "lastUsedAt"
    ) is None
    before = parse_time(datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    _token(token_server.post(_form(world.used)))
    first = wait_for(used, what="lastUsedAt to be written")
    assert first["status"]["lastUsedIp"] == "127.0.0.1"
    assert parse_time(first["status"]["lastUsedAt"]) >= before
    version = first["metadata"]["resourceVersion"]
    noted = _metric(token_server, "kubeiam_token_usage_noted_total")
    for _ in range(20):
        _token(token_server.post(_form(world.used)))
    # Each use is noted before its token is answered; none of these 20 is due for an hour.
    assert _metric(token_server, "kubeiam_token_usage_noted_total") >= noted + 20
    after = cluster.get("iamcred", "used", world.namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == version
    assert after["status"]["lastUsedAt"] == first["status"]["lastUsedAt"]
    assert _metric(token_server, "kubeiam_token_usage_writes_total", result="failed") == 0


# -- what the server wrote and counted -------------------------------------------------------------


def test_tokens_issued_and_refused_are_counted_by_error_code_and_the_cache_by_kind(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    url = f"http://127.0.0.1:{token_server.metrics_port}/metrics"
    page = Page(requests.get(url, timeout=10).text)
    # Where the suite's leak scan reads every metrics page a test kept.
    kept = cluster.log_dir / "metrics" / "token-server.prom"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(page.text)
    assert page.value("kubeiam_tokens_issued_total", grant="client_credentials") >= 3
    refused = page.by("kubeiam_token_requests_refused_total", "error")
    for error in ("invalid_client", "unauthorized_client", "invalid_scope", "invalid_target"):
        assert refused.get(error, 0) >= 1, error
    assert refused.get("413", 0) >= 1
    assert page.value("kubeiam_token_request_seconds_count") >= 10
    sizes = page.by("kubeiam_token_cache_objects", "kind")
    assert sizes["serviceaccountcredentials"] >= 5


def test_the_token_server_log_holds_no_secret_and_no_token(
    token_server: TokenServer, world: World
) -> None:
    assert len(ISSUED_TOKENS) >= 3, "the tests above must have obtained tokens"
    log = token_server.log()
    assert "Issued a token to credential" in log
    clients = (
        world.good,
        world.other,
        world.revoked,
        world.disabled,
        world.deleted,
        world.loopback,
        world.remote,
        world.remote_v6,
        world.fade_revoke,
        world.fade_delete,
        world.fade_off,
        world.used,
    )
    secrets_found = [client for client in clients if client.secret in log]
    assert secrets_found == [], f"{len(secrets_found)} client secrets in the token server's log"
    tokens_found = sum(1 for token in ISSUED_TOKENS if token in log)
    assert tokens_found == 0, f"{tokens_found} tokens in the token server's log"
