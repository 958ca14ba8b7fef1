"""What integration tests share: the cluster handle, the operator as a process, and waiting."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
from cryptography import x509

from kubeiam.devcluster.cluster import LocalCluster, free_port, terminate
from kubeiam.devcluster.kubectl import Kubectl
from kubeiam.devcluster.webhook import LocalWebhook
from kubeiam.devcluster.webhook import register as register_webhook
from kubeiam.devcluster.webhook import unregister as unregister_webhook

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.2,
) -> T:
    """Poll `probe` until it returns something truthy, and return that; fail after `timeout`.

    A shorter `interval` is for tests that act at an instant (a fault suite's kill)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


def served_certificate(port: int, bundle: bytes, host: str) -> x509.Certificate:
    """The certificate a new TLS connection to 127.0.0.1:`port` gets, verified against the CA
    `bundle` (PEM) for `host`, as a caller that trusts that bundle verifies it."""
    context = ssl.create_default_context(cadata=bundle.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port (a webhook server starts a
    moment after its process reports healthy)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class ClusterHandle:
    """The cluster a test session runs against: a kubeconfig and a kubectl bound to it.

    `kubeconfig` is the admin's, for what the tests do as a user. Operator processes get
    `operator_kubeconfig` (the deploy/ ServiceAccount's token, so RBAC decides what they may
    do) and `operator_env` (the installed ConfigMap's settings); without an operator
    kubeconfig, the operator runs inside the cluster and the tests start none.
    """

    kubeconfig: Path
    kubectl: Kubectl
    log_dir: Path
    operator_kubeconfig: Path | None = None
    # The webhook's own ServiceAccount, which the session's webhook-only process acts as.
    webhook_kubeconfig: Path | None = None
    # The token server's own ServiceAccount, which every token server the tests start acts as.
    token_server_kubeconfig: Path | None = None
    operator_env: dict[str, str] = field(default_factory=dict)
    # The local webhook the API server calls, and the session's webhook-only process.
    webhook: LocalWebhook | None = None
    admission: OperatorProcess | None = None
    # The control plane the session started, for fault tests that restart its parts; None
    # against a cluster named by KUBECONFIG, or one the session found running (see conftest).
    local: LocalCluster | None = None

    def get(self, resource: str, name: str, namespace: str, *extra: str) -> dict[str, Any] | None:
        result = self.kubectl(
            "get", resource, name, "-n", namespace, "-o", "json", *extra, check=False
        )
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    def apply(self, manifest: str, namespace: str, *extra: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", *extra, input=manifest)

    def assert_no_drift(
        self,
        resource: str,
        name: str,
        namespace: str,
        manifest: str,
        manager: str,
        *also_users: str,
    ) -> None:
        """What a GitOps tool checks: only the user's managers own spec fields (never the
        operator), and a server-side diff of the same manifest is empty."""
        obj = self.get(resource, name, namespace, "--show-managed-fields")
        assert obj is not None
        for entry in obj["metadata"]["managedFields"]:
            if entry["manager"] not in (manager, *also_users):
                assert "f:spec" not in entry.get("fieldsV1", {}), entry
        diff = self.kubectl(
            "diff",
            "-n",
            namespace,
            "-f",
            "-",
            "--server-side",
            f"--field-manager={manager}",
            "--force-conflicts",
            input=manifest,
            check=False,
        )
        assert diff.returncode == 0, diff.stdout + diff.stderr

    def wait_condition(
        self, resource: str, name: str, namespace: str, condition: str = "Ready", timeout: int = 60
    ) -> None:
        self.kubectl(
            "wait",
            resource,
            name,
            "-n",
            namespace,
            f"--for=condition={condition}",
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )


@contextlib.contextmanager
def admitted_before_the_webhook(cluster: ClusterHandle) -> Iterator[None]:
    """Writes as on a cluster where the webhook is not registered yet (an upgrade from a
    version without it): the operator must still handle what admission now refuses, such as
    a credential whose account does not exist."""
    if cluster.webhook is None:
        yield
        return
    unregister_webhook(cluster.kubectl)
    try:
        yield
    finally:
        register_webhook(cluster.kubectl, cluster.webhook)


def kubectl_in_background(
    cluster: ClusterHandle, *args: str, feed: str | None = None
) -> subprocess.Popen[str]:
    """Start kubectl (the admin's kubeconfig) running beside the test: a watch, whose output the
    caller reads from stdout, or with `feed` a command that reads that stream from stdin."""
    kubectl = cluster.kubectl
    process = subprocess.Popen(
        [str(kubectl.binary), f"--kubeconfig={kubectl.kubeconfig}", *args],
        stdin=subprocess.DEVNULL if feed is None else subprocess.PIPE,
        stdout=subprocess.PIPE if feed is None else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if feed is not None:
        assert process.stdin is not None
        process.stdin.write(feed)
        process.stdin.close()
    return process


class KubectlWatch:
    """`kubectl get --watch` of one namespace running beside the test, each line of its output
    handed to `_line` on a reader thread. Subclasses say what to watch and what to record."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _watch_args(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _line(self, line: str) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._process = kubectl_in_background(
            self.cluster, "get", "-n", self.namespace, "--watch", *self._watch_args()
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """The watch still runs: what it recorded is still all there was."""
        return self._process is not None and self._process.poll() is None

    def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._lock:
                self._line(line)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()


@dataclass
class OperatorProcess:
    """The operator run as a user runs it (`kube-iam run`), in its own process."""

    cluster: ClusterHandle
    name: str = "operator"
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("--standalone",)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    metrics_port: int = 0
    # Another identity than the operator's (the webhook's ServiceAccount), if given.
    kubeconfig: Path | None = None

    def start(self, *, timeout: float = DEFAULT_TIMEOUT) -> OperatorProcess:
        if self.cluster.operator_kubeconfig is None:
            pytest.skip("the operator runs in the cluster; this test needs processes of its own")
        port = free_port()
        health = f"http://127.0.0.1:{port}/healthz"
        # Every process serves metrics on a port of its own: many run side by side.
        self.metrics_port = int(self.env.get("KUBEIAM_METRICS_PORT") or free_port())
        self.log_path = self.cluster.log_dir / "operators" / f"{self.name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.cluster.operator_env,
            **self.env,
            "KUBEIAM_METRICS_PORT": str(self.metrics_port),
            "KUBECONFIG": str(self.kubeconfig or self.cluster.operator_kubeconfig),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kubeiam.cli", "run", "--liveness", health, *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(lambda: self._healthy(health), timeout=timeout, what=f"{self.name} to start")
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def scrape(self) -> str:
        """The process's Prometheus metrics page, as Prometheus reads it."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def wait_exit(self, *, timeout: float = DEFAULT_TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def _healthy(self, url: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.process.returncode}; log: {self.log_path}\n"
                + self.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, timeout: float = 30) -> None:
        if self.process is not None:
            terminate(self.process, timeout=timeout)

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed pod does: no cleanup of any kind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class InClusterOperator(OperatorProcess):
    """The operator a Deployment runs (`make kind-e2e`): always running, never ours to stop.

    A test that stops, restarts or kills the operator is skipped against it.
    """

    @property
    def running(self) -> bool:
        return True

    def stop(self, *, timeout: float = 30) -> None:
        pytest.skip("the operator runs in the cluster; this test stops it")

    def kill(self) -> None:
        pytest.skip("the operator runs in the cluster; this test kills it")
