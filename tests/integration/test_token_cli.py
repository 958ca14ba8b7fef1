"""`kube-iam token` against the real token server and control plane, as a person or a script runs
it: from a credential's Secret through the kubeconfig, or from the files a pod mounts.

The token server runs where the local API server expects kube-iam's issuer (as in
test_token_authn.py), so a token the command prints also works with `kubectl --token`. Each
printed token goes to the suite's leak scan; none reaches an assertion message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kubeiam.api.credential import CREDENTIAL_ID_ANNOTATION
from kubeiam.devcluster.token_authn import ROLE_GROUP_PREFIX, USERNAME_PREFIX, TokenIssuer
from kubeiam.tokens.client import public_jwk
from kubeiam.tokens.dpop import thumbprint

from .credentials_support import (
    ISSUED_TOKENS,
    account_manifest,
    credential_manifest,
    read_secret,
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
from .token_support import verify as _verify

ROLES = ("compute.deployer", "storage.reader")
# A credential whose Secret names its keys as a workload expects (spec.secretTemplate.keys).
RENAMED = {"clientId": "username", "clientSecret": "password", "tokenUrl": "endpoint"}


@dataclass
class World:
    namespace: str
    secret_name: str
    client: Client


@pytest.fixture(scope="module")
def token_server(
    cluster: ClusterHandle, session_operator: OperatorProcess, issuer: TokenIssuer
) -> Iterator[TokenServer]:
    with running_for_the_apiserver(
        cluster, session_operator, issuer, log_name="token-server-cli.log"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def world(cluster: ClusterHandle, token_server: TokenServer) -> Iterator[World]:
    with namespace_with(
        cluster,
        "t-token-cli",
        [
            account_manifest("pipeline"),
            credential_manifest("key"),
            credential_manifest("renamed", secretTemplate={"keys": RENAMED}),
            credential_manifest("bound", requireDpop=True),
        ],
    ) as namespace:
        secret_name = wait_state(cluster, namespace, "key", "Active")["status"]["secretName"]
        yield World(namespace, secret_name, client_of(cluster, namespace, "key"))


def kube_iam_token(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`kube-iam token ...` in a process of its own, as a shell would run it."""
    env = {**os.environ}
    env.pop("KUBECONFIG", None)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [sys.executable, "-m", "kubeiam.cli", "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def from_secret(
    cluster: ClusterHandle, world: World, server: TokenServer, *args: str
) -> subprocess.CompletedProcess[str]:
    """The command reading the Secret through the admin's kubeconfig. The session's operator
    writes its default token URL into Secrets, so the URL and CA of this test's server are
    given on the command line (what --token-url and --cacert are for)."""
    result = kube_iam_token(
        f"--secret={world.namespace}/{world.secret_name}",
        f"--token-url={server.token_url}",
        f"--cacert={server.ca}",
        *args,
        kubeconfig=cluster.kubeconfig,
    )
    assert world.client.secret not in result.stdout + result.stderr
    return result


