"""The token server as the tests run it: `kube-iam token-server` in a process of its own, on a
loopback port with a certificate the test's CA signs, and a credential's values as a pod reads
them."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from kubeiam.devcluster.certs import KeyPair, create_ca, issue_certificate
from kubeiam.devcluster.cluster import free_port, terminate
from kubeiam.devcluster.token_authn import TokenIssuer

from .credentials_support import read_secret, wait_state
from .support import ClusterHandle, OperatorProcess, wait_for


@dataclass
class Client:
    """A credential's client id and secret, read from its Secret as a pod would."""

    client_id: str
    secret: str = field(repr=False)


def client_of(cluster: ClusterHandle, namespace: str, name: str) -> Client:
    """The Active credential's values, from the Secret it was issued."""
    status = wait_state(cluster, namespace, name, "Active")["status"]
    mounted = read_secret(cluster, namespace, status["secretName"])
    return Client(mounted.data["client-id"], mounted.client_secret())


def serving_certificate(directory: Path) -> Path:
    """A test CA and the token server's certificate from it, for 127.0.0.1, ::1 and localhost,
    as tls.crt and tls.key in `directory` (KUBEIAM_TOKEN_CERT_DIR); the CA's certificate."""
    ca = create_ca(KeyPair(directory / "ca.crt", directory / "ca.key"), "kube-iam test token CA")
    issue_certificate(
        ca,
        KeyPair(directory / "tls.crt", directory / "tls.key"),
        "127.0.0.1",
        server_names=("localhost",),
        server_ips=("127.0.0.1", "::1"),
    )
    return ca.cert


def verify(server: TokenServer, token: str, audience: str) -> dict[str, Any]:
    """Verify as any relying party would: the issuer's discovery names the keys, nothing else."""
    discovery = server.get("/.well-known/openid-configuration").json()
    context = ssl.create_default_context(cafile=str(server.ca))
    keys = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=context)
    claims: dict[str, Any] = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=discovery["issuer"],
    )
    return claims


@dataclass
class TokenServer:
    """The token server process and how to reach it."""

    issuer: str
    ca: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    metrics_port: int

    @property
    def token_url(self) -> str:
        return self.issuer + "/oauth2/token"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.issuer + path, verify=str(self.ca), timeout=10)

    def post(self, data: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.token_url, data=data, verify=str(self.ca), timeout=10, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            tail = "\n".join(self.log().splitlines()[-30:])
            raise AssertionError(f"the token server exited with {self.process.returncode}:\n{tail}")
        try:
            return self.get("/healthz").status_code == 200
        except requests.RequestException:
            return False


@contextlib.contextmanager
def running_token_server(
    cluster: ClusterHandle,
    *,
    kubeconfig: Path,
    issuer: str,
    ca: Path,
    log_name: str,
    settings: Mapping[str, str],
    verbose: bool = False,
) -> Iterator[TokenServer]:
    """Start `kube-iam token-server` with the operator's settings plus `settings`, wait until it
    answers /healthz, and stop it afterwards. Its log goes where the suite's leak scan reads;
    `verbose` logs at DEBUG too (refusals past the paced INFO lines, for tests that read them)."""
    metrics_port = free_port()
    log_path = cluster.log_dir / "operators" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **cluster.operator_env,
        "KUBECONFIG": str(kubeconfig),
        "KUBEIAM_TOKEN_ISSUER": issuer,
        "KUBEIAM_METRICS_PORT": str(metrics_port),
        **settings,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubeiam.cli", "token-server", *(["-v"] if verbose else [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = TokenServer(issuer, ca, log_path, process, metrics_port)
    try:
        wait_for(server.healthy, what="the token server to be ready")
        yield server
    finally:
        terminate(process, timeout=10)


@contextlib.contextmanager
def running_for_the_apiserver(
    cluster: ClusterHandle, operator: OperatorProcess, issuer: TokenIssuer, *, log_name: str
) -> Iterator[TokenServer]:
    """The token server where the local API server expects kube-iam's issuer (the port and
    certificate devcluster/token_authn.py chose), so the API server accepts its tokens. The
    issuer stays the default audience: a token for it does not open the cluster, which accepts
    only its own audience."""
    if cluster.token_server_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; the token server is not deployed there yet")
    if not operator.running:
        operator.start()  # it creates the signing key Secret at start
    settings = {
        "KUBEIAM_TOKEN_PORT": str(issuer.port),
        "KUBEIAM_TOKEN_ADDRESS": "127.0.0.1",
        "KUBEIAM_TOKEN_CERT_DIR": issuer.cert_dir,
        "KUBEIAM_TOKEN_AUDIENCES": json.dumps([issuer.url, issuer.audience]),
    }
    with running_token_server(
        cluster,
        kubeconfig=cluster.token_server_kubeconfig,
        issuer=issuer.url,
        ca=Path(issuer.ca_file),
        log_name=log_name,
        settings=settings,
    ) as running:
        yield running


@contextlib.contextmanager
def token_server_on_loopback(
    cluster: ClusterHandle,
    operator: OperatorProcess,
    directory: Path,
    *,
    log_name: str,
    settings: Callable[[str], Mapping[str, str]],
) -> Iterator[TokenServer]:
    """The token server as deploy/ runs it (under its own ServiceAccount), on a free loopback
    port with a certificate from a test CA made in `directory`; `settings` gets the issuer URL
    and gives the settings besides port and certificate. Skips where the operator runs in the
    cluster (no token server deployed there yet)."""
    if cluster.token_server_kubeconfig is None:
        pytest.skip("the operator runs in the cluster; the token server is not deployed there yet")
    if not operator.running:
        operator.start()  # it creates the signing key Secret at start
    ca = serving_certificate(directory)
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"
    chosen = {"KUBEIAM_TOKEN_PORT": str(port), "KUBEIAM_TOKEN_CERT_DIR": str(directory)}
    with running_token_server(
        cluster,
        kubeconfig=cluster.token_server_kubeconfig,
        issuer=issuer,
        ca=ca,
        log_name=log_name,
        settings={**chosen, **settings(issuer)},
    ) as server:
        yield server
