"""The token server as the tests run it: `kube-iam token-server` in a process of its own, on a
loopback port with a certificate the test's CA signs, and a credential's values as a pod reads
them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
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

from .credentials_support import many, read_secret, wait_state
from .support import ClusterHandle, OperatorProcess, wait_for


@dataclass
class Client:
    """A credential's client id and secret, read from its Secret as a pod would."""

    client_id: str
    secret: str = field(repr=False)


@contextlib.contextmanager
def namespace_with(cluster: ClusterHandle, prefix: str, manifests: list[str]) -> Iterator[str]:
    """A namespace of a test module's own (`prefix` and a random suffix) holding `manifests`,
    deleted afterwards without waiting for it."""
    namespace = f"{prefix}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        cluster.apply(many(manifests), namespace)
        yield namespace
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def client_of(cluster: ClusterHandle, namespace: str, name: str) -> Client:
    """The Active credential's values, from the Secret it was issued."""
    status = wait_state(cluster, namespace, name, "Active")["status"]
    mounted = read_secret(cluster, namespace, status["secretName"])
    return Client(mounted.data["client-id"], mounted.client_secret())


def serving_certificate(directory: Path) -> Path:
    """A test CA and the token server's certificate from it, for 127.0.0.1, ::1 and localhost,
    as tls.crt and tls.key in `directory` (KUBEIAM_TOKEN_CERT_DIR); the CA's certificate.
    Called again, the same CA signs a new certificate, swapped in as the kubelet updates a
    mounted Secret (written aside, then renamed)."""
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    if not ca.cert.exists():
        create_ca(ca, "kube-iam test token CA")
    issue_certificate(
        ca,
        KeyPair(directory / ".tls.crt.new", directory / ".tls.key.new"),
        "127.0.0.1",
        server_names=("localhost",),
        server_ips=("127.0.0.1", "::1"),
    )
    for name in ("tls.key", "tls.crt"):
        os.replace(directory / f".{name}.new", directory / name)
    return ca.cert


def verify(server: TokenServer, token: str, audience: str) -> dict[str, Any]:
    """Verify as any relying party would: the issuer's discovery names the keys, nothing else."""
    discovery = server.get("/.well-known/openid-configuration").json()
    context = ssl.create_default_context(cafile=str(server.ca))
    # Its own keys, also when it serves beside a replica whose URL is the issuer's.
    jwks_uri = discovery["jwks_uri"].replace(server.issuer, server.url, 1)
    keys = jwt.PyJWKClient(jwks_uri, ssl_context=context)
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
    url: str  # where this process answers: the issuer's URL, or its own port beside others
    log_from: int = 0  # where its lines start in log_path

    @property
    def token_url(self) -> str:
        return self.url + "/oauth2/token"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, verify=str(self.ca), timeout=10)

    def workers(self) -> set[int]:
        """The pids of its worker processes (the children multiprocessing spawned; not its
        resource tracker)."""
        return {
            pid
            for pid in _children(self.process.pid)
            if b"spawn_main" in _read(f"/proc/{pid}/cmdline")
        }

    def post(self, data: Any, **kwargs: Any) -> requests.Response:
        return requests.post(self.token_url, data=data, verify=str(self.ca), timeout=10, **kwargs)

    def log(self) -> str:
        """What this process logged (the file may hold earlier runs' lines before it)."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_from)
            return log.read().decode(errors="replace")

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            tail = "\n".join(self.log().splitlines()[-30:])
            raise AssertionError(f"the token server exited with {self.process.returncode}:\n{tail}")
        try:
            return self.get("/healthz").status_code == 200
        except requests.RequestException:
            return False


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # the process is gone meanwhile
        return b""


def _children(parent: int) -> set[int]:
    """The processes whose parent is `parent`, from every /proc/<pid>/stat."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = _read(f"/proc/{entry}/stat").rpartition(b")")[2].split()
            if len(fields) > 1 and int(fields[1]) == parent:
                found.add(int(entry))
    return found


@contextlib.contextmanager
def running_token_server(
    cluster: ClusterHandle,
    *,
    kubeconfig: Path,
    issuer: str,
    ca: Path,
    log_name: str,
    settings: Mapping[str, str],
    url: str | None = None,
    wait: bool = True,
    verbose: bool = False,
) -> Iterator[TokenServer]:
    """Start `kube-iam token-server` with the operator's settings plus `settings`, wait until it
    answers /healthz (at `url`, the issuer's by default) unless not to `wait`, and stop it
    afterwards. Its log goes where the suite's leak scan reads; `verbose` logs at DEBUG too
    (refusals past the paced INFO lines, for tests that read them)."""
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
        log_from = log.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "kubeiam.cli", "token-server", *(["-v"] if verbose else [])],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = TokenServer(issuer, ca, log_path, process, metrics_port, url or issuer, log_from)
    try:
        if wait:
            # Generous: its workers import, list and read the keys on a machine others load too.
            wait_for(server.healthy, what="the token server to be ready", timeout=180)
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


# -- tokens as the API server sees them (the fixtures that hand these out: conftest.py) ------------

# How long the API server may take to find the issuer once the token server is up: it retries
# discovery in the background every 10 s (kube-apiserver 1.35), so this is ample.
ISSUER_FOUND_TIMEOUT = 60.0


@dataclass
class Kubectl:
    """kubectl as a workload holding only a bearer token: no client certificate, no admin."""

    binary: Path
    apiserver_url: str
    ca_file: str
    directory: Path

    def __call__(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.apiserver_url,
                        "certificate-authority": self.ca_file,
                    },
                }
            ],
            "users": [{"name": "workload", "user": {"token": token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "workload"}}],
            "current-context": "local",
        }
        path = self.directory / f"kubeconfig-{secrets.token_hex(4)}"
        path.touch(mode=0o600)
        path.write_text(json.dumps(config))
        try:
            return subprocess.run(
                [str(self.binary), f"--kubeconfig={path}", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            path.unlink()

    def whoami(self, token: str) -> dict[str, Any] | None:
        """The API server's SelfSubjectReview of the token's user; None when it refuses."""
        result = self(token, "auth", "whoami", "-o", "json")
        if result.returncode != 0:
            return None
        user: dict[str, Any] = json.loads(result.stdout)["status"]["userInfo"]
        return user
