"""The local control plane itself: idempotent start, clean stop, errors a person can act on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubeiam.devcluster.binaries import REPO_ROOT, ensure_binaries
from kubeiam.devcluster.cluster import LocalCluster, _is_our_process
from kubeiam.devcluster.errors import ControlPlaneError

from .support import ClusterHandle


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