def printed_token(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    ISSUED_TOKENS.add(token)
    assert result.stdout == token + "\n"  # only the token: for $(kube-iam token ...)
    return token


def test_the_token_printed_from_a_secret_verifies_from_discovery(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    token = printed_token(from_secret(cluster, world, token_server))
    claims = _verify(token_server, token, token_server.issuer)
    assert claims["sub"] == world.client.client_id
    assert claims["scope"].split() == sorted(ROLES)
    assert claims["kubeiam.io/namespace"] == world.namespace


def test_json_prints_the_whole_answer(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    result = from_secret(cluster, world, token_server, "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    ISSUED_TOKENS.add(answer["access_token"])
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] > 0
    assert answer["scope"].split() == sorted(ROLES)


def test_scope_narrows_the_token(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    token = printed_token(from_secret(cluster, world, token_server, "--scope", ROLES[1]))
    assert _verify(token_server, token, token_server.issuer)["scope"] == ROLES[1]


def test_a_disallowed_audience_exits_non_zero_with_invalid_target(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    result = from_secret(cluster, world, token_server, "--audience=https://elsewhere.example")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "invalid_target" in result.stderr
    assert "The audience asked for is not allowed." in result.stderr


def test_a_secret_with_renamed_keys_is_read_by_its_credentials_names(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    secret_name = wait_state(cluster, world.namespace, "renamed", "Active")["status"]["secretName"]
    mounted = read_secret(cluster, world.namespace, secret_name)
    assert "client-id" not in mounted.data
    result = kube_iam_token(
        f"--secret={world.namespace}/{secret_name}",
        f"--token-url={token_server.token_url}",
        f"--cacert={token_server.ca}",
        kubeconfig=cluster.kubeconfig,
    )
    assert mounted.client_secret("password") not in result.stdout + result.stderr
    token = printed_token(result)
    claims = _verify(token_server, token, token_server.issuer)
    assert (
        claims["kubeiam.io/credential_id"]
        == mounted.metadata["annotations"][CREDENTIAL_ID_ANNOTATION]
    )


def test_an_unreadable_secret_exits_non_zero_naming_it(
    cluster: ClusterHandle, token_server: TokenServer, world: World
) -> None:
    result = kube_iam_token(
        f"--secret={world.namespace}/no-such-secret", kubeconfig=cluster.kubeconfig
    )
    assert result.returncode == 2
    assert f"cannot read Secret {world.namespace}/no-such-secret: 404" in result.stderr


def test_dir_reads_the_files_a_pod_mounts(
    cluster: ClusterHandle, token_server: TokenServer, world: World, tmp_path: Path
) -> None:
    """The Secret's keys as the kubelet writes them, one file each; token-url and ca.crt as an
    operator configured with this issuer writes them (`make run`'s does), so the command needs
    no flag but --dir."""
    mounted = read_secret(cluster, world.namespace, world.secret_name)
    files = {
        **mounted.data,
        "token-url": token_server.token_url,
        "ca.crt": token_server.ca.read_text(),
    }
    for key, value in files.items():
        (tmp_path / key).write_text(value)
    result = kube_iam_token(f"--dir={tmp_path}")
    assert world.client.secret not in result.stdout + result.stderr
    token = printed_token(result)
    assert _verify(token_server, token, token_server.issuer)["sub"] == world.client.client_id
    # Without ca.crt the system's CAs decide, and they do not know the local CA.
    (tmp_path / "ca.crt").unlink()
    refused = kube_iam_token(f"--dir={tmp_path}")
    assert refused.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr


def test_the_token_works_with_kubectl_against_the_api_server(
    cluster: ClusterHandle,
    token_server: TokenServer,
    issuer: TokenIssuer,
    world: World,
    kubectl: Kubectl,
) -> None:
    token = printed_token(
        from_secret(cluster, world, token_server, f"--audience={issuer.audience}")
    )
    # The API server may not have found the issuer yet (it retries discovery in the background).
    user = wait_for(
        lambda: kubectl.whoami(token),
        timeout=ISSUER_FOUND_TIMEOUT,
        what="the API server to accept the token kube-iam token printed",
        interval=1.0,
    )
    assert user["username"] == USERNAME_PREFIX + world.client.client_id
    assert set(user["groups"]) == {
        *(ROLE_GROUP_PREFIX + role for role in ROLES),
        "system:authenticated",
    }


def test_dpop_key_gets_a_token_bound_to_that_key_where_the_credential_requires_dpop(
    cluster: ClusterHandle, token_server: TokenServer, world: World, tmp_path: Path
) -> None:
    """`--dpop-key` proves possession (RFC 9449): the server binds the token to the key's
    thumbprint; without the key the same credential gets nothing."""
    bound = wait_state(cluster, world.namespace, "bound", "Active")["status"]["secretName"]
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "dpop.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    bound_world = World(world.namespace, bound, client_of(cluster, world.namespace, "bound"))

    refused = from_secret(cluster, bound_world, token_server)
    assert refused.returncode == 1
    assert "invalid_dpop_proof" in refused.stderr

    token = printed_token(from_secret(cluster, bound_world, token_server, f"--dpop-key={key_file}"))
    claims = _verify(token_server, token, token_server.issuer)
    assert claims["sub"] == bound_world.client.client_id
    assert claims["cnf"] == {"jkt": thumbprint(public_jwk(key))}
