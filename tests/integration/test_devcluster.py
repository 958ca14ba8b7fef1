"""The local control plane itself: idempotent start, clean stop, errors a person can act on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries
from kubeiam.devcluster.cluster import LocalCluster, _is_our_process, free_port, terminate
from kubeiam.devcluster.errors import ControlPlaneError

from .credentials_support import (
    ISSUED_TOKENS,
    account_manifest,
    credential_manifest,
    many,
    read_secret,
    wait_state,
)
from .support import ClusterHandle, OperatorProcess, listening, wait_for


def kube_iam(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubeiam.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, **(env or {})),
        timeout=600,
    )


def test_a_second_cluster_starts_stops_and_leaves_nothing_running(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    """The `kube-iam cluster` commands behind `make cluster-up` and `make cluster-down`."""
    state_dir = tmp_path / "cp"
    up = kube_iam("cluster", "up", "--state-dir", str(state_dir))
    assert up.returncode == 0, up.stderr
    assert "started" in up.stdout
    local = LocalCluster(state_dir)
    state = json.loads((state_dir / "cluster.json").read_text())
    pids = {p["name"]: p["pid"] for p in state["processes"]}
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
    # The API server names a token server that does not run: it starts all the same.
    issuer = local.token_issuer
    assert issuer is not None
    assert issuer.url == f"https://127.0.0.1:{issuer.port}"
    assert (Path(issuer.cert_dir) / "tls.crt").is_file()
    assert (state_dir / "authentication-config.json").is_file()
    assert f"token server at {issuer.url}" in up.stdout
    assert (state_dir / "kubeconfig").is_file()
    assert (state_dir / "bin" / "kubectl").exists()
    assert {p.name for p in (state_dir / "logs").iterdir()} >= {
        "etcd.log",
        "kube-apiserver.log",
        "kube-controller-manager.log",
    }
    version = local.kubectl("version", "-o", "json")
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"].startswith("v1.")
    crds = local.kubectl("get", "crd", "-o", "name").stdout
    assert "serviceaccountcredentials.iam.kubeiam.io" in crds

    again = kube_iam("cluster", "up", "--state-dir", str(state_dir))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    state_again = json.loads((state_dir / "cluster.json").read_text())
    assert {p["name"]: p["pid"] for p in state_again["processes"]} == pids

    records = local._load_state()
    assert records is not None
    down = kube_iam("cluster", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not any(_is_our_process(record) for record in records.processes)
    assert not local.is_running()
    assert not (state_dir / "authentication-config.json").exists()
    status = kube_iam("cluster", "status", "--state-dir", str(state_dir))
    assert (status.returncode, status.stdout.strip()) == (3, "stopped")


def test_a_process_that_dies_on_start_is_reported_with_its_log(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    """A port held by someone else makes etcd exit; the error says so and nothing is left."""
    import socket

    local = LocalCluster(tmp_path / "cp")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    original = local._etcd_args

    def clashing_ports(client_port: int, peer_port: int) -> list[str]:
        return original(taken, peer_port)

    local._etcd_args = clashing_ports  # type: ignore[method-assign]
    try:
        with pytest.raises(ControlPlaneError, match="etcd exited") as error:
            local.up()
    finally:
        holder.close()
    assert "already in use" in str(error.value)
    assert "etcd.log" in str(error.value)
    assert not (tmp_path / "cp" / "cluster.json").exists()


def test_without_go_and_without_a_cache_the_build_says_what_to_install(tmp_path: Path) -> None:
    result = kube_iam(
        "cluster",
        "up",
        "--state-dir",
        str(tmp_path / "cp"),
        env={"KUBEIAM_CACHE_DIR": str(tmp_path / "empty-cache"), "PATH": "/nonexistent"},
    )
    assert result.returncode == 2
    assert "Go toolchain is not on PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_binaries_come_from_the_versioned_cache(cluster: ClusterHandle) -> None:
    directory = ensure_binaries(REPO_ROOT / ".local" / "logs")
    assert "kubernetes-v1." in str(directory)
    assert "_etcd-v3." in str(directory)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        assert os.access(directory / name, os.X_OK), name


# One `kubectl apply` right after `make run` started: the issue's burst was 150 accounts and
# 1,050 credentials; see the test's docstring for the size used here.
BURST_ACCOUNTS = int(os.environ.get("KUBEIAM_RUN_BURST_ACCOUNTS", "150"))
BURST_CREDENTIALS_EACH = 7


def test_make_run_serves_admission_apart_and_admits_a_whole_apply(
    cluster: ClusterHandle, session_operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """What `make run` starts (`python -m kubeiam.devcluster.local_run`), in a shell whose
    KUBECONFIG names the local control plane, as the README's walk-through exports it: the
    webhook and the token server run beside the operator, the runner says when all are ready
    and where the token endpoint and its CA are, a credential's Secret carries that URL and gets
    a token there, one apply of 150 accounts and 1,050 credentials right then is admitted
    whole, and Ctrl-C stops all three."""
    if cluster.webhook is None or cluster.admission is None:
        pytest.skip("not the local control plane")
    state_dir = cluster.kubeconfig.parent
    # The runner's processes answer alone.
    session_operator.stop()
    cluster.admission.stop()
    log = cluster.log_dir / "operators" / "make-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "KUBEIAM_ORGANIZATION": "acme",
        "KUBEIAM_LOG_FORMAT": "text",
        "KUBEIAM_METRICS_PORT": str(free_port()),
    }
    with log.open("ab") as errors:
        runner = subprocess.Popen(
            [sys.executable, "-m", "kubeiam.devcluster.local_run", "--state-dir", str(state_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
    try:
        assert runner.stdout is not None
        ready = _line_with(runner, "ready for objects", timeout=180)
        assert f"127.0.0.1:{cluster.webhook.port}" in ready
        endpoint = re.search(
            r"Token endpoint: (https://127\.0\.0\.1:(\d+)/oauth2/token) \(its CA: (\S+)\)",
            _line_with(runner, "Token endpoint:", timeout=10),
        )
        assert endpoint is not None
        token_url, token_port, ca = endpoint.group(1), int(endpoint.group(2)), endpoint.group(3)
        children = _children_of(runner.pid)
        assert len(children) == 3, children

        # A credential's Secret, read as a pod would, holds all it needs to get a token: the
        # URL, the client, and the endpoint's CA bundle (ca.crt), which alone verifies it.
        cluster.apply(
            many([account_manifest("runner"), credential_manifest("runner-key", "runner")]),
            namespace,
        )
        status = wait_state(cluster, namespace, "runner-key", "Active")["status"]
        mounted = read_secret(cluster, namespace, status["secretName"])
        assert mounted.data["token-url"] == token_url
        assert mounted.data["ca.crt"] == Path(ca).read_text()
        mounted_ca = tmp_path / "ca.crt"
        mounted_ca.write_text(mounted.data["ca.crt"])
        answer = requests.post(
            mounted.data["token-url"],
            data={
                "grant_type": "client_credentials",
                "client_id": mounted.data["client-id"],
                "client_secret": mounted.client_secret(),
            },
            verify=str(mounted_ca),
            timeout=10,
        )
        assert answer.status_code == 200, answer.status_code
        ISSUED_TOKENS.add(answer.json()["access_token"])
        assert answer.json()["token_type"] == "Bearer"

        manifests = [account_manifest(f"a{i}") for i in range(BURST_ACCOUNTS)] + [
            credential_manifest(f"a{i}-c{j}", f"a{i}")
            for i in range(BURST_ACCOUNTS)
            for j in range(BURST_CREDENTIALS_EACH)
        ]
        started = time.monotonic()
        applied = cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=many(manifests), check=False, timeout=600
        )
        took = time.monotonic() - started
        assert applied.returncode == 0, applied.stderr[-3000:]
        assert "failed calling webhook" not in applied.stderr
        created = applied.stdout.count(" created")
        assert created == len(manifests), applied.stdout[-2000:]
        print(f"one apply of {len(manifests)} objects admitted whole in {took:.1f} s")

        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) in (0, 130)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=30)
        assert not listening(cluster.webhook.port)
        assert not listening(token_port)
    finally:
        # Whatever failed, no process of the runner's outlives the test: an operator left
        # running would handle every later test's objects beside the session's.
        left = _children_of(runner.pid)
        terminate(runner, timeout=30, signum=signal.SIGINT)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster.admission.start()


def _line_with(process: subprocess.Popen[str], text: str, *, timeout: float) -> str:
    """The first line of the process's stdout holding `text` (the runner's readiness line)."""
    assert process.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if text in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, f"no line with {text!r} within {timeout:.0f} s (exit code {process.poll()})"
    return found[0]


def _children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in result.stdout.split()]
