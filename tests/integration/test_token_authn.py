"""The Kubernetes API server accepts kube-iam's access tokens: `kubectl --token ... auth whoami`.

The local control plane starts its kube-apiserver with `--authentication-config` naming a JWT
issuer on a loopback port it chose and recorded (devcluster/token_authn.py); this module starts
`kube-iam token-server` on exactly that port with the certificate the cluster made for it, and
then uses tokens as a workload would: with kubectl, against the real API server and its RBAC.
Tokens travel in kubeconfig files of the test's own, never on a command line or in an assertion
message, and every one is handed to the suite's leak scan.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from kubeiam.devcluster.token_authn import ROLE_GROUP_PREFIX, USERNAME_PREFIX, TokenIssuer

from .conftest import TEST_STATE_DIR
from .credentials_support import (
    ISSUED_TOKENS,
    account_manifest,
    credential_manifest,
    revoke,
    wait_state,
)
from .support import ClusterHandle, OperatorProcess, wait_for
from .token_support import (
    ISSUER_FOUND_TIMEOUT,
    Client,
    Kubectl,
    TokenServer,
    client_of,
    namespace_with,
    running_for_the_apiserver,
)

ROLES = ("compute.deployer", "storage.reader")


@dataclass
class Server:
    """The token server where the API server expects it."""

    issuer: TokenIssuer
    running: TokenServer

    def post(self, data: dict[str, str]) -> requests.Response:
        return self.running.post(data)

    def log(self) -> str:
        return self.running.log()


@dataclass
class World:
    namespace: str
    good: Client
    ended: Client  # revoked by the test that proves an issued token outlives it


@pytest.fixture(scope="module")
def token_server(
    cluster: ClusterHandle, session_operator: OperatorProcess, issuer: TokenIssuer
) -> Iterator[Server]:
    with running_for_the_apiserver(
        cluster, session_operator, issuer, log_name="token-server-authn.log"
    ) as running:
        yield Server(issuer, running)


@pytest.fixture(scope="module")
def world(cluster: ClusterHandle, token_server: Server, kubectl: Kubectl) -> Iterator[World]:
    with namespace_with(
        cluster,
        "t-token-authn",
        [
            account_manifest("pipeline"),
            credential_manifest("key", "pipeline"),
            credential_manifest("ended", "pipeline"),
        ],
    ) as namespace:
        found = World(
            namespace,
            good=client_of(cluster, namespace, "key"),
            ended=client_of(cluster, namespace, "ended"),
        )
        # The API server found no issuer while the control plane started; it retries in the
        # background, and accepts tokens once it has read discovery and the keys.
        token = _token(token_server, found.good)
        wait_for(
            lambda: kubectl.whoami(token),
            timeout=ISSUER_FOUND_TIMEOUT,
            what="the API server to accept a kube-iam token",
            interval=1.0,
        )
        yield found


def _grant(server: Server, client: Client, **extra: str) -> requests.Response:
    return server.post(
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
            "audience": server.issuer.audience,
            **extra,
        }
    )


def _token(server: Server, client: Client, **extra: str) -> str:
    answer = _grant(server, client, **extra)
    assert answer.status_code == 200, answer.json().get("error")
    token: str = answer.json()["access_token"]
    ISSUED_TOKENS.add(token)
    return token


def _refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "provide credentials" in result.stderr, result.stderr


class ApiserverLog:
    """The local kube-apiserver's log from now on: it says why it refused a bearer token
    (kubectl only hears 401), and it never quotes the token."""

    def __init__(self) -> None:
        self.path = TEST_STATE_DIR / "logs" / "kube-apiserver.log"
        self.offset = self.path.stat().st_size

    def says(self, reason: str) -> str:
        def probe() -> str | None:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                lines = log.read().decode(errors="replace").splitlines()
            found = [line for line in lines if "Unable to authenticate" in line and reason in line]
            return found[0] if found else None

        return wait_for(probe, what=f"the API server to log a refusal for {reason!r}")


def test_service_account_tokens_work_beside_the_jwt_authenticator(
    cluster: ClusterHandle, issuer: TokenIssuer, kubectl: Kubectl, namespace: str
) -> None:
    """Runs before this module starts a token server: on a fresh control plane, the issuer
    named by the AuthenticationConfiguration is not up, and other bearer tokens still work."""
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = cluster.kubectl("create", "token", "robot", "-n", namespace).stdout.strip()
    ISSUED_TOKENS.add(token)
    user = kubectl.whoami(token)
    assert user is not None
    assert user["username"] == f"system:serviceaccount:{namespace}:robot"


def test_whoami_names_the_account_and_its_roles(
    token_server: Server, kubectl: Kubectl, world: World
) -> None:
    token = _token(token_server, world.good)
    user = kubectl.whoami(token)
    assert user is not None
    assert user["username"] == USERNAME_PREFIX + world.good.client_id
    assert set(user["groups"]) == {
        *(ROLE_GROUP_PREFIX + role for role in ROLES),
        "system:authenticated",
    }
    claims = jwt.decode(token, options={"verify_signature": False})
    assert user["uid"] == claims["kubeiam.io/credential_id"]
    assert user["extra"]["kubeiam.io/namespace"] == [world.namespace]
    assert user["extra"]["kubeiam.io/account"] == ["pipeline"]


def test_a_token_for_one_role_carries_only_that_group(
    token_server: Server, kubectl: Kubectl, world: World
) -> None:
    user = kubectl.whoami(_token(token_server, world.good, scope=ROLES[1]))
    assert user is not None
    assert set(user["groups"]) == {ROLE_GROUP_PREFIX + ROLES[1], "system:authenticated"}


def test_rbac_bound_to_a_role_group_lets_that_role_act_and_not_another(
    cluster: ClusterHandle, token_server: Server, kubectl: Kubectl, world: World
) -> None:
    namespace = world.namespace
    cluster.kubectl(
        "create", "role", "read-config", "--verb=list,get", "--resource=configmaps", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "readers-read-config",
        "--role=read-config",
        f"--group={ROLE_GROUP_PREFIX}{ROLES[1]}",
        "-n",
        namespace,
    )
    reader = _token(token_server, world.good, scope=ROLES[1])
    deployer = _token(token_server, world.good, scope=ROLES[0])
    # RBAC's caches follow the binding a moment later: wait on the allowed call, then the same
    # API server refuses the token that lacks the role.
    listed = wait_for(
        lambda: (
            (r := kubectl(reader, "get", "configmaps", "-n", namespace, "-o", "name"))
            and r.returncode == 0
            and r
        ),
        what="the role group's binding to take effect",
    )
    assert "configmap/kube-root-ca.crt" in listed.stdout.split()
    refused = kubectl(deployer, "get", "configmaps", "-n", namespace)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr or "forbidden" in refused.stderr
    assert f"{USERNAME_PREFIX}{world.good.client_id}" in refused.stderr
    # Nor may the reader act beyond the binding: another namespace, or a write.
    other = kubectl(reader, "get", "configmaps", "-n", "default")
    assert other.returncode != 0
    assert "forbidden" in other.stderr.lower()
    write = kubectl(reader, "create", "configmap", "x", "-n", namespace)
    assert write.returncode != 0
    assert "forbidden" in write.stderr.lower()


def test_a_revoked_credentials_token_works_at_the_api_server_until_exp(
    cluster: ClusterHandle, token_server: Server, kubectl: Kubectl, world: World
) -> None:
    issued = _token(token_server, world.ended)
    assert kubectl.whoami(issued) is not None
    revoke(cluster, world.namespace, "ended")
    wait_state(cluster, world.namespace, "ended", "Revoked")
    # The token server refuses a new token as soon as its cache sees the revocation...
    # (a Response that is not OK is falsy, so the probe returns its body)
    refused = wait_for(
        lambda: (a := _grant(token_server, world.ended)).status_code == 400 and a.json(),
        what="the token server to refuse the revoked credential",
    )
    assert refused["error"] == "invalid_client"
    # ...while the API server verifies offline (signature, issuer, audience, exp): the token
    # issued before the revocation still authenticates until it expires.
    claims = jwt.decode(issued, options={"verify_signature": False})
    assert claims["exp"] > time.time()
    user = kubectl.whoami(issued)
    assert user is not None
    assert user["username"] == USERNAME_PREFIX + world.ended.client_id


def _forge(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """The same claims and header, signed by a key the attacker made."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers=header)


