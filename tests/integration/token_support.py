"""The token server as the tests run it: `kube-iam token-server` in a process of its own, on a
loopback port with a certificate the test's CA signs, and a credential's values as a pod reads
them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from kubeiam.devcluster.certs import KeyPair, create_ca, issue_certificate
from kubeiam.devcluster.cluster import free_port, terminate

from .credentials_support import read_secret, wait_state
from .support import ClusterHandle, wait_for


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


def issue_serving_certificate(directory: Path) -> Path:
    """A test CA and, signed by it, the token server's tls.crt and tls.key in `directory` (for
    127.0.0.1, ::1 and localhost); the CA certificate's path, which clients trust."""
    ca = KeyPair(directory / "ca.crt", directory / "ca.key")
    if not ca.cert.exists():
        create_ca(ca, "kube-iam test token CA")
    # Written aside and swapped in, as the kubelet updates a mounted Secret.
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
) -> Iterator[TokenServer]:
    """Start `kube-iam token-server` with the operator's settings plus `settings`, wait until it
    answers /healthz (at `url`, the issuer's by default) unless not to `wait`, and stop it
    afterwards. Its log goes
    where the suite's leak scan reads."""
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
            [sys.executable, "-m", "kubeiam.cli", "token-server"],
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