def test_a_token_signed_by_another_key_is_refused(
    token_server: Server, kubectl: Kubectl, world: World
) -> None:
    genuine = _token(token_server, world.good)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    header = jwt.get_unverified_header(genuine)
    forged = _forge(claims, {"typ": header["typ"], "kid": header["kid"]})
    assert kubectl.whoami(genuine) is not None
    log = ApiserverLog()
    _refused(kubectl(forged, "auth", "whoami"))
    log.says("failed to verify signature")
    # A key id the issuer never published, and no key id at all: refused as well.
    _refused(kubectl(_forge(claims, {"typ": "at+jwt", "kid": "attacker"}), "auth", "whoami"))
    _refused(kubectl(_forge(claims, {"typ": "at+jwt"}), "auth", "whoami"))
    # The genuine signature over other claims (the signature cut and pasted): refused.
    head, _, signature = genuine.split(".")
    elevated = {**claims, "scope": "cluster-admin"}
    payload = base64.urlsafe_b64encode(json.dumps(elevated).encode()).rstrip(b"=").decode()
    _refused(kubectl(f"{head}.{payload}.{signature}", "auth", "whoami"))


def test_a_token_for_another_audience_is_refused(
    token_server: Server, kubectl: Kubectl, world: World
) -> None:
    # The issuer's default audience: a token the token server grants, for another relying party.
    other = _token(token_server, world.good, audience=token_server.issuer.url)
    assert jwt.decode(other, options={"verify_signature": False})["aud"] == token_server.issuer.url
    log = ApiserverLog()
    _refused(kubectl(other, "auth", "whoami"))
    log.says("expected audience")


def test_neither_the_token_servers_nor_the_api_servers_log_holds_a_token(
    token_server: Server, world: World
) -> None:
    logs = {
        "token server": token_server.log(),
        "kube-apiserver": (TEST_STATE_DIR / "logs" / "kube-apiserver.log").read_text(
            errors="replace"
        ),
    }
    for name, log in logs.items():
        leaked = [token for token in ISSUED_TOKENS if token in log]
        assert not leaked, f"{len(leaked)} issued token(s) appear in the {name}'s log"
        assert world.good.secret not in log, f"a client secret appears in the {name}'s log"
